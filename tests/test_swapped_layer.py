"""course_lib.swapped_layer: a whole attention layer of a GPT-2 swapped for the quantized layer, in every mode.

The tiny random GPT-2 of ``conftest.py`` at 3 bits, and a module of 3 steps, keep compilation and keys
affordable; the exact rounding of the accumulators makes simulation and execution equal the clear integers
bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from concrete import fhe
from conftest import TINY_MAX_TOKENS, TINY_N_EMBD

from course_lib.client import RemoteLayer, ServerProcess
from course_lib.data import load_calibration_prompts
from course_lib.generation import generate as generate_text
from course_lib.keys import unload_keys
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
    x = np.random.default_rng(0).normal(size=(3, TINY_N_EMBD))
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
    steps, handle = steps_per_forward_pass(model, swap)
    try:
        with swap.weights_withheld():
            attn, layer = model.transformer.h[0].attn, swap.quantized
            assert all(torch.isnan(p).all() for p in attn.parameters())
            assert all(np.isnan(h.weights.w_qkv).all() and h.w_parts is None for h in layer.heads)
            assert np.isnan(layer.c_proj.w).all() and layer.w_proj is None
            swap.mode = "execute"
            assert generate(model, ids) == expected
            assert steps == [2, 1]  # the prompt's 2 tokens, then the new one
        swap.mode = "quantized"
        assert generate(model, ids) == expected  # every weight back
    finally:
        handle.remove()
        swap.mode = "float"


def test_remote_layer_generates_the_same_text_one_x_per_token(tiny, swap):
    """Generation through a server (course_lib.generation.generate): the clear quantized tokens, one step per
    new token after the prompt's, each step's PBS and bytes reported, the same bytes sent at every length."""
    model, tokenizer = tiny
    ids = prompt_ids(tokenizer)
    prompt = tokenizer.decode(ids[0])
    assert tokenizer(prompt)["input_ids"] == ids[0].tolist()
    swap.mode = "quantized"
    expected = generate(model, ids)
    clear = generate_text(model, tokenizer, prompt, 2, swap)
    assert clear.token_ids == expected[2:]
    assert [t.circuit for t in clear.tokens] == [None, None]  # nothing compiled ran
    pbs = swap.circuit.pbs_per_step()
    with ServerProcess(swap.circuit, in_process=True) as server, RemoteLayer(server.url, swap.circuit) as remote:
        swap.remote = remote
        try:
            swap.mode = "execute"
            encrypted = generate_text(model, tokenizer, prompt, 2, swap)
            assert encrypted.token_ids == clear.token_ids
            assert remote.tokens == MAX_TOKENS  # the last generated token needs no forward pass
            assert len(remote.sent) == 1 + MAX_TOKENS  # the evaluation keys, then one encrypted x per token
            x_bytes = {len(body) for body in remote.sent[1:]}
            assert len(x_bytes) == 1  # the same bytes at every length
            assert [t.circuit for t in encrypted.tokens] == ["steps 1-2", "step 3"]
            assert [t.pbs for t in encrypted.tokens] == [pbs[1] + pbs[2], pbs[3]]
            assert [t.bytes_sent for t in encrypted.tokens] == [2 * x_bytes.pop(), len(remote.sent[-1])]
            assert all(t.bytes_received > 0 and t.encrypted_seconds > 0 for t in encrypted.tokens)
            assert [position for position, _ in remote.history] == [1, 2, 3]
            assert [stats.bytes_sent for _, stats in remote.history] == [len(b) for b in remote.sent[1:]]
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
    prompt = tokenizer.decode(prompt_ids(tokenizer)[0])  # 2 tokens: 3 new ones read up to 4
    with pytest.raises(ValueError, match=r"reads up to 4 tokens, but the layer was compiled for at most 3"):
        generate_text(model, tokenizer, prompt, 3, swap)
    swap.mode = "float"


def test_unload_keys_forgets_a_modules_keys(swap):
    """course_lib.keys.unload_keys frees a module's keys (notebook 04 does it before its Dask section)."""
    module = swap.circuit.module
    saved = module.keys.serialize()
    try:
        unload_keys(module)
        assert not module.keys.are_generated
        with pytest.raises(RuntimeError, match="needs the module's keys in memory"):
            swap.mode = "execute"
    finally:
        module.keys = fhe.Keys.deserialize(saved)
        swap.mode = "float"
    assert module.keys.are_generated
