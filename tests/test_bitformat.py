"""Tests for the .clst bit format (cloostcodec/bitformat.py)."""
import binascii
import importlib.util
import math
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

MODULE_PATH = Path(__file__).resolve().parents[1] / "cloostcodec" / "bitformat.py"


def _load_bitformat():
    """Load bitformat.py on its own, so these tests never depend on cloostcodec/__init__.py."""
    name = "cloostcodec_bitformat_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses needs the module registered while it executes
    spec.loader.exec_module(module)
    return module


bf = _load_bitformat()
ClstFile, FormatError = bf.ClstFile, bf.FormatError

MODEL_ID = bytes.fromhex("1a2b3c")
EXAMPLE = ClstFile(MODEL_ID, 3, (7, 0, 3, 5, 1, 6, 2, 4, 0, 7))
EXAMPLE_BYTES = bytes.fromhex("c7121a2b3c0adcace1d3941c")  # the worked example in docs/FORMAT.md


@st.composite
def clst_files(draw):
    bits = draw(st.integers(1, 16))
    indices = draw(st.lists(st.integers(0, (1 << bits) - 1), max_size=255))
    model_id = draw(st.binary(min_size=3, max_size=3))
    return ClstFile(model_id, bits, tuple(indices))


def _reference_pack(model_id: bytes, bits: int, indices) -> bytes:
    """An independent encoder built from text bit strings (no bitstring involved)."""
    bitstr = "".join(format(i, f"0{bits}b") for i in indices)
    bitstr += "0" * (-len(bitstr) % 8)
    payload = bytes(int(bitstr[k:k + 8], 2) for k in range(0, len(bitstr), 8))
    prefix = bytes([0xC7, 0x10 | (bits - 1)]) + model_id + bytes([len(indices)])
    return prefix + binascii.crc_hqx(prefix + payload, 0xFFFF).to_bytes(2, "big") + payload


def _with_crc(data: bytes) -> bytes:
    """Recompute the CRC of a (possibly modified) file so only the other damage remains."""
    crc = binascii.crc_hqx(data[:6] + data[8:], 0xFFFF)
    return data[:6] + crc.to_bytes(2, "big") + data[8:]


# ---------------------------------------------------------------- round trip and sizes

@settings(max_examples=300, deadline=None)
@given(clst_files())
def test_round_trip_and_size(f):
    data = bf.pack(f)
    assert len(data) == 8 + math.ceil(f.stages * f.bits / 8)
    assert len(data) == bf.file_size(f.stages, f.bits)
    assert bf.unpack(data) == f
    assert data == _reference_pack(f.model_id, f.bits, f.indices)


def test_sizes_from_spec():
    assert bf.file_size(10, 3) == 12
    assert bf.file_size(10, 6) == 16
    assert bf.file_size(0, 16) == 8
    assert bf.payload_size(1, 1) == 1
    assert bf.payload_size(255, 16) == 510
    assert len(bf.pack(ClstFile(MODEL_ID, 3, (0,) * 10))) == 12
    assert len(bf.pack(ClstFile(MODEL_ID, 6, (63,) * 10))) == 16


def test_constants():
    assert bf.MAGIC == 0xC7 and bf.VERSION == 1 and bf.HEADER_SIZE == 8


def test_crc_is_ccitt_false():
    assert bf.crc16(b"123456789") == 0x29B1


# ---------------------------------------------------------------- exact byte layout

def test_msb_first_hand_computed():
    indices = [1, 2, 3, 4, 5, 6, 7, 0]
    bitstr = "".join(format(i, "03b") for i in indices)
    assert bitstr == "001010011100101110111000"
    expected_payload = bytes(int(bitstr[k:k + 8], 2) for k in range(0, 24, 8))
    assert expected_payload == bytes([0x29, 0xCB, 0xB8])
    data = bf.pack(ClstFile(b"abc", 3, tuple(indices)))
    assert data[:6] == bytes([0xC7, 0x12]) + b"abc" + bytes([8])
    assert data[8:] == expected_payload
    assert data[6:8] == binascii.crc_hqx(data[:6] + expected_payload, 0xFFFF).to_bytes(2, "big")


