"""How well a language model predicts text, and how much a quantized head changes its predictions.

- :func:`perplexity`: the model card's measure of the bundled model.
- :func:`topk_agreement` and :func:`sweep_topk_agreement`: does the model with a
  quantized head still predict the float model's next token? At every position of
  every passage, the float model's top-1 token is looked up among the quantized
  model's top-k tokens; the agreement at k is the share of positions where it is found.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .checks import is_integer
from .config import PUBLISHED, HeadConfig, head_config
from .progress import progress_bar

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def perplexity(model, tokenizer, passages: Sequence[str]) -> float:
    """Per-token perplexity of ``model`` on ``passages``.

    Each passage is scored on its own: the model reads ``<|endoftext|>`` and then
    predicts the passage's tokens one by one, up to the model's context length.
    The result is ``exp(total negative log-likelihood / number of predicted tokens)``.
    """
    import torch

    from .gpt2 import encode_passage

    if not passages:
        raise ValueError("perplexity needs at least one passage, got none")
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for text in passages:
            ids = encode_passage(tokenizer, text, model.config.n_positions)
            if len(ids) < 2:
                continue
            batch = torch.tensor([ids])
            loss = model(batch, labels=batch).loss.item()  # mean over len(ids) - 1 predictions
            total_nll += loss * (len(ids) - 1)
            total_tokens += len(ids) - 1
    if total_tokens == 0:
        raise ValueError("perplexity: the passages contain no tokens to predict")
    return math.exp(total_nll / total_tokens)


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(not is_integer(k) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, e.g. (1, 5, 10), got {ks!r}")
    return ks


def topk_predictions(
    model, tokenizer, passages: Sequence[str], k: int, desc: str = "", progress: bool = False, **forward_kwargs
):
    """Top-``k`` token ids ``(T, k)`` at every position of every passage."""
    import torch

    from .gpt2 import encode_passage

    out = []
    with torch.no_grad():
        for text in progress_bar(passages, desc=desc, show=progress, leave=False):
            ids = torch.tensor([encode_passage(tokenizer, text, model.config.n_positions)])
            out.append(model(ids, **forward_kwargs).logits[0].topk(k, dim=-1).indices)
    return out


@dataclass(frozen=True)
class Agreement:
    """Top-k agreement of one quantized setting with the float model.

    Attributes:
        n_bits: the quantized head's bits.
        agreement: ``{k: share of positions}`` where the float model's top-1 token is
            among the quantized model's top-k.
        n_predictions: positions compared.
    """

    n_bits: int
    agreement: dict[int, float]
    n_predictions: int

    def recovered(self, removed: Agreement) -> float:
        """Share of the head's effect on top-1 kept: 0 is no better than ``removed`` (the head removed), 1 is float.

        ``(top-1 - top-1 removed) / (1 - top-1 removed)``; nan when removing the head changes nothing.
        """
        floor = removed.agreement[1]
        return (self.agreement[1] - floor) / (1 - floor) if floor < 1 else float("nan")


def float_top1(model, tokenizer, passages: Sequence[str], progress: bool = False) -> list:
    """The model's top-1 token id at every position of every passage: the reference of the agreements."""
    return [top[:, 0] for top in topk_predictions(model, tokenizer, passages, 1, "float model", progress)]


def topk_agreement(reference_top1, quantized_topk, ks: Sequence[int] = DEFAULT_KS) -> tuple[dict[int, float], int]:
    """Agreement at each k between per-passage reference top-1 ids and quantized top-k ids."""
    ks = _check_ks(ks)
    hits = dict.fromkeys(ks, 0)
    total = 0
    for ref, quant in zip(reference_top1, quantized_topk, strict=True):
        total += len(ref)
        for k in ks:
            hits[k] += int((quant[:, :k] == ref[:, None]).any(dim=-1).sum())
    return {k: hits[k] / total for k in ks}, total


def sweep_topk_agreement(
    model,
    tokenizer,
    passages: Sequence[str],
    calibration_prompts: Sequence[str],
    n_bits_list: Sequence[int] = tuple(range(2, 11)),
    *,
    layer: int = 0,
    head: int | None = 0,
    ks: Sequence[int] = DEFAULT_KS,
    progress: bool = True,
    reference: list | None = None,
    config: HeadConfig | None = None,
    **settings,
) -> list[Agreement]:
    """Top-k agreement of the model with head ``head`` of layer ``layer`` quantized, for each n_bits.

    ``head=None`` quantizes every head of the layer at once (:class:`~course_lib.gpt2.SwappedAttention`).

    The heads' settings are ``config`` (default :data:`~course_lib.config.PUBLISHED`) with ``settings``
    changed (fields of :class:`~course_lib.config.HeadConfig`: ``lookup_bits=6`` rounds the product
    steps as the FHE circuit does, ``design="fast"`` picks the course's construction, ...), and
    ``n_bits`` set to each value of ``n_bits_list`` in turn.

    For each n_bits a fresh quantized head is calibrated on ``calibration_prompts``
    and swapped in; the float model's predictions are computed once (or taken from
    ``reference``, the :func:`float_top1` of the same passages).
    """
    from .gpt2 import SwappedAttention, SwappedHead

    ks = _check_ks(ks)
    if not passages:
        raise ValueError("sweep_topk_agreement needs at least one passage")
    if reference is None:
        reference = float_top1(model, tokenizer, passages, progress)
    results = []
    n_bits_list = list(n_bits_list)
    configs = [head_config(config, default=PUBLISHED, **{**settings, "n_bits": n}) for n in n_bits_list]
    for setting in progress_bar(configs, desc="n_bits", show=progress, leave=False):
        n_bits = setting.n_bits
        swapped = SwappedAttention(model, layer, setting) if head is None else SwappedHead(model, layer, head, setting)
        with swapped as swap:
            swap.calibrate(tokenizer, calibration_prompts)
            swap.mode = "quantized"
            quantized = topk_predictions(model, tokenizer, passages, max(ks), f"{n_bits} bits", progress)
        agreement, total = topk_agreement(reference, quantized, ks)
        results.append(Agreement(n_bits=n_bits, agreement=agreement, n_predictions=total))
    return results


def head_removed_agreement(
    model,
    tokenizer,
    passages: Sequence[str],
    *,
    layer: int = 0,
    head: int = 0,
    ks: Sequence[int] = DEFAULT_KS,
    progress: bool = False,
    reference: list | None = None,
) -> Agreement:
    """Top-k agreement with the float model when head ``head`` of layer ``layer`` is removed altogether.

    The head's attention is multiplied by 0 (Hugging Face's ``head_mask``), so its
    output is 0 and every other head is untouched: the floor that any quantized version
    of the head should beat. Passages are encoded and compared as in
    :func:`sweep_topk_agreement` (pass its ``reference`` to compute the float predictions
    once for both). The result is an :class:`Agreement` with ``n_bits = 0`` (a head with
    no bits left).
    """
    import torch

    from .gpt2 import check_layer_head

    check_layer_head(model, layer, head)
    ks = _check_ks(ks)
    if not passages:
        raise ValueError("head_removed_agreement needs at least one passage")
    mask = torch.ones(model.config.n_layer, model.config.n_head)
    mask[layer, head] = 0.0
    if reference is None:
        reference = float_top1(model, tokenizer, passages, progress)
    removed = topk_predictions(model, tokenizer, passages, max(ks), "head removed", progress, head_mask=mask)
    agreement, total = topk_agreement(reference, removed, ks)
    return Agreement(n_bits=0, agreement=agreement, n_predictions=total)
