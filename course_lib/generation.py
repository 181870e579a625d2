"""Greedy text generation, one timed forward pass per new token (notebook 04).

``model.generate`` hides its steps. Here each new token is one forward pass of the whole
sequence, timed, so that when a swapped head or attention runs on ciphertexts
(:class:`~course_lib.gpt2.SwappedHead`, :class:`~course_lib.gpt2.SwappedAttention` in
``"execute"`` mode) the time of each token, and of its encrypted part, is visible.

Greedy decoding (always the most likely token) makes generation deterministic, so the
tokens generated with the encrypted attention can be compared, one by one, with those of
the clear quantized model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .gpt2 import SwappedHead, encode_prompt


@dataclass(frozen=True)
class GeneratedToken:
    """One step of generation.

    Attributes:
        token_id: the token chosen (the most likely one).
        text: its text.
        seconds: the wall time of the step's forward pass.
        encrypted_seconds: the part of it spent on the swapped heads' encrypted part (encode,
            encrypt, run, decrypt), or None when no head ran encrypted or simulated.
    """

    token_id: int
    text: str
    seconds: float
    encrypted_seconds: float | None


@dataclass(frozen=True)
class Generation:
    """A prompt and the tokens generated after it."""

    prompt: str
    tokens: list[GeneratedToken]

    @property
    def token_ids(self) -> list[int]:
        return [t.token_id for t in self.tokens]

    @property
    def text(self) -> str:
        """The prompt followed by the generated text."""
        return self.prompt + "".join(t.text for t in self.tokens)


def generate(model, tokenizer, prompt: str, new_tokens: int, swap: SwappedHead | None = None) -> Generation:
    """Generate ``new_tokens`` tokens after ``prompt``, greedily, one timed forward pass each.

    If ``swap`` runs compiled circuits (``"simulate"`` or ``"execute"``), the prompt and the
    generated tokens but the last must fit its compiled length: this is checked before the
    first step, so no encrypted work is wasted on a generation that cannot finish.
    """
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise ValueError(f"new_tokens must be a positive integer, got {new_tokens!r}")
    ids = encode_prompt(tokenizer, prompt, model.config.n_positions)
    longest = ids.shape[1] + new_tokens - 1  # the last forward pass reads the prompt and all tokens but the last
    if longest > model.config.n_positions:
        raise ValueError(f"{ids.shape[1]} prompt tokens + {new_tokens} new ones exceed the model's context")
    if swap is not None and swap.mode in ("simulate", "execute") and longest > swap.circuit.length:
        raise ValueError(
            f"the prompt has {ids.shape[1]} tokens, so generating {new_tokens} reads up to {longest} tokens, but the "
            f"circuit was compiled for {swap.circuit.length}: compile with length={longest} or ask for fewer tokens"
        )
    tokens = []
    for _ in range(new_tokens):
        start = time.perf_counter()
        if swap is not None:
            swap.last_seconds = None
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits[0, -1]
        token_id = int(logits.argmax())
        seconds = time.perf_counter() - start
        encrypted = swap.last_seconds if swap is not None else None
        tokens.append(GeneratedToken(token_id, tokenizer.decode([token_id]), seconds, encrypted))
        ids = torch.cat([ids, torch.tensor([[token_id]])], dim=1)
    return Generation(prompt, tokens)
