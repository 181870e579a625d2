"""The client side of the split: it keeps the secret key, encrypts, sends, receives, decrypts.

>>> with ServerProcess(circuit) as server:                       # doctest: +SKIP
...     with RemoteHead(server.url, circuit) as remote:          # uploads the evaluation keys once
...         out, stats = remote.run(*circuit.encode(x))          # ciphertexts both ways
...         print(stats)

A whole layer (:class:`~course_lib.layer_circuit.LayerCircuit`) runs one token per request, the
server keeping the session's encrypted KV cache:

>>> with ServerProcess(layer_circuit) as server:                 # doctest: +SKIP
...     with RemoteLayer(server.url, layer_circuit) as remote:
...         y, stats = remote.step(layer_circuit.encode(x_new))  # the next token's x only

What crosses the connection, and only that: the *evaluation* keys (once per session)
and ciphertexts. :attr:`RemoteHead.sent` (and :attr:`RemoteLayer.sent`, unless ``keep_sent=False``) keeps
every request body, so a test can check that no secret key is among them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests

from .contract import (
    CIRCUIT,
    CLOSE_SESSION,
    FORGET,
    HEALTH,
    OPEN_SESSION,
    RUN,
    STEP,
    CircuitDescription,
    DescriptionError,
    Route,
)
from .environment import memory_capped
from .fhe import HeadCircuit
from .layer_circuit import LayerCircuit
from .transport import pack

#: Seconds to wait for a server to answer a connection attempt (runs may take much longer).
CONNECT_TIMEOUT = 3.0
#: Seconds a request that carries a body may wait for the server to take its next bytes. urllib3 keeps the connect
#: timeout on the socket while it sends the body, and a server busy for a few seconds (starting, or decompressing
#: keys) would otherwise cut a gigabyte of evaluation keys short.
SEND_TIMEOUT = 120.0


class ServerError(RuntimeError):
    """The server refused a request; the message is the server's explanation."""


