"""course_lib.evaluation: top-k agreement with the float model, sweeps over bits, and the removed head's floor."""

import pytest
import torch

from course_lib.data import load_calibration_prompts, load_evaluation_passages
from course_lib.evaluation import Agreement, float_top1, head_removed_agreement, sweep_topk_agreement, topk_agreement
from course_lib.gpt2 import encode_passage

CALIBRATION = load_calibration_prompts(limit=16)


def test_topk_agreement_counts():
    ref = [torch.tensor([3, 1]), torch.tensor([0])]
    quant = [torch.tensor([[3, 2], [2, 1]]), torch.tensor([[5, 6]])]
    agreement, total = topk_agreement(ref, quant, ks=(1, 2))
    assert total == 3 and agreement == {1: 1 / 3, 2: 2 / 3}
    with pytest.raises(ValueError, match="ks must be positive integers"):
        topk_agreement(ref, quant, ks=(0,))


def test_sweep_improves_with_bits(bundled):
    model, tokenizer = bundled
    results = sweep_topk_agreement(
        model, tokenizer, load_evaluation_passages(limit=8), CALIBRATION, n_bits_list=(2, 8), progress=False
    )
    low, high = results
    for r in results:
        a = r.agreement
        assert 0 <= a[1] <= a[5] <= a[10] <= 1 and r.n_predictions > 100
    assert high.agreement[1] > low.agreement[1] and high.agreement[1] > 0.9


def test_recovered_share_of_the_heads_effect():
    removed = Agreement(n_bits=0, agreement={1: 0.9}, n_predictions=10)
    assert Agreement(n_bits=4, agreement={1: 0.95}, n_predictions=10).recovered(removed) == pytest.approx(0.5)
    assert removed.recovered(removed) == 0
    assert Agreement(n_bits=8, agreement={1: 1.0}, n_predictions=10).recovered(removed) == pytest.approx(1.0)


def test_a_shared_reference_gives_the_same_agreements(bundled):
    model, tokenizer = bundled
    passages = load_evaluation_passages(limit=4)
    reference = float_top1(model, tokenizer, passages)
    assert head_removed_agreement(model, tokenizer, passages, reference=reference) == head_removed_agreement(
        model, tokenizer, passages
    )
    shared = sweep_topk_agreement(model, tokenizer, passages, CALIBRATION, (3,), progress=False, reference=reference)
    assert shared == sweep_topk_agreement(model, tokenizer, passages, CALIBRATION, (3,), progress=False)


def test_head_removed_agreement_is_zeroing_the_heads_slice(bundled):
    model, tokenizer = bundled
    passages = load_evaluation_passages(limit=6)
    layer, head, d = 1, 2, model.config.n_embd // model.config.n_head
    ids = [torch.tensor([encode_passage(tokenizer, text, model.config.n_positions)]) for text in passages]
    with torch.no_grad():
        before = [model(i).logits for i in ids]
    removed = head_removed_agreement(model, tokenizer, passages, layer=layer, head=head)
    assert removed.n_bits == 0 and removed.n_predictions == sum(i.shape[1] for i in ids)
    a = removed.agreement
    assert 0 < a[1] <= a[5] <= a[10] <= 1 and a[1] < 1  # the head matters

    def zero_slice(module, args):
        merged = args[0].clone()
        merged[..., head * d : (head + 1) * d] = 0
        return (merged, *args[1:])

    hook = model.transformer.h[layer].attn.c_proj.register_forward_pre_hook(zero_slice)
    with torch.no_grad():
        zeroed = [model(i).logits[0].topk(10, dim=-1).indices for i in ids]
    hook.remove()
    expected, total = topk_agreement([b[0].topk(1, dim=-1).indices[:, 0] for b in before], zeroed)
    assert total == removed.n_predictions and removed.agreement == pytest.approx(expected)
    with torch.no_grad():  # the model is left as it was
        assert all(torch.equal(model(i).logits, b) for i, b in zip(ids, before, strict=True))
    with pytest.raises(ValueError, match="layer must be an integer"):
        head_removed_agreement(model, tokenizer, passages, layer=model.config.n_layer)
    with pytest.raises(ValueError, match="at least one passage"):
        head_removed_agreement(model, tokenizer, [])
