"""course_lib.transport: the framing of the messages between client and server."""

import pytest

from course_lib.transport import TransportError, pack, unpack


def test_transport_roundtrip_and_damage():
    parts = [b"abc", b"", bytes(range(256)) * 3]
    message = pack(parts)
    assert unpack(message, expected_parts=3) == parts
    with pytest.raises(TransportError, match="truncated"):
        unpack(message[:-5])
    damaged = bytearray(message)
    damaged[-10] ^= 1
    with pytest.raises(TransportError, match="part 2 is corrupted"):
        unpack(bytes(damaged))
    with pytest.raises(TransportError, match="wrong header"):
        unpack(b"hello")
    with pytest.raises(TransportError, match="expected 1 parts"):
        unpack(message, expected_parts=1)
    with pytest.raises(TransportError, match="unexpected bytes"):
        unpack(message + b"x")
