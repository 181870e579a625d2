"""How ciphertexts and keys travel between client and server: a small framed, checksummed format.

A message is ``MAGIC``, a 4-byte count, then for each part an 8-byte length, the part's
SHA-256 and the part itself. The checksum catches bytes damaged or cut on the way
*before* concrete sees them: a flipped bit inside a ciphertext would otherwise deserialize
fine and decrypt to wrong numbers. (It is not a signature: it guards against accidents,
not against an attacker, who could recompute it.)
"""

from __future__ import annotations

import hashlib
import struct

MAGIC = b"FHEGPT2\x01"
_COUNT = struct.Struct(">I")
_LENGTH = struct.Struct(">Q")
_DIGEST_BYTES = 32


class TransportError(ValueError):
    """A message that is not a complete, intact frame."""


def pack(parts: list[bytes]) -> bytes:
    """Frame ``parts`` (serialized ciphertexts or keys) into one message."""
    chunks = [MAGIC, _COUNT.pack(len(parts))]
    for part in parts:
        chunks += [_LENGTH.pack(len(part)), hashlib.sha256(part).digest(), part]
    return b"".join(chunks)


def unpack(message: bytes, expected_parts: int | None = None) -> list[bytes]:
    """The parts of a message, each checked against its SHA-256.

    Raises:
        TransportError: wrong magic, truncated, trailing bytes, a checksum mismatch, or not
            ``expected_parts`` parts.
    """
    if not message.startswith(MAGIC):
        raise TransportError("not a course message (wrong header): send bytes made by course_lib.transport.pack")
    offset = len(MAGIC)
    if len(message) < offset + _COUNT.size:
        raise TransportError("the message is truncated: it ends inside its header")
    (count,) = _COUNT.unpack_from(message, offset)
    offset += _COUNT.size
    if expected_parts is not None and count != expected_parts:
        raise TransportError(f"expected {expected_parts} parts, the message has {count}")
    parts = []
    for index in range(count):
        if len(message) < offset + _LENGTH.size + _DIGEST_BYTES:
            raise TransportError(f"the message is truncated: it ends inside the header of part {index}")
        (length,) = _LENGTH.unpack_from(message, offset)
        offset += _LENGTH.size
        digest = message[offset : offset + _DIGEST_BYTES]
        offset += _DIGEST_BYTES
        part = message[offset : offset + length]
        if len(part) != length:
            raise TransportError(f"the message is truncated: part {index} has {len(part)} of its {length} bytes")
        if hashlib.sha256(part).digest() != digest:
            raise TransportError(f"part {index} is corrupted: its SHA-256 does not match")
        parts.append(part)
        offset += length
    if offset != len(message):
        raise TransportError(f"{len(message) - offset} unexpected bytes after the last part")
    return parts
