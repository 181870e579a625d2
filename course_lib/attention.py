"""One GPT-2 attention head on integers, written once on DualArray.

The same :meth:`QuantizedHead.__call__` runs in every mode of the course: with
floats only to calibrate, with NumPy integers for the clear quantized model
(notebook 02), and with concrete tracers when notebook 03 compiles it to FHE.

GPT-2's attention, for one head ``h`` of dimension ``d`` and a sequence of ``T``
tokens whose (layer-normed) inputs are ``x`` of shape ``(T, n_embd)``::

    q, k, v = x @ W_qkv[h] + b_qkv[h]                 # (T, d) each: head h's slice of c_attn
    scores  = q @ k.T / sqrt(d)                       # (T, T)
    scores  = causal_mask(scores)                     # token t sees tokens 0..t only
    probs   = softmax(scores)                         # (T, T), each row sums to 1
    out     = probs @ v                               # (T, d): head h's slice of c_proj's input

In integers, each ``(L)`` below is a table lookup, one programmable bootstrap (PBS)
per element in FHE, whose output one quantizer of the head (``n_bits``) describes;
``(P)`` marks products of two encrypted numbers, two lookups each::

    x -> [x] -> linear -> (L) q, k, v -> (P) q @ k.T -> (L) scores -> mask, (L) - row max
      -> (L) exp -> mask -> row sum -> (L) 1/sum -> (P) exp * 1/sum -> (L) probs
      -> (P) probs @ v -> (L) out

The head splits in two where FHE wants it split (notebook 03):

- :meth:`QuantizedHead.project`, ``x -> q, k, v``: clear weights on the token's own
  features. It mixes no tokens, and its accumulators are wide (a sum of ``n_embd``
  products per value): each is rounded (``projection_bits``, or weight scales aligned
  with the quantizers) before the one lookup that requantizes it. In the published
  split the server runs it, the weights compiled into its circuit; in the course's
  attention-only circuits the client does.
- :meth:`QuantizedHead.attend`, ``q, k, v -> out``: scores, causal softmax and the
  weighted sum, every encrypted x encrypted product of the head. Always on the server.

A lookup's table has one entry per possible input integer, and in FHE its cost grows
steeply with the input's bit width. With ``lookup_bits`` set, each product step
(``q @ k.T``, ``exp * 1/sum``, ``probs @ v``) divides its products by a power of two
inside its own square tables (``drop_bits``), so that on the calibration data the sum
the next lookup reads is at most ``lookup_bits`` bits wide. Other values of the circuit
(the square tables' inputs, the rounded sums on new data) can be a bit wider: the
compiled circuit's summary gives its real widest integer. The powers of two are fitted
after the quantizers freeze.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from concrete import fhe

from .config import HeadConfig
from .dual_array import DualArray, QuantizedWeights, centering_offset
from .quantization import Quantizer, check_float_data

#: The quantizers of one head, in the order the data meets them.
HEAD_QUANTIZERS: tuple[str, ...] = ("input", "q", "k", "v", "scores", "exp", "inverse_sum", "probs", "output")

#: The product steps of the encrypted part, named by the quantizer that reads their sums.
PRODUCT_STEPS: tuple[str, ...] = ("scores", "probs", "output")

#: What the projection makes, in c_attn's order.
PROJECTED: tuple[str, ...] = ("q", "k", "v")


@dataclass(frozen=True)
class HeadWeights:
    """The float weights one head reads from its layer (plain NumPy, no torch).

    Attributes:
        w_qkv: ``(n_embd, 3 * head_dim)``: the columns of c_attn that make this head's q, k and v.
        b_qkv: ``(3 * head_dim,)``: the matching biases.
        score_scale: the factor applied to ``q @ k.T`` (``1 / sqrt(head_dim)`` in GPT-2).
    """

    w_qkv: np.ndarray
    b_qkv: np.ndarray
    score_scale: float

    def __post_init__(self) -> None:
        if self.w_qkv.ndim != 2 or self.w_qkv.shape[1] % 3:
            raise ValueError(f"w_qkv must have shape (n_embd, 3 * head_dim), got {self.w_qkv.shape}")
        if self.b_qkv.shape != (self.w_qkv.shape[1],):
            raise ValueError(f"b_qkv must have shape ({self.w_qkv.shape[1]},), got {self.b_qkv.shape}")

    @classmethod
    def random(cls, n_embd: int, head_dim: int, *, seed: int = 0) -> HeadWeights:
        """A head of GPT-2's shape with random weights (seeded): for tests, exercises and cost models."""
        rng = np.random.default_rng(seed)
        return cls(
            w_qkv=rng.normal(scale=0.3, size=(n_embd, 3 * head_dim)),
            b_qkv=rng.normal(scale=0.1, size=3 * head_dim),
            score_scale=1 / np.sqrt(head_dim),
        )

    @staticmethod
    def random_inputs(count: int, n_embd: int, *, seed: int = 1) -> list[np.ndarray]:
        """``count`` seeded random sequences of 2 to 8 token vectors of width ``n_embd``.

        The calibration (and test) inputs of a :meth:`random` head, when no model is at hand.
        """
        rng = np.random.default_rng(seed)
        return [rng.normal(size=(int(rng.integers(2, 9)), n_embd)) for _ in range(count)]

    @property
    def n_embd(self) -> int:
        return self.w_qkv.shape[0]

    @property
    def head_dim(self) -> int:
        return self.w_qkv.shape[1] // 3


