"""DualArray: a float array and its integer representation, side by side.

A quantized computation is written once, on DualArrays. Each operation does two
things at the same time:

- on the **float side**, the ordinary computation (the reference);
- on the **integer side**, the integer-only version an FHE circuit can run,
  together with the scale and zero point that say what the integers mean:
  ``real ~ scale * (int - zero_point)``.

So after every step ``x.error()`` shows how far the integers have drifted from
the floats. The integer side may be a NumPy array (clear quantized computation)
or a concrete-python tracer: the very same code is what ``fhe.compiler``
compiles in notebook 03, because every integer operation used here
(subtraction of a constant, matmul, sum, max, :func:`concrete.fhe.univariate`
table lookups, :func:`concrete.fhe.round_bit_pattern`) works on both.

A DualArray is in one of three modes:

============  ===========  =============  =============================================
mode          float side   integer side   used for
============  ===========  =============  =============================================
calibration   yes          none           running calibration data: every lookup's
                                          output quantizer *observes* its float values
dual          yes          yes            clear quantized inference, errors visible
integer       none         yes            FHE tracing (the circuit has no floats)
============  ===========  =============  =============================================

What costs what in FHE (see notebook 03): additions, subtractions, multiplication
by clear integers, sums, reshapes and slices are cheap (no bootstrapping).
Table lookups (:meth:`DualArray.apply`, :meth:`DualArray.requantize`), products of
two encrypted arrays and max each cost programmable bootstraps (PBS).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from concrete import fhe

from .checks import check_integer, is_integer
from .quantization import Quantizer, QuantParams, check_float_data, check_n_bits, compute_params

FloatFn = Callable[[np.ndarray], np.ndarray]


class ShapeMismatchError(ValueError):
    """Two operands' shapes do not fit the operation."""


class ModeError(ValueError):
    """An operation got DualArrays in incompatible modes (e.g. calibration with integer)."""


@dataclass(frozen=True)
class QuantizedWeights:
    """A clear (unencrypted) weight matrix, quantized symmetrically once.

    Attributes:
        float: the float weights.
        int: their integers, ``float ~ params.scale * int``.
        params: the symmetric quantization parameters.
    """

    float: np.ndarray
    int: np.ndarray
    params: QuantParams

    @classmethod
    def from_float(cls, weights: object, n_bits: int) -> QuantizedWeights:
        """Quantize ``weights`` symmetrically to ``n_bits`` signed integers."""
        w = check_float_data(weights, "weights")
        params = compute_params(float(w.min()), float(w.max()), check_n_bits(n_bits), symmetric=True)
        return cls(float=w, int=params.quantize(w), params=params)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.float.shape

    @classmethod
    def at_scale(cls, weights: object, scale: float) -> QuantizedWeights:
        """Quantize ``weights`` symmetrically with a given ``scale`` (``int = rint(float / scale)``),
        on as many bits as their largest integer needs."""
        w = check_float_data(weights, "weights")
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"the weights' scale must be a finite number > 0, got {scale!r}")
        ints = np.rint(w / scale).astype(np.int64)
        n_bits = check_n_bits(max(2, int(np.abs(ints).max()).bit_length() + 1))
        return cls(float=w, int=ints, params=QuantParams(n_bits=n_bits, scale=float(scale), zero_point=0, signed=True))

    @classmethod
    def aligned(cls, weights: object, in_scale: float, out_scale: float, n_bits: int) -> tuple[QuantizedWeights, int]:
        """Weights whose accumulator rounds straight onto an output quantizer: ``(weights, r)``.

        The accumulator ``x @ W`` has scale ``in_scale * s_w``. With ``s_w = out_scale / (2**r * in_scale)``,
        ``2**r`` units of it are exactly one step ``out_scale`` of the output, so rounding the accumulator
        to a multiple of ``2**r`` *is* the requantization. ``r`` is the largest that keeps the weights'
        integers within ``n_bits`` signed bits (0 if even ``r = 0`` needs more: the integers then grow).
        """
        w = check_float_data(weights, "weights")
        largest = 2 ** (check_n_bits(n_bits) - 1) - 1
        peak = float(np.abs(w).max()) or 1.0
        drop = max(0, int(np.floor(np.log2(largest * out_scale / (peak * in_scale)))))
        return cls.at_scale(w, out_scale / (2**drop * in_scale)), drop

    def part(self, columns: slice) -> QuantizedWeights:
        """Some columns, with the same parameters (``scale * int`` still approximates ``float``)."""
        return QuantizedWeights(float=self.float[:, columns], int=self.int[:, columns], params=self.params)


def _lookup_table_fn(fn: FloatFn, in_scale: float, in_zero_point: int, out: QuantParams) -> Callable[[Any], Any]:
    """The integer function a table lookup computes: dequantize, apply ``fn``, quantize.

    It is evaluated on NumPy arrays: directly in the clear, and by concrete on
    every possible input integer to fill the lookup table of the circuit.
    """

    def table(q: np.ndarray) -> np.ndarray:
        real = fn(in_scale * (np.asarray(q, dtype=np.float64) - in_zero_point))
        # fn may be undefined or infinite on integers the data never reach (1/0, say):
        # those table entries saturate instead of poisoning the table.
        real = np.nan_to_num(np.asarray(real, dtype=np.float64), nan=0.0, posinf=1e300, neginf=-1e300)
        q_out = np.rint(real / out.scale + out.zero_point)
        return np.clip(q_out, out.qmin, out.qmax).astype(np.int64)

    return table


