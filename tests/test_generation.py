"""course_lib.generation: text generated through a swapped head or attention, in every mode; generation-step
circuits run only the new token's row (a KV cache kept by the client)."""

import pytest
import torch
from circuits import logits_in_modes

from course_lib.data import load_calibration_prompts
from course_lib.generation import generate
from course_lib.gpt2 import SwappedAttention, SwappedHead, encode_prompt

PROMPT = "Cryptography is a"
CALIBRATION = load_calibration_prompts(limit=16)


#: The generation circuits' tests run on layer 1 of conftest's tiny GPT-2 (two heads of 4: compiling its
#: attention takes seconds); its layer 0 is the layer tests' (one swap per head at a time).
TINY_LAYER = 1


@pytest.mark.fhe
def test_swapped_attention_modes_and_generation(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    prompt = "A key is"
    with SwappedAttention(model, TINY_LAYER, n_bits=4, lookup_bits=6) as swap:
        assert len(swap.heads) == model.config.n_head and swap.head_indices == [0, 1]
        with pytest.raises(AttributeError, match="use .heads"):
            _ = swap.head
        swap.calibrate(tokenizer, load_calibration_prompts(limit=16))
        float_run = generate(model, tokenizer, prompt, 3)
        swap.mode = "quantized"
        quantized = generate(model, tokenizer, prompt, 3, swap)
        assert all(t.encrypted_seconds is None for t in quantized.tokens)
        n_prompt = tokenizer(prompt, return_tensors="pt")["input_ids"].shape[1]
        swap.compile(length=n_prompt + 2)
        swap.mode = "simulate"
        simulated = generate(model, tokenizer, prompt, 3, swap)
        assert simulated.token_ids == quantized.token_ids
        assert all(t.encrypted_seconds is not None for t in simulated.tokens)
        assert simulated.text == prompt + "".join(t.text for t in simulated.tokens)
        with pytest.raises(ValueError, match=f"compiled for at most {n_prompt + 2}"):
            generate(model, tokenizer, prompt, 4, swap)
        with pytest.raises(ValueError, match="positive integer"):
            generate(model, tokenizer, prompt, 0, swap)
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        logits = logits_in_modes(model, swap, ids)
        torch.testing.assert_close(logits["simulate"], logits["quantized"], rtol=0, atol=0)
    assert len(float_run.tokens) == 3


@pytest.mark.fhe
def test_generation_runs_the_new_token_only_through_step_circuits(tiny_gpt2):
    model, tokenizer = tiny_gpt2
    prompt = "A key is"
    n_prompt = tokenizer(prompt, return_tensors="pt")["input_ids"].shape[1]
    with SwappedAttention(model, TINY_LAYER, n_bits=4, lookup_bits=6) as swap:
        swap.calibrate(tokenizer, load_calibration_prompts(limit=16))
        swap.mode = "quantized"
        quantized = generate(model, tokenizer, prompt, 4, swap)
        with pytest.raises(ValueError, match="steps_up_to must be an integer larger than length"):
            swap.compile(length=n_prompt, steps_up_to=n_prompt)
        swap.compile(length=n_prompt, steps_up_to=n_prompt + 2)
        assert [c.length for c in swap.circuits] == [n_prompt, n_prompt + 1, n_prompt + 2]
        assert swap.max_tokens == n_prompt + 2
        swap.mode = "simulate"
        simulated = generate(model, tokenizer, prompt, 3, swap)
        assert simulated.token_ids == quantized.token_ids[:3]
        assert [t.circuit for t in simulated.tokens] == [
            f"full, {n_prompt} tokens",
            f"step, {n_prompt + 1} tokens",
            f"step, {n_prompt + 2} tokens",
        ]
        assert simulated.tokens[1].pbs < min(simulated.tokens[0].pbs, simulated.tokens[2].pbs)  # 4 tokens: 1 row
        with pytest.raises(ValueError, match=f"compiled for at most {n_prompt + 2}: compile with steps_up_to"):
            generate(model, tokenizer, prompt, 4, swap)
        with pytest.raises(ValueError, match=f"compiled for {n_prompt}: use a shorter prompt"):
            generate(model, tokenizer, prompt + " a secret", 1, swap)
        # A sequence that does not extend the previous one by a token runs the full circuit again.
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            model(ids)
        assert swap.last_circuit is swap.circuit


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


def test_generate_helper_errors(bundled):

    _, tokenizer = bundled
    with pytest.raises(ValueError, match="non-empty string"):
        encode_prompt(tokenizer, "", 128)
    with pytest.raises(ValueError, match="more than the model's context of 128 tokens"):
        encode_prompt(tokenizer, "word " * 200, 128)
