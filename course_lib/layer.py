"""A whole GPT-2 attention layer on integers, one token at a time: what the server computes in the published split.

GPT-2's attention layer maps each token's (layer-normed) input ``x`` to its output::

    q, k, v = x @ W_attn + b_attn          # c_attn: every head's q, k, v, (n_embd,) each
    o_h     = attention of head h           # on head h's columns of q, k, v, and earlier tokens' k, v
    y       = [o_0 | o_1 | ...] @ W_proj + b_proj      # c_proj: (n_embd,)

In generation, token ``t``'s output needs its own ``q`` and the ``k`` and ``v`` of tokens ``0..t``,
and nothing else: the keys and values of earlier tokens are a *KV cache*. :class:`QuantizedLayer`
computes one step on :class:`~course_lib.dual_array.DualArray`, the same code in every mode::

    step(x_t, cache_{t-1}) -> y_t, cache_t

- each head (a :class:`~course_lib.fast_attention.FastHead`) projects ``x_t`` with its clear weights
  (:meth:`~course_lib.attention.QuantizedHead.project`), then looks up the squares of its new ``q``,
  ``k`` and ``v`` (the fast design's one-lookup products): the squares of ``k`` and ``v`` go into the
  cache with them, so that no later step looks them up again;
- it attends for the one new query over the cache (:meth:`FastHead.attend
  <course_lib.fast_attention.FastHead.attend>`);
- the heads' outputs (sums of products) are rounded to the heads' ``lookup_bits`` and requantized onto one
  shared quantizer (one lookup per value), so that ``c_proj``'s clear weights can sum them: its
  accumulator, ``(1, n_embd)``, is the step's output. The client decrypts it and multiplies by its scale:
  it never needs ``c_proj``'s weights.

The heads' sums are rounded before their lookups for the same reason as the products' sums: a lookup's
cost grows with the bits it reads, and the compiler sizes the cryptographic parameters (and the keys) of
every group of lookups for the widest input of the group.

Per step at ``T`` tokens, ``n_embd = H d``, PBS: ``3 n_embd`` (q, k, v) ``+ 3 n_embd`` (their squares)
``+ H T (2 d + 4)`` (per cached token and head: ``2 d`` products, a step of the max chain, two ``exp`` and
the square of its probability; the log of the sum makes up for the chain's missing step) ``+ n_embd``
(the heads' outputs): linear in ``T``, where recomputing the whole sequence costs ``T**2``. Exact rounding
adds one PBS per dropped bit and rounded value (the projection's accumulators, the heads' output sums). With
``sum_rounding="sum"`` each score adds ``r + 1`` (its ``r`` dropped bits and a lookup), and each extra digit of
the probabilities (``probs_digits``) adds ``d + 2`` per cached token and head.

:class:`KVCache` holds, per head, the keys and values of the tokens so far with their squares. On the
server (:class:`course_lib.layer_circuit.LayerCircuit`) they are ciphertexts that never leave it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from concrete import fhe

from .dual_array import DualArray, QuantizedWeights, centering_offset, side_by_side
from .fast_attention import FastHead
from .quantization import Quantizer, QuantParams, check_float_data, check_n_bits

#: The four arrays of a cache, in the order the circuit takes and returns them: the keys, their squares
#: (rounded as the scores' products need them), the values and their squares (as the mix needs them).
CACHE_ARRAYS: tuple[str, ...] = ("k", "k_squares", "v", "v_squares")


@dataclass(frozen=True)
class ProjectionWeights:
    """``c_proj`` of one layer, plain NumPy: ``y = o @ w + b`` with ``w`` ``(n_embd, n_embd)``, ``b`` ``(n_embd,)``."""

    w: np.ndarray
    b: np.ndarray

    def __post_init__(self) -> None:
        if self.w.ndim != 2 or self.w.shape[0] != self.w.shape[1] or self.b.shape != (self.w.shape[1],):
            raise ValueError(f"c_proj takes w (n, n) and b (n,), got w {self.w.shape} and b {self.b.shape}")


@dataclass(frozen=True)
class CachedToken:
    """What the cache keeps of one token: per head, its key and its value ``(1, d)``, each carrying its squares."""

    keys: tuple[DualArray, ...]
    values: tuple[DualArray, ...]


@dataclass(frozen=True)
class KVCache:
    """The cached tokens, oldest first. Appending a token makes a new cache (nothing is changed in place)."""

    tokens: tuple[CachedToken, ...] = ()

    def __len__(self) -> int:
        return len(self.tokens)

    def with_token(self, token: CachedToken) -> KVCache:
        return KVCache((*self.tokens, token))

    def head(self, h: int) -> tuple[DualArray, DualArray]:
        """Head ``h``'s keys and values of every cached token, ``(T, d)`` each (joined for free)."""
        keys, values = self.tokens[0].keys[h], self.tokens[0].values[h]
        for token in self.tokens[1:]:
            keys, values = keys.append(token.keys[h]), values.append(token.values[h])
        return keys, values