@dataclass(frozen=True)
class RunStats:
    """One remote run, seen from the client.

    Attributes:
        bytes_sent: the ciphertexts' bytes (framed) sent to the server.
        bytes_received: the encrypted result's bytes.
        encrypt_seconds: client time to encrypt.
        server_seconds: wall time from sending to receiving (network and FHE run).
        decrypt_seconds: client time to decrypt.
    """

    bytes_sent: int
    bytes_received: int
    encrypt_seconds: float
    server_seconds: float
    decrypt_seconds: float

    def __str__(self) -> str:
        return (
            f"sent {self.bytes_sent / 1e6:,.1f} MB, received {self.bytes_received / 1e6:,.1f} MB; "
            f"encrypting took {self.encrypt_seconds:.2f} s, the server round trip took {self.server_seconds:.1f} s, "
            f"decrypting took {self.decrypt_seconds:.2f} s"
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _ServerThread:
    """The same FastAPI app served by uvicorn in a thread of this process, with the few methods of
    ``subprocess.Popen`` that :class:`ServerProcess` uses (poll, terminate, wait, kill, returncode)."""

    def __init__(self, folder: Path, port: int, limits: dict[str, int]):
        import uvicorn

        from .server import create_app

        config = uvicorn.Config(create_app(folder, **limits), host="127.0.0.1", port=port, log_level="warning")
        self._server = uvicorn.Server(config)
        self.returncode: int | None = None
        self._thread = threading.Thread(target=self._serve, name="course-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._server.run()
        finally:
            self.returncode = 0

    def poll(self) -> int | None:
        return None if self._thread.is_alive() else self.returncode

    def terminate(self) -> None:
        self._server.should_exit = True

    def kill(self) -> None:
        self._server.force_exit = self._server.should_exit = True

    def wait(self, timeout: float | None = None) -> int | None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise subprocess.TimeoutExpired("course-server thread", timeout)
        return self.returncode


def _release(process: subprocess.Popen | _ServerThread, log) -> None:
    """Close a server's pipe (a child process exits when it closes) or stop its thread, and close its log."""
    if isinstance(process, _ServerThread):
        process.terminate()
    elif process.stdin is not None:
        process.stdin.close()
    log.close()


class ServerProcess:
    """``python -m course_lib.server`` on localhost, in a child process, serving ``circuit`` (a head or a layer).

    The child process ends with this one: it is started with ``--parent-pid`` and a pipe as its
    standard input, whose write end only this process holds, and exits when the pipe closes or when
    this process is no longer its parent (:func:`course_lib.server.exit_with_parent`). So a kernel
    that exits, crashes or is killed takes its server with it, and a ``ServerProcess`` garbage
    collected without :meth:`stop` closes the pipe, which ends its server too.

    In a memory-capped session (:func:`course_lib.environment.memory_capped`, e.g. Binder's 2 GB)
    the server runs in a thread of this process instead (``in_process``): a second Python process
    would load torch and concrete again, about 500 MB, before any key. The server still receives
    its own copy of the evaluation keys over HTTP and never sees a secret key.

    Args:
        circuit: the compiled head or layer; only its server artifact is written for the server.
        folder: where to write the artifact (default: a temporary folder).
        port: the port (default: a free one).
        startup_timeout: seconds to wait for the server to answer :data:`~course_lib.contract.HEALTH`.
        in_process: serve from a thread of this process (default: only in a memory-capped session).
        max_key_bytes, max_run_bytes, max_sessions: the server's limits (default: those of
            :func:`course_lib.server.create_app`).
    """

    def __init__(
        self,
        circuit: HeadCircuit | LayerCircuit,
        folder: str | Path | None = None,
        port: int | None = None,
        startup_timeout=60.0,
        in_process: bool | None = None,
        *,
        max_key_bytes: int | None = None,
        max_run_bytes: int | None = None,
        max_sessions: int | None = None,
    ):
        limits = {"max_key_bytes": max_key_bytes, "max_run_bytes": max_run_bytes, "max_sessions": max_sessions}
        limits = {name: value for name, value in limits.items() if value is not None}
        self._tmp = tempfile.TemporaryDirectory(prefix="course-server-") if folder is None else None
        self.folder = Path(folder) if folder is not None else Path(self._tmp.name)
        circuit.save_server(self.folder)
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.folder / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed by _release)
        self.in_process = memory_capped() if in_process is None else in_process
        if self.in_process:
            self.process: subprocess.Popen | _ServerThread = _ServerThread(self.folder, self.port, limits)
        else:
            command = [sys.executable, "-m", "course_lib.server", "--artifacts", str(self.folder)]
            command += ["--port", str(self.port), "--parent-pid", str(os.getpid())]
            for name, value in limits.items():
                command += [f"--{name.replace('_', '-')}", str(value)]
            # stdin: a pipe whose write end only this process holds; the server exits when it closes
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=self._log, stderr=subprocess.STDOUT)
        # Called by stop(), or when this object is collected without stop(): the server ends either way.
        self._release = weakref.finalize(self, _release, self.process, self._log)
        deadline = time.monotonic() + startup_timeout
        while True:
            if self.process.poll() is not None:
                self.stop()
                code = self.process.returncode
                raise ServerError(f"the server exited at start-up (code {code}); see {self.log_path}")
            try:
                if requests.get(self.url + HEALTH.path(), timeout=1).ok:
                    break
            except requests.RequestException:  # not up yet (refused, or too slow to answer)
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"the server did not answer within {startup_timeout:.0f} s; see {self.log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Terminate the server (and wait for it), close its pipe and its log, then remove its temporary folder if it
        made one."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._release()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class _Remote:
    """A session with a server: check that it runs the client's circuit, send the evaluation keys, then requests.

    ``compiled`` is concrete's circuit or module, whose keys must be generated or loaded; ``length``
    is the client's compiled length, for the message when the server runs another circuit.
    """

    def __init__(
        self, url: str, compiled, fingerprint: str, length: int, keys_call: str, keep_sent: bool = True
    ) -> None:
        if not compiled.keys.are_generated:
            raise RuntimeError(f"the circuit has no keys: call course_lib.keys.ensure_keys({keys_call}) first")
        self.url = url.rstrip("/")
        self.keep_sent = keep_sent
        self.sent: list[bytes] = []  # every request body, for inspection (if keep_sent)
        self.session: str | None = None
        try:
            #: What the server says about the circuit it runs.
            self.description = CircuitDescription.from_dict(self._request(CIRCUIT).json())
        except (DescriptionError, ValueError) as error:  # ValueError: not JSON at all
            raise ServerError(
                f"the server at {self.url} did not answer with a valid circuit description: {error}"
            ) from None
        if self.description.fingerprint != fingerprint:
            raise ServerError(
                f"the server runs circuit {self.description.fingerprint} (length {self.description.length}), this "
                f"client has {fingerprint} (length {length}): start the server with this circuit"
            )
        keys = pack([compiled.keys.evaluation.serialize()])
        self.evaluation_key_bytes = len(keys)
        self.session = self._request(OPEN_SESSION, keys).json()["session"]

    def _request(self, route: Route, body: bytes | None = None, **params: str) -> requests.Response:
        if body is not None and self.keep_sent:
            self.sent.append(body)
        try:
            connect = CONNECT_TIMEOUT if body is None else SEND_TIMEOUT
            response = requests.request(
                route.method, self.url + route.path(**params), data=body, timeout=(connect, None)
            )
        except requests.ConnectionError as error:
            raise ServerError(f"cannot reach the server at {self.url}: {error}") from None
        if not response.ok:
            try:
                detail = response.json()["detail"]
            except (ValueError, KeyError):
                detail = response.text
            raise ServerError(f"the server answered {response.status_code}: {detail}")
        return response

    def close(self) -> None:
        """End the session (the server forgets the evaluation keys, and a layer's cached tokens)."""
        if self.session is not None:
            try:
                self._request(CLOSE_SESSION, session=self.session)
            finally:
                self.session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RemoteHead(_Remote):
    """A session with a head server: the circuit's keys stay here, ciphertexts go there.

    Args:
        url: the server's base URL.
        circuit: the same compiled head the server runs, with its keys generated or loaded
            (:func:`course_lib.keys.ensure_keys`).
    """

    def __init__(self, url: str, circuit: HeadCircuit) -> None:
        self.circuit = circuit
        super().__init__(url, circuit.circuit, circuit.fingerprint, circuit.length, "circuit.circuit")

    def send(self, message: bytes) -> bytes:
        """Send an already framed message to this session's :data:`~course_lib.contract.RUN` route; the raw answer."""
        return self._request(RUN, message, session=self.session).content

    def run(self, *inputs: np.ndarray) -> tuple[np.ndarray, RunStats]:
        """Encrypt the circuit's inputs here (``x``, or ``q, k, v``), run the head on the server, decrypt here."""
        padded = self.circuit.prepare(*inputs)  # shape and range checked before encryption
        start = time.perf_counter()
        message = self.circuit.encrypt_message(padded)
        encrypt_seconds = time.perf_counter() - start
        start = time.perf_counter()
        answer = self.send(message)
        server_seconds = time.perf_counter() - start
        start = time.perf_counter()
        out = self.circuit.decrypt_message(answer)
        decrypt_seconds = time.perf_counter() - start
        return out, RunStats(len(message), len(answer), encrypt_seconds, server_seconds, decrypt_seconds)


