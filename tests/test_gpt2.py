"""course_lib.attention and course_lib.gpt2: a quantized head inside GPT-2 (its evaluation: test_evaluation)."""

import numpy as np
import pytest
import torch

from course_lib.attention import QuantizedHead, float_head
from course_lib.data import load_calibration_prompts, load_evaluation_passages
from course_lib.gpt2 import SwappedHead, head_weights

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


def test_generation_with_a_quantized_head_is_deterministic(bundled):
    model, tokenizer = bundled
    encoded = tokenizer(PROMPT, return_tensors="pt")
    with SwappedHead(model, 0, 0, n_bits=4) as swap:
        swap.calibrate(tokenizer, CALIBRATION)
        swap.mode = "quantized"
        runs = [
            model.generate(**encoded, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            for _ in range(2)
        ]
        assert torch.equal(runs[0], runs[1]) and runs[0].shape[1] == encoded["input_ids"].shape[1] + 8
        with pytest.raises(RuntimeError, match="use_cache=False"):
            model.generate(
                **encoded, max_new_tokens=3, do_sample=False, use_cache=True, pad_token_id=tokenizer.eos_token_id
            )
    # the cache setting is restored once the head is removed
    assert model.generation_config.use_cache is True


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


def test_generate_helper_errors(bundled):
    from course_lib.gpt2 import encode_prompt

    _, tokenizer = bundled
    with pytest.raises(ValueError, match="non-empty string"):
        encode_prompt(tokenizer, "", 128)
    with pytest.raises(ValueError, match="more than the model's context of 128 tokens"):
        encode_prompt(tokenizer, "word " * 200, 128)


def test_head_calibration_needs_inputs(bundled):
    model, _ = bundled
    head = QuantizedHead(head_weights(model, 0, 0), 4)
    with pytest.raises(ValueError, match="at least one input"):
        head.calibrate([])
