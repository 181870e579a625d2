"""The course's fast encrypted head: the same attention, far fewer and narrower bootstraps.

:class:`~course_lib.attention.QuantizedHead` is the straightforward construction, the one
the published work used and notebook 02 teaches. It computes the full ``T x T`` score
matrix and then masks it, re-quantizes after every step, takes each row's max by a chain
of comparisons, and normalizes as exp, sum, reciprocal and multiply. Notebook 03 measures
what each of those choices costs in programmable bootstraps (PBS). :class:`FastHead`
computes the same function. It inherits the projection, the calibration and the modes,
and changes only :meth:`~FastHead.attend`, in four ways:

1. **Only the causal pairs.** Token ``i`` attends to tokens ``0..i``. So the head
   computes the ``T (T + 1) / 2`` pairs ``j <= i`` (:class:`CausalPairs`) and never
   the masked half. There is no mask to apply afterwards.
2. **One lookup per product instead of two.** ``a * b = ((a + b)**2 - a**2 - b**2) / 2``.
   The squares of every ``q``, ``k``, ``v`` and probability are looked up once
   (:meth:`DualArray.with_squares <course_lib.dual_array.DualArray.with_squares>`).
   After that, each of the ``d`` products of a pair costs the single lookup
   ``(a + b)**2``.
3. **No re-quantization between steps.** The max chain and ``exp`` read the scores'
   accumulator directly, and the final output is the weighted sum's accumulator (the
   client decrypts it and applies the scale). This removes the ``scores``, ``probs``
   and ``output`` re-quantizations: ``T**2 + T**2 + T d`` lookups.
4. **A log-domain softmax.** ``p = exp(s - max - log(sum(exp(s - max))))``. A row costs
   one lookup per entry for ``exp``, one lookup for the log of its sum, and one more
   lookup per entry for the final ``exp``. The reciprocal and the encrypted product
   (two lookups per entry) are gone.

The product sums are rounded in their square tables to ``lookup_bits``, as in the
published head (``drop_bits``), so every lookup of the softmax reads a narrow integer.
Each of the ``d`` products of a score is then rounded on its own, and their errors add
up. With ``sum_rounding="sum"`` the products stay exact and each score's sum is rounded
once (:meth:`DualArray.rounded <course_lib.dual_array.DualArray.rounded>`), within half a
step: for ``r`` dropped bits, ``r + 1`` more PBS per score (``P (r + 1)`` in the scores
row below, beside its ``P d`` products).

PBS for ``T`` tokens, head dimension ``d`` and ``P = T (T + 1) / 2`` pairs:

============  =======================================  =====================================
step          published (:class:`QuantizedHead`)        fast (:class:`FastHead`)
============  =======================================  =====================================
scores        ``2 T**2 d + T**2``                       ``P d + 2 T d``
softmax       ``T (T - 1) + 2 T**2 + T + 2 T**2``       ``T (T - 1) / 2 + 2 P + T``
mix           ``2 T**2 d + T d``                        ``P d + P + T d``
============  =======================================  =====================================

Notebook 03 (section 4) adds the four changes one at a time and measures each.
"""

from __future__ import annotations

import numpy as np
from concrete import fhe

from .attention import HeadWeights, QuantizedHead, _recorder
from .checks import check_integer
from .config import HeadConfig
from .dual_array import DualArray, centering_offset


