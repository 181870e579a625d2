"""How a head is quantized and built, in one frozen object: :class:`HeadConfig`.

A quantized head has a handful of settings that travel together from a notebook cell to the
compiled circuit: the activations' bits, how far the lookups' inputs are rounded, the head's
construction (its *design*), the clear weights' bits and scales, and how the projection's
accumulators are rounded. :class:`HeadConfig` holds them, checks them once, and is what the swaps
(:mod:`course_lib.gpt2`, :mod:`course_lib.swapped_layer`), the sweeps
(:mod:`course_lib.evaluation`) and the benchmarks take.
:func:`course_lib.fast_attention.build_head` turns one into a head.

The course's settings are named here, once:

- :data:`COURSE`: what notebooks 03 and 04 compile on a laptop (4-bit activations, the fast design,
  lookups rounded to 6 bits);
- :data:`LIGHT`: the same in a memory-capped session such as mybinder.org (3 and 3 bits);
- :data:`FROM_X`: :data:`COURSE` for a circuit that starts from ``x`` (the projection inside it,
  scope ``"projection+attention"``): 6-bit weights whose scales make the accumulators' rounding the
  requantization, rounded approximately (no extra PBS);
- :data:`PUBLISHED`: the published construction, exact products (notebook 02's head).

Change one field with :meth:`HeadConfig.replace`: ``COURSE.replace(n_bits=6)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .checks import check_integer
from .quantization import MAX_BITS, MIN_BITS, check_clip_percentile


def _check_bits(value: object, name: str) -> int:
    return check_integer(value, name, MIN_BITS, MAX_BITS)


#: The constructions of a head's encrypted part (see :mod:`course_lib.fast_attention`): the published
#: one, the fast one, and the fast one with two lookups per product (to measure what one lookup saves).
DESIGNS: tuple[str, ...] = ("published", "fast", "fast-quarter-squares")

#: How the clear weights of the projection are quantized: one scale for the head's q, k and v
#: columns together (``"tensor"``), one for each of them (``"qkv"``), or one for each chosen so that
#: rounding the accumulator *is* the requantization (``"aligned"``, see
#: :meth:`~course_lib.attention.QuantizedHead.calibrate`).
WEIGHT_SCALES: tuple[str, ...] = ("tensor", "qkv", "aligned")


def _check_tensor_bits(value: object) -> tuple[tuple[str, int], ...]:
    """``tensor_bits`` as sorted ``(name, bits)`` pairs, from a dict or pairs; raise if a name or bits is wrong."""
    pairs = value.items() if isinstance(value, dict) else value
    try:
        pairs = [(name, bits) for name, bits in pairs]
    except (TypeError, ValueError):
        raise TypeError(
            f"tensor_bits must be a dict of quantizer names to bits, e.g. {{'input': 6}}, got {value!r}"
        ) from None
    checked = {}
    for name, bits in pairs:
        if not isinstance(name, str) or name in checked:
            raise ValueError(f"tensor_bits: each quantizer is named once, by a string, got {name!r} in {value!r}")
        checked[name] = _check_bits(bits, f"tensor_bits[{name!r}]")
    return tuple(sorted(checked.items()))


#: Where the fast design rounds its sums of products down to ``lookup_bits``: inside each product's
#: square tables (``"products"``: no extra PBS, but the rounding errors of the terms add up in every
#: sum), or once, on the exact sum (``"sum"``: an error of at most half a step, for one PBS per dropped
#: bit and one lookup per score, and the head's output sums left exact for the layer to round; see
#: :class:`~course_lib.fast_attention.FastHead`).
SUM_ROUNDINGS: tuple[str, ...] = ("products", "sum")


@dataclass(frozen=True)
class HeadConfig:
    """The settings of one quantized head (or of every head of a layer), checked when made.

    Every value the object holds is valid: a wrong one raises a ``ValueError`` (or ``TypeError``) that
    says what is allowed. Frozen: change a copy with :meth:`replace`.
    """

    #: Bits of every activation quantizer (2 to 16): what the encrypted integers carry.
    n_bits: int = 4
    #: The widest sum of products a lookup may read, in bits: the product steps drop low bits to fit it
    #: on the calibration data. ``None``: exact products (wide lookups, expensive in FHE).
    lookup_bits: int | None = 6
    #: The construction of the encrypted part: one of :data:`DESIGNS`.
    design: str = "fast"
    #: Bits of the projection's clear weights. ``None``: ``max(n_bits, 8)``. Weights are not encrypted:
    #: their bits cost no PBS, but they set how wide the projection's accumulators are.
    n_bits_weights: int | None = None
    #: How those weights are scaled: one of :data:`WEIGHT_SCALES`.
    weight_scales: str = "tensor"
    #: If set, each of q, k, v's accumulators is rounded to at most this many bits before its lookup.
    #: Must stay ``None`` with ``weight_scales="aligned"``, which fits that rounding itself.
    projection_bits: int | None = None
    #: How FHE rounds the projection's accumulators: exactly (one PBS per dropped bit and value) or
    #: approximately (free, but a value near halfway rounds either way). The clear integers round exactly.
    exact_projection_rounding: bool = True
    #: Where the sums of products are rounded to ``lookup_bits``: one of :data:`SUM_ROUNDINGS`
    #: (``"sum"`` needs a design with one-lookup products, ``"fast"``).
    sum_rounding: str = "products"
    #: Mixed precision: the quantizers that take other bits than ``n_bits``, by name (``{"input": 6}``: x on
    #: 6 bits, everything else on ``n_bits``). Given as a dict, kept as sorted ``(name, bits)`` pairs. The
    #: names are the head's quantizers (:attr:`QuantizedHead.quantizer_names
    #: <course_lib.attention.QuantizedHead.quantizer_names>`), checked when the head is built.
    tensor_bits: tuple[tuple[str, int], ...] = ()
    #: The probabilities' integers as this many digits of ``bits_of("probs") / probs_digits`` bits each, most
    #: significant first (1: one integer). Each digit is one more lookup per probability and one more product
    #: with each value, but every lookup reads a digit's bits, not the probabilities': two 4-bit digits give
    #: 8-bit probabilities at 4-bit widths (see :meth:`DualArray.apply_digits
    #: <course_lib.dual_array.DualArray.apply_digits>`). Needs ``design="fast"``.
    probs_digits: int = 1
    #: Calibrate the input ``x``'s quantizer on a clipped range: the ``(100 - p)``-th to ``p``-th percentile
    #: of the calibration values (e.g. ``99.9``), so that the rare extreme values saturate and every other
    #: value gets finer steps. ``None``: the whole range, min to max.
    input_clip_percentile: float | None = None

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # the one place a frozen instance normalises its own fields
        set_field(self, "n_bits", _check_bits(self.n_bits, "n_bits"))
        set_field(self, "tensor_bits", _check_tensor_bits(self.tensor_bits))
        set_field(
            self, "input_clip_percentile", check_clip_percentile(self.input_clip_percentile, "input_clip_percentile")
        )
        if self.n_bits_weights is not None:
            set_field(self, "n_bits_weights", _check_bits(self.n_bits_weights, "n_bits_weights"))
        for name, what in (("lookup_bits", "the sums of products"), ("projection_bits", "the projection's sums")):
            bits = getattr(self, name)
            if bits is None:
                continue
            bits = _check_bits(bits, name)
            if bits < self.n_bits:
                raise ValueError(
                    f"{name} ({bits}) must be at least n_bits ({self.n_bits}): {what} "
                    f"cannot be narrower than the {self.n_bits}-bit values they are made of"
                )
            set_field(self, name, bits)
        if self.design not in DESIGNS:
            raise ValueError(f"design must be one of {', '.join(map(repr, DESIGNS))}, got {self.design!r}")
        if self.weight_scales not in WEIGHT_SCALES:
            raise ValueError(
                f"weight_scales must be one of {', '.join(map(repr, WEIGHT_SCALES))}, got {self.weight_scales!r}"
            )
        if self.weight_scales == "aligned" and self.projection_bits is not None:
            raise ValueError(
                "weight_scales='aligned' fits the projection's rounding to the q, k, v quantizers itself: "
                "leave projection_bits unset"
            )
        if self.sum_rounding not in SUM_ROUNDINGS:
            raise ValueError(
                f"sum_rounding must be one of {', '.join(map(repr, SUM_ROUNDINGS))}, got {self.sum_rounding!r}"
            )
        if self.sum_rounding == "sum" and self.design != "fast":
            raise ValueError(
                f"sum_rounding='sum' rounds the exact sums of one-lookup products: it needs design='fast', "
                f"got design={self.design!r}"
            )
        set_field(self, "probs_digits", check_integer(self.probs_digits, "probs_digits", 1, 4))
        if self.probs_digits > 1:
            probs_bits = self.bits_of("probs")
            if self.design != "fast" or probs_bits % self.probs_digits or probs_bits // self.probs_digits < MIN_BITS:
                raise ValueError(
                    f"probs_digits={self.probs_digits} splits the probabilities' {probs_bits} bits into digits of at "
                    f"least {MIN_BITS} bits, with design='fast': give the probabilities a multiple of "
                    f"{self.probs_digits} bits (tensor_bits={{'probs': ...}}), got design={self.design!r}"
                )
        if self.exact_projection_rounding not in (True, False):
            raise TypeError(f"exact_projection_rounding must be True or False, got {self.exact_projection_rounding!r}")
        set_field(self, "exact_projection_rounding", bool(self.exact_projection_rounding))

    @property
    def weight_bits(self) -> int:
        """The projection's weight bits once the default is applied: ``n_bits_weights`` or ``max(n_bits, 8)``."""
        return self.n_bits_weights if self.n_bits_weights is not None else max(self.n_bits, 8)

    def bits_of(self, name: str) -> int:
        """The bits of the quantizer ``name``: its :attr:`tensor_bits` entry, else ``n_bits``."""
        return dict(self.tensor_bits).get(name, self.n_bits)

    def replace(self, **changes) -> HeadConfig:
        """A copy with ``changes`` (field names, checked like a new object's)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(
                f"HeadConfig has no setting {', '.join(sorted(map(repr, unknown)))}; "
                f"its settings are {', '.join(f.name for f in dataclasses.fields(self))}"
            )
        return dataclasses.replace(self, **changes)

    def at_bits(self, n_bits: int) -> HeadConfig:
        """A copy at ``n_bits`` activation bits whose lookups keep this setting's margin over them
        (``lookup_bits - n_bits``; no rounding stays no rounding): ``COURSE.at_bits(6)`` rounds to 8 bits."""
        if self.lookup_bits is None:
            return self.replace(n_bits=n_bits)
        return self.replace(n_bits=n_bits, lookup_bits=_check_bits(n_bits, "n_bits") + self.lookup_bits - self.n_bits)

    def projection_settings(self) -> dict:
        """The projection's keyword arguments of :class:`~course_lib.attention.QuantizedHead`."""
        return {
            "projection_bits": self.projection_bits,
            "exact_projection_rounding": self.exact_projection_rounding,
            "weight_scales": self.weight_scales,
        }


