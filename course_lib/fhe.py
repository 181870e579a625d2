"""The encrypted part of a quantized head, compiled to an FHE circuit: what it costs, how to run it.

:class:`HeadCircuit` hands :meth:`QuantizedHead.attend <course_lib.attention.QuantizedHead.attend>`
(``q, k, v -> out``) to concrete-python's compiler. The compiler traces it on integers only,
learns the range of every intermediate value from an *inputset* (the calibration inputs,
quantized), picks each value's bit width and the cryptographic parameters, and turns every
table lookup and every encrypted x encrypted product into programmable bootstraps (PBS).

**What is encrypted.** Two scopes (:data:`~course_lib.contract.HEAD_SCOPES`). In ``"attention"`` the client runs GPT-2
up to the head, computes ``q, k, v`` with :meth:`QuantizedHead.project` (clear weights, each token
on its own), quantizes and encrypts them; the server computes the scores, the causal softmax and the
weighted sum of values on ciphertexts: everything in the head that mixes tokens. In
``"projection+attention"`` (the published split) the client encrypts only its quantized attention
input ``x``; the server's circuit holds the projection's weights as clear constants, computes
``q, k, v`` from ``x`` (a wide accumulator, rounded, then one lookup per value: see
:class:`~course_lib.attention.QuantizedHead`'s ``projection_bits`` and ``weight_scales``) and then the
attention. The client never needs those weights: :meth:`HeadCircuit.encode` only quantizes ``x``.

**Sequence length.** A circuit has fixed shapes, so it is compiled for one sequence
length, :data:`DEFAULT_LENGTH` tokens. Shorter sequences are padded at the end: the head is
causal, so token ``t`` only ever reads tokens ``0..t`` and the padding rows cannot change
the real rows (the tests check this bit for bit). One circuit, one set of keys and one
server artifact then serve every prompt up to that length, at the cost of always paying
for the full length.

**Generation.** A circuit compiled with ``queries=1`` computes only the last token's
output, from that token's query and the keys and values of every token (``length``
exactly, no padding): one step of generation with a KV cache, the earlier rows' outputs
being those of earlier steps (notebook 04). Its cost grows as ``length`` instead of
``length**2``.

Three ways to run the same integers, each checked against the previous one (exactly, unless the
projection rounds approximately: see :attr:`HeadCircuit.is_exact`):

- :meth:`HeadCircuit.clear`: :meth:`~QuantizedHead.attend` on NumPy integers (notebook 02's
  "quantized" mode);
- :meth:`HeadCircuit.simulate`: concrete's simulation of the circuit, no encryption;
- :meth:`HeadCircuit.execute`: encrypt, run on ciphertexts, decrypt (needs keys, see
  :mod:`course_lib.keys`).
"""

from __future__ import annotations

import atexit
import inspect
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from concrete import fhe

from .attention import QuantizedHead
from .checks import check_integer
from .config import COURSE, FROM_X, LIGHT, HeadConfig
from .contract import CIRCUIT_INPUTS, HEAD_SCOPES, SCOPE_INPUTS, SERVER_FILE, CircuitDescription
from .dual_array import DualArray, side_by_side
from .environment import memory_capped
from .keys import circuit_fingerprint
from .quantization import QuantParams
from .transport import pack, unpack

#: The sequence length the course's head circuits are compiled for (prompts are padded to it).
DEFAULT_LENGTH = 4
#: The fields of :data:`course_lib.config.COURSE` under the names the notebooks use: activation bits, the
#: head's construction (:mod:`course_lib.fast_attention`) and the widest sum of products a lookup reads.
DEFAULT_N_BITS = COURSE.n_bits
DEFAULT_DESIGN = COURSE.design
DEFAULT_LOOKUP_BITS = COURSE.lookup_bits
#: How a head compiled from x (scope ``"projection+attention"``) quantizes and rounds its projection: the
#: fields of :data:`course_lib.config.FROM_X` that :data:`~course_lib.config.COURSE` leaves at their defaults.
DEFAULT_PROJECTION: dict = {
    "n_bits_weights": FROM_X.n_bits_weights,
    "weight_scales": FROM_X.weight_scales,
    "exact_projection_rounding": FROM_X.exact_projection_rounding,
}


