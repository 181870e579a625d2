"""course_lib.models: the bundled GPT-2 loads offline and matches its model card; the Hub path fails fast."""

import json
import logging
import time
import warnings

import numpy as np
import pytest
import torch

from course_lib import models
from course_lib.data import load_evaluation_passages
from course_lib.evaluation import perplexity
from course_lib.models import BUNDLED_MODEL_DIR, ModelUnavailableError, load_model, load_tokenizer, resolve_model_name

METRICS = json.loads((BUNDLED_MODEL_DIR / "metrics.json").read_text())


def test_bundled_model_is_gpt2_architecture(bundled):
    from transformers import GPT2LMHeadModel, GPT2TokenizerFast

    model, tokenizer = bundled
    assert isinstance(model, GPT2LMHeadModel) and isinstance(tokenizer, GPT2TokenizerFast)
    c = model.config
    assert (c.n_layer, c.n_head, c.n_embd, c.n_positions) == (4, 4, 128, 128)
    assert c.vocab_size == len(tokenizer) == METRICS["config"]["vocab_size"]
    assert not model.training
    assert model.config._attn_implementation == "eager"


def test_loads_offline_without_warnings(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any Python warning fails the test
        load_model("course-gpt2")
        load_tokenizer("course-gpt2")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_auto_tokenizer_loads_the_saved_tokenizer(bundled):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(BUNDLED_MODEL_DIR, local_files_only=True)
    text = "Cryptography is a method of encryption."
    assert auto(text)["input_ids"] == bundled[1](text)["input_ids"]
    assert auto.decode(auto(text)["input_ids"]) == text


def test_greedy_generation_is_deterministic_and_matches_the_card(bundled):
    model, tokenizer = bundled
    for expected in METRICS["greedy_completions"]:
        encoded = tokenizer(expected["prompt"], return_tensors="pt")
        runs = [
            model.generate(**encoded, max_new_tokens=20, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            for _ in range(2)
        ]
        assert torch.equal(runs[0], runs[1])
        assert tokenizer.decode(runs[0][0]) == expected["completion"]


@pytest.mark.slow
def test_heldout_perplexity_matches_the_card_within_one_percent(bundled):
    ppl = perplexity(*bundled, load_evaluation_passages())
    assert ppl == pytest.approx(METRICS["heldout_perplexity"], rel=0.01)
    # and the card's claim: at most a tenth of the unigram baseline
    assert METRICS["heldout_perplexity"] <= METRICS["unigram_heldout_perplexity"] / 10


def test_model_choice_from_argument_and_environment(monkeypatch):
    monkeypatch.delenv("COURSE_MODEL", raising=False)
    assert resolve_model_name() == "course-gpt2"
    monkeypatch.setenv("COURSE_MODEL", "gpt2")
    assert resolve_model_name() == "gpt2"
    assert resolve_model_name("course-gpt2") == "course-gpt2"  # the argument wins
    monkeypatch.setenv("COURSE_MODEL", "gpt-5")
    with pytest.raises(ModelUnavailableError, match=r"Unknown model 'gpt-5' \(from \$COURSE_MODEL\).*'course-gpt2'"):
        load_model()
    with pytest.raises(ModelUnavailableError, match="Allowed: 'course-gpt2', 'gpt2'"):
        load_tokenizer("bert")


@pytest.mark.parametrize("loader", [load_model, load_tokenizer])
def test_hub_path_fails_fast_when_offline(loader, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to fall back on
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE is set.*load_model\\('course-gpt2'\\)"):
        loader("gpt2")


@pytest.mark.parametrize("loader", [load_model, load_tokenizer])
def test_hub_path_fails_fast_when_unreachable(loader, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match=r"127\.0\.0\.1:9 is unreachable.*course-gpt2"):
        loader("gpt2")
    assert time.monotonic() - start < models.HUB_CONNECT_TIMEOUT + 5


def test_the_gpt2_shaped_model_is_built_locally_and_seeded():
    from course_lib.gpt2 import head_weights
    from course_lib.models import gpt2_shaped_inputs, gpt2_shaped_model

    model = gpt2_shaped_model()
    config = model.config
    assert (config.n_layer, config.n_head, config.n_embd) == (1, 12, 768)
    weights = head_weights(model, 0, 0)
    assert (weights.n_embd, weights.head_dim) == (768, 64)
    np.testing.assert_array_equal(head_weights(gpt2_shaped_model(), 0, 0).w_qkv, weights.w_qkv)
    inputs = gpt2_shaped_inputs(6, count=3)
    assert [x.shape for x in inputs] == [(6, 768)] * 3
    np.testing.assert_array_equal(gpt2_shaped_inputs(6, count=3)[2], inputs[2])