#: What notebooks 03 and 04 compile on a laptop: 4-bit activations, the fast design, 6-bit lookups.
COURSE = HeadConfig()
#: The notebooks' setting in a memory-capped session (Binder): 3-bit activations, lookups rounded to 3 bits.
LIGHT = COURSE.replace(n_bits=3, lookup_bits=3)
#: :data:`COURSE` for a circuit from ``x`` (the projection inside it): aligned 6-bit weights, approximate rounding.
FROM_X = COURSE.replace(n_bits_weights=6, weight_scales="aligned", exact_projection_rounding=False)
#: :data:`FROM_X` made faithful at 4-bit widths (``benchmarks/layer_accuracy.py`` measures each change):
#: every accumulator rounded exactly; each sum of products rounded once, not each product; ``x`` calibrated on
#: its 0.5-99.5 percentiles and carried on 5 bits; 8-bit probabilities as two 4-bit digits; the softmax's
#: ``exp`` and the heads' shared output on 6 bits. Every lookup still reads at most ``lookup_bits``-ish bits.
ACCURATE_LAYER = FROM_X.replace(
    exact_projection_rounding=True,
    sum_rounding="sum",
    input_clip_percentile=99.5,
    tensor_bits={"input": 5, "probs": 8, "exp": 6, "output": 6},
    probs_digits=2,
)
#: The published construction with exact products, at 4 bits (notebook 02's head).
PUBLISHED = HeadConfig(design="published", lookup_bits=None)


def head_config(config: HeadConfig | None = None, /, default: HeadConfig = COURSE, **settings) -> HeadConfig:
    """``config`` (or ``default``) with ``settings`` changed: how the swaps and sweeps read their arguments.

    >>> head_config(n_bits=6).n_bits
    6
    """
    if config is not None and not isinstance(config, HeadConfig):
        raise TypeError(f"config must be a HeadConfig, got {type(config).__name__}")
    base = config if config is not None else default
    return base.replace(**settings) if settings else base
