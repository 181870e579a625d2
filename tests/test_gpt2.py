"""course_lib.gpt2: quantized heads inside GPT-2, one head or all of a layer (the head on its own: test_attention; its
evaluation: test_evaluation)."""

import numpy as np
import pytest
import torch

from course_lib.attention import QuantizedHead, float_head
from course_lib.data import load_calibration_prompts, load_evaluation_passages
from course_lib.gpt2 import SwappedAttention, SwappedHead, head_weights

PROMPT = "Cryptography is a"
CALIBRATION = load_calibration_prompts(limit=16)


def c_proj_input(model, layer, ids, with_attention_input=False):
    """What c_proj of ``layer`` receives (every head's output side by side, (T, n_embd)), and the logits."""
    seen = {}
    block = model.transformer.h[layer]
    handles = [
        block.attn.c_proj.register_forward_pre_hook(lambda m, a: seen.update(merged=a[0])),
        block.ln_1.register_forward_hook(lambda m, a, out: seen.update(x=out)),
    ]
    with torch.no_grad():
        logits = model(ids).logits
    for handle in handles:
        handle.remove()
    merged = seen["merged"][0].double().numpy()
    if with_attention_input:
        return merged, logits, seen["x"][0].double().numpy()
    return merged, logits


def ids_of(tokenizer, text, max_tokens=100):
    """Token ids (1, T) of the start of ``text`` (at most ``max_tokens``, well within the context)."""
    return tokenizer(text, return_tensors="pt")["input_ids"][:, :max_tokens]


@pytest.mark.parametrize("layer,head", [(0, 0), (3, 2)])
def test_float_head_is_gpt2s_head(bundled, layer, head):
    model, tokenizer = bundled
    ids = ids_of(tokenizer, load_evaluation_passages(limit=1)[0])
    with SwappedHead(model, layer, head, n_bits=4) as swap:
        (x,) = swap.attention_inputs(tokenizer, [tokenizer.decode(ids[0])])
    merged, _ = c_proj_input(model, layer, torch.cat([torch.tensor([[tokenizer.eos_token_id]]), ids], 1))
    d = model.config.n_embd // model.config.n_head
    np.testing.assert_allclose(
        float_head(x, head_weights(model, layer, head)), merged[:, head * d : (head + 1) * d], atol=1e-5
    )


def test_float_mode_leaves_the_model_untouched(bundled):
    model, tokenizer = bundled
    ids = ids_of(tokenizer, PROMPT)
    with torch.no_grad():
        before = model(ids).logits
    with SwappedHead(model, 0, 0, n_bits=4) as swap:
        swap.calibrate(tokenizer, CALIBRATION)
        with torch.no_grad():
            assert torch.equal(model(ids).logits, before)
    assert model.generation_config.use_cache is not False or model.config.use_cache is not False


def test_quantized_mode_replaces_only_its_slice(bundled):
    model, tokenizer = bundled
    ids = ids_of(tokenizer, "A hacker is a person who enjoys exploring the details of programmable systems")
    layer, head, d = 2, 1, model.config.n_embd // model.config.n_head
    float_merged, float_logits = c_proj_input(model, layer, ids)
    with SwappedHead(model, layer, head, n_bits=3) as swap:
        swap.calibrate(tokenizer, CALIBRATION)
        swap.mode = "quantized"
        merged, logits, x = c_proj_input(model, layer, ids, with_attention_input=True)
        expected = swap.head.run(x).dequantize()
    others = np.ones(model.config.n_embd, dtype=bool)
    others[head * d : (head + 1) * d] = False
    np.testing.assert_array_equal(merged[:, others], float_merged[:, others])
    assert not np.allclose(merged[:, ~others], float_merged[:, ~others])
    assert not torch.equal(logits, float_logits)
    # the slice is the quantized head's dequantized output, computed on the same input
    np.testing.assert_allclose(merged[:, ~others], expected, atol=1e-5)


def test_many_bits_approach_the_float_model(bundled):
    model, tokenizer = bundled
    ids = ids_of(tokenizer, load_evaluation_passages(limit=1)[0])
    with torch.no_grad():
        reference = model(ids).logits
    errors = []
    for n_bits in (4, 12):
        with SwappedHead(model, 0, 0, n_bits=n_bits) as swap:
            swap.calibrate(tokenizer, CALIBRATION)
            swap.mode = "quantized"
            with torch.no_grad():
                errors.append(float((model(ids).logits - reference).abs().max()))
    assert errors[1] < errors[0] and errors[1] < 0.05