def notebook_config() -> HeadConfig:
    """The settings the notebooks compile their circuits at: :data:`~course_lib.config.COURSE`, or
    :data:`~course_lib.config.LIGHT` in a memory-capped session (:func:`~course_lib.environment.memory_capped`).
    With one parameter set per circuit (see :func:`configuration`), the light setting's evaluation keys are
    a small fraction of the default's (the README's "lighter settings" gives the measured sizes)."""
    return LIGHT if memory_capped() else COURSE


def notebook_bits() -> tuple[int, int]:
    """``(n_bits, lookup_bits)`` of :func:`notebook_config`."""
    config = notebook_config()
    return config.n_bits, config.lookup_bits


def keep_exit_status(status: int) -> None:
    """End this process with ``status`` at exit, whatever concrete's own exit handler would end it with.

    concrete-python 2.10.0 registers an ``atexit`` handler that shuts its runtime down and, once a
    circuit has run in the process, ends the process with status 0: a script or a test session that
    fails after an encrypted run would look successful to its caller (``tests/conftest.py`` calls this
    when tests failed). ``atexit`` runs the handlers registered last first, so this one, registered
    after concrete's (imported with this module), ends the process with ``status`` before concrete's
    runs; the interpreter's remaining exit work is skipped, standard streams are flushed first.
    """

    def end_with_status() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)

    atexit.register(end_with_status)


