"""course_lib.server's limits and lifetime: request bodies, open sessions, and a server that ends with its parent.

One narrow circuit (a random 2-bit fast head, model width 16, head dimension 4, 2 tokens), keyed once;
the limits are set small so that the refusals come at once. Most servers here run in a thread of the
test process (``in_process=True``); the lifetime tests start child processes, as the notebooks do.
"""

import gc
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import requests

from course_lib.attention import HeadWeights
from course_lib.client import RemoteHead, ServerError, ServerProcess
from course_lib.contract import (
    CIRCUIT,
    CIRCUIT_FILE,
    CLOSE_SESSION,
    HEALTH,
    OPEN_SESSION,
    RUN,
    CircuitDescription,
    DescriptionError,
)
from course_lib.fast_attention import FastHead
from course_lib.fhe import HeadCircuit
from course_lib.keys import ensure_keys
from course_lib.server import (
    DEFAULT_MAX_KEY_BYTES,
    DEFAULT_MAX_SESSIONS,
    RUN_BYTES_MARGIN,
    RUN_BYTES_PER_INPUT_BYTE,
    create_app,
    default_max_run_bytes,
)
from course_lib.transport import pack

LENGTH = 2

#: The parent of the lifetime test: compiles a narrow circuit, starts ServerProcess children, writes their pids.
PARENT = textwrap.dedent(
    """
    import json, os, sys, time
    from course_lib.attention import HeadWeights
    from course_lib.client import ServerProcess
    from course_lib.fast_attention import FastHead
    from course_lib.fhe import HeadCircuit

    head = FastHead(HeadWeights.random(16, 4, seed=0), 2, lookup_bits=2)
    inputs = HeadWeights.random_inputs(12, 16)
    head.calibrate(inputs)
    circuit = HeadCircuit(head, inputs, length={length})
    leaked = ServerProcess(circuit, in_process=False)
    holder = os.fork()  # a child of the parent that inherits the write end of `leaked`'s pipe
    if holder == 0:
        time.sleep(120)
        os._exit(0)
    plain = ServerProcess(circuit, in_process=False)  # started after the fork: only the parent holds its pipe
    pids = {{"parent": os.getpid(), "holder": holder, "leaked": leaked.process.pid, "plain": plain.process.pid}}
    with open(sys.argv[1] + ".tmp", "w") as file:
        json.dump(pids, file)
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(600)
    """
)


def narrow_circuit(seed=0):
    head = FastHead(HeadWeights.random(16, 4, seed=seed), 2, lookup_bits=2)
    inputs = HeadWeights.random_inputs(12, 16)
    head.calibrate(inputs)
    return HeadCircuit(head, inputs, length=LENGTH)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    circuit = narrow_circuit()
    ensure_keys(circuit.circuit, tmp_path_factory.mktemp("keys"), progress=False)
    return circuit


def chunks(size, chunk=4096):
    """A body of ``size`` bytes sent in chunks (no Content-Length: the server counts while reading)."""
    for start in range(0, size, chunk):
        yield b"\x00" * min(chunk, size - start)


def health(server) -> dict:
    return requests.get(server.url + HEALTH.path(), timeout=10).json()


