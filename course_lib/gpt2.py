"""Put quantized heads inside Hugging Face's GPT2LMHeadModel.

GPT-2's attention concatenates its heads' outputs and multiplies them by
``c_proj``; head ``h`` is the slice ``[h * d, (h + 1) * d)`` of ``c_proj``'s input.
:class:`SwappedHead` replaces exactly that slice with the output of a
:class:`~course_lib.attention.QuantizedHead` (:class:`SwappedAttention` replaces every
head's slice: the whole multi-head attention but its two projections), through two
forward hooks and no change to transformers' code:

- a pre-hook on ``transformer.h[layer].attn`` keeps the attention's input
  ``x`` (the output of ``ln_1``), which the quantized head reads;
- a pre-hook on ``transformer.h[layer].attn.c_proj`` overwrites head ``h``'s slice.

Every other head, and everything else in the model, stays in float. The same
works on the bundled ``course-gpt2`` and on OpenAI's ``gpt2``. The whole layer with its
two projections (the published split) is :class:`course_lib.swapped_layer.SwappedLayer`,
which shares the hooks of :class:`LayerHooks`.

Modes of the swapped head:

- ``"float"``: the model untouched;
- ``"quantized"``: the quantized head on clear integers, any sequence length;
- ``"simulate"``: the head's encrypted part (:meth:`QuantizedHead.attend`) run by concrete's
  simulation of the compiled circuit (see :meth:`SwappedHead.compile`);
- ``"execute"``: the same on real ciphertexts, locally or, if :attr:`SwappedHead.remote` is
  set, on a server (:class:`course_lib.client.RemoteHead`).

In the last two modes sequences are padded to the circuit's length, and longer ones are
refused with an error naming that length; unless generation-step circuits were compiled
(``compile(..., steps_up_to=...)``): then a sequence that extends the previous one by a
token runs the step circuit of its length, which computes only the new token's row (the
earlier rows are those of the previous run, kept by the client): generation with a KV
cache, notebook 04.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .attention import HeadWeights, QuantizedHead
from .checks import check_integer
from .config import COURSE, PUBLISHED, HeadConfig, head_config
from .fast_attention import build_head
from .fhe import DEFAULT_LENGTH, HeadCircuit
from .keys import KeyReport, cached_keys_path, ensure_keys, keys_loaded, unload_keys
from .progress import progress_bar

MODES: tuple[str, ...] = ("float", "quantized", "simulate", "execute")


def check_layer_head(model, layer: int, head: int) -> None:
    """Raise a ValueError naming the allowed ranges if ``layer`` or ``head`` does not exist."""
    n_layer, n_head = model.config.n_layer, model.config.n_head
    for name, value, count in (("layer", layer, n_layer), ("head", head, n_head)):
        check_integer(value, name, 0, count - 1, unit=f"this model has {count}")


def head_weights(model, layer: int = 0, head: int = 0) -> HeadWeights:
    """Head ``head`` of layer ``layer``: its columns of ``c_attn`` and its score scale, as NumPy."""
    check_layer_head(model, layer, head)
    config = model.config
    d = config.n_embd // config.n_head
    attn = model.transformer.h[layer].attn
    w = attn.c_attn.weight.detach().double().numpy()  # Conv1D: (n_embd, 3 * n_embd), q | k | v
    b = attn.c_attn.bias.detach().double().numpy()
    columns = np.concatenate(
        [np.arange(part * config.n_embd + head * d, part * config.n_embd + (head + 1) * d) for part in range(3)]
    )
    scale = 1.0
    if config.scale_attn_weights:
        scale /= np.sqrt(d)
    if config.scale_attn_by_inverse_layer_idx:
        scale /= layer + 1
    return HeadWeights(w_qkv=w[:, columns], b_qkv=b[columns], score_scale=float(scale))


def encode_prompt(tokenizer, prompt: str, max_length: int) -> torch.Tensor:
    """Token ids ``(1, T)`` of a prompt, refusing empty prompts and prompts longer than the context."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"the prompt must be a non-empty string, got {prompt!r}")
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    if ids.shape[1] > max_length:
        raise ValueError(
            f"the prompt is {ids.shape[1]} tokens long, more than the model's context of {max_length} tokens"
        )
    return ids


