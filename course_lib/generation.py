"""Greedy text generation, one timed forward pass per new token (notebook 04).

``model.generate`` hides its steps. Here each new token is one forward pass of the whole
sequence, timed, so that when a swapped head, attention or layer runs on ciphertexts
(:class:`~course_lib.gpt2.SwappedHead`, :class:`~course_lib.gpt2.SwappedAttention`,
:class:`~course_lib.swapped_layer.SwappedLayer` in ``"execute"`` mode) the time of each token, of
its encrypted part, its PBS and the bytes it sent to a server are visible.

Greedy decoding (always the most likely token) makes generation deterministic, so the
tokens generated with the encrypted attention can be compared, one by one, with those of
the clear quantized model.

With generation-step circuits (``swap.compile(length, steps_up_to=...)``), the first pass
runs the prompt through the full circuit and every later pass runs only the new token's
row, through the step circuit of its length: the client keeps the earlier rows, as a KV
cache keeps keys and values (see :class:`~course_lib.gpt2.SwappedHead`). A swapped layer runs
one step per new token, the encrypted keys and values of earlier tokens kept where the layer
runs (see :class:`~course_lib.swapped_layer.SwappedLayer`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from .checks import check_integer
from .gpt2 import LayerHooks, encode_prompt


@dataclass(frozen=True)
class GeneratedToken:
    """One step of generation.

    Attributes:
        token_id: the token chosen (the most likely one).
        text: its text.
        seconds: the wall time of the step's forward pass.
        encrypted_seconds: the part of it spent on the swapped heads' encrypted part (encode,
            encrypt, run, decrypt), or None when no head ran encrypted or simulated.
        circuit: what ran (``"full, 4 tokens"`` or ``"step, 5 tokens"`` for a swapped head, ``"steps 1-2"``
            or ``"step 3"`` for a swapped layer), or None.
        pbs: its PBS count, or None.
        bytes_sent: the ciphertext bytes sent to a server in this step, or None when none were.
        bytes_received: the ciphertext bytes received from it, or None likewise.
    """

    token_id: int
    text: str
    seconds: float
    encrypted_seconds: float | None
    circuit: str | None = None
    pbs: int | None = None
    bytes_sent: int | None = None
    bytes_received: int | None = None


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


def generate(model, tokenizer, prompt: str, new_tokens: int, swap: LayerHooks | None = None) -> Generation:
    """Generate ``new_tokens`` tokens after ``prompt``, greedily, one timed forward pass each.

    If ``swap`` (a :class:`~course_lib.gpt2.SwappedHead`, :class:`~course_lib.gpt2.SwappedAttention` or
    :class:`~course_lib.swapped_layer.SwappedLayer`) runs compiled circuits (``"simulate"`` or ``"execute"``),
    every forward pass must fit them: the swap checks this before the first step
    (:meth:`~course_lib.gpt2.LayerHooks.check_generation`), so no encrypted work is wasted on a
    generation that cannot finish.
    """
    check_integer(new_tokens, "new_tokens")
    ids = encode_prompt(tokenizer, prompt, model.config.n_positions)
    longest = ids.shape[1] + new_tokens - 1  # the last forward pass reads the prompt and all tokens but the last
    if longest > model.config.n_positions:
        raise ValueError(f"{ids.shape[1]} prompt tokens + {new_tokens} new ones exceed the model's context")
    if swap is not None and swap.mode in ("simulate", "execute"):
        swap.check_generation(ids.shape[1], longest)
    tokens = []
    for _ in range(new_tokens):
        start = time.perf_counter()
        if swap is not None:
            swap.last_seconds = None
        with torch.no_grad():
            logits = model(ids, use_cache=False).logits[0, -1]
        token_id = int(logits.argmax())
        seconds = time.perf_counter() - start
        report = swap.last_pass if swap is not None else None
        tokens.append(
            GeneratedToken(
                token_id,
                tokenizer.decode([token_id]),
                seconds,
                swap.last_seconds if report is not None else None,
                circuit=None if report is None else report.ran,
                pbs=None if report is None else report.pbs,
                bytes_sent=None if report is None else report.bytes_sent,
                bytes_received=None if report is None else report.bytes_received,
            )
        )
        ids = torch.cat([ids, torch.tensor([[token_id]])], dim=1)
    return Generation(prompt, tokens)