def save_artifact(folder: str | Path, server: fhe.Server, description: CircuitDescription) -> Path:
    """Write a server artifact into ``folder`` (created if needed): concrete's ``server`` (compiled, no keys) as
    :data:`~course_lib.contract.SERVER_FILE` and its ``description``; returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SERVER_FILE).unlink(missing_ok=True)
    server.save(folder / SERVER_FILE)
    description.save(folder)
    return folder


class SequenceLengthError(ValueError):
    """A sequence does not fit the length the circuit was compiled for."""


class InputRangeError(ValueError):
    """Integers outside the range the circuit was compiled for (they would wrap around silently)."""


class NoParametersError(ValueError):
    """concrete found no cryptographic parameters for a circuit: its lookups read integers too wide to bootstrap."""


def configuration(**overrides) -> fhe.Configuration:
    """The course's compiler configuration; keyword arguments override single settings.

    Key compression is on: evaluation keys are what a client uploads to a server.

    In a memory-capped session (:func:`course_lib.environment.memory_capped`, e.g. mybinder.org's
    2 GB) the compiler picks one set of cryptographic parameters for the whole circuit
    (``parameter_selection_strategy="mono"``) instead of one per part of it ("multi", concrete's
    default). The circuit computes the same integers and its evaluation keys are smaller, but
    every PBS then pays for the parameters the widest one needs, so a run costs more. The README's
    "lighter settings" gives the measured sizes and costs.
    """
    settings = {"compress_evaluation_keys": True, "show_progress": False}
    if memory_capped():
        settings["parameter_selection_strategy"] = fhe.ParameterSelectionStrategy.MONO
    settings.update(overrides)
    return fhe.Configuration(**settings)


@dataclass(frozen=True)
class CircuitSummary:
    """The numbers that say what one compiled circuit costs.

    Attributes:
        n_bits: bits of the head's activation quantizers.
        lookup_bits: the rounding target of the lookups' inputs (None: no rounding).
        length: the compiled sequence length.
        max_bit_width: the widest encrypted integer in the circuit.
        pbs_count: programmable bootstraps per run.
        pbs_per_step: the same, split by step of the head (``scores``, ``softmax``, ``mix``).
        complexity: the compiler's cost estimate of one run (arbitrary units, comparable between circuits).
        evaluation_key_bytes: size of the keys the server needs (bootstrap and key-switch keys), as the
            compiler counts them, before compression (the serialized size: :class:`course_lib.keys.KeyReport`).
        input_bytes: size of the encrypted inputs of one run (``x``, or ``q``, ``k`` and ``v``).
        output_bytes: size of one encrypted output.
        compile_seconds: wall time of the compilation.
        queries: how many of the last tokens the circuit computes the output of (``length``: all).
        scope: what the circuit computes from what (one of :data:`~course_lib.contract.HEAD_SCOPES`).
    """

    n_bits: int
    lookup_bits: int | None
    length: int
    max_bit_width: int
    pbs_count: int
    pbs_per_step: dict[str, int] = field(repr=False)
    complexity: float
    evaluation_key_bytes: int
    input_bytes: int
    output_bytes: int
    compile_seconds: float
    queries: int | None = None
    scope: str = "attention"

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs, in the order :meth:`__str__` prints them."""
        steps = ", ".join(f"{name} {count:,}" for name, count in self.pbs_per_step.items())
        rounding = "none" if self.lookup_bits is None else f"lookup inputs rounded to {self.lookup_bits} bits"
        scope = [] if self.scope == "attention" else [("from", "encrypted x: the projection's weights inside")]
        return [
            *scope,
            ("activations", f"{self.n_bits} bits ({rounding})"),
            ("sequence length", self._length_text()),
            ("max bit width", f"{self.max_bit_width} bits"),
            ("PBS per run", f"{self.pbs_count:,} ({steps})"),
            ("complexity", f"{self.complexity:.3g}"),
            ("evaluation keys", _megabytes(self.evaluation_key_bytes) + " before compression"),
            ("one input ciphertext", _megabytes(self.input_bytes)),
            ("one output ciphertext", _megabytes(self.output_bytes)),
        ]

    def _length_text(self) -> str:
        if self.queries is not None and self.queries < self.length:
            last = "the last token's" if self.queries == 1 else f"the last {self.queries} tokens'"
            return f"{self.length} tokens, {last} output only (a generation step with a KV cache)"
        return f"{self.length} tokens (shorter prompts are padded)"

    def __str__(self) -> str:
        rows = self.rows()
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def lookups_per_width(circuit: fhe.Circuit) -> dict[int, int]:
    """How many table lookups (PBS) a compiled circuit makes at each input precision, narrowest first.

    The precision of a lookup is the bits its own input needs on the inputset (its measured range, a sign
    bit included when negative), less the bits a ``round_bit_pattern`` right before it removes. The compiler
    may store that input wider, to add it to wider values, but the PBS itself only has to read this many
    bits. (An exact rounding's own PBS, one per removed bit, are not counted here.)
    """
    import networkx as nx
    from concrete.fhe.dtypes import Integer

    graph, counts = circuit.graph, {}
    for node in nx.topological_sort(graph.graph):
        if not node.converted_to_table_lookup or node.properties.get("name") == "round_bit_pattern":
            continue
        source = graph.ordered_preds_of(node)[0]
        low, high = source.bounds
        lsbs = 0
        if source.properties.get("name") == "round_bit_pattern":
            lsbs = source.properties["kwargs"]["lsbs_to_remove"]
        width = Integer.that_can_represent([int(low) >> lsbs, int(high) >> lsbs]).bit_width
        counts[width] = counts.get(width, 0) + int(np.prod(node.output.shape))
    return dict(sorted(counts.items()))


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def pad_rows(q: np.ndarray, length: int, fill: int | np.ndarray) -> np.ndarray:
    """``q`` ``(T, n)`` with rows of ``fill`` (a number, or one per column) appended up to ``length`` rows."""
    if q.shape[0] > length:
        raise SequenceLengthError(
            f"the sequence has {q.shape[0]} tokens but the circuit was compiled for {length}; "
            f"use at most {length} tokens or compile a HeadCircuit with length={q.shape[0]}"
        )
    padding = np.full((length - q.shape[0], *q.shape[1:]), fill, dtype=np.int64)
    return np.concatenate((np.asarray(q, dtype=np.int64), padding))


# CIRCUIT_INPUTS, HEAD_SCOPES and SCOPE_INPUTS (what a circuit computes on the server, from what it
# receives) are part of the client/server contract: defined in course_lib.contract, imported above.

QKV = tuple[np.ndarray, np.ndarray, np.ndarray]


def head_columns(a, n_heads: int, head_dim: int) -> list:
    """Head ``h``'s columns ``h * head_dim`` to ``(h + 1) * head_dim`` of ``a`` (GPT-2's layout), for each head."""
    return [a[:, h * head_dim : (h + 1) * head_dim] for h in range(n_heads)]


