"""The server side of the split: it runs a compiled head or layer on ciphertexts, and never holds a secret key.

It loads a server artifact (the compiled circuit and its description, see :meth:`HeadCircuit.save_server
<course_lib.fhe.HeadCircuit.save_server>` and :meth:`LayerCircuit.save_server
<course_lib.layer_circuit.LayerCircuit.save_server>`), receives each client's *evaluation* keys once
(:data:`~course_lib.contract.OPEN_SESSION`), then ciphertexts, and returns ciphertexts:

- a head's circuit (scopes :data:`~course_lib.contract.HEAD_SCOPES`): the whole padded sequence per
  :data:`~course_lib.contract.RUN`;
- a layer's module (scope :data:`~course_lib.contract.LAYER_SCOPE`): one token's ``x`` per
  :data:`~course_lib.contract.STEP`. The session keeps the encrypted rows each step returns besides its
  output (the token's keys and values, and their squares) and feeds them to every later step: the
  session's KV cache, ciphertexts the server cannot read. :data:`~course_lib.contract.FORGET` empties it.
 It never receives, generates or uses a secret key (it calls only
``fhe.Server``, ``fhe.EvaluationKeys`` and ``fhe.Value``). Its routes and files are those of
:mod:`course_lib.contract`.

Run it with ``python -m course_lib.server --artifacts DIR --port 8000`` (FastAPI on
uvicorn); :class:`course_lib.client.ServerProcess` does that for the notebooks, and passes
``--parent-pid`` so that the server ends with the process that started it (:func:`exit_with_parent`).

Errors are answered in JSON with a ``detail`` message: 400 for bytes that cannot be read
(damaged, truncated, not keys, not ciphertexts) or a position below 1, 404 for an unknown session or a
route of the other kind of server (:data:`~course_lib.contract.RUN` on a layer, :data:`~course_lib.contract.STEP`
on a head), 409 for a step that is not the session's next token (or while another step of the session
runs), 413 for a request body over the server's limit (``max_key_bytes`` for keys, ``max_run_bytes`` for
ciphertexts), 422 for ciphertexts the circuit refuses to run (e.g. another sequence length; ciphertexts of
another circuit of the same shapes cannot be told apart and decrypt to wrong numbers) or a position past the
layer's longest sequence, 429 when ``max_sessions`` sessions are open already.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from concrete import fhe
from fastapi import FastAPI, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from .checks import check_integer
from .contract import (
    CIRCUIT,
    CLOSE_SESSION,
    FORGET,
    HEALTH,
    LAYER_SCOPE,
    OPEN_SESSION,
    RUN,
    SERVER_FILE,
    STEP,
    CircuitDescription,
    Route,
    layer_function,
)
from .environment import parse_bytes
from .transport import TransportError, pack, unpack

#: Default largest body of :data:`~course_lib.contract.OPEN_SESSION` (the framed evaluation keys): 8 GiB.
#: The course's circuits need a few GB of compressed keys at most; a larger published circuit needs more.
DEFAULT_MAX_KEY_BYTES = 8 * 1024**3
#: Default largest number of open sessions: each holds a client's evaluation keys in memory.
DEFAULT_MAX_SESSIONS = 4
#: Default largest body of :data:`~course_lib.contract.RUN` when the description gives the size of the
#: circuit's encrypted inputs: this many times that size, plus :data:`RUN_BYTES_MARGIN` for the framing.
RUN_BYTES_PER_INPUT_BYTE = 4
#: Added to the run limit computed from the inputs' size (framing, serialization headers).
RUN_BYTES_MARGIN = 1024**2
#: Default largest body of :data:`~course_lib.contract.RUN` when the description does not give the inputs' size.
DEFAULT_MAX_RUN_BYTES = 256 * 1024**2


def default_max_run_bytes(description: CircuitDescription) -> int:
    """The default limit on a run's body for this circuit: :data:`RUN_BYTES_PER_INPUT_BYTE` times the size of
    its encrypted inputs plus :data:`RUN_BYTES_MARGIN`, or :data:`DEFAULT_MAX_RUN_BYTES` if the size is unknown."""
    if description.input_bytes is None:
        return DEFAULT_MAX_RUN_BYTES
    return RUN_BYTES_PER_INPUT_BYTE * description.input_bytes + RUN_BYTES_MARGIN


def _size(n: int) -> str:
    return f"{n:,} bytes ({n / 1e6:,.1f} MB)" if n >= 1e5 else f"{n:,} bytes"


async def _read_body(request: Request, limit: int, what: str, setting: str) -> bytes:
    """The request's body, refused with 413 if over ``limit`` bytes: by its Content-Length before reading, and
    while reading (a body sent in chunks has none, and a body cannot be trusted to stop at its header)."""
    advice = f"the server's limit is {_size(limit)} ({setting}): start it with a larger one if the {what} are right"
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            declared_bytes = int(declared)
        except ValueError:
            raise HTTPException(400, f"the Content-Length header is not a number of bytes: {declared!r}") from None
        if declared_bytes > limit:
            raise HTTPException(
                413, f"the {what} are too large: the request's body is {_size(declared_bytes)}; {advice}"
            )
    chunks, received = [], 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise HTTPException(413, f"the {what} are too large: {_size(received)} received so far; {advice}")
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _Session:
    """One client's evaluation keys and, on a layer server, its encrypted KV cache."""

    keys: fhe.EvaluationKeys
    #: Each cached token's encrypted rows (what its step returned besides the output), oldest first.
    cache: list[tuple[fhe.Value, ...]] = field(default_factory=list)
    #: Held while a step runs: a session's steps run one after the other, in order.
    busy: threading.Lock = field(default_factory=threading.Lock)


