"""The encrypted part of a quantized head, compiled to an FHE circuit: what it costs, how to run it.

:class:`HeadCircuit` hands :meth:`QuantizedHead.attend <course_lib.attention.QuantizedHead.attend>`
(``q, k, v -> out``) to concrete-python's compiler. The compiler traces it on integers only,
learns the range of every intermediate value from an *inputset* (the calibration inputs,
quantized), picks each value's bit width and the cryptographic parameters, and turns every
table lookup and every encrypted x encrypted product into programmable bootstraps (PBS).

**What is encrypted.** The client runs GPT-2 up to the head, computes ``q, k, v`` with
:meth:`QuantizedHead.project` (clear weights, each token on its own), quantizes and
encrypts them. The server computes the scores, the causal softmax and the weighted sum of
values on ciphertexts: everything in the head that mixes tokens. (The projection's
128-term sums need 9 to 14-bit integers; in FHE a lookup on them needs evaluation keys of
several gigabytes, see notebook 03.)

**Sequence length.** A circuit has fixed shapes, so it is compiled for one sequence
length, :data:`DEFAULT_LENGTH` tokens. Shorter sequences are padded at the end: the head is
causal, so token ``t`` only ever reads tokens ``0..t`` and the padding rows cannot change
the real rows (the tests check this bit for bit). One circuit, one set of keys and one
server artifact then serve every prompt up to that length, at the cost of always paying
for the full length.

Three ways to run the same integers, each checked against the previous one:

- :meth:`HeadCircuit.clear`: :meth:`~QuantizedHead.attend` on NumPy integers (notebook 02's
  "quantized" mode);
- :meth:`HeadCircuit.simulate`: concrete's simulation of the circuit, no encryption;
- :meth:`HeadCircuit.execute`: encrypt, run on ciphertexts, decrypt (needs keys, see
  :mod:`course_lib.keys`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from concrete import fhe

from .attention import QuantizedHead
from .dual_array import DualArray
from .keys import circuit_fingerprint
from .quantization import QuantParams

#: The course's default FHE setting: sequence length (prompts are padded to it), activation
#: bits, and the widest integer a lookup of the encrypted part may read (see notebook 03
#: for the measurements behind them).
DEFAULT_LENGTH = 4
DEFAULT_N_BITS = 4
DEFAULT_LOOKUP_BITS = 7


class SequenceLengthError(ValueError):
    """A sequence does not fit the length the circuit was compiled for."""


class InputRangeError(ValueError):
    """Integers outside the range the circuit was compiled for (they would wrap around silently)."""


def configuration(**overrides) -> fhe.Configuration:
    """The course's compiler configuration; keyword arguments override single settings.

    Key compression is on: evaluation keys are what a client uploads to a server.
    """
    settings = {"compress_evaluation_keys": True, "show_progress": False}
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
        input_bytes: size of one encrypted input (q, k and v, each ``(length, head_dim)``).
        output_bytes: size of one encrypted output.
        compile_seconds: wall time of the compilation.
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

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs, in the order :meth:`__str__` prints them."""
        steps = ", ".join(f"{name} {count:,}" for name, count in self.pbs_per_step.items())
        rounding = "none" if self.lookup_bits is None else f"lookup inputs rounded to {self.lookup_bits} bits"
        return [
            ("activations", f"{self.n_bits} bits ({rounding})"),
            ("sequence length", f"{self.length} tokens (shorter prompts are padded)"),
            ("max bit width", f"{self.max_bit_width} bits"),
            ("PBS per run", f"{self.pbs_count:,} ({steps})"),
            ("complexity", f"{self.complexity:.3g}"),
            ("evaluation keys", _megabytes(self.evaluation_key_bytes) + " before compression"),
            ("one input ciphertext", _megabytes(self.input_bytes)),
            ("one output ciphertext", _megabytes(self.output_bytes)),
        ]

    def __str__(self) -> str:
        rows = self.rows()
        width = max(len(label) for label, _ in rows)
        return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def _megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} kB"


def pad_rows(q: np.ndarray, length: int, fill: int) -> np.ndarray:
    """``q`` ``(T, n)`` with rows of ``fill`` appended up to ``length`` rows."""
    if q.shape[0] > length:
        raise SequenceLengthError(
            f"the sequence has {q.shape[0]} tokens but the circuit was compiled for {length}; "
            f"use at most {length} tokens or compile a HeadCircuit with length={q.shape[0]}"
        )
    padding = np.full((length - q.shape[0], *q.shape[1:]), fill, dtype=np.int64)
    return np.concatenate((np.asarray(q, dtype=np.int64), padding))


#: The circuit's encrypted inputs, in order.
CIRCUIT_INPUTS: tuple[str, ...] = ("q", "k", "v")