def encode_passage(tokenizer, text: str, context: int) -> list[int]:
    """``<|endoftext|>`` then the passage's tokens, cut to ``context`` ids (how passages are scored)."""
    return [tokenizer.eos_token_id, *tokenizer(text)["input_ids"][: context - 1]]


@dataclass(frozen=True)
class _PreviousRun:
    """What the client keeps from the last encrypted (or simulated) run: its integer inputs and real outputs."""

    qkv: tuple[np.ndarray, np.ndarray, np.ndarray]
    output: np.ndarray

    def extended_by_one(self, qkv: Sequence[np.ndarray]) -> bool:
        """True if ``qkv`` is this run's input with one more token at the end."""
        return all(
            a.shape[0] == b.shape[0] + 1 and np.array_equal(a[:-1], b) for a, b in zip(qkv, self.qkv, strict=True)
        )


@dataclass(frozen=True)
class PassReport:
    """What a swap's compiled part ran in the last forward pass (``"simulate"`` or ``"execute"``).

    Attributes:
        ran: which circuit or steps ran, e.g. ``"full, 4 tokens"``, ``"step, 5 tokens"``, ``"steps 1-2"``.
        pbs: their PBS count.
        bytes_sent: ciphertext bytes the client sent to a server in that pass (None when nothing was sent).
        bytes_received: ciphertext bytes it received back (None likewise).
    """

    ran: str
    pbs: int
    bytes_sent: int | None = None
    bytes_received: int | None = None


#: The attribute of a layer's attention module that lists the swaps attached to it.
_SWAPS = "_course_swaps"


