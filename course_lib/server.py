"""The server side of the split: it runs the compiled head on ciphertexts, and never holds a secret key.

It loads a server artifact (the compiled circuit and its description, see :meth:`HeadCircuit.save_server
<course_lib.fhe.HeadCircuit.save_server>`), receives each client's *evaluation* keys once
(:data:`~course_lib.contract.OPEN_SESSION`), then ciphertexts (:data:`~course_lib.contract.RUN`), and
returns ciphertexts. It never receives, generates or uses a secret key (it calls only
``fhe.Server``, ``fhe.EvaluationKeys`` and ``fhe.Value``). Its routes and files are those of
:mod:`course_lib.contract`.

Run it with ``python -m course_lib.server --artifacts DIR --port 8000`` (FastAPI on
uvicorn); :class:`course_lib.client.ServerProcess` does that for the notebooks.

Errors are answered in JSON with a ``detail`` message: 400 for bytes that cannot be read
(damaged, truncated, not keys, not ciphertexts), 404 for an unknown session, 422 for
ciphertexts the circuit refuses to run (e.g. another sequence length; ciphertexts of another
circuit of the same shapes cannot be told apart and decrypt to wrong numbers).
"""

from __future__ import annotations

import argparse
import threading
import uuid
from pathlib import Path

from concrete import fhe
from fastapi import FastAPI, HTTPException, Request, Response
from starlette.concurrency import run_in_threadpool

from .contract import CIRCUIT, CLOSE_SESSION, HEALTH, OPEN_SESSION, RUN, SERVER_FILE, CircuitDescription, Route
from .transport import TransportError, pack, unpack


def create_app(artifacts: str | Path) -> FastAPI:
    """The FastAPI application serving the circuit saved in ``artifacts``.

    Raises:
        FileNotFoundError, course_lib.contract.DescriptionError: ``artifacts`` has no valid description.
    """
    artifacts = Path(artifacts)
    description = CircuitDescription.load(artifacts)
    server = fhe.Server.load(artifacts / SERVER_FILE)
    sessions: dict[str, fhe.EvaluationKeys] = {}
    lock = threading.Lock()
    app = FastAPI(title="course_lib FHE head server")
    app.state.description = description

    def route(r: Route):
        return app.api_route(r.template, methods=[r.method])

    @route(HEALTH)
    def health() -> dict:
        return {"status": "ok"}

    @route(CIRCUIT)
    def circuit() -> dict:
        return description.to_dict()

    @route(OPEN_SESSION)
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

    @route(CLOSE_SESSION)
    def close_session(session: str) -> dict:
        with lock:
            if sessions.pop(session, None) is None:
                raise HTTPException(404, f"unknown session {session!r}")
        return {"closed": session}

    @route(RUN)
    async def run(session: str, request: Request) -> Response:
        with lock:
            keys = sessions.get(session)
        if keys is None:
            raise HTTPException(404, f"unknown session {session!r}: open one with {OPEN_SESSION} (evaluation keys)")
        body = await request.body()
        try:
            args = [fhe.Value.deserialize(part) for part in unpack(body, expected_parts=len(description.inputs))]
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
                f"the ciphertexts do not fit this circuit, compiled for sequence length {description.length} "
                f"(inputs {', '.join(description.inputs)} of shape {list(description.input_shape)}): {error}",
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