def gone(pid: int) -> bool:
    """True if process ``pid`` has exited (a zombie waiting for its new parent to reap it counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# -- the description and the defaults ---------------------------------------------------------------
def test_the_server_publishes_the_circuits_description_and_its_limits(keyed):
    with ServerProcess(keyed, in_process=True) as server:
        published = CircuitDescription.from_dict(requests.get(server.url + CIRCUIT.path(), timeout=10).json())
        assert published == keyed.description == CircuitDescription.load(server.folder)
        assert published.input_bytes == keyed.circuit.size_of_inputs
        answer = health(server)
    expected_run = RUN_BYTES_PER_INPUT_BYTE * published.input_bytes + RUN_BYTES_MARGIN
    assert answer == {
        "status": "ok",
        "sessions": 0,
        "max_key_bytes": DEFAULT_MAX_KEY_BYTES,
        "max_run_bytes": expected_run,
        "max_sessions": DEFAULT_MAX_SESSIONS,
    }
    assert default_max_run_bytes(published) == expected_run
    unknown = CircuitDescription(**{**published.to_dict(), "input_bytes": None})
    assert default_max_run_bytes(unknown) == 256 * 1024**2  # no size in the description: the fixed cap


def test_a_bad_artifact_or_limit_stops_the_server_at_start(keyed, tmp_path):
    folder = keyed.save_server(tmp_path / "artifact")
    with pytest.raises(ValueError, match="max_sessions must be a positive integer, got 0"):
        create_app(folder, max_sessions=0)
    description = json.loads((folder / CIRCUIT_FILE).read_text())
    del description["length"]
    (folder / CIRCUIT_FILE).write_text(json.dumps(description))
    with pytest.raises(DescriptionError, match=f"{CIRCUIT_FILE}: the circuit description lacks the field.*'length'"):
        create_app(folder)


# -- request bodies -------------------------------------------------------------------------------
def test_keys_over_the_limit_are_refused_with_413(keyed):
    with ServerProcess(keyed, in_process=True, max_key_bytes=10_000, max_sessions=1) as server:
        key_bytes = len(pack([keyed.circuit.keys.evaluation.serialize()]))
        # Content-Length says it before the body is read.
        with pytest.raises(ServerError, match=rf"413: the evaluation keys are too large: .*{key_bytes:,} bytes"):
            RemoteHead(server.url, keyed)
        # Sent in chunks, without a Content-Length: refused while reading.
        answer = requests.post(server.url + OPEN_SESSION.path(), data=chunks(30_000), timeout=10)
        assert answer.status_code == 413
        assert re.search(r"bytes received so far; the server's limit is 10,000 bytes", answer.json()["detail"])
        assert answer.json()["detail"].endswith("start it with a larger one if the evaluation keys are right")
        # A body within the limit is read as before; the refused ones hold no session slot (max_sessions=1).
        answer = requests.post(server.url + OPEN_SESSION.path(), data=pack([b"\x00" * 100]), timeout=10)
        assert answer.status_code == 400 and "not evaluation keys" in answer.json()["detail"]
        assert health(server)["sessions"] == 0


def test_ciphertexts_over_the_limit_are_refused_with_413(keyed):
    qkv = keyed.encode(HeadWeights.random_inputs(1, 16, seed=8)[0][:LENGTH])
    message = keyed.encrypt_message(keyed.prepare(*qkv))
    limit = len(message)
    with ServerProcess(keyed, in_process=True, max_run_bytes=limit) as server, RemoteHead(server.url, keyed) as remote:
        too_long = len(message) + 1
        with pytest.raises(ServerError, match=rf"413: the ciphertexts are too large: .*is {too_long:,} bytes"):
            remote.send(message + b"\x00")
        answer = requests.post(server.url + RUN.path(session=remote.session), data=chunks(too_long), timeout=10)
        assert answer.status_code == 413
        assert f"received so far; the server's limit is {limit:,} bytes" in answer.json()["detail"]
        # At the limit exactly, a body is read (and these zeros are then refused as no message: 400, not 413).
        answer = requests.post(server.url + RUN.path(session=remote.session), data=chunks(limit), timeout=10)
        assert answer.status_code == 400 and "wrong header" in answer.json()["detail"]


# -- sessions -------------------------------------------------------------------------------------
def test_sessions_over_the_cap_are_refused_with_429_until_one_is_closed(keyed):
    with ServerProcess(keyed, in_process=True, max_sessions=2) as server:
        first, second = RemoteHead(server.url, keyed), RemoteHead(server.url, keyed)
        with pytest.raises(ServerError, match=r"429: 2 sessions are open, the most this server keeps") as refused:
            RemoteHead(server.url, keyed)
        assert f"(max_sessions=2): close one with {CLOSE_SESSION} (RemoteHead.close())" in str(refused.value)
        assert health(server)["sessions"] == 2
        first.close()
        with RemoteHead(server.url, keyed):  # a closed session makes room
            assert health(server)["sessions"] == 2
        second.close()
        assert health(server)["sessions"] == 0


# -- lifetime -------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:subprocess .* is still running:ResourceWarning")
def test_a_server_process_collected_without_stop_ends_and_its_limits_are_options(keyed):
    server = ServerProcess(keyed, in_process=False, max_key_bytes=2**30, max_run_bytes=2**20, max_sessions=3)
    pid = server.process.pid
    answer = health(server)  # the limits went through the command line
    assert (answer["max_key_bytes"], answer["max_run_bytes"], answer["max_sessions"]) == (2**30, 2**20, 3)
    del server
    gc.collect()
    # This process is still the server's parent: only the closed pipe can have ended it.
    assert wait_until_gone(pid, timeout=10), f"the server {pid} outlived its ServerProcess"


@pytest.mark.keys
def test_servers_end_when_the_process_that_started_them_is_killed(tmp_path):
    """SIGKILL the parent: a server whose pipe only the parent held sees it close at once; a server whose pipe
    a child of the parent inherited sees its parent change (within a second's poll)."""
    script, pids_file = tmp_path / "parent.py", tmp_path / "pids.json"
    script.write_text(PARENT.format(length=LENGTH))
    log = open(tmp_path / "parent.log", "wb")  # noqa: SIM115 (closed below)
    parent = subprocess.Popen([sys.executable, str(script), str(pids_file)], stdout=log, stderr=subprocess.STDOUT)
    pids = {}
    try:
        deadline = time.monotonic() + 180
        while not pids_file.exists():
            assert parent.poll() is None, (tmp_path / "parent.log").read_text()
            assert time.monotonic() < deadline, "the parent did not start its servers in time"
            time.sleep(0.2)
        pids = json.loads(pids_file.read_text())
        assert not gone(pids["plain"]) and not gone(pids["leaked"])
        os.kill(pids["parent"], signal.SIGKILL)
        parent.wait(timeout=10)
        start = time.monotonic()
        assert wait_until_gone(pids["plain"], timeout=5), "the server outlived its killed parent"
        assert wait_until_gone(pids["leaked"], timeout=5), "the server with a leaked pipe outlived its killed parent"
        assert not gone(pids["holder"])  # the pipe's other holder lives on: the parent's pid ended that server
        assert time.monotonic() - start < 5
    finally:
        for name in ("parent", "holder", "plain", "leaked"):
            if name in pids and not gone(pids[name]):
                os.kill(pids[name], signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        log.close()