class LayerHooks(ABC):
    """What every swap into layer ``layer`` of a GPT-2 shares: a pre-hook on the attention that keeps its
    input ``x``, one hook on ``c_proj`` (the subclass's), the layer's attention inputs for calibration, and
    :meth:`remove`. Hugging Face's KV cache is turned off while attached (a swap reads the whole sequence).

    Subclasses call :meth:`_hook` from their constructor and read ``self._x`` in their ``c_proj`` hook.
    """

    _mode: str
    _what: str  # what the subclass swaps in, for messages: "head", "layer"

    def _hook(self, model, layer: int, heads: Sequence[int], c_proj_hook: Callable[[torch.nn.Module], object]) -> None:
        """Attach the hooks for ``heads`` of layer ``layer``, or raise a ValueError if another swap holds one."""
        attn = model.transformer.h[int(layer)].attn
        attached: list[LayerHooks] = attn.__dict__.setdefault(_SWAPS, [])
        for other in attached:
            shared = sorted(set(heads) & set(other._swapped_heads))
            if shared:
                raise ValueError(
                    f"head {shared[0]} of layer {layer} is already swapped by {other!r}: one swap per head at a "
                    "time. Remove that swap first (its .remove(), or swap inside a `with` block that removes it "
                    "on leaving), then swap again"
                )
        self.model, self.layer = model, int(layer)
        self._swapped_heads = tuple(int(h) for h in heads)
        self._x: torch.Tensor | None = None  # the attention input of the current forward pass
        attached.append(self)
        self._saved_use_cache = (model.config.use_cache, model.generation_config.use_cache)
        model.config.use_cache = False
        model.generation_config.use_cache = False
        self._handles = [attn.register_forward_pre_hook(self._keep_input, with_kwargs=True), c_proj_hook(attn.c_proj)]

    def _keep_input(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if self._mode == "float":
            return None
        if hidden.shape[0] != 1:
            raise ValueError(
                f"a swapped {self._what} runs on a batch of one sequence, got a batch of {hidden.shape[0]}"
            )
        cache = kwargs.get("past_key_values")
        if cache is not None and cache.get_seq_length() > 0:
            raise RuntimeError(
                f"the KV cache must be off while a {self._what} is swapped: call generate(..., use_cache=False)"
            )
        self._x = hidden
        return None

    # -- mode ------------------------------------------------------------------------------------
    _compile_call: str  # how to compile, for messages

    @property
    def mode(self) -> str:
        """One of :data:`MODES` (see the module's docstring)."""
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
        if mode != "float" and not self.is_calibrated:
            raise RuntimeError(
                f"calibrate the {self._what} before using mode {mode!r}: swap.calibrate(tokenizer, prompts)"
            )
        if mode in ("simulate", "execute") and self.circuit is None:
            raise RuntimeError(f"compile the {self._what} before using mode {mode!r}: {self._compile_call}")
        if mode == "execute" and self.remote is None:
            self._check_keys()
        self._mode = mode
        self._restart()

    @abstractmethod
    def _check_keys(self) -> None:
        """Raise a RuntimeError saying how to get the keys, if ``"execute"`` (in this process) lacks them."""

    @abstractmethod
    def _restart(self) -> None:
        """Forget what the swap kept of the sequence run so far."""

    # -- generation --------------------------------------------------------------------------------
    def check_generation(self, prompt_tokens: int, longest: int) -> None:
        """Raise a ValueError, saying what to compile, if the compiled part cannot run a generation whose
        prompt has ``prompt_tokens`` tokens and whose forward passes read up to ``longest`` tokens."""
        most = self._most_tokens()
        if longest > most:
            raise ValueError(
                f"the prompt has {prompt_tokens} tokens, so generating {longest - prompt_tokens + 1} reads up to "
                f"{longest} tokens, but the {self._what} was compiled for at most {most}: "
                f"{self._compile_for(longest)} or ask for fewer tokens"
            )

    @abstractmethod
    def _most_tokens(self) -> int:
        """The longest sequence the compiled part runs."""

    @abstractmethod
    def _compile_for(self, tokens: int) -> str:
        """How to compile for sequences of ``tokens`` tokens, for messages."""

    @property
    @abstractmethod
    def last_pass(self) -> PassReport | None:
        """What the compiled part ran in the last forward pass, or None if it ran nothing (float, quantized)."""

    # -- calibration inputs ------------------------------------------------------------------------
    def attention_inputs(self, tokenizer, texts: Iterable[str]) -> list[np.ndarray]:
        """The layer's attention inputs ``(T, n_embd)`` for each text, read by the float model.

        Texts are encoded as the evaluation encodes passages: ``<|endoftext|>`` first,
        cut to the model's context.
        """
        context = self.model.config.n_positions
        ids = []
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"calibration texts must be non-empty strings, got {text!r}")
            ids.append(torch.tensor([encode_passage(tokenizer, text, context)]))
        return [self.attention_input(one) for one in ids]

    def attention_input(self, ids: torch.Tensor) -> np.ndarray:
        """The layer's attention input ``(T, n_embd)`` for token ids ``(1, T)``, read by the float model.

        A hook of its own reads it, so this works whether the swap is attached or already removed; the swap
        itself runs in ``"float"`` mode meanwhile.
        """
        captured: list[np.ndarray] = []

        def keep(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured.append(hidden[0].detach().double().numpy())

        saved, self._mode = self._mode, "float"
        handle = self.model.transformer.h[self.layer].attn.register_forward_pre_hook(keep, with_kwargs=True)
        try:
            with torch.no_grad():
                self.model(ids)
            return captured[0]
        finally:
            handle.remove()
            self._mode = saved

    # -- lifetime ----------------------------------------------------------------------------------
    def remove(self) -> None:
        """Detach the hooks and restore the model's cache settings (again: a no-op)."""
        if not self._handles:
            return
        for handle in self._handles:
            handle.remove()
        self._handles = []
        attached = self.model.transformer.h[self.layer].attn.__dict__.get(_SWAPS, [])
        if self in attached:
            attached.remove(self)
        self.model.config.use_cache, self.model.generation_config.use_cache = self._saved_use_cache

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


class SwappedHead(LayerHooks):
    """Head ``head`` of layer ``layer`` of a GPT-2, replaced by a quantized head.

    >>> swap = SwappedHead(model, layer=0, head=0, n_bits=4)
    >>> swap.calibrate(tokenizer, load_calibration_prompts())   # then frozen
    >>> swap.mode = "quantized"
    >>> model.generate(...)                                      # runs the quantized head
    >>> swap.remove()                                            # the model as it was

    The head's settings are a :class:`~course_lib.config.HeadConfig` (default
    :data:`~course_lib.config.PUBLISHED`: the published design, exact products, 4 bits); keyword
    arguments change single fields of it (``n_bits=6``, ``design="fast"``, ``lookup_bits=6``, ...).

    While attached, the model's KV cache is turned off: the quantized head reads
    the whole sequence at every step (``generate`` is for a batch of one).
    Also usable as a context manager (``with SwappedHead(...) as swap:``).
    """

    _what = "head"
    _compile_call = "swap.compile()"

    #: The settings a swap of this class uses unless told otherwise.
    default_config: HeadConfig = PUBLISHED

    def __init__(self, model, layer: int = 0, head: int = 0, config: HeadConfig | None = None, **settings):
        self._attach(model, layer, [head], head_config(config, default=self.default_config, **settings))

    def _attach(self, model, layer: int, heads: Sequence[int], config: HeadConfig) -> None:
        for head in heads:
            check_layer_head(model, layer, head)
        self.head_indices = [int(h) for h in heads]
        #: The heads' settings (:class:`~course_lib.config.HeadConfig`).
        self.config = config
        #: The quantized heads, in the order of :attr:`head_indices`.
        self.heads: list[QuantizedHead] = [build_head(head_weights(model, layer, h), config) for h in self.head_indices]
        self._mode = "float"
        self.calibration_inputs: list[np.ndarray] = []
        self.circuit: HeadCircuit | None = None
        #: Generation-step circuits by sequence length (see :meth:`compile`).
        self.step_circuits: dict[int, HeadCircuit] = {}
        self.last_circuit: HeadCircuit | None = None  # the circuit of the last simulate/execute run
        self._previous: _PreviousRun | None = None
        self.key_cache_dir = None  # where "execute" looks for keys it has to load (None: course_lib.keys' default)
        self.remote = None  # a course_lib.client.RemoteHead: "execute" then runs on that server
        self.last_seconds: float | None = None  # time of the head's last run in simulate/execute mode
        self.last_run = None  # details of the last execution: times (local) or RunStats (remote)
        self._hook(
            model, layer, self.head_indices, lambda c_proj: c_proj.register_forward_pre_hook(self._replace_slice)
        )

    @property
    def n_bits(self) -> int:
        """The heads' activation bits (:attr:`config`)."""
        return self.config.n_bits

    @property
    def head(self) -> QuantizedHead:
        """The quantized head (a :class:`SwappedAttention` has several: see :attr:`heads`)."""
        if len(self.heads) != 1:
            raise AttributeError(f"{type(self).__name__} swaps {len(self.heads)} heads: use .heads")
        return self.heads[0]

    @property
    def head_index(self) -> int:
        """The index of the swapped head in its layer (one head only)."""
        if len(self.heads) != 1:
            raise AttributeError(f"{type(self).__name__} swaps {len(self.heads)} heads: use .head_indices")
        return self.head_indices[0]

    @property
    def is_calibrated(self) -> bool:
        return all(head.is_calibrated for head in self.heads)

    def _check_keys(self) -> None:
        missing = [
            c
            for c in self.circuits
            if not c.circuit.keys.are_generated and not cached_keys_path(c.circuit, self.key_cache_dir)
        ]
        if missing:
            raise RuntimeError(
                "mode 'execute' needs the circuits' keys: swap.ensure_keys(), or "
                "course_lib.keys.ensure_keys(swap.circuit.circuit) for the circuit alone"
            )

    def _restart(self) -> None:
        self._previous = None

    def compile(
        self,
        length: int = DEFAULT_LENGTH,
        config=None,
        *,
        steps_up_to: int | None = None,
        progress: bool = False,
        scope: str = "attention",
    ) -> HeadCircuit:
        """Compile the head's encrypted part for sequences of up to ``length`` tokens (kept in :attr:`circuit`).

        With ``steps_up_to``, also compile a generation-step circuit (``HeadCircuit(..., queries=1)``)
        for every length from ``length + 1`` to ``steps_up_to`` (kept in :attr:`step_circuits`):
        the prompt runs through :attr:`circuit`, each later token through the step circuit of its
        length. ``progress`` shows a bar over the circuits. ``scope`` (see :data:`course_lib.contract.HEAD_SCOPES`):
        ``"projection+attention"`` compiles the projection into the circuit, which then takes the
        encrypted ``x``; the client keeps only the input quantizer. Returns :attr:`circuit`.
        """
        if not self.is_calibrated:
            raise RuntimeError("calibrate the head before compiling it: swap.calibrate(tokenizer, prompts)")
        if steps_up_to is not None:
            check_integer(steps_up_to, "steps_up_to", length + 1, allowed=f"an integer larger than length={length}")
        lengths = [length, *range(length + 1, (steps_up_to or length) + 1)]
        compiled = [
            HeadCircuit(self.heads, self.calibration_inputs, n, config, queries=None if n == length else 1, scope=scope)
            for n in progress_bar(lengths, desc="compiling", unit="circuit", show=progress)
        ]
        self.circuit, self.step_circuits = compiled[0], {c.length: c for c in compiled[1:]}
        self._previous = None
        return self.circuit

    @property
    def circuits(self) -> list[HeadCircuit]:
        """Every compiled circuit: :attr:`circuit`, then the step circuits by length."""
        if self.circuit is None:
            return []
        return [self.circuit, *(self.step_circuits[n] for n in sorted(self.step_circuits))]

    @property
    def max_tokens(self) -> int:
        """The longest sequence the compiled circuits can read (0 before :meth:`compile`)."""
        return max((c.length for c in self.circuits), default=0)

    def check_generation(self, prompt_tokens: int, longest: int) -> None:
        if prompt_tokens > self.circuit.length:
            raise ValueError(
                f"the prompt has {prompt_tokens} tokens but the swapped attention's circuit was compiled for "
                f"{self.circuit.length}: use a shorter prompt or compile with length={prompt_tokens}"
            )
        super().check_generation(prompt_tokens, longest)

    def _most_tokens(self) -> int:
        return self.max_tokens

    def _compile_for(self, tokens: int) -> str:
        return f"compile with steps_up_to={tokens} (or a length that large)"

    @property
    def last_pass(self) -> PassReport | None:
        ran = self.last_circuit
        if ran is None or self.last_seconds is None:
            return None
        pbs = int(ran.circuit.programmable_bootstrap_count)
        stats = self.last_run if self.remote is not None and self._mode == "execute" else None
        sent, received = (stats.bytes_sent, stats.bytes_received) if stats is not None else (None, None)
        return PassReport(f"{'step' if ran.is_step else 'full'}, {ran.length} tokens", pbs, sent, received)

    def ensure_keys(self, cache_dir=None, *, progress: bool = True) -> list[KeyReport]:
        """Generate (or find in the cache) the keys of every circuit, and leave them on disk.

        ``"execute"`` then loads each circuit's keys for its run and forgets them after, so
        that one circuit's decompressed keys at most are in memory (see :mod:`course_lib.keys`).
        """
        self.key_cache_dir = cache_dir
        reports = []
        for compiled in self.circuits:
            reports.append(ensure_keys(compiled.circuit, cache_dir, progress=progress))
            unload_keys(compiled.circuit)
        return reports

    # -- hooks -----------------------------------------------------------------------------------
    def _replace_slice(self, module, args):
        if self._mode == "float" or self._x is None:
            return None
        merged = args[0]  # (1, T, n_embd): every head's output side by side
        x, self._x = self._x, None
        out = torch.from_numpy(self._head_output(x[0].detach().double().numpy()))  # (T, n_heads * d)
        d = self.heads[0].weights.head_dim
        merged = merged.clone()
        for k, h in enumerate(self.head_indices):
            merged[0, :, h * d : (h + 1) * d] = out[:, k * d : (k + 1) * d].to(merged.dtype)
        return (merged, *args[1:])

    def _head_output(self, x: np.ndarray) -> np.ndarray:
        """The heads' outputs ``(T, n_heads * d)`` in reals, side by side, computed as the mode says."""
        if self._mode == "quantized":
            return np.concatenate([head.run(x).dequantize() for head in self.heads], axis=1)
        start = time.perf_counter()
        qkv = self.circuit.encode(x, pad=False)  # the client's clear part
        step = self.step_circuits.get(len(x))
        previous, self._previous = self._previous, None
        if step is not None and self.remote is None and previous is not None and previous.extended_by_one(qkv):
            circuit, inputs = step, (qkv[0][-1:], *qkv[1:])  # the new token's query, every key and value
        else:
            circuit, inputs = self.circuit, qkv  # padded by prepare (too long: SequenceLengthError)
        if self._mode == "simulate":
            out = circuit.simulate(*inputs)
        elif self.remote is not None:
            out, self.last_run = self.remote.run(*circuit.prepare(*inputs))
        else:
            with keys_loaded(circuit.circuit, self.key_cache_dir):
                out, self.last_run = circuit.timed_execute(*inputs)
        rows = circuit.dequantize(out, tokens=len(x) if circuit is self.circuit else None)
        output = np.concatenate([previous.output, rows]) if circuit is step else rows
        self._previous = _PreviousRun(tuple(qkv), output)
        self.last_circuit = circuit
        self.last_seconds = time.perf_counter() - start
        return output

    # -- calibration ------------------------------------------------------------------------------
    def calibrate(self, tokenizer, prompts: Sequence[str]) -> None:
        """Calibrate the quantized head on the attention inputs of ``prompts``, then freeze it."""
        if isinstance(prompts, str) or len(prompts) == 0:
            raise ValueError("calibrate needs a non-empty list of prompts")
        self.calibration_inputs = self.attention_inputs(tokenizer, prompts)
        for head in self.heads:
            head.calibrate(self.calibration_inputs)

    def __repr__(self) -> str:
        state = "calibrated" if self.is_calibrated else "not calibrated"
        heads = f"head={self.head_indices[0]}" if len(self.heads) == 1 else f"heads={self.head_indices}"
        return f"{type(self).__name__}(layer={self.layer}, {heads}, n_bits={self.n_bits}, {state}, mode={self.mode})"


class SwappedAttention(SwappedHead):
    """Every head of layer ``layer`` replaced by quantized heads: the whole token-mixing part of the attention.

    The same modes and methods as :class:`SwappedHead`, for all heads at once. The client
    computes ``c_attn`` (each head's :meth:`~QuantizedHead.project`) and, after the heads,
    ``c_proj`` in float, as it computes the rest of GPT-2; in ``"simulate"`` and ``"execute"``
    modes one circuit runs every head's encrypted part (:class:`~course_lib.fhe.HeadCircuit`
    with all the heads). The default settings are :data:`~course_lib.config.COURSE` (the fast design,
    :mod:`course_lib.fast_attention`).
    """

    _what = "attention"
    default_config = COURSE

    def __init__(self, model, layer: int = 0, config: HeadConfig | None = None, **settings):
        check_layer_head(model, layer, 0)
        config = head_config(config, default=self.default_config, **settings)
        self._attach(model, layer, range(model.config.n_head), config)