class QuantizedLayer:
    """Every head of one attention layer and its ``c_proj``, on integers, one token per :meth:`step`.

    Args:
        heads: the layer's :class:`~course_lib.fast_attention.FastHead`, in order, all calibrated alike or
            all not calibrated (:meth:`calibrate` then calibrates them).
        c_proj: the layer's output projection.
        n_bits_weights: bits of ``c_proj``'s clear weights (default: the heads').

    Attributes:
        heads_quantizer: the one quantizer of every head's output, which ``c_proj`` reads.
        w_proj: ``c_proj``'s quantized weights (one scale: the heads' outputs share theirs).
        heads_drop_bits: per head, the bits its output sums drop before their requantization, to reach the
            heads' ``lookup_bits`` (none if they have no ``lookup_bits``; fitted at calibration).
        heads_offsets: per head, what its sums are shifted by before they are rounded (a multiple of
            ``2**drop``; see :func:`~course_lib.dual_array.centering_offset`).
    """

    def __init__(
        self,
        heads: Sequence[FastHead],
        c_proj: ProjectionWeights,
        n_bits_weights: int | None = None,
    ):
        self.heads = list(heads)
        if not self.heads or not all(isinstance(h, FastHead) and h.one_lookup_products for h in self.heads):
            raise ValueError("a QuantizedLayer takes a non-empty list of FastHead (with one-lookup products)")
        if len({(h.weights.n_embd, h.weights.head_dim, h.config) for h in self.heads}) != 1:
            raise ValueError("the heads of a layer must share n_embd, head_dim and their settings (config)")
        self.n_embd, self.head_dim = self.heads[0].weights.n_embd, self.heads[0].weights.head_dim
        if len(self.heads) * self.head_dim != self.n_embd:
            raise ValueError(
                f"{len(self.heads)} heads of dimension {self.head_dim} do not make the layer's width {self.n_embd}"
            )
        if c_proj.w.shape[0] != self.n_embd:
            raise ValueError(f"c_proj must be ({self.n_embd}, {self.n_embd}), got {c_proj.w.shape}")
        self.c_proj = c_proj
        self.n_bits = self.heads[0].n_bits
        bits = self.heads[0].n_bits_weights if n_bits_weights is None else check_n_bits(n_bits_weights)
        self.w_proj = QuantizedWeights.from_float(c_proj.w, bits)
        # the heads' config names the bits of their shared output ("output" in its tensor_bits; else n_bits)
        self.heads_quantizer = Quantizer(self.heads[0].config.bits_of("output"), name="heads' output")
        self.heads_drop_bits = [0] * len(self.heads)
        self.heads_offsets = [0] * len(self.heads)

    # -- calibration -----------------------------------------------------------------------------
    @property
    def is_calibrated(self) -> bool:
        return self.heads_quantizer.is_frozen and all(h.is_calibrated for h in self.heads)

    def calibrate(self, inputs: Iterable[np.ndarray]) -> None:
        """Calibrate the layer on the attention inputs ``(T, n_embd)``, then freeze it.

        The heads first (if they are not yet), then on the same inputs the rounding of each head's output
        sums (:attr:`heads_drop_bits`, :attr:`heads_offsets`) and the quantizer of the heads' outputs."""
        if self.heads_quantizer.is_frozen:
            raise RuntimeError("this layer is already calibrated; make a new QuantizedLayer to calibrate again")
        inputs = [check_float_data(x, "the layer's input") for x in inputs]
        if not inputs:
            raise ValueError("calibrate needs at least one input, got none")
        for head in self.heads:
            if not head.is_calibrated:
                head.calibrate(inputs)
        if len({h.quantizers["input"].params for h in self.heads}) != 1:
            raise ValueError(
                "the heads of a layer must share their input quantizer (calibrate them on the same inputs)"
            )
        sums = [[head.run(x) for head in self.heads] for x in inputs]  # per input, each head's output sums
        self._fit_heads_rounding(sums)
        for heads in sums:
            for out in heads:
                self.heads_quantizer.observe(out.float)
        self.heads_quantizer.freeze()

    def _fit_heads_rounding(self, sums: list[list[DualArray]]) -> None:
        """Each head's output sums: the bits to drop to reach ``lookup_bits``, and their offset."""
        lookup_bits = self.heads[0].lookup_bits
        for h in range(len(self.heads)):
            head_sums = [heads[h] for heads in sums]
            bits = max(out.bit_width() for out in head_sums)
            self.heads_drop_bits[h] = drop = 0 if lookup_bits is None else max(0, bits - lookup_bits)
            if drop:
                lowest = min(0, *(int(out.int.min()) for out in head_sums))
                highest = max(0, *(int(out.int.max()) for out in head_sums))
                self.heads_offsets[h] = centering_offset(lowest, highest, 2**drop)

    @property
    def exact_rounding(self) -> bool:
        """Whether FHE rounds the heads' sums exactly, as the heads round their projection
        (``exact_projection_rounding``: one PBS per dropped bit and value); else approximately, no extra PBS."""
        return all(h.exact_projection_rounding for h in self.heads)

    @property
    def rounds_exactly(self) -> bool:
        """True if FHE computes every value as the clear integers: the heads' projections and the heads' sums
        are rounded exactly, or not at all."""
        return all(h.rounds_projection_exactly for h in self.heads) and (
            self.exact_rounding or not any(self.heads_drop_bits)
        )

    @property
    def input_params(self) -> QuantParams:
        """The quantizer of the layer's input ``x``: all the client needs to encode its row."""
        return self.heads[0].quantizers["input"].params

    @property
    def output_scale(self) -> float:
        """The real value of one unit of :meth:`step`'s output integers (zero point 0)."""
        return float(self.heads_quantizer.params.scale * self.w_proj.params.scale)

    # -- the computation, once -------------------------------------------------------------------
    def step(self, x: DualArray, cache: KVCache | None = None) -> tuple[DualArray, KVCache]:
        """One token: ``x`` ``(1, n_embd)`` and the cache of the earlier tokens (None or empty for the first)
        to the layer's output row ``(1, n_embd)`` (``c_proj``'s accumulator) and the cache with this token."""
        if x.shape != (1, self.n_embd):
            raise ValueError(f"a step takes one token's x of shape (1, {self.n_embd}), got {x.shape}")
        cache = KVCache() if cache is None else cache
        if len(cache) and len(cache.tokens[0].keys) != len(self.heads):
            raise ValueError(f"the cache holds {len(cache.tokens[0].keys)} heads, the layer has {len(self.heads)}")
        sums, new_keys, new_values = [], [], []
        for h, head in enumerate(self.heads):
            q, k, v = head.project(x)  # (1, d) each
            with fhe.tag("cache"):
                k = head._operand(k, "scores")  # the new key's squares, looked up once and cached with it
                v = head._operand(v, "output")
            new_keys.append(k)
            new_values.append(v)
            if len(cache):
                cached_k, cached_v = cache.head(h)
                k, v = cached_k.append(k), cached_v.append(v)  # (T, d)
            sums.append(head.attend(q, k, v))  # (1, d)
        return self.combine(sums), cache.with_token(CachedToken(tuple(new_keys), tuple(new_values)))

    def combine(self, sums: Sequence[DualArray]) -> DualArray:
        """The heads' output sums, ``(T, d)`` each, to the layer's output ``(T, n_embd)``: each head's sums
        rounded and requantized onto the shared quantizer (one lookup each), side by side in GPT-2's layout,
        through ``c_proj`` (its accumulator, no PBS)."""
        outputs = []
        with fhe.tag("heads_outputs"):
            for h, out in enumerate(sums):
                outputs.append(
                    out.shifted(self.heads_offsets[h]).requantize(
                        self.heads_quantizer, round_lsbs=self.heads_drop_bits[h], exact=self.exact_rounding
                    )
                )
        joined = outputs[0]
        for out in outputs[1:]:
            joined = joined.append(out, axis=1)
        return joined.linear(self.w_proj, self.c_proj.b)

    def forward(self, x: np.ndarray) -> DualArray:
        """Run every head on the whole sequence ``x`` ``(T, n_embd)`` at once, then combine them: the
        integers of :meth:`run` (the tests check it), without its loop over the tokens, so far faster on long
        texts. The step circuits compute :meth:`run`'s way; this is the clear path for whole passages."""
        xq = self.quantize_input(x)  # one input quantizer for every head, as in run
        return self.combine([head(xq) for head in self.heads])

    def run(self, x: np.ndarray) -> DualArray:
        """Quantize ``x`` ``(T, n_embd)`` and run it token after token in dual mode: the outputs ``(T, n_embd)``."""
        xq = self.quantize_input(x)
        cache, rows = KVCache(), []
        for t in range(xq.shape[0]):
            y, cache = self.step(xq[t : t + 1], cache)
            rows.append(y)
        out = rows[0]
        for row in rows[1:]:
            out = out.append(row)
        return out

    def quantize_input(self, x: np.ndarray) -> DualArray:
        """``x`` ``(T, n_embd)`` as a DualArray under the frozen input quantizer."""
        return self.heads[0].quantize_input(x)

    # -- a cached token as the circuit's integers --------------------------------------------------
    def token_integers(self, token: CachedToken) -> tuple:
        """A cached token as four integer rows ``(1, n_embd)`` (:data:`CACHE_ARRAYS`), head ``h`` in columns
        ``h d`` to ``(h + 1) d``: what a step's circuit returns for its token, and later steps take."""
        parts = (
            [k.int for k in token.keys],
            [k.squares[2] for k in token.keys],
            [v.int for v in token.values],
            [v.squares[2] for v in token.values],
        )
        return tuple(side_by_side(blocks, self.head_dim) for blocks in parts)

    def token_from_integers(self, k, k_squares, v, v_squares) -> CachedToken:
        """The inverse of :meth:`token_integers` (NumPy integers or tracers)."""
        d, keys, values = self.head_dim, [], []
        for h, head in enumerate(self.heads):
            cols = slice(h * d, (h + 1) * d)
            key = DualArray.from_int(k[:, cols], head.quantizers["k"].params)
            value = DualArray.from_int(v[:, cols], head.quantizers["v"].params)
            keys.append(key.carrying_squares(head.drop_bits["scores"], k_squares[:, cols]))
            values.append(value.carrying_squares(head.drop_bits["output"], v_squares[:, cols]))
        return CachedToken(tuple(keys), tuple(values))