class DualArray:
    """A float array and its integer representation, carried through the same operations.

    Build one with :meth:`quantize` (from floats, with a calibrated quantizer),
    :meth:`calibration` (floats only, to calibrate) or :meth:`from_int`
    (integers only, e.g. an encrypted input while tracing).
    """

    __slots__ = ("float", "int", "scale", "zero_point", "params", "calibrating", "squares")

    def __init__(
        self,
        float_: np.ndarray | None,
        int_: Any | None,
        *,
        scale: float | None,
        zero_point: int = 0,
        params: QuantParams | None = None,
        calibrating: bool = False,
    ) -> None:
        if float_ is None and int_ is None:
            raise ModeError("a DualArray needs a float side, an integer side, or both")
        if int_ is not None and (scale is None or not scale > 0):
            raise ValueError(f"an integer side needs a scale > 0, got {scale!r}")
        if calibrating and int_ is not None:
            raise ModeError("a calibration DualArray carries floats only")
        self.float = float_
        self.int = int_
        self.scale = scale
        self.zero_point = zero_point
        self.params = params  # set when the integers come straight out of a quantizer
        self.calibrating = calibrating
        self.squares: tuple[int, int, Any] | None = None  # (drop_bits, offset, squares): see with_squares

    # ------------------------------------------------------------------ construction
    @classmethod
    def quantize(cls, values: object, quantizer: Quantizer) -> DualArray:
        """Floats and their integers under ``quantizer``'s frozen parameters."""
        x = check_float_data(values, "the array to quantize")
        params = quantizer.params
        return cls(x, params.quantize(x), scale=params.scale, zero_point=params.zero_point, params=params)

    @classmethod
    def calibration(cls, values: object, quantizer: Quantizer | None = None) -> DualArray:
        """Floats only, in calibration mode; ``quantizer`` (the input's) observes them if given."""
        x = check_float_data(values, "calibration data")
        if quantizer is not None:
            quantizer.observe(x)
        return cls(x, None, scale=None, calibrating=True)

    @classmethod
    def from_int(cls, q: Any, params: QuantParams) -> DualArray:
        """Integers only (a NumPy array, a tracer or encrypted input) with their parameters."""
        return cls(None, q, scale=params.scale, zero_point=params.zero_point, params=params)

    # ------------------------------------------------------------------ inspection
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple((self.float if self.float is not None else self.int).shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def mode(self) -> str:
        """'calibration', 'dual' or 'integer'."""
        if self.calibrating:
            return "calibration"
        return "dual" if self.float is not None and self.int is not None else "integer"

    def dequantize(self) -> np.ndarray:
        """The reals the integer side stands for (NumPy integers only)."""
        if self.int is None:
            raise ModeError("this DualArray has no integer side (it is a calibration array)")
        return self.scale * (np.asarray(self.int, dtype=np.float64) - self.zero_point)

    def error(self) -> float:
        """Largest absolute difference between the dequantized integers and the floats."""
        if self.float is None or self.int is None:
            raise ModeError(f"error() needs both sides; this DualArray is in {self.mode} mode")
        return float(np.max(np.abs(self.dequantize() - self.float)))

    def int_range(self) -> tuple[int, int]:
        """Smallest and largest integer on the integer side (NumPy integers only)."""
        if self.int is None or not isinstance(self.int, np.ndarray):
            raise ModeError("int_range() needs a NumPy integer side")
        return int(self.int.min()), int(self.int.max())

    def bit_width(self) -> int:
        """Bits an FHE circuit needs for these integers (a sign bit included when negative)."""
        low, high = self.int_range()
        if low < 0:  # signed: n bits hold -2**(n-1) .. 2**(n-1) - 1
            return max(high, -low - 1).bit_length() + 1
        return max(1, high.bit_length())

    def __repr__(self) -> str:
        parts = [f"DualArray(shape={self.shape}, mode={self.mode}"]
        if self.int is not None:
            parts.append(f"scale={self.scale:.4g}, zero_point={self.zero_point}")
            if isinstance(self.int, np.ndarray):
                low, high = self.int_range()
                parts.append(f"ints {low}..{high} ({self.bit_width()} bits)")
                if self.float is not None:
                    parts.append(f"max error {self.error():.3g}")
        return ", ".join(parts) + ")"

    # ------------------------------------------------------------------ helpers
    def _centered(self) -> Any:
        """The integers with the zero point removed (so that real = scale * result)."""
        return self.int - self.zero_point if self.zero_point != 0 else self.int

    def _new(
        self,
        float_: Any,
        int_: Any,
        *,
        scale: float | None = None,
        zero_point: int | None = None,
        params: QuantParams | None = None,
    ) -> DualArray:
        """A result in the same mode as self."""
        return DualArray(
            float_ if self.float is not None else None,
            int_ if self.int is not None else None,
            scale=self.scale if scale is None else scale,
            zero_point=self.zero_point if zero_point is None else zero_point,
            params=params,
            calibrating=self.calibrating,
        )

    def _check_same_mode(self, other: DualArray, op: str) -> None:
        if not isinstance(other, DualArray):
            raise TypeError(f"{op}: expected a DualArray, got {type(other).__name__}")
        if other.mode != self.mode:
            raise ModeError(f"{op}: cannot combine a DualArray in {self.mode} mode with one in {other.mode} mode")

    # ------------------------------------------------------------------ linear algebra
    def linear(self, weights: QuantizedWeights, bias: object | None = None) -> DualArray:
        """``self @ W + b`` with clear weights: no bootstrapping, the result is an accumulator.

        The integers are ``(q - zero_point) @ W_int + round(b / scale_out)`` with
        ``scale_out = scale * W_scale`` and zero point 0.
        """
        if self.shape[-1] != weights.shape[0]:
            raise ShapeMismatchError(
                f"linear: input has {self.shape[-1]} features (shape {self.shape}) but the weights expect "
                f"{weights.shape[0]} (shape {weights.shape}); the last input axis must equal the weights' first"
            )
        b = None if bias is None else check_float_data(bias, "bias")
        if b is not None and b.shape != (weights.shape[1],):
            raise ShapeMismatchError(f"linear: bias must have shape ({weights.shape[1]},), got {b.shape}")
        float_out = int_out = None
        scale = None
        if self.float is not None:
            float_out = self.float @ weights.float + (0.0 if b is None else b)
        if self.int is not None:
            scale = self.scale * weights.params.scale
            int_out = self._centered() @ weights.int
            if b is not None:
                int_out = int_out + np.rint(b / scale).astype(np.int64)
        return self._new(float_out, int_out, scale=scale, zero_point=0)

    def matmul(self, other: DualArray, *, drop_bits: int = 0) -> DualArray:
        """Product of two DualArrays ``(M, K) @ (K, N)``: both encrypted in FHE, two PBS per product.

        Args:
            other: the right operand.
            drop_bits: divide every product by ``2**drop_bits`` inside its lookup tables
                (rounded), so the sum of products is that many bits narrower; the scale
                grows by the same factor. 0 is the exact product.
        """
        self._check_same_mode(other, "matmul")
        if self.ndim != 2 or other.ndim != 2:
            raise ShapeMismatchError(
                f"matmul of two DualArrays takes 2-D arrays (M, K) @ (K, N), got shapes {self.shape} and {other.shape}"
            )
        if self.shape[-1] != other.shape[-2]:
            raise ShapeMismatchError(
                f"matmul: shapes {self.shape} and {other.shape} do not fit: the last axis of the first "
                "must equal the second-to-last axis of the second"
            )
        drop_bits = _check_drop_bits(drop_bits)
        float_out = None if self.float is None else self.float @ other.float
        int_out = scale = None
        if self.int is not None:
            (m, k), n = self.shape, other.shape[1]
            a3 = self._centered().reshape((m, k, 1))  # broadcast to (M, K, N)
            b3 = other._centered().reshape((1, k, n))
            int_out = np.sum(_encrypted_products(a3, b3, drop_bits), axis=1)  # (M, N)
            scale = self.scale * other.scale * 2**drop_bits
        return self._new(float_out, int_out, scale=scale, zero_point=0)

    def __matmul__(self, other: DualArray) -> DualArray:
        """``self.matmul(other)``: the exact product of two DualArrays."""
        return self.matmul(other)

    def multiply(self, other: DualArray, *, drop_bits: int = 0) -> DualArray:
        """Elementwise product of two DualArrays; ``drop_bits`` as in :meth:`matmul`.

        Two PBS per product in general. One PBS per product when both operands carry
        their squares at the same ``drop_bits`` (see :meth:`with_squares`).
        """
        self._check_same_mode(other, "multiply")
        _check_broadcast(self.shape, other.shape, "multiply")
        drop_bits = _check_drop_bits(drop_bits)
        float_out = None if self.float is None else self.float * other.float
        int_out = scale = None
        shared = self.squares is not None and other.squares is not None
        if shared and not self.squares[0] == other.squares[0] == drop_bits:
            raise ValueError(
                f"multiply: the operands carry squares rounded by {self.squares[0]} and {other.squares[0]} bits, "
                f"but drop_bits is {drop_bits}; call with_squares(drop_bits) on both with the drop_bits of the product"
            )
        if self.int is not None:
            if shared:
                int_out = _shared_square_products(self._centered(), other._centered(), self.squares, other.squares)
                scale = self.scale * other.scale * 2.0 ** (drop_bits - 1)
            else:
                int_out = _encrypted_products(self._centered(), other._centered(), drop_bits)
                scale = self.scale * other.scale * 2**drop_bits
        return self._new(float_out, int_out, scale=scale, zero_point=0)

    def with_squares(self, drop_bits: int = 0) -> DualArray:
        """The same values, carrying their squares, so each later product costs one PBS instead of two.

        ``a * b = ((a + b)**2 - a**2 - b**2) / 2``. Once ``a**2`` and ``b**2`` are known,
        a product needs one lookup, ``(a + b)**2``. This pays off when each element
        meets many others: every row of ``k`` meets every query. The squares cost one
        lookup per element, once; they follow the values through :meth:`take`, slices
        and reshapes. With ``drop_bits = r`` every square is divided by ``2**r`` (rounded)
        in its table, and the products are rounded to ``2**(r - 1)`` times their scale.
        """
        drop_bits = _check_drop_bits(drop_bits)
        offset = self._square_offset(drop_bits)
        squares = None
        if self.int is not None:
            squares = fhe.univariate(_rounded_square(drop_bits))(_minus(self._centered(), offset))
        return self.carrying_squares(drop_bits, squares)

    def carrying_squares(self, drop_bits: int, squares: Any) -> DualArray:
        """The same values carrying ``squares``, already computed by :meth:`with_squares` (no lookup).

        For squares kept from an earlier run, such as a KV cache's (:mod:`course_lib.layer`): ``squares``
        must be the integers ``with_squares(drop_bits)`` computed for these values (``None`` in float mode).
        """
        drop_bits = _check_drop_bits(drop_bits)
        if (squares is None) != (self.int is None) or (squares is not None and tuple(squares.shape) != self.shape):
            raise ShapeMismatchError(
                f"carrying_squares: expected integer squares of shape {self.shape} (None without integers), "
                f"got {None if squares is None else tuple(squares.shape)}"
            )
        out = self._layout(lambda a: a)
        out.squares = (drop_bits, self._square_offset(drop_bits), squares)
        return out

    def _square_offset(self, drop_bits: int) -> int:
        """What :meth:`with_squares` subtracts before squaring: the middle of the quantizer's range.

        Probabilities 0..15 become -8..7, so that ``a + b`` stays one bit narrower. A multiple of
        ``2**(drop_bits - 1)`` keeps the correction terms whole (see :meth:`multiply`).
        """
        if self.params is None:
            return 0
        middle = (self.params.qmin + self.params.qmax) / 2 - self.zero_point
        step = 2 ** max(drop_bits - 1, 0)
        return int(np.floor(middle / step + 0.5)) * step

    def append(self, other: DualArray, axis: int = 0) -> DualArray:
        """``self`` and ``other`` joined along ``axis`` (0: rows, 1: columns) of 2-D arrays (free in FHE: no lookup).

        Both must have the same quantization parameters (e.g. the cached keys of earlier tokens and the
        new token's key); squares they both carry at the same ``drop_bits`` are joined alike. For tracers
        the parts are moved into place by products with clear 0/1 matrices (see :meth:`take`).
        """
        self._check_same_mode(other, "append")
        if axis not in (0, 1) or self.ndim != 2 or other.ndim != 2 or self.shape[1 - axis] != other.shape[1 - axis]:
            raise ShapeMismatchError(
                f"append: joins 2-D arrays along axis 0 or 1 with the other axis equal, got shapes {self.shape} "
                f"and {other.shape} along axis {axis!r}"
            )
        if (self.params, self.scale, self.zero_point) != (other.params, other.scale, other.zero_point):
            raise ValueError("append: both arrays must have the same scale and zero point (come out of one quantizer)")
        n, m = self.shape[axis], other.shape[axis]
        first = np.zeros((n + m, n), dtype=np.int64)
        first[np.arange(n), np.arange(n)] = 1
        second = np.zeros((n + m, m), dtype=np.int64)
        second[n + np.arange(m), np.arange(m)] = 1

        def join(a: Any, b: Any) -> Any:
            if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
                return np.concatenate((a, b), axis=axis)
            if axis == 0:
                return _rows_product(first, a) + _rows_product(second, b)
            return a @ first.T + b @ second.T

        out = self._new(
            None if self.float is None else np.concatenate((self.float, other.float), axis=axis),
            None if self.int is None else join(self.int, other.int),
            params=self.params,
        )
        if self.squares is not None and other.squares is not None:
            if self.squares[:2] != other.squares[:2]:
                raise ValueError("append: the two arrays carry squares rounded differently")
            squares = None if self.int is None else join(self.squares[2], other.squares[2])
            out.squares = (*self.squares[:2], squares)
        return out

    def __mul__(self, other: DualArray | float | int) -> DualArray:
        """Elementwise product; by a real constant it only changes the scale (free in FHE)."""
        if isinstance(other, DualArray):
            return self.multiply(other)
        c = float(other)
        if c <= 0 or not np.isfinite(c):
            raise ValueError(f"multiply by a finite positive constant (it scales the scale), got {other!r}")
        return self._new(
            None if self.float is None else self.float * c,
            self.int,
            scale=None if self.int is None else self.scale * c,
            params=None,
        )

    def _add(self, other: DualArray, sign: int) -> DualArray:
        op = "add" if sign > 0 else "subtract"
        self._check_same_mode(other, op)
        _check_broadcast(self.shape, other.shape, op)
        float_out = None if self.float is None else self.float + sign * other.float
        int_out = None
        if self.int is not None:
            theirs = other._centered()
            if not math.isclose(other.scale, self.scale, rel_tol=1e-12, abs_tol=0):
                # Re-quantize the other operand onto our scale: one table lookup.
                ratio = other.scale / self.scale
                theirs = fhe.univariate(lambda q: np.rint(q * ratio).astype(np.int64))(theirs)
            int_out = self._centered() + theirs if sign > 0 else self._centered() - theirs
        return self._new(float_out, int_out, zero_point=0)

    def shifted(self, offset: int) -> DualArray:
        """The same reals with ``offset`` added to the integers and to the zero point (free in FHE).

        E.g. to make an accumulator non-negative before :meth:`apply` rounds it (see
        :class:`~course_lib.attention.QuantizedHead`'s ``projection_offsets``).
        """
        if not is_integer(offset):
            raise ValueError(f"shift the integers by an integer, got {offset!r}")
        if not offset:
            return self
        return self._new(
            self.float, None if self.int is None else self.int + int(offset), zero_point=self.zero_point + int(offset)
        )

    def __add__(self, other: DualArray) -> DualArray:
        """Sum; operands on different scales are brought onto the first one's scale by a lookup."""
        return self._add(other, +1)

    def __sub__(self, other: DualArray) -> DualArray:
        """Difference; operands on different scales are brought onto the first one's scale by a lookup."""
        return self._add(other, -1)

    # ------------------------------------------------------------------ layout (free in FHE)
    def _layout(self, fn: Callable[[Any], Any]) -> DualArray:
        out = self._new(
            None if self.float is None else fn(self.float),
            None if self.int is None else fn(self.int),
            params=self.params,
        )
        if self.squares is not None:  # the squares move with their values
            drop_bits, offset, squares = self.squares
            out.squares = (drop_bits, offset, None if squares is None else fn(squares))
        return out

    def take(self, indices: Sequence[int]) -> DualArray:
        """Rows ``indices`` of the first axis, in that order, repeats allowed (free in FHE: no lookup).

        The rows are picked by a product with a clear 0/1 matrix, one 1 per row, which FHE
        computes without bootstrapping. (Slices joined by ``np.concatenate`` would do the same,
        but concrete-python 2.10 fails to compile a concatenation of slices when the inputset makes
        some slices signed and others unsigned: "Transforming FHE boolean ops failed".)
        """
        rows = np.asarray(indices)
        n = self.shape[0]
        if (
            rows.ndim != 1
            or rows.size == 0
            or not np.issubdtype(rows.dtype, np.integer)
            or not (0 <= rows.min() and rows.max() < n)
        ):
            raise ShapeMismatchError(
                f"take: indices must be a non-empty list of rows in 0..{n - 1}, got {list(indices)}"
            )

        def pick(a: Any) -> Any:
            if isinstance(a, np.ndarray):
                return a[rows]  # the same rows as the product below, without building the matrix
            selection = np.zeros((rows.size, n), dtype=np.int64)
            selection[np.arange(rows.size), rows] = 1
            return _rows_product(selection, a)

        return self._layout(pick)

    def combine_rows(self, matrix: object) -> DualArray:
        """``matrix @ self`` along the first axis, for a clear integer ``matrix`` (free in FHE: no lookup).

        Each output row is an integer combination of input rows: sums of chosen rows, or rows
        moved into place. The zero point is removed first, so sums mean sums of reals.
        """
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[1] != self.shape[0] or not np.issubdtype(matrix.dtype, np.integer):
            raise ShapeMismatchError(
                f"combine_rows: expected a 2-D integer matrix with {self.shape[0]} columns, got "
                f"{matrix.dtype} of shape {matrix.shape}"
            )
        return self._new(
            None if self.float is None else _rows_product(matrix, self.float),
            None if self.int is None else _rows_product(matrix, self._centered()),
            zero_point=0,
        )

    def transpose(self, axes: Sequence[int] | None = None) -> DualArray:
        """Permute the axes (reverse them by default), as ``np.transpose``."""
        if axes is None:
            axes = tuple(reversed(range(self.ndim)))  # concrete's transpose wants explicit axes
        if sorted(axes) != list(range(self.ndim)):
            raise ShapeMismatchError(f"transpose: axes {tuple(axes)} are not a permutation of 0..{self.ndim - 1}")
        return self._layout(lambda a: np.transpose(a, tuple(axes)))

    def reshape(self, *shape: int) -> DualArray:
        """Same values, new shape (one dimension may be -1)."""
        new_shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], tuple | list) else shape
        try:
            np.empty(self.shape, dtype=np.int8).reshape(new_shape)
        except ValueError:
            raise ShapeMismatchError(
                f"reshape: cannot reshape an array of shape {self.shape} into {new_shape}"
            ) from None
        return self._layout(lambda a: a.reshape(new_shape))

    def __getitem__(self, index: Any) -> DualArray:
        """Slicing and indexing, as NumPy's."""
        try:
            np.empty(self.shape, dtype=np.int8)[index]
        except IndexError as error:
            raise ShapeMismatchError(f"index {index!r} does not fit shape {self.shape}: {error}") from None
        return self._layout(lambda a: a[index])

    def split(self, sections: int, axis: int = -1) -> list[DualArray]:
        """Split into ``sections`` equal parts along ``axis`` (e.g. q, k, v out of c_attn)."""
        size = self.shape[axis]
        if sections < 1 or size % sections:
            raise ShapeMismatchError(f"split: axis {axis} of length {size} cannot be split into {sections} equal parts")
        step = size // sections
        axis = axis % self.ndim
        return [self[(slice(None),) * axis + (slice(i * step, (i + 1) * step),)] for i in range(sections)]

    def expand_dims(self, axis: int) -> DualArray:
        """Insert an axis of length 1 at ``axis``."""
        if not -self.ndim - 1 <= axis <= self.ndim:
            raise ShapeMismatchError(f"expand_dims: axis {axis} is out of range for {self.ndim} dimensions")
        return self._layout(lambda a: np.expand_dims(a, axis))

    # ------------------------------------------------------------------ masks (clear 0/1 arrays, free in FHE)
    def _check_keep(self, keep: object, op: str) -> np.ndarray:
        keep = np.asarray(keep)
        if keep.dtype != bool:
            raise ValueError(f"{op}: the mask must be a boolean array (True = keep), got dtype {keep.dtype}")
        _check_broadcast(self.shape, keep.shape, op)
        return keep

    def zero_where_not(self, keep: object) -> DualArray:
        """Real value 0 wherever ``keep`` is False (a clear mask: multiplications by 0 or 1)."""
        keep = self._check_keep(keep, "zero_where_not")
        return self._new(
            None if self.float is None else self.float * keep,
            None if self.int is None else self._centered() * keep.astype(np.int64),
            zero_point=0,
        )

    def lowest_where_not(self, keep: object) -> DualArray:
        """The lowest integer of the representation wherever ``keep`` is False.

        For a causal mask before a max: masked entries can never be the maximum.
        The float side takes the real value of that integer, so the float
        reference stays a valid (shift-invariant) softmax input.
        """
        keep = self._check_keep(keep, "lowest_where_not")
        if self.int is not None and self.params is None:
            raise ValueError("lowest_where_not needs integers fresh from a quantizer (requantize first)")
        float_out = int_out = None
        if self.int is not None:
            low = self.params.qmin
            int_out = (self.int - low) * keep.astype(np.int64) + low
        if self.float is not None:
            fill = self.params.real_range[0] if self.params is not None else np.min(self.float)
            float_out = np.where(keep, self.float, fill)
        return self._new(float_out, int_out, params=self.params)

    # ------------------------------------------------------------------ reductions
    def _check_axis(self, axis: int | None, op: str) -> None:
        if axis is not None and not -self.ndim <= axis < self.ndim:
            raise ShapeMismatchError(f"{op}: axis {axis} is out of range for shape {self.shape}")

    def sum(self, axis: int | None = None, keepdims: bool = False) -> DualArray:
        """Sum along ``axis`` (no bootstrapping; the integers grow by log2(length) bits)."""
        self._check_axis(axis, "sum")
        return self._new(
            None if self.float is None else np.sum(self.float, axis=axis, keepdims=keepdims),
            None if self.int is None else np.sum(self._centered(), axis=axis, keepdims=keepdims),
            zero_point=0,
        )

    def max(self, axis: int = -1, keepdims: bool = False) -> DualArray:
        """Maximum along ``axis``, as a chain of pairwise maxima: one lookup per step.

        ``max(a, b) = a + relu(b - a)``: the difference ``b - a`` goes through a
        table (``relu``), the additions are free. A row of ``n`` values costs
        ``n - 1`` lookups, each on integers one bit wider than the values. The
        scale is positive, so the integers' maximum is the reals' maximum.
        """
        if not is_integer(axis):
            raise ShapeMismatchError(f"max: axis must be an integer (one axis), got {axis!r}")
        self._check_axis(axis, "max")
        axis %= self.ndim
        int_out = None
        if self.int is not None:

            def column(j: int) -> Any:
                return self.int[(slice(None),) * axis + (slice(j, j + 1),)]

            int_out = column(0)
            for j in range(1, self.shape[axis]):
                int_out = int_out + fhe.univariate(_relu)(column(j) - int_out)
            if not keepdims:
                int_out = int_out.reshape(self.shape[:axis] + self.shape[axis + 1 :])
        return self._new(
            None if self.float is None else np.max(self.float, axis=axis, keepdims=keepdims),
            int_out,
            params=self.params,
        )

    # ------------------------------------------------------------------ table lookups (PBS)
    def maximum(self, other: DualArray) -> DualArray:
        """Elementwise maximum of two DualArrays on the same scale: one lookup per element.

        ``max(a, b) = a + relu(b - a)``, as in :meth:`max`.
        """
        self._check_same_mode(other, "maximum")
        _check_broadcast(self.shape, other.shape, "maximum")
        if self.int is not None and (
            not math.isclose(other.scale, self.scale, rel_tol=1e-12, abs_tol=0) or other.zero_point != self.zero_point
        ):
            raise ValueError("maximum: both arrays must have the same scale and zero point (compare like with like)")
        int_out = None if self.int is None else self.int + fhe.univariate(_relu)(other.int - self.int)
        return self._new(
            None if self.float is None else np.maximum(self.float, other.float),
            int_out,
            params=self.params if self.params == other.params else None,
        )

    def apply_at_scale(self, fn: FloatFn, scale: float) -> DualArray:
        """Any function as one lookup whose output integers have a given ``scale`` (zero point 0).

        ``int_out = rint(fn(real input) / scale)``, unclipped: the output can then be added to
        (or subtracted from) integers of that scale for free, with no lookup to bring it there.
        """
        if self.int is not None and not (isinstance(scale, float | int) and scale > 0):
            raise ValueError(f"apply_at_scale: scale must be a number > 0, got {scale!r}")
        float_out = None if self.float is None else fn(self.float)
        int_out = None
        if self.int is not None:
            in_scale, in_zero_point = self.scale, self.zero_point

            def table(q: np.ndarray) -> np.ndarray:
                return np.rint(fn(in_scale * (np.asarray(q, dtype=np.float64) - in_zero_point)) / scale).astype(
                    np.int64
                )

            int_out = fhe.univariate(table)(self.int)
        return self._new(float_out, int_out, scale=scale if self.int is not None else None, zero_point=0)

    def apply(self, fn: FloatFn, quantizer: Quantizer, *, round_lsbs: int = 0, exact: bool = True) -> DualArray:
        """Any univariate function as one table lookup, its output quantized by ``quantizer``.

        Args:
            fn: a vectorised float function (``np.exp``, ``lambda x: 1 / x``, ...).
            quantizer: the output's quantizer. In calibration mode it observes
                ``fn(float side)``; otherwise it must be frozen.
            round_lsbs: drop this many low bits of the input integers first
                (``fhe.round_bit_pattern``, to the nearest multiple of ``2**round_lsbs``),
                so the lookup table is smaller and cheaper.
            exact: how FHE rounds those bits. True: exactly, which costs one extra PBS per
                dropped bit and element. False: concrete's approximate rounding, no extra PBS,
                but on ciphertexts (and in concrete's simulation) a value close to halfway
                between two multiples may round to the other one, at random. NumPy integers
                are always rounded exactly.
        """
        float_out = None if self.float is None else fn(self.float)
        if self.calibrating:
            quantizer.observe(float_out)
            return self._new(float_out, None)
        out = quantizer.params  # raises NotCalibratedError if never calibrated
        q = self.int
        if round_lsbs:
            if not isinstance(round_lsbs, int) or round_lsbs < 0:
                raise ValueError(f"round_lsbs must be a non-negative integer, got {round_lsbs!r}")
            exactness = fhe.Exactness.EXACT if exact else fhe.Exactness.APPROXIMATE
            q = fhe.round_bit_pattern(q, lsbs_to_remove=round_lsbs, exactness=exactness)
        int_out = fhe.univariate(_lookup_table_fn(fn, self.scale, self.zero_point, out))(q)
        return self._new(float_out, int_out, scale=out.scale, zero_point=out.zero_point, params=out)

    def rounded(self, lsbs: int, *, exact: bool = True) -> DualArray:
        """The same reals on a scale ``2**lsbs`` times coarser: the integers rounded to the nearest multiple of
        ``2**lsbs`` (``fhe.round_bit_pattern``), then divided by it, the zero point removed (one lookup).

        Rounding a sum once, rather than each of its terms, keeps its error within half a step. In FHE:
        ``lsbs`` PBS per element for the exact rounding (none with ``exact=False``, which may round a
        value near halfway either way), then the lookup, which reads ``lsbs`` bits fewer than the input.
        The zero point must be a multiple of ``2**lsbs``. Concrete-python 2.10 rounds signed integers
        wrongly when it widens them: shift them to non-negative first (:meth:`shifted`).
        """
        lsbs = check_integer(lsbs, "lsbs", 0, 62)
        if not lsbs:
            return self
        unit = 2**lsbs
        if self.zero_point % unit:
            raise ValueError(f"rounded: the zero point ({self.zero_point}) must be a multiple of 2**lsbs = {unit}")
        int_out = None
        if self.int is not None:
            exactness = fhe.Exactness.EXACT if exact else fhe.Exactness.APPROXIMATE
            q = fhe.round_bit_pattern(self.int, lsbs_to_remove=lsbs, exactness=exactness)
            zero_point = self.zero_point

            def table(v: np.ndarray) -> np.ndarray:
                return np.floor_divide(np.asarray(v, dtype=np.int64) - zero_point, unit)

            int_out = fhe.univariate(table)(q)
        return self._new(self.float, int_out, scale=None if self.int is None else self.scale * unit, zero_point=0)

    def apply_digits(self, fn: FloatFn, quantizer: Quantizer, digits: int) -> list[DualArray]:
        """``fn`` quantized by ``quantizer`` as :meth:`apply` does, its integers delivered as ``digits`` digits of
        ``n_bits / digits`` bits each, most significant first: one lookup per digit, each reading this array.

        With ``b`` bits a digit, the integer ``q = sum_i digit_i 2**(b (digits - 1 - i))``: digit ``i`` is a
        DualArray of scale ``quantizer scale * 2**(b (digits - 1 - i))``, the last one carrying the quantizer's
        zero point (the others 0), so the sum of the digits' reals is ``fn`` at the whole quantizer's precision.
        Every later step pays for ``b``-bit integers, not for ``n_bits`` (a product with a digit reads ``b + 1``
        bits or so), and there are ``digits`` of them. The float side rides on the first digit (``fn``'s
        values); the others carry 0, so sums of the digits' floats are the float computation. The quantizer's
        bits must be a multiple of ``digits``.
        """
        digits = check_integer(digits, "digits", 1, 8)
        float_out = None if self.float is None else fn(self.float)
        if self.calibrating:
            quantizer.observe(float_out)
            return [self._new(float_out, None)] + [self._new(np.zeros_like(float_out), None)] * (digits - 1)
        out = quantizer.params
        if out.n_bits % digits:
            raise ValueError(
                f"apply_digits: the quantizer's integers split into {digits} digits if its n_bits ({out.n_bits}) is a "
                f"multiple of {digits}"
            )
        bits = out.n_bits // digits
        whole = _lookup_table_fn(fn, self.scale, self.zero_point, out)
        parts = []
        for i in range(digits):
            shift = bits * (digits - 1 - i)
            zero_point = out.zero_point if i == digits - 1 else 0
            params = QuantParams(bits, out.scale * 2**shift, zero_point, signed=False)

            def table(q: np.ndarray, shift: int = shift) -> np.ndarray:
                return (whole(q) >> shift) & (2**bits - 1)

            float_part = None if float_out is None else (float_out if i == 0 else np.zeros_like(float_out))
            int_part = fhe.univariate(table)(self.int)
            parts.append(self._new(float_part, int_part, scale=params.scale, zero_point=zero_point, params=params))
        return parts

    def times(self, factor: int) -> DualArray:
        """The same reals with the integers multiplied by a clear positive integer ``factor`` and the scale divided
        by it (free in FHE): e.g. to bring a digit's products onto the scale of the next digit's, so they add."""
        factor = check_integer(factor, "factor")
        return self._new(
            self.float,
            None if self.int is None else self.int * factor,
            scale=None if self.int is None else self.scale / factor,
            zero_point=self.zero_point * factor,
        )

    def requantize(self, quantizer: Quantizer, *, round_lsbs: int = 0, exact: bool = True) -> DualArray:
        """Bring the integers to ``quantizer``'s parameters (one lookup): shrinks an accumulator.

        ``round_lsbs`` and ``exact`` as in :meth:`apply`."""
        return self.apply(_identity, quantizer, round_lsbs=round_lsbs, exact=exact)

    def exp(self, quantizer: Quantizer, *, round_lsbs: int = 0) -> DualArray:
        """``exp`` as a table lookup."""
        return self.apply(np.exp, quantizer, round_lsbs=round_lsbs)

    def reciprocal(self, quantizer: Quantizer, *, round_lsbs: int = 0) -> DualArray:
        """``1 / x`` as a table lookup (entries where x = 0 saturate)."""
        return self.apply(_reciprocal, quantizer, round_lsbs=round_lsbs)


