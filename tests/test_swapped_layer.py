"""course_lib.swapped_layer: a whole attention layer of a GPT-2 swapped for the quantized layer, in every mode.

The tiny random GPT-2 of ``conftest.py`` at 3 bits, and a module of 3 steps, keep compilation and keys
affordable; the exact rounding of the accumulators makes simulation and execution equal the clear integers
bit for bit.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from conftest import TINY_MAX_TOKENS

from course_lib.client import RemoteLayer, ServerProcess
from course_lib.data import load_calibration_prompts
from course_lib.layer import ProjectionWeights
from course_lib.swapped_layer import SwappedLayer, projection_weights

PROMPT = "Cryptography is a"
MAX_TOKENS = TINY_MAX_TOKENS


@pytest.fixture(scope="module")
def tiny(tiny_gpt2):
    return tiny_gpt2


@pytest.fixture(scope="module")
def swap(tiny_swap):
    return tiny_swap


def prompt_ids(tokenizer):
    """The prompt's first 2 tokens: generating 2 more takes 2 forward passes, of 2 then MAX_TOKENS tokens."""
    return tokenizer(PROMPT, return_tensors="pt")["input_ids"][:, :2]


def generate(model, ids, new_tokens=2):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0)[0].tolist()


def test_float_mode_leaves_the_model_untouched(tiny):
    model, tokenizer = tiny
    ids = prompt_ids(tokenizer)
    with torch.no_grad():
        before = model(ids).logits
    with SwappedLayer(model, 1, n_bits=4, n_bits_c_proj=3) as other:
        other.calibrate(tokenizer, load_calibration_prompts(limit=4))
        assert other.mode == "float"
        assert other.quantized.w_proj.params.n_bits == 3  # c_proj's
        assert other.quantized.heads[0].n_bits_weights == 6  # c_attn's: the projection's default
        with torch.no_grad():
            assert torch.equal(model(ids).logits, before)


def test_projection_weights_are_c_projs(tiny):
    model, _ = tiny
    c_proj = projection_weights(model, 1)
    x = np.random.default_rng(0).normal(size=(3, 16))
    with torch.no_grad():
        expected = model.transformer.h[1].attn.c_proj(torch.from_numpy(x).float()).double().numpy()
    np.testing.assert_allclose(x @ c_proj.w + c_proj.b, expected, atol=1e-5)


def test_quantized_mode_replaces_c_projs_output_with_the_layers(tiny, swap):
    """The model's attention output becomes the quantized layer's, dequantized: the clear integers of every
    head and c_proj, which follow the float layer."""
    model, tokenizer = tiny
    ids = prompt_ids(tokenizer)
    seen = {}
    handle = model.transformer.h[0].attn.register_forward_hook(lambda m, a, out: seen.update(y=out[0]))
    try:
        swap.mode = "float"
        with torch.no_grad():
            model(ids)
        float_y = seen["y"][0].double().numpy()
        swap.mode = "quantized"
        with torch.no_grad():
            model(ids)
        quantized_y = seen["y"][0].double().numpy()
    finally:
        handle.remove()
    x = swap.attention_input(ids)
    np.testing.assert_allclose(quantized_y, swap.quantized.run(x).dequantize(), atol=1e-6)  # float32 in the model
    # at 3 bits the layer is rough (mean error about 80 % of the output's mean size here) but follows the float one
    assert np.corrcoef(quantized_y.ravel(), float_y.ravel())[0, 1] > 0.6


def test_simulation_gives_the_clear_layers_output(tiny, swap):
    model, tokenizer = tiny
    x = swap.attention_input(prompt_ids(tokenizer))
    swap.mode = "quantized"
    quantized = swap.output(x)
    swap.mode = "simulate"
    np.testing.assert_array_equal(swap.output(x), quantized)
    swap.mode = "float"


