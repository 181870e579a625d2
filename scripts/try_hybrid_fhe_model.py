"""Reproduce notebook 04's section 5: what concrete-ml's ``HybridFHEModel`` does with the bundled model.

``HybridFHEModel`` compiles chosen modules of a PyTorch model (here layer 0's ``c_attn``, the projection to
q, k, v) to FHE circuits that a server runs on the client's encrypted activations. This script makes the
attempts the notebook reports, each in a fresh model, and prints what happened: the compiled circuit's
statistics, or the error, then a 4-token greedy generation in concrete-ml's clear and simulated modes.

    .venv/bin/python scripts/try_hybrid_fhe_model.py                 # every attempt (several minutes)
    .venv/bin/python scripts/try_hybrid_fhe_model.py --attempt single-prompt

Attempts (4-bit activations, accumulators rounded to 6 bits, calibration windows of 4 tokens):

- ``conv1d``: GPT-2's ``Conv1D`` as it is, calibrated on 32 prompts;
- ``linear``: the same after concrete-ml's ``convert_conv1d_to_linear``;
- ``per-token``: an ``nn.Linear`` applied to each token on its own, so that any length is a batch of rows;
- ``single-prompt``: ``linear``, calibrated on one prompt only.

``--dynamic`` passes ``use_dynamic_quantization=True`` to ``compile_model``.
"""

from __future__ import annotations

import argparse
import time
import traceback

import torch
from concrete.ml.torch.hybrid_model import HybridFHEModel, convert_conv1d_to_linear

from course_lib.data import load_calibration_prompts
from course_lib.models import load_model, load_tokenizer

ATTEMPTS = ("conv1d", "linear", "per-token", "single-prompt")
LENGTH = 4  # tokens per calibration window
MODULE = "transformer.h.0.attn.c_attn"


class PerToken(torch.nn.Module):
    """The wrapped module on each token alone: ``(B, T, n) -> (B * T, n) -> (B, T, m)``."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


def calibration_windows(tokenizer, count: int) -> torch.Tensor:
    """The first ``LENGTH`` tokens of the first ``count`` calibration prompts, ``(count, LENGTH)``."""
    ids = [tokenizer(p, return_tensors="pt")["input_ids"][0, :LENGTH] for p in load_calibration_prompts()]
    return torch.stack([i for i in ids if len(i) == LENGTH][:count])


def attempt(name: str, dynamic: bool) -> None:
    torch.manual_seed(0)
    model, tokenizer = load_model(), load_tokenizer()
    model.config.use_cache = False
    attn = model.transformer.h[0].attn
    module = MODULE
    if name != "conv1d":
        attn.c_attn = convert_conv1d_to_linear(attn.c_attn)
    if name == "per-token":
        attn.c_attn, module = PerToken(attn.c_attn), MODULE + ".inner"
    windows = calibration_windows(tokenizer, 1 if name == "single-prompt" else 32)
    print(f"\n== {name}: {module}, calibrated on {tuple(windows.shape)} token ids, dynamic={dynamic}")
    hybrid = HybridFHEModel(model, module_names=[module])
    start = time.perf_counter()
    try:
        hybrid.compile_model(windows, n_bits=4, rounding_threshold_bits=6, use_dynamic_quantization=dynamic)
    except Exception as error:  # the outcome this script reports
        traceback.print_exc(limit=2)
        print(f"compilation failed: {type(error).__name__}: {error}")
        return
    print(f"compiled in {time.perf_counter() - start:.0f} s")
    for key, quantized in hybrid.private_q_modules.items():
        circuit = getattr(quantized, "fhe_circuit", None)
        if circuit is None:
            print(f"{key}: no concrete circuit (run by concrete-ml's GLWE backend)")
            continue
        print(
            f"{key}: widest integer {circuit.graph.maximum_integer_bit_width()} bits, "
            f"{circuit.programmable_bootstrap_count:,} PBS, complexity {circuit.complexity:.3g}"
        )
    prompt = tokenizer("A hash", return_tensors="pt")["input_ids"]
    for mode in ("disable", "simulate"):
        hybrid.set_fhe_mode(mode)
        ids = prompt.clone()
        try:
            for _ in range(4):
                with torch.no_grad():
                    token = model(ids).logits[0, -1].argmax()
                ids = torch.cat([ids, token.view(1, 1)], dim=1)
            print(f"fhe mode {mode!r}: {tokenizer.decode(ids[0])!r}")
        except Exception as error:  # the outcome this script reports
            print(f"fhe mode {mode!r} failed at {ids.shape[1]} tokens: {type(error).__name__}: {str(error)[:300]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--attempt", choices=ATTEMPTS, action="append", help="default: every attempt")
    parser.add_argument("--dynamic", action="store_true", help="use_dynamic_quantization=True")
    args = parser.parse_args()
    for name in args.attempt or ATTEMPTS:
        attempt(name, args.dynamic)


if __name__ == "__main__":
    main()
