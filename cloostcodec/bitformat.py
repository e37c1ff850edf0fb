"""The .clst bit format (version 1): an 8-byte header followed by packed stage indices.

Layout (see docs/FORMAT.md for the full specification):

    byte 0     magic 0xC7
    byte 1     (version << 4) | (bits_per_index - 1)
    bytes 2-4  model id: first 3 bytes of the model's SHA-256 content hash
    byte 5     number of stages stored, n (0..255)
    bytes 6-7  CRC-16/CCITT-FALSE, big-endian, over bytes 0-5 then the payload
    payload    n indices, bits_per_index bits each, MSB-first, zero-padded to a byte

This module is pure Python (stdlib + bitstring) so that a file can be inspected or
validated without loading torch.
"""
from __future__ import annotations

import binascii
from dataclasses import dataclass

import bitstring

MAGIC = 0xC7
VERSION = 1
HEADER_SIZE = 8
MODEL_ID_SIZE = 3
MIN_BITS = 1
MAX_BITS = 16
MAX_STAGES = 255

_CRC_INIT = 0xFFFF


class FormatError(ValueError):
    """A .clst file that cannot be read; the message is one specific, human line."""


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, no reflection, no final xor."""
    return binascii.crc_hqx(data, _CRC_INIT)


def payload_size(stages: int, bits: int) -> int:
    """Bytes needed for `stages` indices of `bits` bits each: ceil(stages * bits / 8)."""
    if not _is_int(stages) or stages < 0:
        raise ValueError(f"stages must be a non-negative integer, got {stages!r}")
    if not _is_int(bits) or bits < 0:
        raise ValueError(f"bits must be a non-negative integer, got {bits!r}")
    return (stages * bits + 7) // 8


def file_size(stages: int, bits: int) -> int:
    """Exact length in bytes of a .clst file with `stages` indices of `bits` bits."""
    return HEADER_SIZE + payload_size(stages, bits)


def model_id_from_sha256(hexdigest: str) -> bytes:
    """The 3-byte model id: the first 3 bytes of a SHA-256 hex digest."""
    if not isinstance(hexdigest, str) or len(hexdigest) != 64:
        raise ValueError("expected a 64-character SHA-256 hex digest")
    try:
        digest = bytes.fromhex(hexdigest)
    except ValueError:
        raise ValueError("expected a 64-character SHA-256 hex digest") from None
    return digest[:MODEL_ID_SIZE]


@dataclass(frozen=True)
class ClstFile:
    model_id: bytes
    bits: int
    indices: tuple[int, ...]

    def __post_init__(self):
        # Normalise the common near-miss types so equality with unpack() results holds.
        if isinstance(self.model_id, (bytearray, memoryview)):
            object.__setattr__(self, "model_id", bytes(self.model_id))
        if isinstance(self.indices, list):
            object.__setattr__(self, "indices", tuple(self.indices))

    @property
    def stages(self) -> int:
        return len(self.indices)

    def validate(self) -> None:
        """Raise ValueError if any field cannot be represented in a .clst file."""
        if not isinstance(self.model_id, bytes) or len(self.model_id) != MODEL_ID_SIZE:
            raise ValueError(f"model_id must be {MODEL_ID_SIZE} bytes, got {self.model_id!r}")
        if not _is_int(self.bits) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be an integer in {MIN_BITS}..{MAX_BITS}, got {self.bits!r}")
        if not isinstance(self.indices, tuple):
            raise ValueError(f"indices must be a tuple of integers, got {type(self.indices).__name__}")
        if len(self.indices) > MAX_STAGES:
            raise ValueError(f"at most {MAX_STAGES} stages fit in a .clst file, got {len(self.indices)}")
        limit = 1 << self.bits
        for position, index in enumerate(self.indices):
            if not _is_int(index) or not 0 <= index < limit:
                raise ValueError(
                    f"index {position} is {index!r}, must be an integer in 0..{limit - 1} for {self.bits}-bit indices")


def _pack_payload(indices: tuple[int, ...], bits: int) -> bytes:
    if not indices:
        return b""
    # Array.tobytes() packs each item MSB-first and zero-pads the end to a whole byte.
    return bitstring.Array(f"u{bits}", indices).tobytes()


def _header_prefix(model_id: bytes, bits: int, stages: int) -> bytes:
    return bytes([MAGIC, (VERSION << 4) | (bits - 1)]) + model_id + bytes([stages])


def pack(f: ClstFile) -> bytes:
    """Serialise a ClstFile; raises ValueError for invalid field values."""
    f.validate()
    prefix = _header_prefix(f.model_id, f.bits, f.stages)
    payload = _pack_payload(f.indices, f.bits)
    return prefix + crc16(prefix + payload).to_bytes(2, "big") + payload


def _parse_header(data: bytes) -> tuple[int, int, bytes, int, int, int]:
    """Structural checks, in order: empty, magic, version, header length, exact file length.

    Returns (version, bits, model_id, stages, stored_crc, expected_length).
    """
    if len(data) == 0:
        raise FormatError("empty file (0 bytes)")
    if data[0] != MAGIC:
        raise FormatError(f"not a .clst file (bad magic number 0x{data[0]:02x})")
    if len(data) >= 2:
        version = data[1] >> 4
        if version != VERSION:
            raise FormatError(f"unsupported .clst format version {version} (this cloost reads version {VERSION})")
    if len(data) < HEADER_SIZE:
        raise FormatError(f"truncated file: header needs {HEADER_SIZE} bytes, got {len(data)}")
    version = data[1] >> 4
    bits = (data[1] & 0x0F) + 1
    model_id = bytes(data[2:5])
    stages = data[5]
    stored_crc = int.from_bytes(data[6:8], "big")
    expected = file_size(stages, bits)
    if len(data) < expected:
        raise FormatError(
            f"truncated file: {_plural(stages, 'stage')} at {_plural(bits, 'bit')} "
            f"need {expected} bytes, got {len(data)}")
    if len(data) > expected:
        raise FormatError(f"trailing data: expected {expected} bytes, got {len(data)}")
    return version, bits, model_id, stages, stored_crc, expected


def _as_bytes(data) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"expected bytes, got {type(data).__name__}")


def unpack(data: bytes) -> ClstFile:
    """Parse a .clst file; raises FormatError (one-line message) for any damage.

    Order of checks: empty, magic, version, header length, file length, CRC, padding.
    """
    data = _as_bytes(data)
    _, bits, model_id, stages, stored_crc, _ = _parse_header(data)
    payload = data[HEADER_SIZE:]
    if crc16(data[:6] + payload) != stored_crc:
        raise FormatError("integrity check failed: the file is corrupted")
    used = stages * bits
    payload_bits = bitstring.Bits(payload)
    if payload_bits[used:].any(1):
        raise FormatError("non-zero padding bits")
    indices = tuple(bitstring.Array(f"u{bits}", payload_bits[:used]).tolist()) if stages else ()
    return ClstFile(model_id=model_id, bits=bits, indices=indices)


def truncate(f: ClstFile, stages: int) -> ClstFile:
    """Keep the first `stages` indices (a coarser reconstruction of the same image)."""
    if not _is_int(stages) or not 0 <= stages <= f.stages:
        raise ValueError(f"stages must be an integer in 0..{f.stages}, got {stages!r}")
    return ClstFile(model_id=f.model_id, bits=f.bits, indices=tuple(f.indices[:stages]))


def describe(data: bytes) -> dict:
    """Header fields for an `info` command.

    Raises FormatError for a bad magic number, version or length; a bad CRC or
    non-zero padding is reported through `crc_ok` / `padding_ok` instead.
    """
    data = _as_bytes(data)
    version, bits, model_id, stages, stored_crc, expected = _parse_header(data)
    payload = data[HEADER_SIZE:]
    crc_ok = crc16(data[:6] + payload) == stored_crc
    padding_ok = not bitstring.Bits(payload)[stages * bits:].any(1)
    return {
        "magic": f"0x{data[0]:02x}",
        "version": version,
        "bits_per_index": bits,
        "model_id": model_id.hex(),
        "stages": stages,
        "payload_bytes": len(payload),
        "file_bytes": expected,
        "crc": f"0x{stored_crc:04x}",
        "crc_ok": crc_ok,
        "padding_ok": padding_ok,
    }