class HeadCircuit:
    """The encrypted part of one calibrated head, or of several heads side by side, compiled for ``length`` tokens.

    Args:
        heads: a calibrated :class:`QuantizedHead` (or :class:`~course_lib.fast_attention.FastHead`), or a
            list of them with the same head dimension (e.g. every head of a layer, notebook 04). Their
            quantizers and ``drop_bits`` are frozen into the circuit.
        inputs: float attention inputs ``(T, n_embd)`` (the calibration inputs): projected,
            cut into windows of ``length`` rows and padded, they form the compiler's inputset.
        length: the compiled sequence length.
        config: a concrete ``fhe.Configuration`` (default: :func:`configuration`).
        queries: compute the output of the last ``queries`` tokens only (default: all ``length``).
            With ``queries=1`` the circuit is one step of generation with a KV cache: ``q`` is
            ``(1, n_heads * head_dim)``, ``k`` and ``v`` have exactly ``length`` rows, and the output
            is the last token's row of the full circuit's output, the same integers. Needs heads whose
            :meth:`~QuantizedHead.attend` accepts fewer queries than keys
            (:class:`~course_lib.fast_attention.FastHead`).

    The circuit takes three encrypted inputs, the integers of the heads' ``q``, ``k`` and ``v``,
    each ``(length, n_heads * head_dim)`` with head ``h`` in columns ``h * head_dim`` to
    ``(h + 1) * head_dim``: GPT-2's own layout of ``c_attn``'s output. It returns the heads'
    outputs in the same layout, the input of ``c_proj``. Each head's block of integers has its own
    meaning (:attr:`output_scales`, :attr:`output_zero_points`), which :meth:`dequantize` applies: the
    ``output`` quantizer's for a :class:`QuantizedHead`, the weighted sum's accumulator for a
    :class:`~course_lib.fast_attention.FastHead`.
    """

    def __init__(
        self,
        heads: QuantizedHead | Sequence[QuantizedHead],
        inputs: Sequence[np.ndarray],
        length: int = DEFAULT_LENGTH,
        config: fhe.Configuration | None = None,
        *,
        queries: int | None = None,
        scope: str = "attention",
    ) -> None:
        if scope not in HEAD_SCOPES:
            raise ValueError(f"scope must be one of {', '.join(map(repr, HEAD_SCOPES))}, got {scope!r}")
        #: What the circuit computes (one of :data:`~course_lib.contract.HEAD_SCOPES`), and its encrypted inputs.
        self.scope, self.input_names = scope, SCOPE_INPUTS[scope]
        self.heads: list[QuantizedHead] = [heads] if isinstance(heads, QuantizedHead) else list(heads)
        if not self.heads or not all(isinstance(h, QuantizedHead) for h in self.heads):
            raise ValueError("compile one QuantizedHead or a non-empty list of them")
        if not all(h.is_calibrated for h in self.heads):
            raise ValueError("compile a calibrated head: call head.calibrate(inputs) first")
        dims = sorted({h.weights.head_dim for h in self.heads})
        if len(dims) != 1:
            raise ValueError(f"the heads of one circuit must share their head dimension, got {dims}")
        self.head_dim = dims[0]
        self.length = check_integer(length, "length", unit="tokens")
        queries = self.length if queries is None else queries
        #: The circuit computes the outputs of the last ``queries`` tokens.
        self.queries = check_integer(
            queries, "queries", 1, self.length, allowed=f"an integer from 1 to length={self.length}"
        )
        if self.is_step and scope != "attention":
            raise ValueError(
                "a generation-step circuit (queries < length) takes the client's q, k and v (scope 'attention'): "
                "from x it would project every earlier token again at every step"
            )
        if scope != "attention" and len({h.quantizers["input"].params for h in self.heads}) != 1:
            raise ValueError("the heads of a circuit from x must share their input quantizer (calibrate them alike)")
        if self.is_step and not all(h.attends_last_rows for h in self.heads):
            raise ValueError(
                "queries < length needs heads that attend for the last tokens only (the fast design, FastHead); "
                f"got {', '.join(sorted({type(h).__name__ for h in self.heads}))}"
            )
        #: ``input_params[h][name]``: the quantizer parameters of head ``h``'s encrypted inputs.
        self.input_params: list[dict[str, QuantParams]] = [
            {name: h.quantizers["input" if name == "x" else name].params for name in self.input_names}
            for h in self.heads
        ]
        self.inputset = self._inputset(inputs)
        # What the output integers mean (real = scale * (int - zero point)): the same for every
        # input, so one clear run on the first sample of the inputset tells.
        probes = self._run_heads(*self.inputset[0])
        self.output_scales: list[float] = [float(p.scale) for p in probes]
        self.output_zero_points: list[int] = [int(p.zero_point) for p in probes]

        def on_integers(**inputs):  # concrete's tracer passes the inputs by name
            return self._joined([out.int for out in self._run_heads(*(inputs[n] for n in self.input_names))])

        # concrete reads the encrypted inputs' names from the function's signature, and names the circuit's
        # MLIR function after it: part of the fingerprint that names the circuit's keys in the cache
        on_integers.__name__ = "attend_on_integers" if scope == "attention" else "on_integers"
        on_integers.__signature__ = inspect.Signature(
            [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in self.input_names]
        )
        compiler = fhe.Compiler(on_integers, dict.fromkeys(self.input_names, "encrypted"))
        start = time.perf_counter()
        try:
            self.circuit: fhe.Circuit = compiler.compile(self.inputset, configuration=config or configuration())
        except RuntimeError as error:
            if "NoParametersFound" not in str(error):
                raise
            head = self.heads[0]
            raise NoParametersError(
                f"concrete found no cryptographic parameters for this circuit (n_bits={head.n_bits}, "
                f"lookup_bits={head.lookup_bits}): its lookups read integers too wide to bootstrap. Use fewer "
                f"n_bits, or round the products with lookup_bits (the course's default is {DEFAULT_LOOKUP_BITS})"
            ) from None
        self.compile_seconds = time.perf_counter() - start

    @property
    def is_step(self) -> bool:
        """True if the circuit computes only the last tokens' outputs (``queries < length``)."""
        return self.queries < self.length

    @property
    def head(self) -> QuantizedHead:
        """The circuit's head, when it has one (see :attr:`heads`)."""
        if len(self.heads) != 1:
            raise AttributeError(f"this circuit has {len(self.heads)} heads: use .heads")
        return self.heads[0]

    def _blocks(self, a):
        """Head ``h``'s columns of ``a``, for each head."""
        return head_columns(a, len(self.heads), self.head_dim)

    def _joined(self, blocks):
        """The heads' blocks side by side, ``(T, n_heads * head_dim)`` (:func:`~course_lib.dual_array.side_by_side`)."""
        return side_by_side(blocks, self.head_dim)

    def _run_heads(self, *inputs) -> list[DualArray]:
        """Every head's part of the circuit on the integers (NumPy or tracers): its
        :meth:`~QuantizedHead.attend` on its columns of ``q, k, v``, or the whole head on ``x``."""
        if self.scope != "attention":
            (x,) = inputs
            return [
                head(DualArray.from_int(x, params["x"]))
                for head, params in zip(self.heads, self.input_params, strict=True)
            ]
        outputs = []
        for head, params, *qkv in zip(self.heads, self.input_params, *map(self._blocks, inputs), strict=True):
            dual = [DualArray.from_int(a, params[name]) for name, a in zip(CIRCUIT_INPUTS, qkv, strict=True)]
            outputs.append(head.attend(*dual))
        return outputs

    # -- the inputset ------------------------------------------------------------------------------
    def _inputset(self, inputs: Sequence[np.ndarray]) -> list[QKV]:
        """Windows of ``length`` tokens of every input, encoded as the circuit takes them (:meth:`encode`:
        ``x`` quantized, or projected to ``q, k, v``); short ones padded.

        Every prefix of the first input is included too, so that padded sequences of every
        length are part of what the compiler measures. (Extreme made-up samples, such as all
        ``q`` and ``k`` at their largest, would widen every bit width for values real text
        never produces.) A generation step's circuit (``queries < length``) is not padded: its
        samples are the same windows, with the queries of their last tokens.
        """
        projected = [self.encode(x, pad=False) for x in inputs]
        if not projected:
            raise ValueError("compiling needs at least one calibration input, got none")
        if self.is_step:
            windows = [
                tuple(a[start : start + self.length] for a in qkv)
                for qkv in projected
                for start in range(0, qkv[0].shape[0] - self.length + 1, self.length)
            ]
            if not windows:
                raise ValueError(f"no calibration input has {self.length} tokens, the length of this circuit")
            return [(q[-self.queries :], k, v) for q, k, v in windows]
        inputset = []
        for qkv in projected:
            tokens = qkv[0].shape[0]
            for start in range(0, max(1, tokens - self.length + 1), self.length):
                inputset.append(self._pad(tuple(a[start : start + self.length] for a in qkv)))
        first = projected[0]
        for t in range(1, min(self.length, first[0].shape[0])):
            inputset.append(self._pad(tuple(a[:t] for a in first)))
        return inputset

    # -- what it costs -----------------------------------------------------------------------------
    def summary(self) -> CircuitSummary:
        """Bit width, PBS count, complexity and sizes of this circuit."""
        circuit = self.circuit
        per_tag = circuit.programmable_bootstrap_count_per_tag
        steps = {tag: count for tag, count in per_tag.items() if tag in ("projection", "scores", "softmax", "mix")}
        return CircuitSummary(
            n_bits=self.heads[0].n_bits,
            lookup_bits=self.heads[0].lookup_bits,
            length=self.length,
            max_bit_width=int(circuit.graph.maximum_integer_bit_width()),
            pbs_count=int(circuit.programmable_bootstrap_count),
            pbs_per_step=steps,
            complexity=float(circuit.complexity),
            evaluation_key_bytes=int(circuit.size_of_bootstrap_keys + circuit.size_of_keyswitch_keys),
            input_bytes=int(circuit.size_of_inputs),
            output_bytes=int(circuit.size_of_outputs),
            compile_seconds=self.compile_seconds,
            queries=self.queries,
            scope=self.scope,
        )

    @property
    def fingerprint(self) -> str:
        """The circuit's fingerprint (names its keys in the cache; checked by the server)."""
        return circuit_fingerprint(self.circuit)

    @property
    def description(self) -> CircuitDescription:
        """What a server publishes about this circuit (:class:`~course_lib.contract.CircuitDescription`)."""
        return CircuitDescription(
            fingerprint=self.fingerprint,
            length=self.length,
            scope=self.scope,
            inputs=self.input_names,
            input_shape=(self.length, int(self.input_width)),
            queries=self.queries,
            heads=len(self.heads),
            n_bits=int(self.heads[0].n_bits),
            input_bytes=int(self.circuit.size_of_inputs),
        )

    def save_server(self, folder: str | Path) -> Path:
        """Write what a server needs, and only that, into ``folder`` (created if needed); returns ``folder``.

        :data:`~course_lib.contract.SERVER_FILE` is concrete's server artifact (the compiled circuit, no
        keys in it); :data:`~course_lib.contract.CIRCUIT_FILE` is the circuit's :attr:`description`
        (fingerprint, inputs, shapes), which the server publishes and the client checks.
        """
        return save_artifact(folder, self.circuit.server, self.description)

    # -- inputs (the client's side) ----------------------------------------------------------------
    def encode(self, x: np.ndarray, *, pad: bool = True) -> tuple[np.ndarray, ...]:
        """Float attention input ``(T, n_embd)`` to the circuit's integer inputs.

        This is the client's clear computation. Scope ``"projection+attention"``: quantize ``x``
        (the input quantizer only: the client never needs the weights). Scope ``"attention"``:
        quantize ``x``, project it with each head's clear weights, quantize ``q, k, v``. Then pad
        to the compiled length (a generation step's circuit: keep the last tokens' queries). With
        ``pad=False``, the integers as they are.
        """
        if self.scope != "attention":
            quantized = (np.asarray(self.heads[0].quantize_input(x).int),)
            return self.prepare(*quantized) if pad else quantized
        per_head = [head.project(head.quantize_input(x)) for head in self.heads]
        q, k, v = (self._joined([np.asarray(p[i].int) for p in per_head]) for i in range(3))
        if not pad:
            return q, k, v
        return self.prepare(q[-self.queries :] if self.is_step else q, k, v)

    @property
    def input_width(self) -> int:
        """Columns of each encrypted input: ``n_embd`` (from x) or ``n_heads * head_dim`` (q, k, v)."""
        return self.heads[0].weights.n_embd if self.scope != "attention" else len(self.heads) * self.head_dim

    def _input_blocks(self, a: np.ndarray) -> list[np.ndarray]:
        """What each head reads of an input: its columns of q, k or v, or all of x."""
        return self._blocks(a) if self.scope == "attention" else [a] * len(self.heads)

    def _pad(self, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
        padded = []
        for name, a in zip(self.input_names, inputs, strict=True):
            zero_points = [params[name].zero_point for params in self.input_params]
            fill = zero_points[0] if name == "x" else np.repeat(zero_points, self.head_dim)
            padded.append(pad_rows(a, self.length, fill))
        return tuple(padded)

    def prepare(self, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Check the integer inputs (:attr:`input_names`, each ``(T, input_width)`` with ``T <= length``);
        pad them to the compiled length.

        Raises:
            SequenceLengthError: too many tokens, the wrong number of inputs, or arrays of the wrong shape.
            InputRangeError: integers outside a quantizer's range (checked before any encryption).
        """
        if len(inputs) != len(self.input_names):
            raise SequenceLengthError(
                f"this circuit takes {len(self.input_names)} input(s), {', '.join(self.input_names)}, got {len(inputs)}"
            )
        width = self.input_width
        arrays = [np.asarray(a) for a in inputs]
        if self.is_step:
            self._check_step_shapes(arrays, width)
        tokens = arrays[0].shape[0] if arrays[0].ndim == 2 else None
        if tokens is not None and tokens > self.length:
            raise SequenceLengthError(
                f"the sequence has {tokens} tokens but the circuit was compiled for {self.length}; "
                f"use at most {self.length} tokens or compile a HeadCircuit with length={tokens}"
            )
        names = ", ".join(self.input_names)
        for name, a in zip(self.input_names, arrays, strict=True):
            if self.is_step:
                pass  # shapes checked above
            elif a.ndim != 2 or a.shape[1] != width or a.shape[0] != tokens or not 1 <= a.shape[0] <= self.length:
                raise SequenceLengthError(
                    f"the circuit takes {names} of shape (T, {width}) with the same 1 <= T <= {self.length} "
                    f"(compiled sequence length {self.length}); {name} has shape {a.shape}"
                )
            if not np.issubdtype(a.dtype, np.integer):
                source = "QuantizedHead.quantize_input" if name == "x" else "QuantizedHead.project"
                raise InputRangeError(f"the circuit takes integers ({name} from {source}), got dtype {a.dtype}")
            for h, (block, params) in enumerate(zip(self._input_blocks(a), self.input_params, strict=True)):
                params = params[name]
                if block.min() < params.qmin or block.max() > params.qmax:
                    which = name if len(self.heads) == 1 or name == "x" else f"{name} of head {h}"
                    raise InputRangeError(
                        f"{which} integers must lie in [{params.qmin}, {params.qmax}] (the {params.n_bits}-bit "
                        f"range the circuit was compiled for), got values from {int(block.min())} to "
                        f"{int(block.max())}; outside it an encrypted value would wrap around silently"
                    )
                if name == "x":
                    break  # every head reads the same x
        return arrays if self.is_step else self._pad(arrays)

    def _check_step_shapes(self, arrays: list[np.ndarray], width: int) -> None:
        expected = {"q": (self.queries, width), "k": (self.length, width), "v": (self.length, width)}
        for name, a in zip(CIRCUIT_INPUTS, arrays, strict=True):
            if a.shape != expected[name]:
                raise SequenceLengthError(
                    f"this generation step's circuit takes q of shape {expected['q']} (the last "
                    f"{self.queries} token{'s' * (self.queries > 1)}) and k, v of shape {expected['k']} (exactly "
                    f"{self.length} tokens, no padding); {name} has shape {a.shape}"
                )

    # -- what travels to a server or a worker --------------------------------------------------------
    def encrypt_message(self, padded: Sequence[np.ndarray]) -> bytes:
        """Encrypt inputs from :meth:`prepare` and frame their ciphertexts (:func:`~course_lib.transport.pack`)."""
        return pack([value.serialize() for value in self._encrypt(padded)])

    def _encrypt(self, padded: Sequence[np.ndarray]) -> tuple[fhe.Value, ...]:
        """The ciphertexts of the inputs, always as a tuple (concrete returns a bare value for one input)."""
        encrypted = self.circuit.encrypt(*padded)
        return encrypted if isinstance(encrypted, tuple) else (encrypted,)

    def decrypt_message(self, message: bytes) -> np.ndarray:
        """Decrypt the framed encrypted output a server or a worker sent back."""
        (result,) = unpack(message, expected_parts=1)
        return np.asarray(self.circuit.decrypt(fhe.Value.deserialize(result)))

    # -- three ways to run it ----------------------------------------------------------------------
    def clear(self, *inputs: np.ndarray) -> np.ndarray:
        """The encrypted part on clear NumPy integers: the integers the circuit outputs, padding rows included."""
        return np.asarray(self._joined([out.int for out in self._run_heads(*self.prepare(*inputs))]))

    def simulate(self, *inputs: np.ndarray) -> np.ndarray:
        """The circuit simulated by concrete: the same integers as :meth:`clear`, no encryption (unless the
        projection rounds approximately: see :attr:`is_exact`)."""
        return np.asarray(self.circuit.simulate(*self.prepare(*inputs)))

    def execute(self, *inputs: np.ndarray) -> np.ndarray:
        """Encrypt, run on ciphertexts, decrypt. The circuit's keys must exist (see :mod:`course_lib.keys`)."""
        return self.timed_execute(*inputs)[0]

    @property
    def is_exact(self) -> bool:
        """True if simulation and execution give exactly the integers of :meth:`clear`.

        False when the circuit's heads round the projection's accumulators approximately
        (``exact_projection_rounding=False``): a value close to halfway then rounds either way at
        random, in simulation and on ciphertexts alike, so that a q, k or v integer can be one off
        the clear one; everything after them is exact.
        """
        return self.scope == "attention" or all(h.rounds_projection_exactly for h in self.heads)

    def timed_execute(self, *inputs: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """As :meth:`execute`, with the seconds spent encrypting, running and decrypting."""
        padded = self.prepare(*inputs)
        if not self.circuit.keys.are_generated:
            raise RuntimeError(
                "this circuit has no keys yet: generate or load them first with "
                "course_lib.keys.ensure_keys(head_circuit.circuit) (execute needs them, simulate does not)"
            )
        times = {}
        start = time.perf_counter()
        encrypted = self._encrypt(padded)
        times["encrypt"] = time.perf_counter() - start
        start = time.perf_counter()
        result = self.circuit.run(*encrypted)
        times["run"] = time.perf_counter() - start
        start = time.perf_counter()
        out = np.asarray(self.circuit.decrypt(result))
        times["decrypt"] = time.perf_counter() - start
        return out, times

    def dequantize(self, q_out: np.ndarray, tokens: int | None = None) -> np.ndarray:
        """The output integers as reals ``(tokens, n_heads * head_dim)``, the padding rows dropped."""
        q_out = np.asarray(q_out, dtype=np.float64)[:tokens]
        scales = np.repeat(self.output_scales, self.head_dim)
        return scales * (q_out - np.repeat(self.output_zero_points, self.head_dim))

    def __repr__(self) -> str:
        return (
            f"HeadCircuit({len(self.heads)} head{'s' * (len(self.heads) > 1)}, n_bits={self.heads[0].n_bits}, "
            f"lookup_bits={self.heads[0].lookup_bits}, length={self.length}, "
            f"{f'queries={self.queries}, ' if self.is_step else ''}"
            f"max bit width {self.circuit.graph.maximum_integer_bit_width()}, "
            f"{self.circuit.programmable_bootstrap_count:,} PBS)"
        )
