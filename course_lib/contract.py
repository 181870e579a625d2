"""The contract between the client and the server: routes, artifact files, and the circuit the server publishes.

:mod:`course_lib.client`, :mod:`course_lib.server`, :mod:`course_lib.fhe` and
:mod:`course_lib.distributed` read the names below instead of writing their own strings, so that
the two sides cannot drift apart. Standard library only (no concrete, torch or HTTP stack): every
other module may import this one.

**Routes** (:class:`Route`, a method and a path):

- :data:`HEALTH`: ``GET``, the server answers while it is up;
- :data:`CIRCUIT`: ``GET``, the :class:`CircuitDescription` of the circuit it runs;
- :data:`OPEN_SESSION`: ``POST`` the client's *evaluation* keys (framed by
  :func:`course_lib.transport.pack`), answered with a session id;
- :data:`CLOSE_SESSION`: ``DELETE`` a session, the server forgets its keys;
- :data:`RUN`: ``POST`` a session's framed ciphertexts, answered with the framed encrypted output
  (a head's circuit, scopes :data:`HEAD_SCOPES`);
- :data:`STEP`: ``POST`` the framed ciphertext of one token's ``x`` to a layer server (scope
  :data:`LAYER_SCOPE`), answered with the framed encrypted output row; the server keeps the token's
  encrypted keys and values in the session's cache for the next steps;
- :data:`FORGET`: ``DELETE`` a layer session's cached tokens, to start another sequence with the same keys.

**Artifact** (written by :meth:`HeadCircuit.save_server <course_lib.fhe.HeadCircuit.save_server>`,
read by the server): :data:`SERVER_FILE`, concrete's compiled circuit or module (no keys), and
:data:`CIRCUIT_FILE`, its :class:`CircuitDescription` in JSON. A layer's module has one function per
sequence length, named by :func:`layer_function`.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

# -- the artifact ----------------------------------------------------------------------------------
#: concrete's server artifact: the compiled circuit, without any key.
SERVER_FILE = "server.zip"
#: The circuit's description (:class:`CircuitDescription`), as JSON.
CIRCUIT_FILE = "circuit.json"

# -- what a circuit computes from what -------------------------------------------------------------
#: The encrypted inputs of a circuit of scope ``"attention"``, in order: ``q, k, v``.
CIRCUIT_INPUTS: tuple[str, ...] = ("q", "k", "v")

#: What a head's circuit computes on the server, from what it receives:
#: ``"attention"``: scores, softmax and weighted values from the client's encrypted ``q, k, v``
#: (the client projects with the head's weights); ``"projection+attention"``: the same from the
#: client's encrypted attention input ``x``, the projection's weights being clear constants of the
#: circuit (the server's, never the client's).
HEAD_SCOPES: tuple[str, ...] = ("attention", "projection+attention")
#: A whole attention layer, one token per step: from the client's encrypted ``x`` of the new token,
#: every head's projection, attention over the session's encrypted KV cache, and ``c_proj``. The
#: server keeps the cache between steps (:data:`STEP`).
LAYER_SCOPE = "layer"
#: Every scope a server may run.
SCOPES: tuple[str, ...] = (*HEAD_SCOPES, LAYER_SCOPE)

#: The encrypted inputs of each scope, in order (a layer's cached rows come from the server's own cache).
SCOPE_INPUTS: dict[str, tuple[str, ...]] = {
    "attention": CIRCUIT_INPUTS,
    "projection+attention": ("x",),
    LAYER_SCOPE: ("x",),
}

#: The name of a layer module's function that computes the ``position``-th token of a sequence.
LAYER_FUNCTION = "step_{position}"


def layer_function(position: int) -> str:
    """The layer module's function for the token at ``position`` (1-based): ``step_1``, ``step_2``, ..."""
    return LAYER_FUNCTION.format(position=position)


