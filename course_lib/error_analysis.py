"""How large are quantization errors? Measurements and bounds (NumPy only).

Two questions of notebook 01, each with a measurement and the formula that
predicts it:

1. **Round trip.** Quantize, then dequantize: how far are we from the floats?
   Inside the calibrated range at most half a step, ``scale / 2``; with
   ``n_bits`` bits over a range of width ``R`` the step is ``R / (2**n_bits - 1)``,
   so every extra bit halves the error (:func:`round_trip_error`).

2. **Integer matmul.** ``x @ w`` with ``x ~ sx * (qx - zx)`` and ``w ~ sw * qw``
   is computed exactly on integers, ``sx * sw * ((qx - zx) @ qw)``: all the error
   comes from rounding the inputs. Write ``ex = x - x_hat`` and ``ew = w - w_hat``
   (``|ex| <= sx/2``, ``|ew| <= sw/2``). One product is off by::

       x*w - x_hat*w_hat = x*ew + w*ex - ex*ew
       |...| <= |x|*sw/2 + |w|*sx/2 + sx*sw/4

   and an output sums ``K`` such products (``K`` the inner dimension):

   - **worst case** (every error with the same sign): ``K`` times the bound of one
     product, see :func:`matmul_error_bound`;
   - **typical** (rounding errors behave like independent, zero-mean noise, uniform
     on ``[-s/2, s/2]``, variance ``s**2 / 12``): the variances add, so the standard
     deviation grows like ``sqrt(K)``, see :func:`matmul_error_typical`.

   :func:`measure_matmul_error` measures both on random data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .quantization import QuantParams, check_float_data, compute_params


# ---------------------------------------------------------------------- round trip
@dataclass(frozen=True)
class RoundTripError:
    """Round-trip error of one quantization of some data.

    Attributes:
        n_bits: bits of the integers.
        scale: the quantization step.
        max_error: largest ``|dequantize(quantize(x)) - x|``.
        rms_error: root mean square of the same differences.
    """

    n_bits: int
    scale: float
    max_error: float
    rms_error: float

    @property
    def bound(self) -> float:
        """The guaranteed worst case inside the calibrated range: half a step."""
        return self.scale / 2


def round_trip_error(x: object, params: QuantParams) -> RoundTripError:
    """Quantize ``x`` with ``params``, dequantize, and measure the difference with ``x``."""
    values = check_float_data(x, "the data")
    diff = params.dequantize(params.quantize(values)) - values
    return RoundTripError(
        n_bits=params.n_bits,
        scale=params.scale,
        max_error=float(np.max(np.abs(diff))),
        rms_error=float(np.sqrt(np.mean(diff**2))),
    )


def round_trip_errors(
    x: object, n_bits: Iterable[int] = range(2, 11), *, symmetric: bool = False, signed: bool | None = None
) -> list[RoundTripError]:
    """Round-trip error of ``x`` for each ``n_bits``, each time calibrated on ``x`` itself (min/max).

    Args:
        x: the data (any shape).
        n_bits: the bit widths to try.
        symmetric, signed: as in :func:`course_lib.quantization.compute_params`.
    """
    values = check_float_data(x, "the data")
    low, high = float(values.min()), float(values.max())
    return [
        round_trip_error(values, compute_params(low, high, bits, symmetric=symmetric, signed=signed)) for bits in n_bits
    ]


def smallest_n_bits(x: object, tolerance: float, n_bits: Iterable[int] = range(2, 17)) -> int:
    """The fewest bits whose affine min/max quantization of ``x`` round-trips within ``tolerance``.

    Raises:
        ValueError: if no bit width in ``n_bits`` is precise enough.
    """
    if not tolerance > 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance!r}")
    for result in round_trip_errors(x, n_bits):
        if result.max_error <= tolerance:
            return result.n_bits
    raise ValueError(f"no bit width in the range tried reaches a round-trip error <= {tolerance}")


# ---------------------------------------------------------------------- integer matmul
def matmul_error_bound(
    k: int | np.ndarray, x_scale: float, w_scale: float, x_abs_max: float, w_abs_max: float
) -> float | np.ndarray:
    """Worst-case error of one output of ``x @ w`` computed on quantized inputs.

    ``k * (x_abs_max * w_scale / 2 + w_abs_max * x_scale / 2 + x_scale * w_scale / 4)``,
    valid as long as no input was clipped (each rounding error is at most half a step).

    Args:
        k: the inner dimension (number of products summed per output).
        x_scale, w_scale: the two quantization steps.
        x_abs_max, w_abs_max: the largest ``|x|`` and ``|w|``.
    """
    per_product = x_abs_max * w_scale / 2 + w_abs_max * x_scale / 2 + x_scale * w_scale / 4
    return k * per_product


def matmul_error_typical(
    k: int | np.ndarray, x_scale: float, w_scale: float, x_rms: float, w_rms: float
) -> float | np.ndarray:
    """Typical error (standard deviation) of one output of ``x @ w`` on quantized inputs.

    Models each rounding error as independent uniform noise on ``[-s/2, s/2]`` (variance
    ``s**2 / 12``): one product ``x*ew + w*ex - ex*ew`` has variance
    ``x_rms**2 * w_scale**2 / 12 + w_rms**2 * x_scale**2 / 12 + x_scale**2 * w_scale**2 / 144``,
    and ``k`` independent products add their variances: ``sqrt(k)`` times the product's deviation.

    Args:
        k: the inner dimension.
        x_scale, w_scale: the two quantization steps.
        x_rms, w_rms: root mean squares of ``x`` and ``w``.
    """
    per_product = np.sqrt(x_rms**2 * w_scale**2 / 12 + w_rms**2 * x_scale**2 / 12 + x_scale**2 * w_scale**2 / 144)
    return np.sqrt(k) * per_product


def signed_bits(values: np.ndarray) -> int:
    """Bits a signed integer needs to hold every value of ``values`` (sign bit included)."""
    low, high = int(np.min(values)), int(np.max(values))
    magnitude = max(high, -low - 1, 0)
    return int(magnitude).bit_length() + 1


@dataclass(frozen=True)
class MatmulError:
    """Errors of integer matmuls against the float ones, for several inner dimensions.

    All arrays have one entry per inner dimension.

    Attributes:
        inner_dims: the inner dimensions ``K``.
        max_error: largest output error over all outputs.
        rms_error: root mean square output error.
        bound: the worst-case bound (:func:`matmul_error_bound`) with the measured scales and maxima.
        typical: the typical error (:func:`matmul_error_typical`) with the measured scales and rms.
        accumulator_bits: bits of the largest integer accumulator ``(qx - zx) @ qw`` (signed).
        output_rms: root mean square of the float outputs ``x @ w`` (to read the errors relatively).
        n_bits_x, n_bits_w: bits of the quantized inputs and weights.
    """

    inner_dims: np.ndarray
    max_error: np.ndarray
    rms_error: np.ndarray
    bound: np.ndarray
    typical: np.ndarray
    accumulator_bits: np.ndarray
    output_rms: np.ndarray
    n_bits_x: int
    n_bits_w: int


def quantized_matmul(
    x: np.ndarray, w: np.ndarray, x_params: QuantParams, w_params: QuantParams
) -> tuple[np.ndarray, np.ndarray]:
    """``x @ w`` the way an FHE circuit computes it: on integers, then one final rescale.

    Returns:
        ``(y_hat, acc)``: the dequantized result ``x_scale * w_scale * acc`` and the integer
        accumulator ``acc = (qx - x_zero_point) @ (qw - w_zero_point)``.
    """
    qx = x_params.quantize(x) - x_params.zero_point
    qw = w_params.quantize(w) - w_params.zero_point
    acc = qx @ qw
    return x_params.scale * w_params.scale * acc.astype(np.float64), acc


def measure_matmul_error(
    inner_dims: Sequence[int] = (4, 16, 64, 256, 1024, 4096),
    *,
    n_bits_x: int = 4,
    n_bits_w: int = 4,
    rows: int = 32,
    cols: int = 32,
    seed: int = 0,
) -> MatmulError:
    """Measure the error of ``x @ w`` on quantized inputs for each inner dimension ``K``.

    For each ``K``: ``x`` of shape ``(rows, K)`` and ``w`` of shape ``(K, cols)`` are drawn
    uniformly from ``[-1, 1]``; ``x`` is quantized affine (unsigned, like an activation) and
    ``w`` symmetric (like weights), both calibrated on their own min/max, so nothing is clipped
    and the bound must hold.

    Args:
        inner_dims: the values of ``K``.
        n_bits_x, n_bits_w: bits of the inputs and of the weights.
        rows, cols: the other two dimensions (``rows * cols`` outputs per ``K``).
        seed: seed of the random data.
    """
    rng = np.random.default_rng(seed)
    fields: dict[str, list[float]] = {name: [] for name in ("max", "rms", "bound", "typical", "bits", "out")}
    for k in inner_dims:
        x = rng.uniform(-1.0, 1.0, size=(rows, int(k)))
        w = rng.uniform(-1.0, 1.0, size=(int(k), cols))
        px = compute_params(float(x.min()), float(x.max()), n_bits_x)
        pw = compute_params(float(w.min()), float(w.max()), n_bits_w, symmetric=True)
        y_hat, acc = quantized_matmul(x, w, px, pw)
        y = x @ w
        err = y_hat - y
        fields["out"].append(float(np.sqrt(np.mean(y**2))))
        fields["max"].append(float(np.max(np.abs(err))))
        fields["rms"].append(float(np.sqrt(np.mean(err**2))))
        fields["bound"].append(
            float(matmul_error_bound(int(k), px.scale, pw.scale, float(np.abs(x).max()), float(np.abs(w).max())))
        )
        fields["typical"].append(
            float(
                matmul_error_typical(
                    int(k), px.scale, pw.scale, float(np.sqrt(np.mean(x**2))), float(np.sqrt(np.mean(w**2)))
                )
            )
        )
        fields["bits"].append(signed_bits(acc))
    return MatmulError(
        inner_dims=np.asarray(inner_dims, dtype=np.int64),
        max_error=np.asarray(fields["max"]),
        rms_error=np.asarray(fields["rms"]),
        bound=np.asarray(fields["bound"]),
        typical=np.asarray(fields["typical"]),
        accumulator_bits=np.asarray(fields["bits"], dtype=np.int64),
        output_rms=np.asarray(fields["out"]),
        n_bits_x=n_bits_x,
        n_bits_w=n_bits_w,
    )