def test_worked_example_matches_docs():
    assert bf.pack(EXAMPLE) == EXAMPLE_BYTES
    assert bf.unpack(EXAMPLE_BYTES) == EXAMPLE
    doc = (MODULE_PATH.parents[1] / "docs" / "FORMAT.md").read_text()
    assert EXAMPLE_BYTES.hex(" ") in doc


def test_sixteen_bit_and_one_bit_layout():
    assert bf.pack(ClstFile(MODEL_ID, 16, (0xABCD, 0x0102)))[8:] == bytes.fromhex("abcd0102")
    assert bf.pack(ClstFile(MODEL_ID, 1, (1, 0, 1)))[8:] == bytes([0b10100000])
    assert bf.pack(ClstFile(MODEL_ID, 16, ()))[1] == 0x1F
    assert bf.pack(ClstFile(MODEL_ID, 1, ()))[1] == 0x10


def test_list_and_bytearray_inputs_normalised():
    f = ClstFile(bytearray(MODEL_ID), 3, [7, 0, 3, 5, 1, 6, 2, 4, 0, 7])
    assert f == EXAMPLE
    assert bf.pack(f) == EXAMPLE_BYTES
    assert bf.unpack(bytearray(EXAMPLE_BYTES)) == EXAMPLE


# ---------------------------------------------------------------- damage classes

def _error(data) -> str:
    with pytest.raises(FormatError) as info:
        bf.unpack(data)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_empty():
    assert _error(b"") == "empty file (0 bytes)"


def test_short_header():
    assert _error(EXAMPLE_BYTES[:3]) == "truncated file: header needs 8 bytes, got 3"
    assert _error(EXAMPLE_BYTES[:1]) == "truncated file: header needs 8 bytes, got 1"
    assert _error(EXAMPLE_BYTES[:7]) == "truncated file: header needs 8 bytes, got 7"


def test_bad_magic():
    assert _error(b"\x89PNG\r\n\x1a\n") == "not a .clst file (bad magic number 0x89)"
    assert _error(b"\x00") == "not a .clst file (bad magic number 0x00)"
    assert _error(b"\x00" + EXAMPLE_BYTES[1:]) == "not a .clst file (bad magic number 0x00)"


def test_wrong_version():
    data = _with_crc(bytes([0xC7, 0x22]) + EXAMPLE_BYTES[2:])
    assert _error(data) == "unsupported .clst format version 2 (this cloost reads version 1)"
    assert _error(bytes([0xC7, 0x02])) == "unsupported .clst format version 0 (this cloost reads version 1)"


def test_truncated_payload():
    assert _error(EXAMPLE_BYTES[:11]) == "truncated file: 10 stages at 3 bits need 12 bytes, got 11"
    assert _error(EXAMPLE_BYTES[:8]) == "truncated file: 10 stages at 3 bits need 12 bytes, got 8"
    one = bf.pack(ClstFile(MODEL_ID, 1, (1,)))
    assert _error(one[:8]) == "truncated file: 1 stage at 1 bit need 9 bytes, got 8"


def test_trailing_data():
    assert _error(EXAMPLE_BYTES + b"\x00") == "trailing data: expected 12 bytes, got 13"
    # even when the CRC is recomputed over the extra bytes, the length rule rejects them
    assert _error(_with_crc(EXAMPLE_BYTES + b"\x00\x00")) == "trailing data: expected 12 bytes, got 14"


def test_corrupted_payload_and_crc():
    damaged = EXAMPLE_BYTES[:9] + bytes([EXAMPLE_BYTES[9] ^ 0x10]) + EXAMPLE_BYTES[10:]
    assert _error(damaged) == "integrity check failed: the file is corrupted"
    damaged = EXAMPLE_BYTES[:6] + b"\x00\x00" + EXAMPLE_BYTES[8:]
    assert _error(damaged) == "integrity check failed: the file is corrupted"