# -- the routes ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Route:
    """One HTTP route of the server: its method and its path template (``{name}`` for a parameter)."""

    method: str
    template: str

    def path(self, **params: str) -> str:
        """The path with its parameters filled in (each quoted for a URL).

        Raises:
            ValueError: a parameter of the template is missing, or one is given that it does not have.
        """
        try:
            path = self.template.format(**{name: quote(str(value), safe="") for name, value in params.items()})
        except KeyError as error:
            raise ValueError(f"the route {self} needs the parameter {error.args[0]!r}") from None
        extra = sorted(name for name in params if "{" + name + "}" not in self.template)
        if extra:
            raise ValueError(f"the route {self} has no parameter {', '.join(map(repr, extra))}")
        return path

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


#: The server answers while it is up.
HEALTH = Route("GET", "/health")
#: The :class:`CircuitDescription` of the circuit the server runs (JSON).
CIRCUIT = Route("GET", "/circuit")
#: Body: the framed evaluation keys. Answer: ``{"session": id, "evaluation_key_bytes": n}``.
OPEN_SESSION = Route("POST", "/sessions")
#: The server forgets the session and its evaluation keys. Answer: ``{"closed": id}``.
CLOSE_SESSION = Route("DELETE", "/sessions/{session}")
#: Body: the framed ciphertexts of the circuit's inputs. Answer: the framed encrypted output. (Head servers.)
RUN = Route("POST", "/sessions/{session}/run")
#: Body: the framed ciphertext of the ``x`` of the token at ``position`` (1-based), which must be the
#: session's next one. Answer: the framed encrypted output row. (Layer servers.)
STEP = Route("POST", "/sessions/{session}/tokens/{position}")
#: The server forgets the session's cached tokens (not its keys): the next step is position 1.
#: Answer: ``{"forgotten": <tokens>}``. (Layer servers.)
FORGET = Route("DELETE", "/sessions/{session}/tokens")

#: Every route, for a server to register and a reader to list.
ROUTES: tuple[Route, ...] = (HEALTH, CIRCUIT, OPEN_SESSION, CLOSE_SESSION, RUN, STEP, FORGET)


# -- the circuit's description ---------------------------------------------------------------------
class DescriptionError(ValueError):
    """A circuit description that is not valid JSON, lacks a field, has an unknown one, or a wrong value."""