class CausalPairs:
    """The (query, key) pairs a causal head needs for ``length`` tokens: ``(i, j)`` with ``j <= i``.

    They are laid out row after row: ``(0, 0), (1, 0), (1, 1), (2, 0), ...``. Row ``i``
    holds ``i + 1`` pairs. Every method only moves or adds values (no lookup), except
    :meth:`row_max`.

    With ``queries`` set, only the last ``queries`` tokens ask (rows ``length - queries``
    to ``length - 1``), still against the keys of every token before them: with
    ``queries=1`` that is one step of generation with a KV cache (notebook 04). Rows are
    then numbered from 0 among the queries: :attr:`rows` indexes ``q``, :attr:`cols`
    indexes ``k`` and ``v``.
    """

    def __init__(self, length: int, queries: int | None = None) -> None:
        length = check_integer(length, "length", unit="tokens")
        queries = length if queries is None else queries
        queries = check_integer(queries, "queries", 1, length, allowed=f"an integer from 1 to length={length}")
        self.length, self.queries = length, queries
        first = self.length - self.queries  # the position of the first query
        #: Per pair: the query's row (0 to ``queries - 1``) and the key's token (0 to ``length - 1``).
        self.rows = [r for r in range(self.queries) for _ in range(first + r + 1)]
        self.cols = [j for r in range(self.queries) for j in range(first + r + 1)]
        #: Per query row: how many pairs it has, and where they start.
        self.counts = [first + r + 1 for r in range(self.queries)]
        self.starts = [int(s) for s in np.cumsum([0, *self.counts[:-1]])]

    def __len__(self) -> int:
        return len(self.rows)

    def _check(self, x: DualArray, what: str) -> None:
        if x.shape[0] != len(self):
            raise ValueError(f"{what}: expected {len(self)} pairs along the first axis, got shape {x.shape}")

    def row_sums(self, x: DualArray) -> DualArray:
        """Sum the pairs of each row: ``(P, ...) -> (queries, ...)`` (a clear 0/1 matrix product)."""
        self._check(x, "row_sums")
        membership = np.zeros((self.queries, len(self)), dtype=np.int64)
        membership[self.rows, np.arange(len(self))] = 1
        return x.combine_rows(membership)

    def row_max(self, x: DualArray) -> DualArray:
        """Maximum of each row's pairs, ``(P,) -> (queries,)``: ``P - queries`` lookups.

        A chain of pairwise maxima, run for all rows at once. Step ``j`` compares the
        running maximum of every row that has a ``j``-th pair with that pair, and adds what
        it gained back into place. The chain is ``length - 1`` lookups deep, whatever the
        number of rows.
        """
        self._check(x, "row_max")
        if x.zero_point:  # centered integers, so that the running maximum and the pairs share zero point 0
            x = x.combine_rows(np.eye(len(self), dtype=np.int64))
        running = x.take(self.starts)  # pair (i, 0) of every row
        for j in range(1, self.length):
            later = [r for r in range(self.queries) if self.counts[r] > j]  # the rows that have a j-th pair
            current = running.take(later)
            gain = current.maximum(x.take([self.starts[r] + j for r in later])) - current  # >= 0
            placement = np.zeros((self.queries, len(later)), dtype=np.int64)
            placement[later, np.arange(len(later))] = 1
            running = running + gain.combine_rows(placement)
        return running

    def per_pair(self, x: DualArray) -> DualArray:
        """Each row's value repeated for each of its pairs: ``(queries, ...) -> (P, ...)``."""
        if x.shape[0] != self.queries:
            raise ValueError(f"per_pair: expected {self.queries} rows along the first axis, got shape {x.shape}")
        return x.take(self.rows)