QKV = tuple[np.ndarray, np.ndarray, np.ndarray]


class HeadCircuit:
    """The encrypted part of a calibrated :class:`QuantizedHead`, compiled for ``length`` tokens.

    Args:
        head: a calibrated head (its quantizers and ``drop_bits`` are frozen into the circuit).
        inputs: float attention inputs ``(T, n_embd)`` (the calibration inputs): projected,
            cut into windows of ``length`` rows and padded, they form the compiler's inputset.
        length: the compiled sequence length.
        config: a concrete ``fhe.Configuration`` (default: :func:`configuration`).

    The circuit takes the integers of the head's ``q``, ``k`` and ``v`` quantizers, each
    ``(length, head_dim)``, and returns those of its ``output`` quantizer.
    """

    def __init__(
        self,
        head: QuantizedHead,
        inputs: Sequence[np.ndarray],
        length: int = DEFAULT_LENGTH,
        config: fhe.Configuration | None = None,
    ) -> None:
        if not head.is_calibrated:
            raise ValueError("compile a calibrated head: call head.calibrate(inputs) first")
        if isinstance(length, bool) or not isinstance(length, int | np.integer) or length < 1:
            raise ValueError(f"length must be a positive integer (tokens), got {length!r}")
        self.head = head
        self.length = int(length)
        self.input_params: dict[str, QuantParams] = {name: head.quantizers[name].params for name in CIRCUIT_INPUTS}
        self.output_params: QuantParams = head.quantizers["output"].params
        self.inputset = self._inputset(inputs)

        def attend_on_integers(q, k, v):
            qkv = (DualArray.from_int(q, self.input_params["q"]), DualArray.from_int(k, self.input_params["k"]))
            return head.attend(*qkv, DualArray.from_int(v, self.input_params["v"])).int

        compiler = fhe.Compiler(attend_on_integers, dict.fromkeys(CIRCUIT_INPUTS, "encrypted"))
        start = time.perf_counter()
        self.circuit: fhe.Circuit = compiler.compile(self.inputset, configuration=config or configuration())
        self.compile_seconds = time.perf_counter() - start

    # -- the inputset ------------------------------------------------------------------------------
    def _inputset(self, inputs: Sequence[np.ndarray]) -> list[QKV]:
        """Windows of ``length`` tokens of every input, projected to ``q, k, v``; short ones padded.

        Every prefix of the first input is included too, so that padded sequences of every
        length are part of what the compiler measures. (Extreme made-up samples, such as all
        ``q`` and ``k`` at their largest, would widen every bit width for values real text
        never produces.)
        """
        projected = [self.encode(x, pad=False) for x in inputs]
        if not projected:
            raise ValueError("compiling needs at least one calibration input, got none")
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
        steps = {tag: count for tag, count in per_tag.items() if tag in ("scores", "softmax", "mix")}
        return CircuitSummary(
            n_bits=self.head.n_bits,
            lookup_bits=self.head.lookup_bits,
            length=self.length,
            max_bit_width=int(circuit.graph.maximum_integer_bit_width()),
            pbs_count=int(circuit.programmable_bootstrap_count),
            pbs_per_step=steps,
            complexity=float(circuit.complexity),
            evaluation_key_bytes=int(circuit.size_of_bootstrap_keys + circuit.size_of_keyswitch_keys),
            input_bytes=int(circuit.size_of_inputs),
            output_bytes=int(circuit.size_of_outputs),
            compile_seconds=self.compile_seconds,
        )

    @property
    def fingerprint(self) -> str:
        """The circuit's fingerprint (names its keys in the cache; checked by the server)."""
        return circuit_fingerprint(self.circuit)

    def save_server(self, folder: str | Path) -> Path:
        """Write what a server needs, and only that: the compiled circuit and a description.

        ``folder/server.zip`` is concrete's server artifact (no keys in it);
        ``folder/circuit.json`` gives the inputs, shapes and fingerprint.
        """
        from .server import CIRCUIT_FILE, SERVER_FILE

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SERVER_FILE).unlink(missing_ok=True)
        self.circuit.server.save(folder / SERVER_FILE)
        info = {
            "fingerprint": self.fingerprint,
            "length": self.length,
            "inputs": list(CIRCUIT_INPUTS),
            "input_shape": [self.length, self.head.weights.head_dim],
            "n_bits": self.head.n_bits,
        }
        (folder / CIRCUIT_FILE).write_text(json.dumps(info, indent=2))
        return folder

    # -- inputs (the client's side) ----------------------------------------------------------------
    def encode(self, x: np.ndarray, *, pad: bool = True) -> QKV:
        """Float attention input ``(T, n_embd)`` to the circuit's integer inputs ``q, k, v``.

        This is the client's clear computation: quantize ``x``, project it with the
        head's clear weights, quantize ``q, k, v``; then pad to the compiled length.
        """
        q, k, v = self.head.project(self.head.quantize_input(x))
        qkv = (np.asarray(q.int), np.asarray(k.int), np.asarray(v.int))
        return self.prepare(*qkv) if pad else qkv

    def _pad(self, qkv: Sequence[np.ndarray]) -> QKV:
        pairs = zip(CIRCUIT_INPUTS, qkv, strict=True)
        return tuple(pad_rows(a, self.length, self.input_params[name].zero_point) for name, a in pairs)

    def prepare(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> QKV:
        """Check integer inputs ``(T, head_dim)`` with ``T <= length`` and pad them to the compiled length.

        Raises:
            SequenceLengthError: too many tokens, or arrays not of shape ``(T, head_dim)``.
            InputRangeError: integers outside a quantizer's range (checked before any encryption).
        """
        d = self.head.weights.head_dim
        arrays = [np.asarray(a) for a in (q, k, v)]
        tokens = arrays[0].shape[0] if arrays[0].ndim == 2 else None
        if tokens is not None and tokens > self.length:
            raise SequenceLengthError(
                f"the sequence has {tokens} tokens but the circuit was compiled for {self.length}; "
                f"use at most {self.length} tokens or compile a HeadCircuit with length={tokens}"
            )
        for name, a in zip(CIRCUIT_INPUTS, arrays, strict=True):
            if a.ndim != 2 or a.shape[1] != d or a.shape[0] != tokens or not 1 <= a.shape[0] <= self.length:
                raise SequenceLengthError(
                    f"the circuit takes q, k and v of shape (T, {d}) with the same 1 <= T <= {self.length} "
                    f"(compiled sequence length {self.length}); {name} has shape {a.shape}"
                )
            if not np.issubdtype(a.dtype, np.integer):
                raise InputRangeError(
                    f"the circuit takes integers ({name} from QuantizedHead.project), got dtype {a.dtype}"
                )
            params = self.input_params[name]
            if a.min() < params.qmin or a.max() > params.qmax:
                raise InputRangeError(
                    f"{name} integers must lie in [{params.qmin}, {params.qmax}] (the {params.n_bits}-bit range the "
                    f"circuit was compiled for), got values from {int(a.min())} to {int(a.max())}; outside it an "
                    "encrypted value would wrap around silently"
                )
        return self._pad(arrays)

    # -- three ways to run it ----------------------------------------------------------------------
    def clear(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The encrypted part on clear NumPy integers: padded inputs in, ``(length, head_dim)`` integers out."""
        padded = self.prepare(q, k, v)
        arrays = [DualArray.from_int(a, self.input_params[n]) for n, a in zip(CIRCUIT_INPUTS, padded, strict=True)]
        return np.asarray(self.head.attend(*arrays).int)

    def simulate(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The circuit simulated by concrete: the same integers as :meth:`clear`, no encryption."""
        return np.asarray(self.circuit.simulate(*self.prepare(q, k, v)))

    def execute(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Encrypt, run on ciphertexts, decrypt. The circuit's keys must exist (see :mod:`course_lib.keys`)."""
        return self.timed_execute(q, k, v)[0]

    def timed_execute(self, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, dict[str, float]]:
        """As :meth:`execute`, with the seconds spent encrypting, running and decrypting."""
        padded = self.prepare(q, k, v)
        if not self.circuit.keys.are_generated:
            raise RuntimeError(
                "this circuit has no keys yet: generate or load them first with "
                "course_lib.keys.ensure_keys(head_circuit.circuit) (execute needs them, simulate does not)"
            )
        times = {}
        start = time.perf_counter()
        encrypted = self.circuit.encrypt(*padded)
        times["encrypt"] = time.perf_counter() - start
        start = time.perf_counter()
        result = self.circuit.run(*encrypted)
        times["run"] = time.perf_counter() - start
        start = time.perf_counter()
        out = np.asarray(self.circuit.decrypt(result))
        times["decrypt"] = time.perf_counter() - start
        return out, times

    def dequantize(self, q_out: np.ndarray, tokens: int | None = None) -> np.ndarray:
        """The output integers as reals ``(tokens, head_dim)``, the padding rows dropped."""
        return self.output_params.dequantize(np.asarray(q_out)[:tokens])

    def __repr__(self) -> str:
        return (
            f"HeadCircuit(n_bits={self.head.n_bits}, lookup_bits={self.head.lookup_bits}, length={self.length}, "
            f"max bit width {self.circuit.graph.maximum_integer_bit_width()}, "
            f"{self.circuit.programmable_bootstrap_count:,} PBS)"
        )