@dataclass(frozen=True)
class CircuitDescription:
    """What a server publishes about the circuit it runs (:data:`CIRCUIT`), and stores beside it (:data:`CIRCUIT_FILE`).

    Every field is checked when the description is made or read: a wrong one raises
    :class:`DescriptionError` naming it. Lists read from JSON become tuples.
    """

    fingerprint: str  # the compiled circuit's (course_lib.keys.circuit_fingerprint): client and server must agree
    length: int  # the compiled sequence length, tokens (a layer: the longest sequence its steps reach)
    scope: str  # what the circuit computes from what: one of SCOPES
    inputs: tuple[str, ...]  # the encrypted inputs, in the order the server receives them: SCOPE_INPUTS[scope]
    input_shape: tuple[int, int]  # (rows, columns) of each input: `length` rows (a layer: 1, one token per step)
    queries: int  # the circuit outputs the last `queries` tokens' rows (length: every row; a layer: 1)
    heads: int  # attention heads side by side in the circuit
    n_bits: int  # bits of the heads' activation quantizers
    input_bytes: int | None = None  # the encrypted inputs' size, as the compiler counts it (None: not recorded)

    def __post_init__(self) -> None:
        for name in ("fingerprint", "scope"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise DescriptionError(f"the circuit description's {name!r} must be a non-empty string, got {value!r}")
        for name in ("length", "queries", "heads", "n_bits"):
            _check_positive(name, getattr(self, name))
        if self.input_bytes is not None:
            _check_positive("input_bytes", self.input_bytes)
        if self.scope not in SCOPES:
            raise DescriptionError(
                f"the circuit description's 'scope' must be one of {', '.join(map(repr, SCOPES))}, got {self.scope!r}"
            )
        inputs = _as_tuple("inputs", self.inputs)
        if inputs != SCOPE_INPUTS[self.scope]:
            raise DescriptionError(
                f"the circuit description's 'inputs' must be {list(SCOPE_INPUTS[self.scope])} for scope "
                f"{self.scope!r}, got {list(inputs)}"
            )
        shape = _as_tuple("input_shape", self.input_shape)
        if len(shape) != 2:
            raise DescriptionError(
                f"the circuit description's 'input_shape' must be [rows, columns], got {list(shape)}"
            )
        for value in shape:
            _check_positive("input_shape", value)
        rows = 1 if self.scope == LAYER_SCOPE else self.length
        if shape[0] != rows:
            what = "1 row for scope 'layer' (one token per step)" if rows == 1 else f"length={rows} rows"
            raise DescriptionError(f"the circuit description's 'input_shape' must have {what}, got {list(shape)}")
        if self.scope == LAYER_SCOPE and self.queries != 1:
            raise DescriptionError(
                f"the circuit description's 'queries' must be 1 for scope 'layer', got {self.queries}"
            )
        if self.queries > self.length:
            raise DescriptionError(
                f"the circuit description's 'queries' must be at most length={self.length}, got {self.queries}"
            )
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "input_shape", shape)

    # -- to and from JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The description as a JSON-ready dictionary (tuples as lists)."""
        data = asdict(self)
        return {name: list(value) if isinstance(value, tuple) else value for name, value in data.items()}

    @classmethod
    def from_dict(cls, data: Any) -> CircuitDescription:
        """The description in ``data`` (e.g. a server's JSON answer), checked.

        Raises:
            DescriptionError: ``data`` is not a dictionary, lacks a required field, has one this
                version does not know, or has a wrong value; the message names every such field.
        """
        if not isinstance(data, dict):
            raise DescriptionError(f"a circuit description is a JSON object, got {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        missing = [name for name, f in known.items() if f.default is MISSING and name not in data]
        unknown = sorted(str(name) for name in data if name not in known)
        problems = []
        if missing:
            problems.append(f"lacks the field(s) {', '.join(map(repr, missing))}")
        if unknown:
            problems.append(f"has unknown field(s) {', '.join(map(repr, unknown))}")
        if problems:
            raise DescriptionError(
                f"the circuit description {' and '.join(problems)}: write it with HeadCircuit.save_server "
                "of this version of course_lib"
            )
        return cls(**data)

    def to_json(self) -> str:
        """The description as JSON text (what :data:`CIRCUIT_FILE` holds)."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> CircuitDescription:
        """The description in JSON ``text``, checked as :meth:`from_dict` checks it.

        Raises:
            DescriptionError: not JSON, or not a valid description.
        """
        try:
            data = json.loads(text)
        except ValueError as error:
            raise DescriptionError(f"the circuit description is not valid JSON: {error}") from None
        return cls.from_dict(data)

    def save(self, folder: str | Path) -> Path:
        """Write the description to ``folder/`` :data:`CIRCUIT_FILE`; the file's path."""
        path = Path(folder) / CIRCUIT_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, folder: str | Path) -> CircuitDescription:
        """The description in ``folder/`` :data:`CIRCUIT_FILE` (an artifact folder), checked.

        Raises:
            FileNotFoundError: the folder has no such file (not written by ``HeadCircuit.save_server``).
            DescriptionError: the file is not a valid description; the message names the file.
        """
        path = Path(folder) / CIRCUIT_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"no circuit description at {path}: write the artifact with HeadCircuit.save_server"
            )
        try:
            return cls.from_json(path.read_text())
        except DescriptionError as error:
            raise DescriptionError(f"{path}: {error}") from None


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DescriptionError(f"the circuit description's {name!r} must be a positive integer, got {value!r}")


def _as_tuple(name: str, value: Any) -> tuple:
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        raise DescriptionError(f"the circuit description's {name!r} must be a list, got {value!r}")
    return tuple(value)
