"""Tests of the numcodecs codec ``PackBitsZstd`` and its wire format."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
import tracemalloc

import numcodecs
import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from medmask_store.codecs.packbits_zstd import MAGIC, PackBitsZstd
from medmask_store.errors import CorruptChunk

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LEVELS = st.integers(min_value=1, max_value=22)


@st.composite
def bool_arrays(draw: st.DrawFn, max_dims: int = 4, max_side: int = 20) -> np.ndarray:
    """Boolean arrays of 1..max_dims dims (sides may be 0): random, all-False or all-True."""
    shape = draw(array_shapes(min_dims=1, max_dims=max_dims, min_side=0, max_side=max_side))
    kind = draw(st.sampled_from(["random", "false", "true", "sparse"]))
    if kind == "false":
        return np.zeros(shape, dtype=bool)
    if kind == "true":
        return np.ones(shape, dtype=bool)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = 0.5 if kind == "random" else 0.02
    return rng.random(shape) < p


@st.composite
def nonempty_frames(draw: st.DrawFn) -> tuple[np.ndarray, bytes]:
    arr = draw(bool_arrays(max_dims=2, max_side=40))
    return arr, PackBitsZstd(draw(LEVELS)).encode(arr)


# --- round trip -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(arr=bool_arrays(), level=LEVELS)
def test_round_trip_is_bit_exact(arr: np.ndarray, level: int) -> None:
    codec = PackBitsZstd(level)
    decoded = codec.decode(codec.encode(arr))
    assert decoded.dtype == np.bool_
    assert decoded.shape == (arr.size,)
    np.testing.assert_array_equal(decoded.reshape(arr.shape), arr)


@settings(max_examples=50, deadline=None)
@given(arr=bool_arrays(), level=LEVELS)
def test_decode_into_out_buffer(arr: np.ndarray, level: int) -> None:
    codec = PackBitsZstd(level)
    out = ~arr  # every element starts out wrong
    result = codec.decode(codec.encode(arr), out=out)
    assert result is out
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 1001])
@pytest.mark.parametrize("fill", [False, True])
def test_sizes_around_byte_boundaries(n: int, fill: bool) -> None:
    arr = np.full(n, fill, dtype=bool)
    if n > 2:
        arr[n // 2] = not fill
    codec = PackBitsZstd(1)
    np.testing.assert_array_equal(codec.decode(codec.encode(arr)), arr)


def test_large_uniform_chunk_is_not_refused_by_size_guard() -> None:
    """Highly compressible real frames must stay within the 'frame can hold n bytes' bound."""
    arr = np.zeros(2**24 + 3, dtype=bool)
    for level in (1, 22):
        codec = PackBitsZstd(level)
        encoded = codec.encode(arr)
        assert len(encoded) < 1000  # it is indeed tiny ...
        np.testing.assert_array_equal(codec.decode(encoded), arr)  # ... and still accepted


def test_non_contiguous_input_round_trips() -> None:
    rng = np.random.default_rng(1)
    base = rng.random((20, 30)) < 0.5
    view = base[::3, 1::2]
    codec = PackBitsZstd(3)
    np.testing.assert_array_equal(codec.decode(codec.encode(view)).reshape(view.shape), view)


def test_fortran_ordered_input_round_trips_into_same_order_out() -> None:
    rng = np.random.default_rng(2)
    arr = np.asfortranarray(rng.random((5, 7, 3)) < 0.5)
    codec = PackBitsZstd(3)
    out = np.empty_like(arr, order="F")
    codec.decode(codec.encode(arr), out=out)
    np.testing.assert_array_equal(out, arr)


def test_encode_flattens_fortran_input_in_c_order_as_documented() -> None:
    arr = np.asfortranarray(np.arange(15).reshape(3, 5) % 3 == 0)
    codec = PackBitsZstd(3)
    np.testing.assert_array_equal(codec.decode(codec.encode(arr)), arr.ravel(order="C"))


# --- wire format ------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(arr=bool_arrays(), level=LEVELS)
def test_wire_format(arr: np.ndarray, level: int) -> None:
    encoded = PackBitsZstd(level).encode(arr)
    assert isinstance(encoded, bytes)
    assert encoded[:4] == b"PBZ1" == MAGIC
    assert struct.unpack("<Q", encoded[4:12])[0] == arr.size
    frame = encoded[12:]
    assert frame[:4] == ZSTD_MAGIC
    params = zstandard.get_frame_parameters(frame)
    n_packed = -(-arr.size // 8)
    assert params.content_size == n_packed
    assert params.has_checksum
    packed = zstandard.ZstdDecompressor().decompress(frame)
    assert packed == np.packbits(arr.reshape(-1), bitorder="little").tobytes()
    assert len(packed) == n_packed


# --- configuration ----------------------------------------------------------------------


@given(level=LEVELS)
def test_config_round_trip(level: int) -> None:
    codec = PackBitsZstd(level)
    config = codec.get_config()
    assert config == {"id": "packbits_zstd", "level": level}
    # numcodecs convention: from_config takes the configuration without its "id"
    again = PackBitsZstd.from_config({k: v for k, v in config.items() if k != "id"})
    assert isinstance(again, PackBitsZstd)
    assert again.level == level
    assert again == codec
    via_registry = numcodecs.get_codec(dict(config))
    assert isinstance(via_registry, PackBitsZstd)
    assert via_registry.level == level


def test_get_codec_by_id() -> None:
    codec = numcodecs.get_codec({"id": "packbits_zstd", "level": 5})
    assert type(codec) is PackBitsZstd
    assert codec.level == 5
    assert PackBitsZstd().level == 19


@pytest.mark.parametrize("level", [0, 23, -1, 100])
def test_invalid_level_raises(level: int) -> None:
    with pytest.raises(ValueError, match="level must be in 1..22"):
        PackBitsZstd(level)
    with pytest.raises(ValueError, match="level must be in 1..22"):
        numcodecs.get_codec({"id": "packbits_zstd", "level": level})


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32, np.float64])
def test_non_bool_input_raises_type_error(dtype: type) -> None:
    arr = np.array([0, 1, 1, 0, 1], dtype=dtype)
    with pytest.raises(TypeError, match="boolean arrays only"):
        PackBitsZstd(3).encode(arr)


# --- bad frames -------------------------------------------------------------------------


def _frame(arr: np.ndarray | None = None, level: int = 3) -> bytes:
    if arr is None:
        arr = np.random.default_rng(7).random(1000) < 0.3
    return PackBitsZstd(level).encode(arr)


@pytest.mark.parametrize("length", [0, 1, 4, 11])
def test_frame_shorter_than_header(length: int) -> None:
    data = _frame()[:length]
    with pytest.raises(CorruptChunk, match=rf"frame truncated: {length} bytes, header needs 12"):
        PackBitsZstd().decode(data)


@pytest.mark.parametrize("magic", [b"PBZ0", b"PBZ2", b"pbz1", b"\x00\x00\x00\x00", ZSTD_MAGIC])
def test_wrong_magic(magic: bytes) -> None:
    data = magic + _frame()[4:]
    with pytest.raises(CorruptChunk, match="not a packbits_zstd frame"):
        PackBitsZstd().decode(data)


def test_truncated_zstd_frame_by_one_byte() -> None:
    data = _frame()
    with pytest.raises(CorruptChunk, match="the zstd frame has no end"):
        PackBitsZstd().decode(data[:-1])


@settings(max_examples=50, deadline=None)
@given(frame=nonempty_frames(), data=st.data())
def test_truncated_zstd_frame_any_cut(frame: tuple[np.ndarray, bytes], data: st.DataObject) -> None:
    arr, encoded = frame
    cut = data.draw(st.integers(min_value=1, max_value=len(encoded) - 12), label="cut")
    out = np.empty(arr.shape, dtype=bool)
    with pytest.raises(CorruptChunk, match=r"packbits_zstd frame (truncated|is corrupt)"):
        PackBitsZstd().decode(encoded[:-cut])
    with pytest.raises(CorruptChunk, match=r"packbits_zstd frame (truncated|is corrupt)"):
        PackBitsZstd().decode(encoded[:-cut], out=out)


@settings(max_examples=50, deadline=None)
@given(frame=nonempty_frames(), data=st.data())
def test_flipped_payload_byte_never_returns_wrong_data(
    frame: tuple[np.ndarray, bytes], data: st.DataObject
) -> None:
    """A flip inside the zstd frame is either detected or harmless, never silent corruption."""
    arr, encoded = frame
    pos = data.draw(st.integers(min_value=12, max_value=len(encoded) - 1), label="pos")
    mask = data.draw(st.integers(min_value=1, max_value=255), label="xor")
    bad = bytearray(encoded)
    bad[pos] ^= mask
    try:
        decoded = PackBitsZstd().decode(bytes(bad))
    except CorruptChunk:
        pass
    else:
        np.testing.assert_array_equal(decoded, arr.reshape(-1))
    out = np.empty(arr.shape, dtype=bool)
    try:
        PackBitsZstd().decode(bytes(bad), out=out)
    except CorruptChunk:
        pass
    else:
        np.testing.assert_array_equal(out, arr)


@settings(max_examples=50, deadline=None)
@given(frame=nonempty_frames(), data=st.data())
def test_flipped_byte_anywhere_with_known_size(frame: tuple[np.ndarray, bytes], data: st.DataObject) -> None:
    """With ``out`` given, also header flips (magic, element count) are caught."""
    arr, encoded = frame
    pos = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1), label="pos")
    mask = data.draw(st.integers(min_value=1, max_value=255), label="xor")
    bad = bytearray(encoded)
    bad[pos] ^= mask
    out = np.empty(arr.shape, dtype=bool)
    if pos < 12:
        with pytest.raises(CorruptChunk, match="not a packbits_zstd frame|declares"):
            PackBitsZstd().decode(bytes(bad), out=out)
        return
    try:
        PackBitsZstd().decode(bytes(bad), out=out)
    except CorruptChunk:
        pass
    else:
        np.testing.assert_array_equal(out, arr)


def test_flipped_checksum_byte_is_detected() -> None:
    data = bytearray(_frame())
    data[-1] ^= 0x01  # last byte of the zstd content checksum
    with pytest.raises(CorruptChunk, match="frame is corrupt"):
        PackBitsZstd().decode(bytes(data))


@pytest.mark.parametrize("stray", [b"\x00", b"abc", ZSTD_MAGIC, b"\x00" * 100])
def test_trailing_stray_bytes(stray: bytes) -> None:
    data = _frame() + stray
    with pytest.raises(CorruptChunk, match=rf"followed by {len(stray)} stray bytes"):
        PackBitsZstd().decode(data)


def test_trailing_second_frame_is_rejected() -> None:
    data = _frame() + _frame()[12:]
    with pytest.raises(CorruptChunk, match="stray bytes"):
        PackBitsZstd().decode(data)


@pytest.mark.parametrize("out_size", [0, 999, 1001, 1008])
def test_header_count_differs_from_out_size(out_size: int) -> None:
    data = _frame()  # 1000 elements
    out = np.zeros(out_size, dtype=bool)
    with pytest.raises(CorruptChunk, match=rf"declares 1000 elements, the chunk holds {out_size}"):
        PackBitsZstd().decode(data, out=out)
    assert not out.any()  # untouched


def test_header_count_inconsistent_with_zstd_content_size() -> None:
    data = bytearray(_frame())  # 1000 elements -> 125 packed bytes
    data[4:12] = struct.pack("<Q", 1024)  # implies 128 packed bytes
    with pytest.raises(CorruptChunk, match="zstd frame declares 125 bytes, header implies 128"):
        PackBitsZstd().decode(bytes(data))


def test_huge_declared_count_refused_without_allocating() -> None:
    """~100-byte frame claiming 10**10 elements (1.25 GB packed) is refused up front."""
    # A plausible zstd frame header declaring 1.25e9 content bytes, then a few RLE blocks.
    zstd_header = ZSTD_MAGIC + bytes([0b1110_0100]) + struct.pack("<Q", 10**10 // 8)
    rle_block = (((128 * 1024) << 3) | (1 << 1)).to_bytes(3, "little") + b"\xff"
    frame = zstd_header + rle_block * 20
    data = struct.pack("<4sQ", b"PBZ1", 10**10) + frame
    assert 90 <= len(data) <= 110
    tracemalloc.start()
    try:
        with pytest.raises(CorruptChunk, match=r"cannot hold the 1250000000 bytes"):
            PackBitsZstd().decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 * 1024


def test_huge_declared_count_with_zero_length_frame() -> None:
    data = struct.pack("<4sQ", b"PBZ1", 10**10)
    with pytest.raises(CorruptChunk, match="frame of 0 bytes cannot hold"):
        PackBitsZstd().decode(data)


# --- registration in a fresh interpreter ---------------------------------------------------


def test_fresh_interpreter_get_codec_via_entry_point() -> None:
    code = textwrap.dedent(
        """
        import numcodecs, numpy as np
        codec = numcodecs.get_codec({"id": "packbits_zstd"})
        arr = np.random.default_rng(0).random((7, 11, 3)) < 0.4
        back = codec.decode(codec.encode(arr)).reshape(arr.shape)
        print(type(codec).__name__, codec.level, bool((back == arr).all()), int(arr.sum()))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    expected = int((np.random.default_rng(0).random((7, 11, 3)) < 0.4).sum())
    assert proc.stdout.split() == ["PackBitsZstd", "19", "True", str(expected)]
