"""Greedy text generation, one timed forward pass per new token (notebook 04).

``model.generate`` hides its steps. Here each new token is one forward pass of the whole
sequence, timed, so that when a swapped head or attention runs on ciphertexts
(:class:`~course_lib.gpt2.SwappedHead`, :class:`~course_lib.gpt2.SwappedAttention` in
``"execute"`` mode) the time of each token, and of its encrypted part, is visible.

Greedy decoding (always the most likely token) makes generation deterministic, so the
tokens generated with the encrypted attention can be compared, one by one, with those of
the clear quantized model.

With generation-step circuits (``swap.compile(length, steps_up_to=...)``), the first pass
runs the prompt through the full circuit and every later pass runs only the new token's
row, through the step circuit of its length: the client keeps the earlier rows, as a KV
cache keeps keys and values (see :class:`~course_lib.gpt2.SwappedHead`).
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
        circuit: which circuit ran (``"full, 4 tokens"`` or ``"step, 5 tokens"``), or None.
        pbs: the PBS count of that circuit, or None.
    """

    token_id: int
    text: str
    seconds: float
    encrypted_seconds: float | None
    circuit: str | None = None
    pbs: int | None = None


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

    If ``swap`` runs compiled circuits (``"simulate"`` or ``"execute"``), the prompt must fit
    its circuit's length, and the prompt and the generated tokens but the last must fit its
    circuits (:attr:`~course_lib.gpt2.SwappedHead.max_tokens`): this is checked before the
    first step, so no encrypted work is wasted on a generation that cannot finish.
    """
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise ValueError(f"new_tokens must be a positive integer, got {new_tokens!r}")
    ids = encode_prompt(tokenizer, prompt, model.config.n_positions)
    longest = ids.shape[1] + new_tokens - 1  # the last forward pass reads the prompt and all tokens but the last
    if longest > model.config.n_positions:
        raise ValueError(f"{ids.shape[1]} prompt tokens + {new_tokens} new ones exceed the model's context")
    if swap is not None and swap.mode in ("simulate", "execute"):
        if ids.shape[1] > swap.circuit.length:
            raise ValueError(
                f"the prompt has {ids.shape[1]} tokens but the swapped attention's circuit was compiled for "
                f"{swap.circuit.length}: use a shorter prompt or compile with length={ids.shape[1]}"
            )
        if longest > swap.max_tokens:
            raise ValueError(
                f"the prompt has {ids.shape[1]} tokens, so generating {new_tokens} reads up to {longest} tokens, but "
                f"the circuits were compiled for at most {swap.max_tokens}: compile with steps_up_to={longest} "
                "(or a length that large) or ask for fewer tokens"
            )
    tokens = []
    for _ in range(new_tokens):
        start = time.perf_counter()
        if swap is not None:
            swap.last_seconds, swap.last_circuit = None, None
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits[0, -1]
        token_id = int(logits.argmax())
        seconds = time.perf_counter() - start
        encrypted = swap.last_seconds if swap is not None else None
        ran = swap.last_circuit if swap is not None else None
        tokens.append(
            GeneratedToken(
                token_id,
                tokenizer.decode([token_id]),
                seconds,
                encrypted,
                circuit=None if ran is None else f"{'step' if ran.is_step else 'full'}, {ran.length} tokens",
                pbs=None if ran is None else int(ran.circuit.programmable_bootstrap_count),
            )
        )
        ids = torch.cat([ids, torch.tensor([[token_id]])], dim=1)
    return Generation(prompt, tokens)
