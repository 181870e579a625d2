"""A whole attention layer of a Hugging Face GPT-2 replaced by a :class:`~course_lib.layer.QuantizedLayer`.

The published split, inside the model: for layer ``l`` the client keeps everything but the
attention's two projections and what lies between them. It reads the attention's input ``x``
(the output of ``ln_1``), quantizes it and (in ``"execute"`` mode) encrypts it; the layer's
``c_attn``, every head and ``c_proj`` run on integers, on the server in the end; the client puts the
dequantized result where ``c_proj``'s output was, and the residual and every other layer go on in
float. Two forward hooks, no change to transformers' code:

- a pre-hook on ``transformer.h[l].attn`` keeps ``x``;
- a hook on ``transformer.h[l].attn.c_proj`` replaces its output ``(1, T, n_embd)``.

Modes (:data:`course_lib.gpt2.MODES`):

- ``"float"``: the model untouched;
- ``"quantized"``: :meth:`QuantizedLayer.run <course_lib.layer.QuantizedLayer.run>` on clear integers;
- ``"simulate"``: the compiled module's steps (:class:`~course_lib.layer_circuit.LayerCircuit`), simulated,
  token after token from the first;
- ``"execute"``: the steps on ciphertexts, in this process (:class:`~course_lib.layer_circuit.LayerSession`)
  or, if :attr:`SwappedLayer.remote` is set, on a server (:class:`course_lib.client.RemoteLayer`).

In ``"execute"`` mode a forward pass whose sequence extends the previous one by tokens runs only the new
tokens' steps: the earlier tokens' keys and values are already in the (encrypted) cache, and their output
rows are those the client kept. That is generation with a KV cache, one encrypted ``x`` per new token.
Any other sequence starts the cache afresh. A batch holds one sequence; Hugging Face's own KV cache is
turned off while the layer is swapped (the swap keeps its own).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .config import FROM_X, HeadConfig, head_config
from .fast_attention import build_head
from .gpt2 import LayerHooks, PassReport, check_layer_head, head_weights
from .keys import KeyReport, ensure_keys
from .layer import ProjectionWeights, QuantizedLayer
from .layer_circuit import LayerCircuit, LayerSession


def projection_weights(model, layer: int) -> ProjectionWeights:
    """``c_proj`` of layer ``layer`` (``y = o W + b``, Hugging Face's ``Conv1D`` layout), as float64 NumPy."""
    c_proj = model.transformer.h[layer].attn.c_proj
    return ProjectionWeights(c_proj.weight.detach().double().numpy(), c_proj.bias.detach().double().numpy())


class SwappedLayer(LayerHooks):
    """Layer ``layer``'s attention (``c_attn``, every head, ``c_proj``) replaced by a quantized layer.

    >>> swap = SwappedLayer(model, layer=0, n_bits=4)               # doctest: +SKIP
    >>> swap.calibrate(tokenizer, load_calibration_prompts())
    >>> swap.compile(max_tokens=6)                                   # the module of steps 1..6
    >>> swap.ensure_keys(); swap.mode = "execute"
    >>> model.generate(ids, max_new_tokens=2, do_sample=False)      # one encrypted x per token

    Args:
        model: a Hugging Face ``GPT2LMHeadModel``.
        layer: the layer to swap.
        config: every head's settings (default :data:`course_lib.config.FROM_X`: 4-bit activations, 6-bit
            lookups, aligned 6-bit weights rounded approximately); its ``design`` must be ``"fast"``, and its
            ``n_bits`` is also the heads' shared output's.
        n_bits_c_proj: bits of ``c_proj``'s clear weights (default: ``c_attn``'s).
        settings: single fields of ``config`` to change (``n_bits=3``, ``exact_projection_rounding=True``, ...).
    """

    _what = "layer"
    _compile_call = "swap.compile(max_tokens)"
    #: The settings a layer swap uses unless told otherwise.
    default_config: HeadConfig = FROM_X

    def __init__(
        self,
        model,
        layer: int = 0,
        config: HeadConfig | None = None,
        *,
        n_bits_c_proj: int | None = None,
        **settings,
    ) -> None:
        check_layer_head(model, layer, 0)
        config = head_config(config, default=self.default_config, **settings)
        if config.design != "fast":
            raise ValueError(
                f"a layer's heads are built with the fast design (one lookup per product), got design={config.design!r}"
            )
        #: The heads' settings (:class:`~course_lib.config.HeadConfig`).
        self.config = config
        heads = [build_head(head_weights(model, layer, h), config) for h in range(model.config.n_head)]
        #: The quantized layer (its heads and ``c_proj``), calibrated by :meth:`calibrate`.
        self.quantized = QuantizedLayer(heads, projection_weights(model, layer), n_bits_c_proj)
        self.calibration_inputs: list[np.ndarray] = []
        #: The compiled module (:meth:`compile`).
        self.circuit: LayerCircuit | None = None
        #: A :class:`course_lib.client.RemoteLayer`: ``"execute"`` then runs each step on its server.
        self.remote = None
        self.last_seconds: float | None = None  # the layer's time in the last forward pass (simulate, execute)
        self.last_runs: list = []  # the steps of the last forward pass: RunStats (remote) or seconds (local)
        self.last_steps: range = range(0)  # the positions of the steps the last forward pass ran
        self._mode = "float"
        self._session: LayerSession | None = None
        self._previous: tuple[np.ndarray, np.ndarray] | None = None  # (x integers, output reals) already run
        every_head = range(model.config.n_head)
        self._hook(model, layer, every_head, lambda c_proj: c_proj.register_forward_hook(self._replace_output))

    # -- calibration and compilation ---------------------------------------------------------------
    @property
    def is_calibrated(self) -> bool:
        return self.quantized.is_calibrated

    def calibrate(self, tokenizer, prompts: Sequence[str]) -> None:
        """Calibrate the layer (heads, their shared output, ``c_proj``) on the attention inputs of ``prompts``."""
        if isinstance(prompts, str) or len(prompts) == 0:
            raise ValueError("calibrate needs a non-empty list of prompts")
        self.calibration_inputs = self.attention_inputs(tokenizer, prompts)
        self.quantized.calibrate(self.calibration_inputs)

    def compile(self, max_tokens: int, config=None) -> LayerCircuit:
        """Compile the layer's module for sequences of up to ``max_tokens`` tokens (kept in :attr:`circuit`)."""
        if not self.is_calibrated:
            raise RuntimeError("calibrate the layer before compiling it: swap.calibrate(tokenizer, prompts)")
        self.circuit = LayerCircuit(self.quantized, self.calibration_inputs, max_tokens, config)
        self._restart()
        return self.circuit

    def ensure_keys(self, cache_dir=None, *, progress: bool = True) -> KeyReport:
        """Generate (or load from the cache) the module's keys, and keep them in memory for ``"execute"``."""
        if self.circuit is None:
            raise RuntimeError("compile the layer before its keys: swap.compile(max_tokens)")
        return ensure_keys(self.circuit.module, cache_dir, progress=progress)

    # -- mode (the property is LayerHooks') -------------------------------------------------------
    def _check_keys(self) -> None:
        if not self.circuit.module.keys.are_generated:
            raise RuntimeError("mode 'execute' needs the module's keys in memory: swap.ensure_keys()")

    def _restart(self) -> None:
        """Forget the sequence run so far (and the local encrypted cache)."""
        self._previous, self._session = None, None

    # -- the hook on c_proj ----------------------------------------------------------------------------
    def _replace_output(self, module, args, output):
        if self._mode == "float" or self._x is None:
            return None
        x, self._x = self._x, None
        y = self.output(x[0].detach().double().numpy())  # (T, n_embd)
        return torch.from_numpy(y).to(output.dtype).reshape(output.shape)

    # -- the layer's output, as the mode says ----------------------------------------------------------
    def output(self, x: np.ndarray) -> np.ndarray:
        """The layer's output in reals ``(T, n_embd)`` (what ``c_proj`` returns) for its input ``x`` ``(T, n_embd)``."""
        if self._mode == "quantized":
            return self.quantized.forward(x).dequantize()
        if self._mode not in ("simulate", "execute"):
            modes = "quantized, simulate and execute"
            raise RuntimeError(f"the layer's output is computed in modes {modes}, not {self._mode!r}")
        circuit = self.circuit
        xi = circuit.encode(x)
        if len(xi) > circuit.max_tokens:
            raise ValueError(
                f"this layer was compiled for sequences of up to {circuit.max_tokens} tokens, got {len(xi)}: "
                f"compile it with swap.compile(max_tokens={len(xi)}) or more"
            )
        start = time.perf_counter()
        if self._mode == "simulate":
            out = circuit.dequantize(circuit.simulate(xi))
            self.last_runs, self.last_steps = [], range(1, len(xi) + 1)
        else:
            out = self._execute(xi)
        self.last_seconds = time.perf_counter() - start
        return out

    def _execute(self, xi: np.ndarray) -> np.ndarray:
        """Run the tokens not yet in the cache, one step each; earlier rows are the client's from before."""
        if self.remote is None and self._session is None:
            self._session = LayerSession(self.circuit)
        runner = self.remote if self.remote is not None else self._session
        previous, done = self._previous, 0
        if previous is not None and runner.tokens == len(previous[0]) < len(xi):
            if np.array_equal(previous[0], xi[: len(previous[0])]):
                done = len(previous[0])
        if runner.tokens != done:  # another sequence: its cache starts again
            runner.forget()
        rows, self.last_runs, self.last_steps = [], [], range(done + 1, len(xi) + 1)
        for t in range(done, len(xi)):
            start = time.perf_counter()
            if self.remote is not None:
                y, stats = self.remote.step(xi[t : t + 1])
                self.last_runs.append(stats)
            else:
                y = self._session.step(xi[t : t + 1])
                self.last_runs.append(time.perf_counter() - start)
            rows.append(self.circuit.dequantize(y))
        out = np.concatenate([previous[1][:done], *rows]) if done else np.concatenate(rows)
        self._previous = (xi, out)
        return out

    # -- the client's view ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def weights_withheld(self) -> Iterator[None]:
        """Inside the ``with`` block, the process holds none of the layer's projection weights, as the
        published split's client: ``c_attn``'s and ``c_proj``'s weights and biases are NaN in the model,
        and the quantized layer's copies (float and quantized) are NaN or gone. Everything else of the
        model is untouched. On exit every weight is put back as it was.

        Use it around a generation in ``"execute"`` mode, after :meth:`compile` and :meth:`ensure_keys`:
        the compiled module and the client's keys hold the weights no longer needed, so the text comes
        out the same; a ``"quantized"`` or ``"float"`` pass inside the block reads NaN and says so.
        """
        attn, layer = self.model.transformer.h[self.layer].attn, self.quantized
        saved_torch = {name: p.detach().clone() for name, p in attn.named_parameters()}
        saved_heads = [(head.weights, head.w_parts) for head in layer.heads]
        saved_proj = (layer.c_proj, layer.w_proj)
        try:
            with torch.no_grad():
                for p in attn.parameters():
                    p.fill_(float("nan"))
            for head in layer.heads:
                head.weights = dataclasses.replace(head.weights, w_qkv=np.full_like(head.weights.w_qkv, np.nan))
                head.w_parts = None
            layer.c_proj = ProjectionWeights(np.full_like(layer.c_proj.w, np.nan), np.full_like(layer.c_proj.b, np.nan))
            layer.w_proj = None
            yield
        finally:
            with torch.no_grad():
                for name, p in attn.named_parameters():
                    p.copy_(saved_torch[name])
            for head, (weights, parts) in zip(layer.heads, saved_heads, strict=True):
                head.weights, head.w_parts = weights, parts
            layer.c_proj, layer.w_proj = saved_proj

    # -- generation ------------------------------------------------------------------------------------
    def _most_tokens(self) -> int:
        return self.circuit.max_tokens

    def _compile_for(self, tokens: int) -> str:
        return f"compile it with swap.compile(max_tokens={tokens})"

    @property
    def last_pass(self) -> PassReport | None:
        steps = self.last_steps
        if self.last_seconds is None or not steps:
            return None
        pbs = self.circuit.pbs_per_step()
        ran = f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"
        remote = [s for s in self.last_runs if not isinstance(s, float)]
        sent = sum(s.bytes_sent for s in remote) if remote else None
        received = sum(s.bytes_received for s in remote) if remote else None
        return PassReport(ran, sum(pbs[t] for t in steps), sent, received)

    def __repr__(self) -> str:
        state = "calibrated" if self.is_calibrated else "not calibrated"
        return f"SwappedLayer(layer={self.layer}, n_bits={self.quantized.n_bits}, {state}, mode={self.mode})"