class RemoteLayer(_Remote):
    """A session with a layer server: one token per request, the encrypted KV cache kept by the server.

    The client encrypts and sends each token's ``x`` only, ``(1, n_embd)`` integers from
    :meth:`LayerCircuit.encode <course_lib.layer_circuit.LayerCircuit.encode>`; the server runs the step of
    that token's position on it and on the session's cached rows, keeps the new token's rows, and
    answers with the encrypted output row. The bytes sent per token stay the same at every length.

    Args:
        url: the server's base URL.
        circuit: the same compiled layer the server runs, with its keys generated or loaded
            (:func:`course_lib.keys.ensure_keys` of ``circuit.module``).
        keep_sent: keep every request body in :attr:`sent` (the default, for inspection); False spares the
            memory of the evaluation keys' upload, which is most of it (:attr:`history` keeps each step's sizes).
    """

    def __init__(self, url: str, circuit: LayerCircuit, *, keep_sent: bool = True) -> None:
        self.circuit = circuit
        #: The tokens of the current sequence the server holds in this session's cache.
        self.tokens = 0
        #: Every step run in this session, in order: ``(position, RunStats)``.
        self.history: list[tuple[int, RunStats]] = []
        super().__init__(url, circuit.module, circuit.fingerprint, circuit.max_tokens, "circuit.module", keep_sent)

    def step(self, x: np.ndarray) -> tuple[np.ndarray, RunStats]:
        """The next token: encrypt its integers ``x`` ``(1, n_embd)`` here, run the layer's step on the server,
        decrypt its output integers ``(1, n_embd)`` here.

        Raises:
            ValueError: ``x`` has the wrong shape or range, or the sequence is already ``max_tokens`` long
                (checked before anything is encrypted; :meth:`forget` starts another sequence).
        """
        position = self.tokens + 1
        start = time.perf_counter()
        message = self.circuit.encrypt_step(x, position)
        encrypt_seconds = time.perf_counter() - start
        start = time.perf_counter()
        answer = self._request(STEP, message, session=self.session, position=str(position)).content
        server_seconds = time.perf_counter() - start
        self.tokens = position
        start = time.perf_counter()
        out = self.circuit.decrypt_step(answer, position)
        decrypt_seconds = time.perf_counter() - start
        stats = RunStats(len(message), len(answer), encrypt_seconds, server_seconds, decrypt_seconds)
        self.history.append((position, stats))
        return out, stats

    def run(self, x: np.ndarray) -> tuple[np.ndarray, list[RunStats]]:
        """A whole sequence ``(T, n_embd)`` from its first token (the server's cache is emptied first):
        the output integers ``(T, n_embd)`` and each step's statistics."""
        x = np.asarray(x)
        if x.ndim != 2:
            raise ValueError(f"run takes the integers of a sequence, shape (T, {self.circuit.n_embd}), got {x.shape}")
        if self.tokens:
            self.forget()
        rows, stats = [], []
        for t in range(len(x)):
            y, s = self.step(x[t : t + 1])
            rows.append(y)
            stats.append(s)
        return np.concatenate(rows), stats

    def forget(self) -> int:
        """Start another sequence: the server forgets this session's cached tokens (it keeps the keys).
        Returns how many it held."""
        forgotten = self._request(FORGET, session=self.session).json()["forgotten"]
        self.tokens = 0
        return forgotten