def test_clear_errors(bundled):
    model, tokenizer = bundled
    with pytest.raises(ValueError, match=r"layer must be an integer from 0 to 3 \(this model has 4\), got 4"):
        SwappedHead(model, layer=4)
    with pytest.raises(ValueError, match="head must be an integer from 0 to 3"):
        SwappedHead(model, head=-1)
    with pytest.raises(ValueError, match="n_bits must be an integer from 2 to 16"):
        SwappedHead(model, n_bits=1)
    with SwappedHead(model, 0, 0, n_bits=4) as swap:
        with pytest.raises(RuntimeError, match="calibrate the head before using mode 'quantized'"):
            swap.mode = "quantized"
        with pytest.raises(ValueError, match="mode must be one of 'float', 'quantized'"):
            swap.mode = "encrypted"
        with pytest.raises(ValueError, match="non-empty list of prompts"):
            swap.calibrate(tokenizer, [])
        with pytest.raises(ValueError, match="non-empty strings"):
            swap.calibrate(tokenizer, ["   "])
        swap.calibrate(tokenizer, CALIBRATION)
        with pytest.raises(RuntimeError, match="already calibrated"):
            swap.calibrate(tokenizer, CALIBRATION)
        swap.mode = "quantized"
        with pytest.raises(ValueError, match="batch of one sequence, got a batch of 2"):
            model(torch.zeros((2, 3), dtype=torch.long))
        with pytest.raises(ValueError, match="shape \\(T, 128\\)"):
            swap.head.run(np.zeros((3, 5)))


def test_head_calibration_needs_inputs(bundled):
    model, _ = bundled
    head = QuantizedHead(head_weights(model, 0, 0), 4)
    with pytest.raises(ValueError, match="at least one input"):
        head.calibrate([])


def test_one_swap_per_head_at_a_time(bundled):
    from course_lib.swapped_layer import SwappedLayer

    model, tokenizer = bundled
    with SwappedHead(model, 0, 1) as first:
        for second in (
            lambda: SwappedHead(model, 0, 1, n_bits=6),
            lambda: SwappedAttention(model, 0),
            lambda: SwappedLayer(model, 0),
        ):
            with pytest.raises(
                ValueError,
                match=r"head 1 of layer 0 is already swapped by SwappedHead\(layer=0.*"
                r"Remove that swap first \(its \.remove\(\)",
            ):
                second()
        with SwappedHead(model, 0, 2), SwappedHead(model, 1, 1):  # other heads, another layer: fine
            pass
        first.remove()
        first.remove()  # a second remove is a no-op
        with SwappedAttention(model, 0):
            with pytest.raises(ValueError, match="head 0 of layer 0 is already swapped by SwappedAttention"):
                SwappedHead(model, 0, 0)
        assert model.generation_config.use_cache is True  # restored once, by the last swap removed
    with SwappedHead(model, 0, 1):  # removed swaps free their heads
        pass


def test_attention_input_reads_the_float_model_attached_or_not(bundled):
    model, tokenizer = bundled
    ids = ids_of(tokenizer, PROMPT)
    _, _, x = c_proj_input(model, 2, ids, with_attention_input=True)
    swap = SwappedHead(model, 2, 0, n_bits=4)
    swap.calibrate(tokenizer, CALIBRATION)
    swap.mode = "quantized"
    np.testing.assert_array_equal(swap.attention_input(ids), x)
    assert swap.mode == "quantized"
    swap.remove()
    np.testing.assert_array_equal(swap.attention_input(ids), x)


def test_swapped_attention_replaces_every_head(bundled):
    """With every head swapped, the float side of each head must rebuild the float model exactly."""
    model, tokenizer = bundled
    ids = tokenizer("The cipher text", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = model(ids).logits
    with SwappedAttention(model, 1, n_bits=8, lookup_bits=12, design="published") as swap:
        swap.calibrate(tokenizer, load_calibration_prompts(limit=8))
        swap.mode = "quantized"
        with torch.no_grad():
            quantized = model(ids).logits
    assert not torch.equal(quantized, reference)
    assert (quantized - reference).abs().max() < 0.5
    assert repr(swap).startswith("SwappedAttention(layer=1, heads=[0, 1, 2, 3]")
    with SwappedHead(model, 0, 2) as one:
        assert one.head_index == 2 and one.head is one.heads[0]