class FastHead(QuantizedHead):
    """A quantized head whose encrypted part costs a fraction of :class:`QuantizedHead`'s.

    Same arguments, same projection, calibration and modes. :meth:`attend` computes the
    causal pairs only, pays one lookup per product and uses a log-domain softmax (see the
    module docstring). Its output is the weighted sum's accumulator (zero point 0, with
    its own scale), not a re-quantized ``n_bits`` integer.
    """

    quantizer_names = ("input", "q", "k", "v", "exp", "probs")
    product_steps = ("scores", "output")
    #: The head's output sums are requantized by its layer, on the heads' shared quantizer.
    layer_quantizer_names = ("output",)
    design = "fast"
    attends_last_rows = True

    def __init__(
        self,
        weights,
        n_bits: int,
        n_bits_weights: int | None = None,
        lookup_bits: int | None = None,
        *,
        one_lookup_products: bool = True,
        **projection,
    ) -> None:
        #: False: products as two quarter-square lookups, as in the published head (change 2 off).
        self.one_lookup_products = bool(one_lookup_products)
        super().__init__(weights, n_bits, n_bits_weights, lookup_bits, **projection)
        #: With ``sum_rounding="sum"``: the bits the exact scores' sums drop to reach ``lookup_bits``, and what
        #: they are shifted by first (a multiple of ``2**drop``, see :func:`~course_lib.dual_array.centering_offset`).
        #: Fitted at calibration; 0 otherwise.
        self.sum_drop_bits, self.sum_offset = 0, 0

    def _fit_sum_rounding(self, lowest: dict[str, int], highest: dict[str, int]) -> None:
        """With ``sum_rounding="sum"``: every product stays exact (:attr:`drop_bits` back to 0). Each score's sum
        drops the bits its products would have dropped, once; the weighted values' sums, the head's output,
        stay exact, for whoever reads them to round once (:class:`~course_lib.layer.QuantizedLayer`)."""
        if self.config.sum_rounding != "sum":
            return
        self.sum_drop_bits, self.drop_bits = self.drop_bits["scores"], dict.fromkeys(self.product_steps, 0)
        if self.sum_drop_bits:
            self.sum_offset = centering_offset(lowest["scores"], highest["scores"], 2**self.sum_drop_bits)

    def _design_name(self) -> str:
        return "fast" if self.one_lookup_products else "fast-quarter-squares"

    def _operand(self, x: DualArray, step: str) -> DualArray:
        """``x`` ready for the products of ``step``: carrying its squares (change 2), or as it is.

        Squares ``x`` already carries for this step (a KV cache's: :mod:`course_lib.layer`) are kept.
        """
        if not self.one_lookup_products:
            return x
        if x.squares is not None and x.squares[0] == self.drop_bits[step]:
            return x
        return x.with_squares(self.drop_bits[step])

    def attend(
        self, q: DualArray, k: DualArray, v: DualArray, record: list[tuple[str, DualArray]] | None = None
    ) -> DualArray:
        """``q, k, v (T, d) -> out (T, d)``: the encrypted part, on the causal pairs only.

        ``q`` may hold only the last ``Q <= T`` tokens' queries (``k`` and ``v`` still hold all
        ``T`` tokens): then ``out`` is ``(Q, d)``, those tokens' rows of the full output, the same
        integers. That is one step of generation with a KV cache (notebook 04).
        """
        if q.shape[0] > k.shape[0] or k.shape != v.shape:
            raise ValueError(
                f"attend takes q (Q, d) and k, v (T, d) with Q <= T, got q {q.shape}, k {k.shape}, v {v.shape}"
            )
        keep_step = _recorder(record)
        qz, drop = self.quantizers, self.drop_bits
        pairs = CausalPairs(k.shape[0], queries=q.shape[0])
        with fhe.tag("scores"):
            q2, k2 = self._operand(q, "scores"), self._operand(k, "scores")  # T d lookups each
            products = q2.take(pairs.rows).multiply(k2.take(pairs.cols), drop_bits=drop["scores"])  # (P, d)
            raw = self._observe("scores", products.sum(axis=-1) * self.weights.score_scale)  # (P,)
            if self.sum_drop_bits:  # sum_rounding="sum": the exact sums rounded once, exactly
                raw = raw.shifted(self.sum_offset).rounded(self.sum_drop_bits)
            scores = keep_step("scores (pairs j <= i)", raw)
        with fhe.tag("softmax"):
            shifted = keep_step("scores - row max", scores - pairs.per_pair(pairs.row_max(scores)))  # <= 0
            e = keep_step("exp", shifted.exp(qz["exp"]))
            smallest = e.scale if e.scale is not None else 1e-12  # a row sum is at least one quantum
            log_sum = keep_step(
                "log row sum",
                pairs.row_sums(e).apply_at_scale(lambda t: np.log(np.maximum(t, smallest)), scores.scale),
            )
            log_probs = shifted - pairs.per_pair(log_sum)
            if self.config.probs_digits == 1:
                digits = [keep_step("probs", log_probs.exp(qz["probs"]))]  # (P,)
            else:  # one lookup per digit, most significant first
                digits = log_probs.apply_digits(np.exp, qz["probs"], self.config.probs_digits)
                for i, digit in enumerate(digits):
                    keep_step(f"probs digit {i}", digit)
        with fhe.tag("mix"):
            v2 = self._operand(v, "output").take(pairs.cols)  # T d lookups, then (P, d)
            weighted = None
            for digit in digits:  # each digit's products, brought onto the next digit's scale (free) and added
                p2 = self._operand(digit.reshape(len(pairs), 1), "output")  # P lookups
                products = p2.multiply(v2, drop_bits=drop["output"])  # (P, d)
                if weighted is None:
                    weighted = products
                else:  # one unit of the digit before is 2**bits of this one's (scales are None in calibration)
                    factor = 1 if products.scale is None else round(weighted.scale / products.scale)
                    weighted = weighted.times(factor) + products
            return keep_step("output", self._observe("output", pairs.row_sums(weighted)))  # (Q, d)


def build_head(weights: HeadWeights, config: HeadConfig) -> QuantizedHead:
    """The head ``config`` describes, on ``weights``: a :class:`QuantizedHead` for the ``"published"``
    design, a :class:`FastHead` for the others (``"fast-quarter-squares"``: two lookups per product)."""
    if not isinstance(config, HeadConfig):
        raise TypeError(f"config must be a HeadConfig, got {type(config).__name__}")
    options = config.projection_settings()
    if config.design != "published":
        options["one_lookup_products"] = config.design == "fast"
        options.update(sum_rounding=config.sum_rounding, probs_digits=config.probs_digits)
    options.update(tensor_bits=dict(config.tensor_bits), input_clip_percentile=config.input_clip_percentile)
    build = QuantizedHead if config.design == "published" else FastHead
    return build(weights, config.n_bits, config.n_bits_weights, config.lookup_bits, **options)