def centering_offset(low: int, high: int, unit: int) -> int:
    """What to add to an accumulator before it is rounded to a multiple of ``unit`` (see :meth:`DualArray.shifted`).

    A multiple of ``unit`` that moves ``[low, high]`` into the middle of ``[0, 2**b - 1]``, the non-negative
    integers of the fewest bits ``b`` that hold it with at least half its span (and one ``unit``) of room, for
    new data outside the calibration's range: about as wide as the signed integers of ``[low, high]``.
    concrete-python 2.10's ``round_bit_pattern`` rounds non-negative integers right and some signed ones
    wrong (see :class:`~course_lib.attention.QuantizedHead`'s ``projection_offsets``)."""
    span = high - low
    top = 2 ** (span + span // 2 + unit).bit_length() - 1
    offset = ((top - span) // 2 - low) // unit * unit
    return offset if low + offset >= 0 else offset + unit


def _check_drop_bits(drop_bits: int) -> int:
    return check_integer(drop_bits, "drop_bits", 0, 32)


def _encrypted_products(a: Any, b: Any, drop_bits: int) -> Any:
    """``a * b / 2**drop_bits`` elementwise (broadcast) for two encrypted arrays, two lookups per product.

    ``a * b = (a + b)**2 / 4 - (a - b)**2 / 4``, and with integers
    ``floor(((a + b)**2 + 2) / 4) - floor(((a - b)**2 + 2) / 4)`` is exactly ``a * b``
    (``a + b`` and ``a - b`` have the same parity). Each square is one table lookup.
    With ``drop_bits = r > 0`` the tables divide by ``4 * 2**r`` (rounded), so each
    product is ``a * b / 2**r`` within one unit.

    Each product is formed on its own before any sum, so every intermediate value is
    one the compiler sees in the inputset and sizes correctly. (concrete's own
    encrypted matmul adds the squares up before subtracting and sizes that hidden sum
    from the final result's range: it can wrap around.)
    """
    quarter_square = _rounded_square(2 + drop_bits)
    return fhe.univariate(quarter_square)(a + b) - fhe.univariate(quarter_square)(a - b)


def _shared_square_products(a: Any, b: Any, a_squares: tuple, b_squares: tuple) -> Any:
    """``2 * a * b / 2**r`` elementwise (broadcast), one lookup per product (``r``: the squares' drop_bits).

    With ``a = a' + c`` and ``b = b' + e`` (``c``, ``e``: the offsets of :meth:`DualArray.with_squares`)::

        2ab = (a' + b')**2 - a'**2 - b'**2 + 2e a' + 2c b' + 2ce

    ``a'**2`` and ``b'**2`` were looked up beforehand; ``(a' + b')**2`` is the one lookup
    here; the last three terms are clear multiples of encrypted values (free). Exact when
    ``r`` is 0; otherwise each square is rounded, and the product is within 1.5 units.
    """
    drop_bits, c, a_sq = a_squares
    _, e, b_sq = b_squares
    a_shifted, b_shifted = _minus(a, c), _minus(b, e)
    out = fhe.univariate(_rounded_square(drop_bits))(a_shifted + b_shifted) - a_sq - b_sq
    # 2 * offset / 2**r is whole: factor / unit is 2 when r = 0, 1 / 2**(r - 1) otherwise.
    factor, unit = (2, 1) if drop_bits == 0 else (1, 2 ** (drop_bits - 1))
    if e:
        out = out + (factor * e // unit) * a_shifted
    if c:
        out = out + (factor * c // unit) * b_shifted
    if c and e:
        out = out + factor * c * e // unit
    return out


def _minus(a: Any, offset: int) -> Any:
    return a - offset if offset else a


def _rows_product(matrix: np.ndarray, a: Any) -> Any:
    """``matrix @ a`` along ``a``'s first axis, for 1-D or 2-D ``a`` (NumPy or concrete tracers)."""
    if isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.integer):
        # NumPy has no fast integer matmul; float64 is exact for these small integers (far below 2**53).
        return np.rint(matrix.astype(np.float64) @ a.astype(np.float64)).astype(np.int64)
    if len(a.shape) == 1:
        return (matrix @ a.reshape((a.shape[0], 1))).reshape((matrix.shape[0],))
    return matrix @ a


def side_by_side(blocks: Sequence[Any], width: int) -> Any:
    """Blocks ``(T, width)`` side by side, ``(T, len(blocks) * width)`` (free in FHE: no lookup).

    For tracers each block is moved into place by a product with a clear 0/1 matrix and the results are
    added: this avoids ``np.concatenate`` of encrypted values, which concrete-python 2.10 can fail to
    compile (see :meth:`DualArray.take`).
    """
    if all(isinstance(b, np.ndarray) for b in blocks):
        return np.concatenate(blocks, axis=1)
    if len(blocks) == 1:
        return blocks[0]
    total, joined = len(blocks) * width, None
    for h, block in enumerate(blocks):
        placement = np.zeros((width, total), dtype=np.int64)
        placement[np.arange(width), h * width + np.arange(width)] = 1
        placed = block @ placement
        joined = placed if joined is None else joined + placed
    return joined


def _rounded_square(shift: int) -> Callable[[np.ndarray], np.ndarray]:
    """The table ``x -> round(x**2 / 2**shift)`` (exact squares when ``shift`` is 0)."""
    if shift == 0:
        return np.square

    def rounded_square(x: np.ndarray) -> np.ndarray:
        return np.right_shift(x * x + (1 << (shift - 1)), shift)

    return rounded_square


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


def _reciprocal(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return 1.0 / x


def _check_broadcast(a: tuple[int, ...], b: tuple[int, ...], op: str) -> None:
    try:
        np.broadcast_shapes(a, b)
    except ValueError:
        raise ShapeMismatchError(f"{op}: shapes {a} and {b} cannot be broadcast together") from None