@pytest.mark.parametrize("f", [
    EXAMPLE,
    ClstFile(MODEL_ID, 16, (0, 65535, 1234)),
    ClstFile(MODEL_ID, 1, (1, 0, 1, 1, 0)),
    ClstFile(b"\xff\x00\x80", 8, ()),
    ClstFile(MODEL_ID, 7, tuple(range(100))),
])
def test_every_single_bit_flip_is_rejected(f):
    data = bf.pack(f)
    for bit in range(len(data) * 8):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 0x80 >> (bit % 8)
        with pytest.raises(FormatError):
            bf.unpack(bytes(damaged))


def test_non_zero_padding_with_correct_crc():
    # 10 stages * 3 bits = 30 bits: the last 2 bits of the final byte are padding
    for pad in (0x01, 0x02, 0x03):
        damaged = bytearray(EXAMPLE_BYTES)
        damaged[-1] |= pad
        assert _error(_with_crc(bytes(damaged))) == "non-zero padding bits"


def test_check_order_prefers_structure_over_crc():
    # a truncated file also has a wrong CRC; the length message wins
    assert _error(EXAMPLE_BYTES[:10]).startswith("truncated file:")
    # a file with a bad CRC and non-zero padding reports the CRC
    damaged = bytearray(EXAMPLE_BYTES)
    damaged[-1] |= 0x01
    assert _error(bytes(damaged)) == "integrity check failed: the file is corrupted"


def test_unpack_rejects_non_bytes():
    with pytest.raises(TypeError):
        bf.unpack("c7")


# ---------------------------------------------------------------- fuzz

