"""The whole attention layer as an FHE *module*: one circuit per cache length, sharing one set of keys.

:class:`LayerCircuit` compiles :meth:`QuantizedLayer.step <course_lib.layer.QuantizedLayer.step>` with
concrete-python's modules (``fhe.module``): several functions compiled together, under one set of keys,
whose encrypted outputs can be the inputs of another function (*composition*). Function ``step_T``
computes the ``T``-th token of a sequence:

- ``step_1(x)``: the first token, no cache;
- ``step_T(x, k_1, k_squares_1, v_1, v_squares_1, ..., v_squares_{T-1})`` for ``T > 1``: the new token's
  ``x`` ``(1, n_embd)`` and, for each earlier token ``j``, the four rows ``(1, n_embd)`` the cache keeps of
  it (:data:`course_lib.layer.CACHE_ARRAYS`);

and each returns the layer's output row ``(1, n_embd)`` (``c_proj``'s accumulator) and its own token's four
rows. Only ``x`` comes from the client. The rows ``step_j`` returns are *wired* (``fhe.Wired``) to their
place in the inputs of every later step: the compiler encodes both ends alike, so the server feeds one
function's encrypted outputs to the next without the client. So the server keeps each session's cache, as
ciphertexts it cannot read, and the client sends one row per token: the bytes sent per step stay flat while
the PBS per step grow linearly with ``T``.

Each token's rows are the output of exactly one step, fresh from its lookups. Passing the whole cache
through every step (append inside, return the longer cache) does not compile: concrete refuses to compose
a function whose output carries noise "coming straight from the input", which would grow from step to step.

Wiring only the pairs that meet (rather than ``fhe.AllComposable``) keeps every function free to choose
its own encodings elsewhere: composing everything with everything would force every input and output to
one width. Modules need the ``"multi"`` parameter strategy, also in a memory-capped session.

As for :class:`~course_lib.fhe.HeadCircuit`, three ways to run the same integers: :meth:`LayerCircuit.clear`
(:meth:`QuantizedLayer.step` on NumPy), :meth:`LayerCircuit.simulate` and :meth:`LayerCircuit.execute`.
The projection's accumulators are rounded approximately (no extra PBS, see
:class:`~course_lib.attention.QuantizedHead`'s ``exact_projection_rounding``): then a q, k or v integer close
to halfway may come out one off the clear one, in simulation and on ciphertexts alike; every other value
is exact (:attr:`LayerCircuit.is_exact`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
from concrete import fhe
from concrete.fhe.compilation.module_compiler import FunctionDef, ModuleCompiler

from .dual_array import DualArray
from .fhe import configuration as course_configuration
from .layer import CACHE_ARRAYS, KVCache, QuantizedLayer
from .quantization import check_float_data

#: The name of the module's function that computes the ``tokens``-th token.
STEP_NAME = "step_{tokens}"


def step_name(tokens: int) -> str:
    """The module function for the ``tokens``-th token of a sequence (``step_1``, ``step_2``, ...)."""
    return STEP_NAME.format(tokens=tokens)


class LayerCircuit:
    """A calibrated :class:`~course_lib.layer.QuantizedLayer` compiled for sequences of up to ``max_tokens``.

    Args:
        layer: the calibrated layer.
        inputs: float attention inputs ``(T, n_embd)`` (the calibration inputs): run token by token through
            the clear layer, they give each step's inputset.
        max_tokens: the longest sequence (one function per length ``1..max_tokens``).
        config: a concrete ``fhe.Configuration`` (default: :func:`configuration`).
    """

    def __init__(
        self,
        layer: QuantizedLayer,
        inputs: Sequence[np.ndarray],
        max_tokens: int,
        config: fhe.Configuration | None = None,
    ) -> None:
        if not isinstance(layer, QuantizedLayer) or not layer.is_calibrated:
            raise ValueError("compile a calibrated QuantizedLayer: call layer.calibrate(inputs) first")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int | np.integer) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        self.layer, self.max_tokens = layer, int(max_tokens)
        #: What the client needs, and all it needs: the quantizer of ``x`` and the output integers' scale.
        self.input_params, self.output_scale = layer.input_params, layer.output_scale
        self.n_embd = layer.n_embd
        inputsets = self._inputsets(inputs)
        functions = [self._function(t) for t in range(1, self.max_tokens + 1)]
        n = len(CACHE_ARRAYS)
        wires = {  # token j's cache rows, returned by step_j, go to their place in every later step's inputs
            fhe.Wire(fhe.Output(functions[j - 1], 1 + i), fhe.Input(functions[t - 1], 1 + n * (j - 1) + i))
            for t in range(2, self.max_tokens + 1)
            for j in range(1, t)
            for i in range(n)
        }
        compiler = ModuleCompiler(functions, fhe.Wired(wires) if wires else fhe.NotComposable())
        start = time.perf_counter()
        #: The compiled module: ``module.step_T`` is the function of the ``T``-th token.
        self.module = compiler.compile(inputsets, configuration=config or configuration())
        self.compile_seconds = time.perf_counter() - start

    def _function(self, tokens: int) -> FunctionDef:
        names = ("x", *(f"{a}_{j}" for j in range(1, tokens) for a in CACHE_ARRAYS))
        layer = self.layer

        def on_integers(x, *cached):
            y, cache = self._step(x, _rows_by_token(cached))
            return (y.int, *layer.token_integers(cache.tokens[-1]))

        code = f"def {step_name(tokens)}({', '.join(names)}):\n    return body({', '.join(names)})\n"
        namespace: dict = {"body": on_integers}
        exec(code, namespace)  # noqa: S102 - concrete reads the encrypted inputs' names from the signature
        return FunctionDef(namespace[step_name(tokens)], dict.fromkeys(names, "encrypted"))

    def _inputsets(self, inputs: Sequence[np.ndarray]) -> dict[str, list[tuple]]:
        """For each step, the clear integers it reads on every calibration input long enough to reach it."""
        samples: dict[str, list[tuple]] = {step_name(t): [] for t in range(1, self.max_tokens + 1)}
        for x in inputs:
            xq = self.encode(check_float_data(x, "a calibration input"))
            cache: list[tuple] = []
            for t in range(min(len(xq), self.max_tokens)):
                row = xq[t : t + 1]
                samples[step_name(t + 1)].append((row, *_flat(cache)) if cache else row)
                cache.append(self.clear_step(row, cache)[1])
        empty = [name for name, rows in samples.items() if not rows]
        if empty:
            raise ValueError(f"no calibration input is long enough for {', '.join(empty)}: give longer inputs")
        return samples

    # -- the client's side -------------------------------------------------------------------------
    def encode(self, x: np.ndarray) -> np.ndarray:
        """Float attention inputs ``(T, n_embd)`` to their integers: all the client computes (no weight)."""
        x = check_float_data(x, "the layer's input")
        if x.ndim != 2 or x.shape[1] != self.n_embd:
            raise ValueError(f"the layer's input must have shape (T, {self.n_embd}), got {x.shape}")
        return np.asarray(self.input_params.quantize(x), dtype=np.int64)

    def dequantize(self, y: np.ndarray) -> np.ndarray:
        """Output integers (``c_proj``'s accumulators) to reals: one scale, no weight needed."""
        return np.asarray(y, dtype=np.float64) * self.output_scale

    def check_row(self, x: np.ndarray, tokens: int) -> np.ndarray:
        """Check one token's integers ``(1, n_embd)`` for step ``tokens`` before anything is encrypted."""
        x = np.asarray(x)
        if not 1 <= tokens <= self.max_tokens:
            raise ValueError(
                f"this layer was compiled for sequences of up to {self.max_tokens} tokens, got token {tokens}; "
                f"compile a LayerCircuit with max_tokens={tokens} or more"
            )
        if x.shape != (1, self.n_embd) or not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"a step takes one token's integers of shape (1, {self.n_embd}), got {x.dtype} {x.shape}")
        params = self.input_params
        if x.min() < params.qmin or x.max() > params.qmax:
            raise ValueError(
                f"x integers must lie in [{params.qmin}, {params.qmax}], got {int(x.min())} to {int(x.max())}"
            )
        return x

    # -- three ways to run it ------------------------------------------------------------------------
    def _step(self, x, cached: Sequence[tuple]):
        """:meth:`QuantizedLayer.step` on integers: ``x`` and the cached tokens' four rows each."""
        layer = self.layer
        cache = KVCache(tuple(layer.token_from_integers(*rows) for rows in cached))
        return layer.step(DualArray.from_int(x, layer.input_params), cache)

    def clear_step(self, x: np.ndarray, cached: Sequence[tuple]) -> tuple[np.ndarray, tuple]:
        """One step on clear integers: ``x`` ``(1, n_embd)`` and the earlier tokens' four rows each (oldest
        first) to the output row and the new token's four rows."""
        y, cache = self._step(x, cached)
        return np.asarray(y.int), self.layer.token_integers(cache.tokens[-1])

    def clear(self, x: np.ndarray) -> np.ndarray:
        """The layer on clear integers ``(T, n_embd)``, token after token: the output integers ``(T, n_embd)``."""
        return self._run(x, lambda t, row, cache: self.clear_step(row, cache))

    def simulate(self, x: np.ndarray) -> np.ndarray:
        """The same through concrete's simulation of each step's circuit, the cache passed from step to step."""

        def step(t, row, cache):
            y, *new = getattr(self.module, step_name(t)).simulate(row, *_flat(cache))
            return np.asarray(y), tuple(new)

        return self._run(x, step)

    def execute(self, x: np.ndarray) -> np.ndarray:
        """Encrypt each row, run the steps on ciphertexts, the encrypted cache fed from one step to the next,
        and decrypt the outputs. The module's keys must exist (:func:`course_lib.keys.ensure_keys`)."""
        if not self.module.keys.are_generated:
            raise RuntimeError("this layer has no keys yet: course_lib.keys.ensure_keys(layer_circuit.module)")

        def step(t, row, cache):
            function = getattr(self.module, step_name(t))
            cached = _flat(cache)
            encrypted = function.encrypt(row, *([None] * len(cached)))  # the client encrypts x only
            x = encrypted[0] if isinstance(encrypted, tuple) else encrypted
            y, *new = function.run(x, *cached)
            return np.asarray(function.decrypt(y)), tuple(new)

        return self._run(x, step)

    def _run(self, x: np.ndarray, step) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or not 1 <= len(x) <= self.max_tokens:
            raise ValueError(f"the layer takes integers (T, {self.n_embd}) with 1 <= T <= {self.max_tokens}")
        cache, rows = [], []
        for t in range(1, len(x) + 1):
            y, token = step(t, self.check_row(x[t - 1 : t], t), cache)
            cache.append(token)
            rows.append(y)
        return np.concatenate(rows)

    @property
    def is_exact(self) -> bool:
        """True if simulation and execution give exactly the clear integers (see the module docstring)."""
        return all(h.rounds_projection_exactly for h in self.layer.heads)

    # -- what it costs -----------------------------------------------------------------------------
    def pbs_per_step(self) -> dict[int, int]:
        """PBS of each step, by sequence length ``T``."""
        return {t: int(getattr(self.module, step_name(t)).programmable_bootstrap_count) for t in self.steps}

    @property
    def steps(self) -> range:
        return range(1, self.max_tokens + 1)


def configuration(**overrides) -> fhe.Configuration:
    """The layer's compiler configuration: the course's (:func:`course_lib.fhe.configuration`), with the
    ``"multi"`` parameter strategy that composition needs."""
    return course_configuration(parameter_selection_strategy=fhe.ParameterSelectionStrategy.MULTI, **overrides)


def _flat(cache: Sequence[tuple]) -> tuple:
    """The cached tokens' rows in a step's input order: token 1's four arrays, then token 2's, ..."""
    return tuple(a for rows in cache for a in rows)


def _rows_by_token(flat: Sequence) -> list[tuple]:
    """The inverse of :func:`_flat`."""
    n = len(CACHE_ARRAYS)
    return [tuple(flat[i : i + n]) for i in range(0, len(flat), n)]