def steps_per_forward_pass(model, swap):
    """A list that each forward pass of the model appends its number of layer steps to (hooked after the swap)."""
    steps = []
    handle = model.transformer.h[0].attn.c_proj.register_forward_hook(
        lambda m, a, out: steps.append(len(swap.last_runs))
    )
    return steps, handle


def test_encrypted_generation_needs_none_of_the_layers_weights(tiny, swap):
    """The published split's promise, on ciphertexts in this process: with the swapped layer's c_attn and
    c_proj replaced by NaN in the client's model and in its quantized layer, greedy generation gives the
    clear quantized layer's tokens; the prompt runs one step per token, each later pass one step."""
    model, tokenizer = tiny
    ids = prompt_ids(tokenizer)
    swap.mode = "quantized"
    expected = generate(model, ids)
    attn, layer = model.transformer.h[0].attn, swap.quantized
    saved_torch = {name: p.detach().clone() for name, p in attn.named_parameters()}
    saved = [(h.weights, h.w_parts) for h in layer.heads], layer.c_proj, layer.w_proj
    steps, handle = steps_per_forward_pass(model, swap)
    try:
        with torch.no_grad():
            for p in attn.parameters():
                p.fill_(float("nan"))
        for head in layer.heads:
            head.weights = dataclasses.replace(head.weights, w_qkv=np.full_like(head.weights.w_qkv, np.nan))
            head.w_parts = None
        layer.c_proj = ProjectionWeights(np.full((16, 16), np.nan), np.full(16, np.nan))
        layer.w_proj = None
        swap.mode = "execute"
        assert generate(model, ids) == expected
        assert steps == [2, 1]  # the prompt's 2 tokens, then the new one
    finally:
        handle.remove()
        with torch.no_grad():
            for name, p in attn.named_parameters():
                p.copy_(saved_torch[name])
        for head, (weights, parts) in zip(layer.heads, saved[0], strict=True):
            head.weights, head.w_parts = weights, parts
        layer.c_proj, layer.w_proj = saved[1], saved[2]
        swap.mode = "float"


def test_remote_layer_generates_the_same_text_one_x_per_token(tiny, swap):
    model, tokenizer = tiny
    ids = prompt_ids(tokenizer)
    swap.mode = "quantized"
    expected = generate(model, ids)
    with ServerProcess(swap.circuit, in_process=True) as server, RemoteLayer(server.url, swap.circuit) as remote:
        swap.remote = remote
        try:
            swap.mode = "execute"
            assert generate(model, ids) == expected
            assert remote.tokens == MAX_TOKENS  # the last generated token needs no forward pass
            assert len(remote.sent) == 1 + MAX_TOKENS  # the evaluation keys, then one encrypted x per token
            assert len({len(body) for body in remote.sent[1:]}) == 1  # the same bytes at every length
        finally:
            swap.remote = None
            swap.mode = "float"


def test_the_swap_checks_its_state_and_inputs(tiny, swap):
    model, tokenizer = tiny
    fresh = SwappedLayer(model, 1, n_bits=4)
    try:
        with pytest.raises(RuntimeError, match="calibrate the layer before using mode 'quantized'"):
            fresh.mode = "quantized"
        with pytest.raises(RuntimeError, match="calibrate the layer before compiling it"):
            fresh.compile(2)
        with pytest.raises(ValueError, match="mode must be one of"):
            fresh.mode = "encrypted"
    finally:
        fresh.remove()
    swap.mode = "simulate"
    long = tokenizer("one two three four five six seven eight", return_tensors="pt")["input_ids"]
    assert long.shape[1] > MAX_TOKENS
    with pytest.raises(ValueError, match=f"compiled for sequences of up to {MAX_TOKENS} tokens"), torch.no_grad():
        model(long)
    with pytest.raises(ValueError, match="batch of one sequence, got a batch of 2"), torch.no_grad():
        model(torch.cat([prompt_ids(tokenizer)] * 2))
    swap.mode = "float"