def causal_keep(length: int) -> np.ndarray:
    """``keep[i, j]`` is True when token ``i`` may attend to token ``j`` (``j <= i``)."""
    return np.tril(np.ones((length, length), dtype=bool))


def float_head(x: np.ndarray, weights: HeadWeights) -> np.ndarray:
    """The head in plain float NumPy: the reference the quantized head is compared with."""
    qkv = x @ weights.w_qkv + weights.b_qkv
    q, k, v = np.split(qkv, 3, axis=-1)
    scores = (q @ k.T) * weights.score_scale
    scores = np.where(causal_keep(len(x)), scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(scores)
    return (e / e.sum(axis=-1, keepdims=True)) @ v


class QuantizedHead:
    """One attention head on integers: calibrate on prompts, freeze, then run in any mode.

    Args:
        weights: the head's float weights (see :func:`course_lib.gpt2.head_weights`).
        n_bits: bits of every activation quantizer (2 to 16).
        n_bits_weights: bits of the clear weights (default: ``max(n_bits, 8)``; weights
            are not encrypted, so their bits cost nothing in PBS but set the accumulators' size).
        lookup_bits: if set, the product steps drop low bits so that each sum of products
            is at most this many bits wide on the calibration data (``None``: exact products).
        projection_bits: if set, each of q, k, v's accumulators ``x @ W + b`` is rounded so that it
            is at most this many bits wide on the calibration data before its requantization lookup
            (``None``: the lookup reads the whole accumulator, too wide for FHE when the projection
            runs inside the circuit).
        exact_projection_rounding: False rounds those accumulators approximately in FHE (no extra
            PBS, but a value near halfway may round either way, at random); True rounds exactly,
            one extra PBS per dropped bit and value. The clear integers always round exactly.
        weight_scales: ``"tensor"``: one scale for the head's c_attn columns; ``"qkv"``: one each
            for q, k and v (clear constants, so free in FHE); ``"aligned"``: one each, fitted at
            calibration so that ``2**drop`` units of an accumulator are exactly one step of its
            quantizer. Rounding the accumulator to a multiple of ``2**drop`` then *is* the
            requantization; the lookup after it only adds the zero point and clips. No rounding
            twice, and the lookup reads about ``n_bits + 1`` bits. ``projection_bits`` does not apply.
        tensor_bits: mixed precision, the bits of single quantizers by name (others: ``n_bits``).
        input_clip_percentile: calibrate ``x``'s quantizer on this percentile range (see
            :class:`~course_lib.quantization.Quantizer`'s ``clip_percentile``), not min to max.
        probs_digits: the probabilities as that many digits (the fast design's, see :class:`HeadConfig
            <course_lib.config.HeadConfig>`); 1 here.
        sum_rounding: where the scores' sums are rounded to ``lookup_bits`` (``"products"``, in the
            products' tables, the only choice here; ``"sum"``: see :class:`~course_lib.fast_attention.FastHead`).

    Attributes:
        quantizers: one :class:`Quantizer` per step, named as in :attr:`quantizer_names`.
        drop_bits: bits each product step drops (named as in :attr:`product_steps`),
            fitted by :meth:`calibrate`; all 0 when ``lookup_bits`` is None.
        product_bits: the widest sum each product step gave on the calibration data
            with exact products (filled by :meth:`calibrate`).
    """

    #: The head's quantizers, in the order the data meets them.
    quantizer_names: tuple[str, ...] = HEAD_QUANTIZERS
    #: The product steps of the encrypted part, named by what reads their sums.
    product_steps: tuple[str, ...] = PRODUCT_STEPS
    #: Quantizers of this head's values that a :class:`~course_lib.layer.QuantizedLayer` keeps, not the head
    #: (their bits can still be set in ``tensor_bits``).
    layer_quantizer_names: tuple[str, ...] = ()
    #: How :mod:`course_lib.fast_attention` and the benchmarks name this construction.
    design = "published"
    #: Whether :meth:`attend` accepts the queries of the last tokens only (a KV-cache step);
    #: this construction computes the full ``T x T`` scores, so it needs every query.
    attends_last_rows = False

    def __init__(
        self,
        weights: HeadWeights,
        n_bits: int,
        n_bits_weights: int | None = None,
        lookup_bits: int | None = None,
        *,
        projection_bits: int | None = None,
        exact_projection_rounding: bool = True,
        weight_scales: str = "tensor",
        sum_rounding: str = "products",
        tensor_bits: dict[str, int] | None = None,
        input_clip_percentile: float | None = None,
        probs_digits: int = 1,
    ) -> None:
        self.weights = weights
        #: The head's settings, checked (:class:`~course_lib.config.HeadConfig`).
        self.config = HeadConfig(
            n_bits=n_bits,
            lookup_bits=lookup_bits,
            design=self._design_name(),
            n_bits_weights=n_bits_weights,
            weight_scales=weight_scales,
            projection_bits=projection_bits,
            exact_projection_rounding=exact_projection_rounding,
            sum_rounding=sum_rounding,
            tensor_bits=tensor_bits or (),
            input_clip_percentile=input_clip_percentile,
            probs_digits=probs_digits,
        )
        d = weights.head_dim
        if weight_scales == "tensor":
            self.w_qkv = QuantizedWeights.from_float(weights.w_qkv, self.n_bits_weights)
            parts = [self.w_qkv.part(slice(i * d, (i + 1) * d)) for i in range(3)]
        else:
            self.w_qkv = None
            parts = [
                QuantizedWeights.from_float(weights.w_qkv[:, i * d : (i + 1) * d], self.n_bits_weights)
                for i in range(3)
            ]
        #: The clear weights of q, k and v, in that order: c_attn's columns of this head.
        self.w_parts: tuple[QuantizedWeights, ...] = tuple(parts)
        #: Bits each of q, k, v's accumulators drops before its requantization lookup (see ``projection_bits``).
        self.projection_drop_bits: dict[str, int] = dict.fromkeys(PROJECTED, 0)
        #: The widest accumulator of q, k, v on the calibration data (filled by :meth:`calibrate`).
        self.projection_accumulator_bits: dict[str, int] = {}
        #: What each of q, k, v's accumulators is shifted by before it is rounded (filled by :meth:`calibrate`):
        #: a multiple of ``2**drop`` that puts the calibration data's range in the middle of the non-negative
        #: integers of its bit width, with as much room below as above for new data. Rounding commutes with the
        #: shift, and the lookup after it subtracts it again: the integers are unchanged. It is there for
        #: concrete-python 2.10, whose ``round_bit_pattern`` mis-rounds signed values when it widens the result
        #: to protect it from overflowing (-25 with 5 bits removed gives -64 instead of -32, in simulation and
        #: on ciphertexts); non-negative values round right.
        self.projection_offsets: dict[str, int] = dict.fromkeys(PROJECTED, 0)
        names = (*self.quantizer_names, *self.layer_quantizer_names)
        unknown = sorted({name for name, _ in self.config.tensor_bits} - set(names))
        if unknown:
            raise ValueError(
                f"tensor_bits names {', '.join(map(repr, unknown))}, which this head does not have: its quantizers "
                f"are {', '.join(names)}"
            )
        clip = {"input": self.config.input_clip_percentile}
        self.quantizers: dict[str, Quantizer] = {
            name: Quantizer(self.config.bits_of(name), name=name, clip_percentile=clip.get(name))
            for name in self.quantizer_names
        }
        self.drop_bits: dict[str, int] = dict.fromkeys(self.product_steps, 0)
        self.product_bits: dict[str, int] = {}
        self._observed: dict[str, int] | None = None  # set while fitting drop_bits
        self._lowest: dict[str, int] | None = None  # the sums' smallest and largest integers, meanwhile
        self._highest: dict[str, int] | None = None

    def _design_name(self) -> str:
        """This head's name among :data:`~course_lib.config.DESIGNS`."""
        return self.design

    # -- the settings, read from :attr:`config` ----------------------------------------------------
    @property
    def n_bits(self) -> int:
        return self.config.n_bits

    @property
    def n_bits_weights(self) -> int:
        """The clear weights' bits, the default applied (:attr:`HeadConfig.weight_bits`)."""
        return self.config.weight_bits

    @property
    def lookup_bits(self) -> int | None:
        return self.config.lookup_bits

    @property
    def projection_bits(self) -> int | None:
        return self.config.projection_bits

    @property
    def exact_projection_rounding(self) -> bool:
        return self.config.exact_projection_rounding

    @property
    def weight_scales(self) -> str:
        return self.config.weight_scales

    # -- phases ----------------------------------------------------------------------------------
    @property
    def is_calibrated(self) -> bool:
        return all(q.is_frozen for q in self.quantizers.values())

    def calibrate(self, inputs: Iterable[np.ndarray]) -> None:
        """Observe the head's float values on each input ``(T, n_embd)``, freeze every quantizer,
        then fit :attr:`drop_bits` to ``lookup_bits`` on the same inputs."""
        if self.is_calibrated:
            raise RuntimeError("this head is already calibrated; make a new QuantizedHead to calibrate again")
        inputs = [self._check_input(x) for x in inputs]
        if not inputs:
            raise ValueError("calibrate needs at least one input, got none")
        for x in inputs:
            self(DualArray.calibration(x, self.quantizers["input"]))
        for quantizer in self.quantizers.values():
            quantizer.freeze()
        if self.weight_scales == "aligned":
            self._align_projection()
        observed_names = (*self.product_steps, *PROJECTED)
        self._observed = dict.fromkeys(observed_names, 1)
        self._lowest, self._highest = dict.fromkeys(observed_names, 0), dict.fromkeys(observed_names, 0)
        try:
            for x in inputs:
                self.run(x)
        finally:
            observed, self._observed = self._observed, None
            (lowest, self._lowest), (highest, self._highest) = (self._lowest, None), (self._highest, None)
        self.projection_accumulator_bits = {name: observed.pop(name) for name in PROJECTED}
        self.product_bits = observed
        if self.lookup_bits is not None:
            self.drop_bits = {name: max(0, bits - self.lookup_bits) for name, bits in self.product_bits.items()}
        if self.projection_bits is not None:
            self.projection_drop_bits = {
                name: max(0, bits - self.projection_bits) for name, bits in self.projection_accumulator_bits.items()
            }
        for name in PROJECTED:
            if self.projection_drop_bits[name]:
                self.projection_offsets[name] = centering_offset(
                    lowest[name], highest[name], 2 ** self.projection_drop_bits[name]
                )
        self._fit_sum_rounding(lowest, highest)

    def _fit_sum_rounding(self, lowest: dict[str, int], highest: dict[str, int]) -> None:
        """After :attr:`drop_bits` are fitted: where a design rounds its sums itself, fit that rounding on the
        sums' calibrated range (the published design rounds its products only: nothing to do)."""

    @property
    def rounds_projection_exactly(self) -> bool:
        """True if FHE computes q, k, v exactly as the clear integers: nothing is rounded, or it is rounded
        exactly (``exact_projection_rounding``). False when an accumulator is rounded approximately."""
        return self.exact_projection_rounding or not any(self.projection_drop_bits.values())

    def _align_projection(self) -> None:
        """Re-quantize q, k, v's weights so that each accumulator's rounding lands on its quantizer's grid.

        The accumulator of q has scale ``s_x * s_w`` (input times weights). With
        ``s_w = s_q / (2**r * s_x)``, ``2**r`` accumulator units make one step ``s_q`` of q, so that
        ``round(accumulator / 2**r)`` is ``q - zero_point`` before clipping. ``r`` is the largest that
        keeps the weights' integers within ``n_bits_weights`` bits.
        """
        d, s_x = self.weights.head_dim, self.quantizers["input"].params.scale
        parts = []
        for i, name in enumerate(PROJECTED):
            w = self.weights.w_qkv[:, i * d : (i + 1) * d]
            part, self.projection_drop_bits[name] = QuantizedWeights.aligned(
                w, s_x, self.quantizers[name].params.scale, self.n_bits_weights
            )
            parts.append(part)
        self.w_parts = tuple(parts)

    def _check_input(self, x: np.ndarray) -> np.ndarray:
        x = check_float_data(x, "the head's input")
        if x.ndim != 2 or x.shape[1] != self.weights.n_embd:
            raise ValueError(f"the head's input must have shape (T, {self.weights.n_embd}), got {x.shape}")
        return x

    def _observe(self, name: str, value: DualArray) -> DualArray:
        if self._observed is not None:
            self._observed[name] = max(self._observed[name], value.bit_width())
            if value.int is not None:
                self._lowest[name] = min(self._lowest[name], int(np.min(value.int)))
                self._highest[name] = max(self._highest[name], int(np.max(value.int)))
        return value

    # -- the computation, once -------------------------------------------------------------------
    def __call__(self, x: DualArray, record: list[tuple[str, DualArray]] | None = None) -> DualArray:
        """The head on a DualArray ``(T, n_embd)``: the clear, calibration and FHE code path alike.

        If ``record`` is a list, each intermediate DualArray is appended to it as ``(name, value)``.
        """
        return self.attend(*self.project(x, record), record)

    def project(
        self, x: DualArray, record: list[tuple[str, DualArray]] | None = None
    ) -> tuple[DualArray, DualArray, DualArray]:
        """``x (T, n_embd) -> q, k, v (T, d)``: products with clear weights, then one lookup per value.

        Each of ``q, k, v`` is an accumulator ``x @ W + b`` (no PBS in FHE), rounded to
        ``projection_bits`` (see :attr:`projection_drop_bits`) and requantized to ``n_bits`` by one
        table lookup. With ``exact_projection_rounding=False`` FHE rounds approximately (no extra
        PBS; see :meth:`DualArray.apply <course_lib.dual_array.DualArray.apply>`).
        """
        with fhe.tag("projection"):
            return self._project(x, _recorder(record))

    def _project(self, x: DualArray, keep_step) -> tuple[DualArray, DualArray, DualArray]:
        qz, d = self.quantizers, self.weights.head_dim
        keep_step("input", x)
        bias = self.weights.b_qkv
        if self.w_qkv is not None:  # one scale: one accumulator (T, 3d), cut in three
            qkv = keep_step("qkv accumulator", x.linear(self.w_qkv, bias))
            accumulators = [qkv[:, i * d : (i + 1) * d] for i in range(3)]
        else:
            accumulators = [
                keep_step(f"{name} accumulator", x.linear(weights, bias[i * d : (i + 1) * d]))
                for i, (name, weights) in enumerate(zip(PROJECTED, self.w_parts, strict=True))
            ]
        out = []
        for name, accumulator in zip(PROJECTED, accumulators, strict=True):
            rounded = (
                self._observe(name, accumulator)
                .shifted(self.projection_offsets[name])
                .requantize(qz[name], round_lsbs=self.projection_drop_bits[name], exact=self.exact_projection_rounding)
            )
            out.append(keep_step(name, rounded))  # (T, d)
        return tuple(out)

    def attend(
        self, q: DualArray, k: DualArray, v: DualArray, record: list[tuple[str, DualArray]] | None = None
    ) -> DualArray:
        """``q, k, v (T, d) -> out (T, d)``: the part that mixes tokens, compiled to FHE in notebook 03."""
        if not q.shape[0] == k.shape[0] == v.shape[0]:
            raise ValueError(
                f"the published head attends with every token's query: q, k and v need the same number of tokens, "
                f"got {q.shape[0]}, {k.shape[0]} and {v.shape[0]} (FastHead accepts the last queries only)"
            )
        keep_step = _recorder(record)
        qz, drop = self.quantizers, self.drop_bits
        keep = causal_keep(q.shape[0])
        with fhe.tag("scores"):
            raw = q.matmul(k.transpose(), drop_bits=drop["scores"]) * self.weights.score_scale  # (T, T)
            raw = keep_step("q @ k.T accumulator", self._observe("scores", raw))
            scores = keep_step("scores", raw.requantize(qz["scores"]).lowest_where_not(keep))
        with fhe.tag("softmax"):
            shifted = keep_step("scores - row max", scores - scores.max(axis=-1, keepdims=True))  # <= 0
            e = keep_step("exp", shifted.exp(qz["exp"]).zero_where_not(keep))
            total = keep_step("row sum", e.sum(axis=-1, keepdims=True))  # (T, 1)
            inverse_sum = keep_step("1 / row sum", total.reciprocal(qz["inverse_sum"]))
            weighted = self._observe("probs", e.multiply(inverse_sum, drop_bits=drop["probs"]))
            probs = keep_step("probs", weighted.requantize(qz["probs"]))  # (T, T)
        with fhe.tag("mix"):
            mixed = keep_step(
                "probs @ v accumulator", self._observe("output", probs.matmul(v, drop_bits=drop["output"]))
            )
            return keep_step("output", mixed.requantize(qz["output"]))  # (T, d)

    def quantize_input(self, x: np.ndarray) -> DualArray:
        """The head's input as a DualArray under the frozen input quantizer."""
        return DualArray.quantize(self._check_input(x), self.quantizers["input"])

    def run(self, x: np.ndarray) -> DualArray:
        """Quantize ``x`` and run the head in dual mode (floats and integers side by side)."""
        return self(self.quantize_input(x))

    def steps(self, x: np.ndarray) -> list[tuple[str, DualArray]]:
        """Run in dual mode and return every intermediate DualArray, named, in order."""
        record: list[tuple[str, DualArray]] = []
        self(self.quantize_input(x), record=record)
        return record


def _recorder(record: list[tuple[str, DualArray]] | None):
    """``keep_step(name, value)``: append ``(name, value)`` to ``record`` (if a list) and return ``value``."""

    def keep_step(name: str, value: DualArray) -> DualArray:
        if record is not None:
            record.append((name, value))
        return value

    return keep_step