class _Sessions:
    """The open sessions, at most ``limit`` of them (those being opened count too)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[str, _Session] = {}
        self.opening = 0
        self.lock = threading.Lock()

    def reserve(self) -> None:
        with self.lock:
            if len(self.open) + self.opening >= self.limit:
                being_opened = f" and {self.opening} being opened" if self.opening else ""
                raise HTTPException(
                    429,
                    f"{len(self.open)} sessions are open{being_opened}, the most this server keeps "
                    f"(max_sessions={self.limit}): close one with {CLOSE_SESSION} (RemoteHead.close()), "
                    f"or restart the server with a larger --max-sessions",
                )
            self.opening += 1

    def release(self) -> None:
        with self.lock:
            self.opening -= 1

    def add(self, keys: fhe.EvaluationKeys) -> str:
        session = uuid.uuid4().hex
        with self.lock:
            self.opening -= 1
            self.open[session] = _Session(keys)
        return session

    def get(self, session: str) -> _Session:
        """The open session ``session``; a 404 if there is none."""
        with self.lock:
            found = self.open.get(session)
        if found is None:
            raise HTTPException(404, f"unknown session {session!r}: open one with {OPEN_SESSION} (evaluation keys)")
        return found

    def pop(self, session: str) -> _Session | None:
        with self.lock:
            return self.open.pop(session, None)

    def __len__(self) -> int:
        with self.lock:
            return len(self.open)


def create_app(
    artifacts: str | Path,
    *,
    max_key_bytes: int = DEFAULT_MAX_KEY_BYTES,
    max_run_bytes: int | None = None,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
) -> FastAPI:
    """The FastAPI application serving the circuit (or a layer's module) saved in ``artifacts``.

    Args:
        artifacts: a folder written by :meth:`HeadCircuit.save_server <course_lib.fhe.HeadCircuit.save_server>`
            or :meth:`LayerCircuit.save_server <course_lib.layer_circuit.LayerCircuit.save_server>`.
        max_key_bytes: the largest body of :data:`~course_lib.contract.OPEN_SESSION` (framed evaluation keys).
        max_run_bytes: the largest body of :data:`~course_lib.contract.RUN` (framed ciphertexts); default
            :func:`default_max_run_bytes` of the circuit's description.
        max_sessions: the most sessions open at once (each holds its evaluation keys in memory).

    A body over its limit is answered with 413, from its Content-Length before it is read when the
    request has one, else as soon as the bytes read pass the limit; an :data:`~course_lib.contract.OPEN_SESSION`
    while ``max_sessions`` are open is answered with 429. :data:`~course_lib.contract.HEALTH` answers
    ``{"status": "ok", "sessions": <open>}`` and the three limits.

    Raises:
        FileNotFoundError, course_lib.contract.DescriptionError: ``artifacts`` has no valid description.
        ValueError: a limit is not a positive integer.
    """
    artifacts = Path(artifacts)
    description = CircuitDescription.load(artifacts)
    if max_run_bytes is None:
        max_run_bytes = default_max_run_bytes(description)
    limits = {"max_key_bytes": max_key_bytes, "max_run_bytes": max_run_bytes, "max_sessions": max_sessions}
    for name, value in limits.items():
        check_integer(value, name)
    server = fhe.Server.load(artifacts / SERVER_FILE)
    sessions = _Sessions(max_sessions)
    is_layer = description.scope == LAYER_SCOPE
    app = FastAPI(title="course_lib FHE server")
    app.state.description = description
    app.state.limits = limits

    def route(r: Route):
        return app.api_route(r.template, methods=[r.method])

    @route(HEALTH)
    def health() -> dict:
        return {"status": "ok", "sessions": len(sessions), **limits}

    @route(CIRCUIT)
    def circuit() -> dict:
        return description.to_dict()

    @route(OPEN_SESSION)
    async def open_session(request: Request) -> dict:
        sessions.reserve()  # before reading gigabytes of keys that could not be kept
        try:
            body = await _read_body(request, max_key_bytes, "evaluation keys", f"max_key_bytes={max_key_bytes}")
            try:
                (key_bytes,) = unpack(body, expected_parts=1)
                keys = await run_in_threadpool(fhe.EvaluationKeys.deserialize, key_bytes)
            except TransportError as error:
                raise HTTPException(400, f"the evaluation keys could not be read: {error}") from None
            except RuntimeError as error:
                raise HTTPException(400, f"these bytes are not evaluation keys concrete can read: {error}") from None
        except BaseException:
            sessions.release()
            raise
        return {"session": sessions.add(keys), "evaluation_key_bytes": len(key_bytes)}

    @route(CLOSE_SESSION)
    def close_session(session: str) -> dict:
        if sessions.pop(session) is None:
            raise HTTPException(404, f"unknown session {session!r}")
        return {"closed": session}

    async def read_ciphertexts(request: Request) -> list[fhe.Value]:
        body = await _read_body(request, max_run_bytes, "ciphertexts", f"max_run_bytes={max_run_bytes}")
        try:
            return [fhe.Value.deserialize(part) for part in unpack(body, expected_parts=len(description.inputs))]
        except TransportError as error:
            raise HTTPException(400, f"the ciphertexts could not be read: {error}") from None
        except RuntimeError as error:
            raise HTTPException(400, f"these bytes are not ciphertexts concrete can read: {error}") from None

    def refused(error: RuntimeError) -> HTTPException:
        compiled = (
            f"sequences of up to {description.length} tokens, one per step"
            if is_layer
            else f"sequence length {description.length}"
        )
        return HTTPException(
            422,
            f"the ciphertexts do not fit this circuit, compiled for {compiled} "
            f"(inputs {', '.join(description.inputs)} of shape {list(description.input_shape)}): {error}",
        )

    def only_for(layer: bool) -> None:
        if is_layer != layer:
            kind, route = ("a layer", STEP) if is_layer else (f"a head (scope {description.scope!r})", RUN)
            raise HTTPException(404, f"this server runs {kind}: send ciphertexts to {route}")

    @route(RUN)
    async def run(session: str, request: Request) -> Response:
        only_for(layer=False)
        keys = sessions.get(session).keys
        args = await read_ciphertexts(request)
        try:
            # minutes of work: in a worker thread, so that the server keeps answering meanwhile
            result = await run_in_threadpool(server.run, *args, evaluation_keys=keys)
        except RuntimeError as error:
            raise refused(error) from None
        return Response(pack([result.serialize()]), media_type="application/octet-stream")

    @route(STEP)
    async def step(session: str, position: int, request: Request) -> Response:
        only_for(layer=True)
        state = sessions.get(session)
        if position < 1 or position > description.length:
            status = 400 if position < 1 else 422
            raise HTTPException(
                status,
                f"this layer runs tokens 1 to {description.length} of a sequence, got token {position}"
                + (f": {FORGET} forgets the session's tokens to start another sequence" if status == 422 else ""),
            )
        (x,) = await read_ciphertexts(request)
        if not state.busy.acquire(blocking=False):
            raise HTTPException(409, "a step of this session is running: send the next token after its answer")
        try:
            expected = len(state.cache) + 1
            if position != expected:
                raise HTTPException(
                    409,
                    f"this session holds {expected - 1} token(s): the next one is token {expected}, got token "
                    f"{position}. If the client started another sequence, {FORGET} forgets the session's tokens",
                )
            cached = [value for rows in state.cache for value in rows]
            try:
                y, *rows = await run_in_threadpool(
                    server.run, x, *cached, evaluation_keys=state.keys, function_name=layer_function(position)
                )
            except RuntimeError as error:
                raise refused(error) from None
            state.cache.append(tuple(rows))
        finally:
            state.busy.release()
        return Response(pack([y.serialize()]), media_type="application/octet-stream")

    @route(FORGET)
    def forget(session: str) -> dict:
        only_for(layer=True)
        state = sessions.get(session)
        if not state.busy.acquire(blocking=False):
            raise HTTPException(409, "a step of this session is running: forget its tokens after its answer")
        try:
            forgotten = len(state.cache)
            state.cache.clear()
        finally:
            state.busy.release()
        return {"forgotten": forgotten}

    return app


# -- ending with the parent ------------------------------------------------------------------------
def exit_with_parent(parent_pid: int, *, poll_seconds: float = 1.0) -> None:
    """End this process as soon as the process ``parent_pid`` that started it ends (a crash or ``SIGKILL`` too).

    Returns at once, having started the watches.

    Two watches, in daemon threads, on Linux and macOS alike:

    - if standard input is a pipe, its end of file: the parent holds the only write end
      (:class:`course_lib.client.ServerProcess` starts the server with ``stdin=PIPE``), and the
      operating system closes it when the parent ends, by a crash or ``SIGKILL`` too, or when the
      parent closes it;
    - every ``poll_seconds``, whether ``parent_pid`` is still this process's parent: when a process
      ends, its children are handed to another one (init, or a subreaper). This covers a child of
      the parent that inherited the pipe's write end and keeps it open.

    The process then ends at once (``os._exit``), without waiting for a run in progress: nobody is
    left to receive its result. It ends at once too if ``parent_pid`` is not its parent when this is
    called (the parent ended already, or the pid is wrong). Standard input is watched only if it is
    a pipe: a server started by hand from a terminal keeps its terminal.
    """

    def end(reason: str) -> None:
        print(f"course_lib.server: {reason}; the server exits", file=sys.stderr, flush=True)
        os._exit(0)

    if os.getppid() != parent_pid:
        end(f"process {parent_pid} is not this server's parent (its parent is {os.getppid()})")

    def watch_stdin() -> None:
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            return  # no readable standard input after all: the parent's pid is still watched
        end("standard input closed (the process that started the server ended or closed it)")

    def watch_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        end(f"process {parent_pid}, which started the server, ended")

    try:
        stdin_is_pipe = stat.S_ISFIFO(os.fstat(0).st_mode)
    except OSError:
        stdin_is_pipe = False
    if stdin_is_pipe:
        threading.Thread(target=watch_stdin, name="course-server-stdin", daemon=True).start()
    threading.Thread(target=watch_parent, name="course-server-parent", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    """``python -m course_lib.server``: serve an artifact folder over HTTP until stopped (see ``--help``)."""
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve a compiled course head or layer over HTTP (FastAPI + uvicorn).")
    parser.add_argument(
        "--artifacts", type=Path, required=True, help="folder written by HeadCircuit or LayerCircuit.save_server"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--max-key-bytes",
        type=parse_bytes,
        default=DEFAULT_MAX_KEY_BYTES,
        help="largest evaluation-key upload, e.g. 8G (default: 8G)",
    )
    parser.add_argument(
        "--max-run-bytes",
        type=parse_bytes,
        default=None,
        help=f"largest ciphertext upload, e.g. 64M (default: {RUN_BYTES_PER_INPUT_BYTE} times the circuit's "
        f"encrypted inputs plus 1M, or {DEFAULT_MAX_RUN_BYTES // 1024**2}M if the description lacks their size)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=DEFAULT_MAX_SESSIONS,
        help=f"most sessions open at once (default: {DEFAULT_MAX_SESSIONS})",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit when this process (the one starting the server) ends; standard input, if a pipe, is watched too",
    )
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        exit_with_parent(args.parent_pid)
    app = create_app(
        args.artifacts,
        max_key_bytes=args.max_key_bytes,
        max_run_bytes=args.max_run_bytes,
        max_sessions=args.max_sessions,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