def _mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(4)
        if kind == 0 and buf:                      # bit flip
            i = rng.randrange(len(buf) * 8)
            buf[i // 8] ^= 0x80 >> (i % 8)
        elif kind == 1 and buf:                    # truncation
            del buf[rng.randrange(len(buf)):]
        elif kind == 2:                            # insertion
            pos = rng.randrange(len(buf) + 1)
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif buf:                                  # byte replacement
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    return bytes(buf)


def _check_unpack_is_safe(data: bytes) -> bool:
    """unpack must either raise FormatError or return a valid file that re-packs to `data`."""
    try:
        f = bf.unpack(data)
    except FormatError as exc:
        assert "\n" not in str(exc) and str(exc)
        return False
    f.validate()
    assert bf.pack(f) == data
    return True


def test_fuzz_random_and_mutated_inputs():
    rng = random.Random(20240611)
    seeds = [bf.pack(EXAMPLE)]
    for _ in range(20):
        bits = rng.randint(1, 16)
        n = rng.randint(0, 40)
        seeds.append(bf.pack(ClstFile(bytes(rng.randrange(256) for _ in range(3)), bits,
                                      tuple(rng.randrange(1 << bits) for _ in range(n)))))
    for _ in range(2000):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        if raw and rng.random() < 0.5:
            raw = bytes([0xC7, 0x10 | rng.randrange(16)]) + raw[2:]
        _check_unpack_is_safe(raw)
    accepted = 0
    for _ in range(4000):
        mutated = _mutate(rng, rng.choice(seeds))
        if len(mutated) >= 8 and rng.random() < 0.5:
            mutated = _with_crc(mutated)  # get past the CRC to reach padding and decoding
        accepted += _check_unpack_is_safe(mutated)
    assert accepted > 0  # the CRC-repaired mutations do reach the decoder


# ---------------------------------------------------------------- pack validation, truncate

@pytest.mark.parametrize("f, fragment", [
    (ClstFile(b"ab", 3, ()), "model_id"),
    (ClstFile(b"abcd", 3, ()), "model_id"),
    (ClstFile("abc", 3, ()), "model_id"),
    (ClstFile(MODEL_ID, 0, ()), "bits"),
    (ClstFile(MODEL_ID, 17, ()), "bits"),
    (ClstFile(MODEL_ID, True, ()), "bits"),
    (ClstFile(MODEL_ID, 3, (0,) * 256), "255"),
    (ClstFile(MODEL_ID, 3, (8,)), "index 0"),
    (ClstFile(MODEL_ID, 3, (0, -1)), "index 1"),
    (ClstFile(MODEL_ID, 16, (65536,)), "index 0"),
    (ClstFile(MODEL_ID, 3, (1.0,)), "index 0"),
])
def test_pack_rejects_invalid_fields(f, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        bf.pack(f)
    assert not isinstance(info.value, FormatError)


def test_pack_accepts_limits():
    f = ClstFile(MODEL_ID, 16, (65535,) * 255)
    assert bf.unpack(bf.pack(f)) == f
    assert len(bf.pack(f)) == 8 + 510


def test_truncate():
    assert bf.truncate(EXAMPLE, 4) == ClstFile(MODEL_ID, 3, (7, 0, 3, 5))
    assert bf.truncate(EXAMPLE, 0).indices == ()
    assert bf.truncate(EXAMPLE, 10) == EXAMPLE
    short = bf.pack(bf.truncate(EXAMPLE, 4))
    assert len(short) == 10 and bf.unpack(short).indices == (7, 0, 3, 5)
    for bad in (-1, 11, 2.0):
        with pytest.raises(ValueError):
            bf.truncate(EXAMPLE, bad)


def test_model_id_from_sha256():
    digest = "1A2B3C" + "0" * 58
    assert bf.model_id_from_sha256(digest) == MODEL_ID
    assert bf.model_id_from_sha256(digest.lower()) == MODEL_ID
    for bad in ("1a2b3c", "zz" + "0" * 62, "0" * 65):
        with pytest.raises(ValueError):
            bf.model_id_from_sha256(bad)


def test_stages_property():
    assert EXAMPLE.stages == 10
    assert ClstFile(MODEL_ID, 1, ()).stages == 0


# ---------------------------------------------------------------- describe

def test_describe_valid():
    assert bf.describe(EXAMPLE_BYTES) == {
        "magic": "0xc7", "version": 1, "bits_per_index": 3, "model_id": "1a2b3c",
        "stages": 10, "payload_bytes": 4, "file_bytes": 12, "crc": "0xdcac",
        "crc_ok": True, "padding_ok": True,
    }


def test_describe_reports_bad_crc_and_padding_without_raising():
    damaged = EXAMPLE_BYTES[:9] + bytes([EXAMPLE_BYTES[9] ^ 1]) + EXAMPLE_BYTES[10:]
    info = bf.describe(damaged)
    assert info["crc_ok"] is False and info["stages"] == 10
    padded = bytearray(EXAMPLE_BYTES)
    padded[-1] |= 1
    info = bf.describe(_with_crc(bytes(padded)))
    assert info["crc_ok"] is True and info["padding_ok"] is False


@pytest.mark.parametrize("data, message", [
    (b"", "empty file (0 bytes)"),
    (b"\x89PNG", "not a .clst file (bad magic number 0x89)"),
    (bytes([0xC7, 0x22]) + EXAMPLE_BYTES[2:], "unsupported .clst format version 2 (this cloost reads version 1)"),
    (EXAMPLE_BYTES[:5], "truncated file: header needs 8 bytes, got 5"),
    (EXAMPLE_BYTES[:11], "truncated file: 10 stages at 3 bits need 12 bytes, got 11"),
    (EXAMPLE_BYTES + b"\x00", "trailing data: expected 12 bytes, got 13"),
])
def test_describe_raises_for_structural_damage(data, message):
    with pytest.raises(FormatError) as info:
        bf.describe(data)
    assert str(info.value) == message


# ---------------------------------------------------------------- purity

def test_module_does_not_import_torch_or_numpy():
    script = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location("bitformat_alone", {str(MODULE_PATH)!r})
        module = importlib.util.module_from_spec(spec)
        sys.modules["bitformat_alone"] = module
        spec.loader.exec_module(module)
        module.unpack(module.pack(module.ClstFile(b"abc", 3, (1, 2, 3))))
        assert "torch" not in sys.modules, "bitformat imported torch"
        assert "numpy" not in sys.modules, "bitformat imported numpy"
        assert not any(name.startswith("cloostcodec") for name in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_module_imports_only_stdlib_and_bitstring():
    import ast
    tree = ast.parse(MODULE_PATH.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    assert roots - set(sys.stdlib_module_names) <= {"bitstring"}, roots
