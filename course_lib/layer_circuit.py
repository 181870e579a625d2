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
The projection's accumulators and the heads' output sums are rounded approximately (no extra PBS, see
:class:`~course_lib.attention.QuantizedHead`'s ``exact_projection_rounding``): then a q, k, v or head output
integer close to halfway may come out one off the clear one, in simulation and on ciphertexts alike; every
other value is exact (:attr:`LayerCircuit.is_exact`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from concrete import fhe
from concrete.fhe.compilation.module_compiler import FunctionDef, ModuleCompiler

from .checks import check_integer
from .contract import LAYER_SCOPE, SCOPE_INPUTS, CircuitDescription, layer_function
from .dual_array import DualArray
from .fhe import configuration as course_configuration
from .fhe import save_artifact
from .keys import circuit_fingerprint
from .layer import CACHE_ARRAYS, CachedToken, KVCache, QuantizedLayer
from .quantization import check_float_data
from .transport import pack, unpack

step_name = layer_function  # the module's function for the token at a position: step_1, step_2, ...


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
        self.layer, self.max_tokens = layer, check_integer(max_tokens, "max_tokens")
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
        """For each step, the clear integers it reads when the calibration inputs run through the layer, each
        cut into windows of ``max_tokens`` tokens that run as sequences of their own: so every step, the
        first too, sees tokens from every position (a calibration text's first token is always the same).

        Plus, for each step after the first, two samples whose cached tokens hold, in one column per head,
        the lowest (then the highest) key and value integers their quantizers allow. A cached row is the
        output of an earlier step's lookup, which may take any value of its table; the compiler sizes a
        step's inputs from the inputset alone, so these samples make every cached input as wide as the
        output wired to it. One column at a time widens the sums they enter by one product only.
        """
        samples: dict[str, list[tuple]] = {step_name(t): [] for t in range(1, self.max_tokens + 1)}
        for x in inputs:
            xq = self.encode(check_float_data(x, "a calibration input"))
            for start in range(0, len(xq), self.max_tokens):
                cache: list[tuple] = []
                for row in np.split(xq[start : start + self.max_tokens], len(xq[start : start + self.max_tokens])):
                    samples[step_name(len(cache) + 1)].append((row, *_flat(cache)) if cache else row)
                    cache.append(self.clear_step(row, cache)[1])
        empty = [name for name, rows in samples.items() if not rows]
        if empty:
            raise ValueError(f"no calibration input is long enough for {', '.join(empty)}: give longer inputs")
        for t in range(2, self.max_tokens + 1):
            row, *cached = samples[step_name(t)][0]
            for lowest in (True, False):
                tokens = [self._extreme_token(rows, lowest) for rows in _rows_by_token(cached)]
                samples[step_name(t)].append((row, *_flat(tokens)))
        return samples

    def _extreme_token(self, rows: tuple, lowest: bool) -> tuple:
        """A cached token's four rows with each head's first key and value set to their quantizer's lowest (or
        highest) integer, and their squares computed again as a step computes them."""
        layer, d = self.layer, self.layer.head_dim
        k, v = np.array(rows[0]), np.array(rows[2])
        keys, values = [], []
        for h, head in enumerate(layer.heads):
            for integers, name, out in ((k, "k", keys), (v, "v", values)):
                params = head.quantizers[name].params
                integers[0, h * d] = params.qmin if lowest else params.qmax
                cached = DualArray.from_int(integers[:, h * d : (h + 1) * d], params)
                out.append(head._operand(cached, "scores" if name == "k" else "output"))
        return layer.token_integers(CachedToken(tuple(keys), tuple(values)))

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

    def encrypt_step(self, x: np.ndarray, tokens: int) -> bytes:
        """Check and encrypt one token's integers ``(1, n_embd)`` for step ``tokens``, framed for a server
        (:data:`~course_lib.contract.STEP`). Only ``x`` is encrypted: the cached rows are the server's."""
        return pack([self._encrypt_x(self.check_row(x, tokens), tokens).serialize()])

    def _encrypt_x(self, x: np.ndarray, tokens: int) -> fhe.Value:
        """The ciphertext of step ``tokens``'s ``x`` (``None`` for the cached inputs: the client has none)."""
        encrypted = getattr(self.module, step_name(tokens)).encrypt(x, *([None] * (len(CACHE_ARRAYS) * (tokens - 1))))
        return encrypted[0] if isinstance(encrypted, tuple) else encrypted

    def decrypt_step(self, message: bytes, tokens: int) -> np.ndarray:
        """Decrypt the framed output row that step ``tokens`` sent back: the output integers ``(1, n_embd)``."""
        (part,) = unpack(message, expected_parts=1)
        return np.asarray(getattr(self.module, step_name(tokens)).decrypt(fhe.Value.deserialize(part)))

    # -- what the server gets ----------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """The module's fingerprint (names its keys in the cache; checked by the server)."""
        return circuit_fingerprint(self.module)

    @property
    def description(self) -> CircuitDescription:
        """What a server publishes about this layer (scope :data:`~course_lib.contract.LAYER_SCOPE`)."""
        return CircuitDescription(
            fingerprint=self.fingerprint,
            length=self.max_tokens,
            scope=LAYER_SCOPE,
            inputs=SCOPE_INPUTS[LAYER_SCOPE],
            input_shape=(1, self.n_embd),
            queries=1,
            heads=len(self.layer.heads),
            n_bits=int(self.layer.heads[0].n_bits),
            input_bytes=self.x_bytes,
        )

    @property
    def x_bytes(self) -> int:
        """The size of one token's encrypted ``x``, as the compiler counts it: what the client sends per step."""
        return int(self.module.step_1.size_of_inputs)

    def save_server(self, folder: str | Path) -> Path:
        """Write what a server needs, and only that, into ``folder`` (created if needed); returns ``folder``:
        :data:`~course_lib.contract.SERVER_FILE`, the compiled module without keys, and its :attr:`description`."""
        return save_artifact(folder, self.module.server, self.description)

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
        """Encrypt each row, run the steps on ciphertexts, the encrypted cache fed from one step to the next
        (a :class:`LayerSession`), and decrypt the outputs. The module's keys must be in memory
        (:func:`course_lib.keys.ensure_keys`)."""
        session = LayerSession(self)
        x = self._check_sequence(x)
        return np.concatenate([session.step(x[t : t + 1]) for t in range(len(x))])

    def _check_sequence(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or not 1 <= len(x) <= self.max_tokens:
            raise ValueError(f"the layer takes integers (T, {self.n_embd}) with 1 <= T <= {self.max_tokens}")
        return x

    def _run(self, x: np.ndarray, step) -> np.ndarray:
        x = self._check_sequence(x)
        cache, rows = [], []
        for t in range(1, len(x) + 1):
            y, token = step(t, self.check_row(x[t - 1 : t], t), cache)
            cache.append(token)
            rows.append(y)
        return np.concatenate(rows)

    @property
    def is_exact(self) -> bool:
        """True if simulation and execution give exactly the clear integers (see the module docstring)."""
        return self.layer.rounds_exactly

    # -- what it costs -----------------------------------------------------------------------------
    def pbs_per_step(self) -> dict[int, int]:
        """PBS of each step, by sequence length ``T``."""
        return {t: int(getattr(self.module, step_name(t)).programmable_bootstrap_count) for t in self.steps}

    def pbs_per_tag(self, tokens: int) -> dict[str, int]:
        """PBS of step ``tokens`` by tag: ``projection`` (the new token's q, k, v), ``cache`` (the squares of its
        k and v, kept for later steps), ``scores``, ``softmax``, ``mix``, ``heads_outputs`` (requantized for
        ``c_proj``); a tag whose lookups the compiler removed is absent."""
        if tokens not in self.steps:
            raise ValueError(f"the module has steps 1 to {self.max_tokens}, got {tokens!r}")
        counts = getattr(self.module, step_name(tokens)).programmable_bootstrap_count_per_tag
        return {tag: int(n) for tag, n in counts.items() if n}

    @property
    def steps(self) -> range:
        return range(1, self.max_tokens + 1)


class LayerSession:
    """A sequence run on ciphertexts in this process, one token per :meth:`step`, the encrypted cache kept here.

    What a server's session does for a layer (:mod:`course_lib.server`, :class:`course_lib.client.RemoteLayer`:
    the same ``step``, ``forget`` and ``tokens``), without HTTP: the client encrypts ``x``, the step runs on
    it and the cached ciphertexts, the new token's rows join the cache unread, the output is decrypted.

    Raises:
        RuntimeError: the module's keys are not in memory (:func:`course_lib.keys.ensure_keys`).
    """

    def __init__(self, circuit: LayerCircuit) -> None:
        if not circuit.module.keys.are_generated:
            raise RuntimeError("this layer has no keys in memory: course_lib.keys.ensure_keys(layer_circuit.module)")
        self.circuit = circuit
        #: Each cached token's encrypted rows, oldest first.
        self.cache: list[tuple[fhe.Value, ...]] = []

    @property
    def tokens(self) -> int:
        """The tokens of the current sequence so far."""
        return len(self.cache)

    def step(self, x: np.ndarray) -> np.ndarray:
        """The next token: its integers ``x`` ``(1, n_embd)`` to the layer's output integers ``(1, n_embd)``."""
        circuit, position = self.circuit, self.tokens + 1
        row = circuit.check_row(x, position)
        function = getattr(circuit.module, step_name(position))
        y, *rows = function.run(circuit._encrypt_x(row, position), *_flat(self.cache))
        self.cache.append(tuple(rows))
        return np.asarray(function.decrypt(y))

    def forget(self) -> int:
        """Start another sequence; returns how many tokens the cache held."""
        forgotten, self.cache = len(self.cache), []
        return forgotten


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
