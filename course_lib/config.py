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
from .quantization import MAX_BITS, MIN_BITS


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

    def __post_init__(self) -> None:
        set_field = object.__setattr__  # the one place a frozen instance normalises its own fields
        set_field(self, "n_bits", _check_bits(self.n_bits, "n_bits"))
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
        if self.exact_projection_rounding not in (True, False):
            raise TypeError(f"exact_projection_rounding must be True or False, got {self.exact_projection_rounding!r}")
        set_field(self, "exact_projection_rounding", bool(self.exact_projection_rounding))

    @property
    def weight_bits(self) -> int:
        """The projection's weight bits once the default is applied: ``n_bits_weights`` or ``max(n_bits, 8)``."""
        return self.n_bits_weights if self.n_bits_weights is not None else max(self.n_bits, 8)

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
