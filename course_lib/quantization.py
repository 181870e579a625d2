"""Uniform integer quantization: floats in, small integers out, and back.

An FHE circuit computes on integers only. Uniform quantization maps a real
number ``x`` to an integer ``q`` with two parameters, a *scale* (the real value
of one integer step) and a *zero point* (the integer that stands for real 0)::

    q = clip(round(x / scale) + zero_point, qmin, qmax)          # quantize
    x ~ scale * (q - zero_point)                                 # dequantize

With ``n_bits`` bits the integers span ``2**n_bits`` values: ``0 .. 2**n_bits - 1``
(unsigned) or ``-2**(n_bits-1) .. 2**(n_bits-1) - 1`` (signed). Inside the
calibrated range the round trip is off by at most ``scale / 2``.

Two flavours, with the same formulas as concrete-ml's ``UniformQuantizer`` so the
two agree integer for integer (a test checks it; the one exception is a calibration
range reduced to a single value, where both represent that value exactly):

- **affine** (``symmetric=False``): the range ``[rmin, rmax]`` seen in
  calibration is mapped onto all ``2**n_bits`` integers; ``zero_point`` shifts it.
- **symmetric** (``symmetric=True``, always signed): ``zero_point = 0`` and
  ``scale = max(|rmin|, |rmax|) / (2**(n_bits-1) - 1)``. Cheaper to multiply
  (no zero point to subtract), one value of the range unused.

Parameters are a frozen :class:`QuantParams`. A :class:`Quantizer` *observes*
calibration data, then is *frozen* into its QuantParams; from then on it only
quantizes and never silently recalibrates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_integer

MIN_BITS = 2
MAX_BITS = 16
#: Ranges narrower than this are treated as a single value (as concrete-ml does).
DEGENERATE_RANGE = 1e-6


def check_n_bits(n_bits: object) -> int:
    """Return ``n_bits`` as an int, or raise a ValueError saying what is allowed."""
    return check_integer(n_bits, "n_bits", MIN_BITS, MAX_BITS)


def check_float_data(values: object, what: str = "calibration data") -> np.ndarray:
    """Return ``values`` as a float64 array, or raise if it is not real numbers (complex, text, objects), is
    empty, or holds NaN or infinity."""
    raw = np.asarray(values)
    if raw.dtype.kind not in "biuf":  # bool, signed and unsigned integers, floats
        raise TypeError(
            f"{what} must be real numbers (floats, integers or booleans), got an array of dtype {raw.dtype}"
            + (": take .real or abs() first if that is what you mean" if raw.dtype.kind == "c" else "")
        )
    array = raw.astype(np.float64)
    if array.size == 0:
        raise ValueError(f"{what} is empty: give at least one value")
    if not np.all(np.isfinite(array)):
        n_bad = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise ValueError(f"{what} holds {n_bad} NaN or infinite value(s): only finite numbers can be quantized")
    return array


def check_clip_percentile(value: object, name: str = "clip_percentile") -> float | None:
    """Return a clipping percentile as a float (None stays None), or raise a ValueError unless it is a number
    above 50 and at most 100."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 50 < value <= 100:
        raise ValueError(f"{name} must be a number above 50 and at most 100 (or None), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class QuantParams:
    """The parameters of one uniform quantization: ``x ~ scale * (q - zero_point)``.

    Attributes:
        n_bits: bits of the integers, 2 to 16.
        scale: real value of one integer step (> 0).
        zero_point: the integer that stands for real 0 (may lie outside ``qmin..qmax``
            when the calibrated range does not contain 0).
        signed: integers in ``-2**(n_bits-1) .. 2**(n_bits-1)-1`` if True, else ``0 .. 2**n_bits-1``.
    """

    n_bits: int
    scale: float
    zero_point: int
    signed: bool

    def __post_init__(self) -> None:
        check_n_bits(self.n_bits)
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale!r}")

    @property
    def qmin(self) -> int:
        """Smallest integer of the representation."""
        return -(2 ** (self.n_bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        """Largest integer of the representation."""
        return 2 ** (self.n_bits - 1) - 1 if self.signed else 2**self.n_bits - 1

    @property
    def real_range(self) -> tuple[float, float]:
        """The reals that ``qmin`` and ``qmax`` stand for."""
        return self.dequantize(self.qmin).item(), self.dequantize(self.qmax).item()

    def quantize(self, values: object) -> np.ndarray:
        """Floats to int64 integers, rounded to nearest (half to even) and clipped to ``qmin..qmax``."""
        array = check_float_data(values, "values to quantize")
        q = np.rint(array / self.scale + self.zero_point)
        return np.clip(q, self.qmin, self.qmax).astype(np.int64)

    def dequantize(self, q: object) -> np.ndarray:
        """Integers back to floats: ``scale * (q - zero_point)``."""
        return self.scale * (np.asarray(q, dtype=np.float64) - self.zero_point)

    def __str__(self) -> str:
        low, high = self.real_range
        kind = "signed" if self.signed else "unsigned"
        return (
            f"{self.n_bits}-bit {kind}: scale={self.scale:.6g}, zero_point={self.zero_point}, "
            f"integers {self.qmin}..{self.qmax} <-> reals {low:.4g}..{high:.4g}"
        )


def compute_params(
    rmin: float, rmax: float, n_bits: int, *, symmetric: bool = False, signed: bool | None = None
) -> QuantParams:
    """Quantization parameters for the real range ``[rmin, rmax]``.

    Args:
        rmin, rmax: the calibrated range (``rmin <= rmax``).
        n_bits: 2 to 16.
        symmetric: zero point 0 and a range symmetric around 0 (implies signed).
        signed: signed integers; defaults to ``symmetric``. Symmetric unsigned is refused.
    """
    n_bits = check_n_bits(n_bits)
    rmin, rmax = (float(v) for v in check_float_data([rmin, rmax], "the range [rmin, rmax]"))
    if rmin > rmax:
        raise ValueError(f"rmin must be <= rmax, got rmin={rmin} > rmax={rmax}")
    signed = symmetric if signed is None else bool(signed)
    if symmetric and not signed:
        raise ValueError("symmetric quantization is signed: use signed=True (or leave it unset)")
    offset = 2 ** (n_bits - 1) if signed else 0
    levels = 2**n_bits - 1

    if rmax - rmin < DEGENERATE_RANGE:
        # A single value v: as concrete-ml, switch to unsigned integers and make v exactly
        # representable, by integer 0 when v is 0 and by integer 1 otherwise (concrete-ml gets
        # there with a negative scale when v < 0; here the scale stays positive, zero point 2).
        if abs(rmax) < DEGENERATE_RANGE:
            return QuantParams(n_bits, 1.0, int(np.rint(-rmin)), False)
        return QuantParams(n_bits, abs(rmax), 0 if rmax > 0 else 2, False)
    if symmetric:
        return QuantParams(n_bits, max(abs(rmin), abs(rmax)) / (levels - offset), 0, signed)
    scale = (rmax - rmin) / levels
    zero_point = int(np.round((rmax * (-offset) - rmin * (levels - offset)) / (rmax - rmin)))
    return QuantParams(n_bits, scale, zero_point, signed)


class NotCalibratedError(RuntimeError):
    """A quantizer was used for integers before it was calibrated and frozen."""


class FrozenQuantizerError(RuntimeError):
    """A frozen quantizer was asked to observe more calibration data."""


class Quantizer:
    """Calibrate on float data, freeze, then quantize: the two phases are explicit.

    >>> q = Quantizer(4, name="x")
    >>> q.observe([-1.0, 0.5]); q.observe([2.0])   # calibration: widen the range
    >>> params = q.freeze()                        # inference from here on
    >>> q.quantize([0.0, 2.0]).tolist()
    [5, 15]

    Args:
        n_bits: bits of the integers, 2 to 16.
        symmetric: symmetric (zero point 0) instead of affine.
        signed: signed integers (defaults to ``symmetric``).
        name: a label used in messages and printouts.
        clip_percentile: if set (above 50, at most 100), :meth:`freeze` calibrates on the range from the
            ``(100 - clip_percentile)``-th to the ``clip_percentile``-th percentile of every value observed,
            instead of min to max: the rare values beyond saturate, the others get finer steps. The quantizer
            then keeps the observed values until it freezes.
    """

    def __init__(
        self,
        n_bits: int,
        *,
        symmetric: bool = False,
        signed: bool | None = None,
        name: str = "",
        clip_percentile: float | None = None,
    ) -> None:
        self.clip_percentile = check_clip_percentile(clip_percentile)
        self._observed: list[np.ndarray] = []
        self.n_bits = check_n_bits(n_bits)
        self.symmetric = symmetric
        self.signed = symmetric if signed is None else bool(signed)
        if symmetric and not self.signed:
            raise ValueError("symmetric quantization is signed: use signed=True (or leave it unset)")
        self.name = name
        self.rmin: float | None = None
        self.rmax: float | None = None
        self._params: QuantParams | None = None

    @property
    def is_frozen(self) -> bool:
        """True once :meth:`freeze` has fixed the parameters."""
        return self._params is not None

    def _label(self) -> str:
        return f"quantizer {self.name!r}" if self.name else "this quantizer"

    def observe(self, values: object) -> None:
        """Widen the calibrated range to include ``values`` (calibration phase only)."""
        if self.is_frozen:
            raise FrozenQuantizerError(
                f"{self._label()} is frozen ({self._params}); inference never recalibrates. "
                "Call reset() first to calibrate again."
            )
        array = check_float_data(values, f"calibration data for {self._label()}")
        if self.clip_percentile is not None:
            self._observed.append(array.ravel())
        low, high = float(array.min()), float(array.max())
        self.rmin = low if self.rmin is None else min(self.rmin, low)
        self.rmax = high if self.rmax is None else max(self.rmax, high)

    def freeze(self) -> QuantParams:
        """End calibration: compute and fix the parameters from the observed range."""
        if self.is_frozen:
            return self._params  # type: ignore[return-value]
        if self.rmin is None or self.rmax is None:
            raise NotCalibratedError(f"{self._label()} has observed no calibration data: call observe() first")
        low, high = self.rmin, self.rmax
        if self.clip_percentile is not None:
            values = np.concatenate(self._observed)
            low, high = np.percentile(values, [100 - self.clip_percentile, self.clip_percentile])
            self._observed = []
        self._params = compute_params(low, high, self.n_bits, symmetric=self.symmetric, signed=self.signed)
        return self._params

    def calibrate(self, values: object) -> QuantParams:
        """Observe ``values`` and freeze, in one call."""
        self.observe(values)
        return self.freeze()

    def reset(self) -> None:
        """Forget the calibration and unfreeze."""
        self.rmin = self.rmax = None
        self._params = None
        self._observed = []

    @property
    def params(self) -> QuantParams:
        """The frozen parameters; raises :class:`NotCalibratedError` before :meth:`freeze`."""
        if self._params is None:
            state = "has observed data but is not frozen" if self.rmin is not None else "was never calibrated"
            raise NotCalibratedError(f"{self._label()} {state}: call observe(...) on calibration data, then freeze()")
        return self._params

    def quantize(self, values: object) -> np.ndarray:
        """Floats to integers with the frozen parameters."""
        return self.params.quantize(values)

    def dequantize(self, q: object) -> np.ndarray:
        """Integers back to floats with the frozen parameters."""
        return self.params.dequantize(q)

    def __repr__(self) -> str:
        kind = "symmetric" if self.symmetric else "affine"
        state = str(self._params) if self._params else f"calibrating, range {self.rmin}..{self.rmax}"
        return f"Quantizer({self.name or '?'}, {self.n_bits}-bit {kind}; {state})"
