"""course_lib.client against course_lib.server: the client sends evaluation keys once, then ciphertexts, and
never a secret key; the server answers as the simulation does, refuses what it cannot use and keeps serving."""

import numpy as np
import pytest
from circuits import LENGTH, narrow_circuit

from course_lib.attention import HeadWeights
from course_lib.client import RemoteHead, ServerError, ServerProcess
from course_lib.contract import OPEN_SESSION
from course_lib.keys import ensure_keys
from course_lib.transport import pack, unpack


@pytest.fixture(scope="module")
def server(keyed):
    with ServerProcess(keyed) as process:
        yield process


def test_client_server_run_equals_simulation_and_never_sends_a_secret_key(keyed, server):
    with RemoteHead(server.url, keyed) as remote:
        x = HeadWeights.random_inputs(1, 16, seed=8)[0][:LENGTH]
        qkv = keyed.encode(x)
        out, stats = remote.run(*qkv)
        np.testing.assert_array_equal(out, keyed.simulate(*qkv))
        assert stats.bytes_sent > 0 and stats.bytes_received > 0
        sent = remote.sent
    assert len(sent) == 2  # the evaluation keys, then the ciphertexts
    secret_keys = [key.serialize() for key in keyed.circuit.keys._keyset.get_client_keys().get_secret_keys()]
    assert secret_keys and all(len(key) > 1000 for key in secret_keys)
    for key in secret_keys:
        payload = key[len(key) // 2 :]  # past any header: the key material itself
        for start in range(0, len(payload) - 64, max(1, len(payload) // 8)):
            window = payload[start : start + 64]
            assert all(window not in body for body in sent)
    # What was sent is exactly the evaluation keys and ciphertexts of three inputs.
    assert unpack(sent[0]) == [keyed.circuit.keys.evaluation.serialize()]
    assert len(unpack(sent[1])) == 3


def test_in_process_server_of_a_memory_capped_session_answers_the_same(keyed, monkeypatch):
    monkeypatch.setenv("COURSE_MEMORY_LIMIT", "2G")
    with ServerProcess(keyed) as in_process:
        assert in_process.in_process and in_process.process.poll() is None
        with RemoteHead(in_process.url, keyed) as remote:
            x = HeadWeights.random_inputs(1, 16, seed=8)[0][:LENGTH]
            qkv = keyed.encode(x)
            out, _ = remote.run(*qkv)
        np.testing.assert_array_equal(out, keyed.simulate(*qkv))
    assert in_process.process.poll() == 0  # the thread ended with stop()


def test_server_refuses_damaged_bytes_and_keeps_serving(keyed, server):
    x = HeadWeights.random_inputs(1, 16, seed=9)[0][:3]
    qkv = keyed.prepare(*keyed.encode(x))
    with RemoteHead(server.url, keyed) as remote:
        good = pack([value.serialize() for value in keyed.circuit.encrypt(*qkv)])
        with pytest.raises(ServerError, match="400.*truncated"):
            remote.send(good[: len(good) // 2])
        damaged = bytearray(good)
        damaged[len(damaged) // 2] ^= 0xFF
        with pytest.raises(ServerError, match="400.*corrupted"):
            remote.send(bytes(damaged))
        with pytest.raises(ServerError, match="400.*not ciphertexts"):
            remote.send(pack([b"not a ciphertext"] * 3))
        out, _ = remote.run(*qkv)  # the next good request is served
        np.testing.assert_array_equal(out, keyed.simulate(*qkv))


def test_server_refuses_other_shapes_unknown_sessions_and_bad_keys(keyed, server, tmp_path):
    other = narrow_circuit(length=LENGTH + 1)  # another sequence length
    ensure_keys(other.circuit, tmp_path, progress=False)
    x = HeadWeights.random_inputs(1, 16, seed=2)[0][:2]
    foreign = pack([value.serialize() for value in other.circuit.encrypt(*other.encode(x))])
    with RemoteHead(server.url, keyed) as remote:
        with pytest.raises(ServerError, match=f"422.*compiled for sequence length {LENGTH}"):
            remote.send(foreign)
        session = remote.session
    with pytest.raises(ServerError, match="404.*unknown session"):
        remote.session = session  # closed above: the server forgot it
        remote.send(foreign)
    remote.session = None
    with pytest.raises(ServerError, match="runs circuit"):
        RemoteHead(server.url, other)  # the client notices the server runs another circuit
    import requests

    answer = requests.post(server.url + OPEN_SESSION.path(), data=pack([b"\x00" * 100]), timeout=10)
    assert answer.status_code == 400 and "not evaluation keys" in answer.json()["detail"]
    answer = requests.post(server.url + OPEN_SESSION.path(), data=b"garbage", timeout=10)
    assert answer.status_code == 400 and "wrong header" in answer.json()["detail"]


def test_unreachable_server_fails_fast(keyed):
    import time

    start = time.monotonic()
    with pytest.raises(ServerError, match="cannot reach"):
        RemoteHead("http://127.0.0.1:9", keyed)
    assert time.monotonic() - start < 10


def slow_reader(pause: float):
    """A one-request HTTP server that waits ``pause`` seconds before reading a request, then answers a session id;
    returns its URL and the list its thread appends the received body's length to."""
    import socket
    import threading
    import time

    listener = socket.create_server(("127.0.0.1", 0))
    received = []

    def serve():
        connection, _ = listener.accept()
        with connection, listener:
            time.sleep(pause)  # busy: the client's upload fills the socket buffers and waits
            data = b""
            while b"\r\n\r\n" not in data:
                data += connection.recv(1 << 16)
            head, body = data.split(b"\r\n\r\n", 1)
            length = next(
                int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
            )
            parts = [body]
            while (size := sum(map(len, parts))) < length and (chunk := connection.recv(1 << 20)):
                parts.append(chunk)
            received.append(size)
            answer = b'{"session": "s"}'
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(answer)
                + answer
            )

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}", received


def test_a_large_upload_waits_for_a_server_busy_for_longer_than_the_connect_timeout(monkeypatch):
    import types

    from course_lib import client

    body = b"k" * (32 << 20)  # more than the socket buffers hold: the send blocks until the server reads
    monkeypatch.setattr(client, "CONNECT_TIMEOUT", 0.3)
    url, received = slow_reader(pause=1.5)
    remote = types.SimpleNamespace(url=url, keep_sent=False, sent=[])
    assert client._Remote._request(remote, OPEN_SESSION, body).json() == {"session": "s"}
    assert received == [len(body)]
    # the failure this guards against: the upload cut short when the send waits longer than its timeout
    monkeypatch.setattr(client, "SEND_TIMEOUT", 0.3)
    url, _ = slow_reader(pause=1.5)
    with pytest.raises(ServerError, match="cannot reach the server"):
        client._Remote._request(types.SimpleNamespace(url=url, keep_sent=False, sent=[]), OPEN_SESSION, body)
