"""The server side of the split: it runs the compiled head on ciphertexts, and never holds a secret key.

It loads a server artifact (the compiled circuit, see :meth:`HeadCircuit.save_server
<course_lib.fhe.HeadCircuit.save_server>`), receives each client's *evaluation* keys once
(``POST /sessions``), then ciphertexts (``POST /sessions/{id}/run``), and returns
ciphertexts. It never receives, generates or uses a secret key (it calls only
``fhe.Server``, ``fhe.EvaluationKeys`` and ``fhe.Value``).

Run it with ``python -m course_lib.server --artifacts DIR --port 8000`` (FastAPI on
uvicorn); :class:`course_lib.client.ServerProcess` does that for the notebooks.

Errors are answered in JSON with a ``detail`` message: 400 for bytes that cannot be read
(damaged, truncated, not keys, not ciphertexts), 404 for an unknown session, 422 for
ciphertexts the circuit refuses to run (e.g. another sequence length; ciphertexts of another
circuit of the same shapes cannot be told apart and decrypt to wrong numbers).
"""

from __future__ import annotations

import argparse
import json
import threading
import uuid
from pathlib import Path

from concrete import fhe
from fastapi import FastAPI, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from .transport import TransportError, pack, unpack

SERVER_FILE = "server.zip"
CIRCUIT_FILE = "circuit.json"


def create_app(artifacts: str | Path) -> FastAPI:
    """The FastAPI application serving the circuit saved in ``artifacts``."""
    artifacts = Path(artifacts)
    info = json.loads((artifacts / CIRCUIT_FILE).read_text())
    server = fhe.Server.load(artifacts / SERVER_FILE)
    sessions: dict[str, fhe.EvaluationKeys] = {}
    lock = threading.Lock()
    app = FastAPI(title="course_lib FHE head server")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/circuit")
    def circuit() -> dict:
        return info

    @app.post("/sessions")
    async def open_session(request: Request) -> dict:
        body = await request.body()
        try:
            (key_bytes,) = unpack(body, expected_parts=1)
            keys = await run_in_threadpool(fhe.EvaluationKeys.deserialize, key_bytes)
        except TransportError as error:
            raise HTTPException(400, f"the evaluation keys could not be read: {error}") from None
        except RuntimeError as error:
            raise HTTPException(400, f"these bytes are not evaluation keys concrete can read: {error}") from None
        session = uuid.uuid4().hex
        with lock:
            sessions[session] = keys
        return {"session": session, "evaluation_key_bytes": len(key_bytes)}

    @app.delete("/sessions/{session}")
    def close_session(session: str) -> dict:
        with lock:
            if sessions.pop(session, None) is None:
                raise HTTPException(404, f"unknown session {session!r}")
        return {"closed": session}

    @app.post("/sessions/{session}/run")
    async def run(session: str, request: Request) -> Response:
        with lock:
            keys = sessions.get(session)
        if keys is None:
            raise HTTPException(404, f"unknown session {session!r}: open one with POST /sessions (evaluation keys)")
        body = await request.body()
        try:
            args = [fhe.Value.deserialize(part) for part in unpack(body, expected_parts=len(info["inputs"]))]
        except TransportError as error:
            raise HTTPException(400, f"the ciphertexts could not be read: {error}") from None
        except RuntimeError as error:
            raise HTTPException(400, f"these bytes are not ciphertexts concrete can read: {error}") from None
        try:
            # minutes of work: in a worker thread, so that the server keeps answering meanwhile
            result = await run_in_threadpool(server.run, *args, evaluation_keys=keys)
        except RuntimeError as error:
            raise HTTPException(
                422,
                f"the ciphertexts do not fit this circuit, compiled for sequence length {info['length']} "
                f"(inputs {', '.join(info['inputs'])} of shape {info['input_shape']}): {error}",
            ) from None
        return Response(pack([result.serialize()]), media_type="application/octet-stream")

    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve a compiled course head over HTTP (FastAPI + uvicorn).")
    parser.add_argument("--artifacts", type=Path, required=True, help="folder written by HeadCircuit.save_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    uvicorn.run(create_app(args.artifacts), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
