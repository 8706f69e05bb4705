"""Tests of the Crackle+Zstd label-chunk codec: numcodecs ``CrackleZstd``, its wire format, and the
Zarr v3 wrapper ``CrackleZstdCodec``."""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import crackle
import numcodecs
import numpy as np
import pytest
import zarr
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from medmask_store import MaskArchive, StorageSettings
from medmask_store.codecs import CrackleZstd, CrackleZstdCodec
from medmask_store.codecs.chunks import append_crc32c
from medmask_store.codecs.crackle_zstd import MAGIC, SLICE_ORDERS, decode_chunk
from medmask_store.errors import CorruptChunk
from medmask_store.model.case_data import CaseData
from medmask_store.phantom import make_phantom

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
LEVELS = st.integers(min_value=1, max_value=22)
DTYPES = st.sampled_from([np.dtype(np.uint8), np.dtype(np.uint16)])
SHAPES = st.one_of(
    st.sampled_from([(1, 1, 1), (64, 64, 64), (1, 1, 64), (64, 1, 1), (2, 1, 3)]),
    array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=24),
)
# Kinds whose chunks the codec keeps as plain Zstd (mode 0): Crackle never beats their bytes.
PLAIN_KINDS = ("zero", "single", "sparse")


@st.composite
def label_chunks(draw: st.DrawFn) -> tuple[str, np.ndarray]:
    """(kind, chunk): a 3-D uint8/uint16 label chunk that is all zero, one label everywhere, a few
    labelled voxels (sparse), random labels everywhere (dense) or a few overlapping boxes (blobs)."""
    shape = draw(SHAPES)
    dtype = draw(DTYPES)
    kind = draw(st.sampled_from([*PLAIN_KINDS, "dense", "blobs"]))
    top = int(np.iinfo(dtype).max)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    chunk = np.zeros(shape, dtype=dtype)
    if kind == "single":
        chunk[...] = draw(st.integers(1, top))
    elif kind == "sparse":
        for _ in range(draw(st.integers(1, 3))):
            chunk[tuple(int(rng.integers(0, n)) for n in shape)] = draw(st.integers(1, top))
    elif kind == "dense":
        chunk[...] = rng.integers(0, draw(st.sampled_from([2, 5, top])), size=shape, endpoint=True)
    elif kind == "blobs":
        for _ in range(draw(st.integers(1, 8))):
            lo = [int(rng.integers(0, n)) for n in shape]
            hi = [int(rng.integers(a, n)) + 1 for a, n in zip(lo, shape)]
            chunk[tuple(slice(a, b) for a, b in zip(lo, hi))] = rng.integers(1, top, endpoint=True)
    return kind, chunk


def crossings(chunk: np.ndarray) -> list[int]:
    """Label changes between neighbouring voxels along each axis."""
    return [int(np.count_nonzero(np.diff(chunk, axis=axis))) for axis in range(3)]


def axis_structured(axis: int, seed: int = 0, side: int = 32) -> np.ndarray:
    """Random labels 1..5 that change voxel by voxel along ``axis`` and every 4 voxels along the others."""
    small = [side // 4] * 3
    small[axis] = side
    repeats = [4, 4, 4]
    repeats[axis] = 1
    base = np.random.default_rng(seed).integers(1, 6, size=small).astype(np.uint8)
    return base.repeat(repeats[0], 0).repeat(repeats[1], 1).repeat(repeats[2], 2)


def sparse_chunk(shape: tuple[int, int, int] = (16, 16, 16), dtype: type = np.uint8) -> np.ndarray:
    chunk = np.zeros(shape, dtype=dtype)
    chunk[3, 4, 5] = 7
    chunk[-1, 0, -2] = 2
    return chunk


def crackle_encoded(axis: int = 0, level: int = 3) -> tuple[np.ndarray, bytes]:
    chunk = axis_structured(axis, side=16)
    encoded = CrackleZstd(level).encode(chunk)
    assert encoded[4] == axis + 1
    return chunk, encoded


def plain_encoded(level: int = 3) -> tuple[np.ndarray, bytes]:
    chunk = sparse_chunk()
    encoded = CrackleZstd(level).encode(chunk)
    assert encoded[4] == 0
    return chunk, encoded


BOTH_MODES = pytest.mark.parametrize("make", [crackle_encoded, plain_encoded], ids=["crackle", "plain"])


# --- round trip -------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(drawn=label_chunks(), level=LEVELS)
def test_round_trip_is_bit_exact_in_every_mode(drawn: tuple[str, np.ndarray], level: int) -> None:
    kind, chunk = drawn
    codec = CrackleZstd(level)
    encoded = codec.encode(chunk)
    assert isinstance(encoded, bytes)
    mode = encoded[4]
    if kind in PLAIN_KINDS:
        assert mode == 0, (kind, chunk.shape)
    elif mode != 0:  # sliced along the axis the most label boundaries cross
        assert mode == int(np.argmax(crossings(chunk))) + 1
    decoded = decode_chunk(encoded, chunk.shape, chunk.dtype)
    assert decoded.dtype == chunk.dtype
    assert decoded.shape == chunk.shape
    np.testing.assert_array_equal(decoded, chunk)
    # Without ``out``: the chunk's C-order bytes (plain mode) or the chunk itself (Crackle modes).
    bare = codec.decode(encoded)
    if mode == 0:
        assert bare == chunk.tobytes()
    else:
        assert bare.dtype == chunk.dtype
        np.testing.assert_array_equal(bare, chunk)


@settings(max_examples=80, deadline=None)
@given(drawn=label_chunks(), level=LEVELS)
def test_decode_into_out(drawn: tuple[str, np.ndarray], level: int) -> None:
    _, chunk = drawn
    codec = CrackleZstd(level)
    out = np.empty_like(chunk)
    out[...] = ~chunk  # every element starts out wrong
    result = codec.decode(codec.encode(chunk), out=out)
    assert result is out
    np.testing.assert_array_equal(out, chunk)


@settings(max_examples=60, deadline=None)
@given(drawn=label_chunks(), level=LEVELS)
def test_wire_format(drawn: tuple[str, np.ndarray], level: int) -> None:
    """magic, mode byte, one Zstd frame with content size and checksum of the chunk's bytes or of a
    Crackle stream of the chunk transposed by SLICE_ORDERS[mode], read with zstandard and crackle."""
    _, chunk = drawn
    encoded = CrackleZstd(level).encode(chunk)
    assert encoded[:4] == b"CKZ1" == MAGIC
    mode = encoded[4]
    assert mode in (0, 1, 2, 3)
    frame = encoded[5:]
    assert frame[:4] == ZSTD_MAGIC
    params = zstandard.get_frame_parameters(frame)
    assert params.has_checksum
    payload = zstandard.ZstdDecompressor().decompress(frame)
    assert params.content_size == len(payload)
    if mode == 0:
        assert payload == chunk.tobytes()
    else:
        transposed = crackle.decompress(payload)
        assert transposed.shape == tuple(chunk.shape[a] for a in SLICE_ORDERS[mode])
        np.testing.assert_array_equal(transposed.transpose(np.argsort(SLICE_ORDERS[mode])), chunk)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("level", [1, 15, 22])
def test_structured_chunk_is_sliced_along_the_axis_most_boundaries_cross(axis: int, level: int) -> None:
    chunk = axis_structured(axis, seed=axis)
    assert int(np.argmax(crossings(chunk))) == axis
    encoded = CrackleZstd(level).encode(chunk)
    assert encoded[4] == axis + 1
    np.testing.assert_array_equal(decode_chunk(encoded, chunk.shape, chunk.dtype), chunk)


def test_phantom_label_chunks_use_crackle_and_sparse_ones_plain_zstd() -> None:
    masks, space = make_phantom(shape=(128, 64, 64), n_organs=16, n_empty=0, seed=1)
    labels = CaseData.from_masks(masks, space=space).label_volume
    codec = CrackleZstd(15)
    for start in (0, 64):
        chunk = np.ascontiguousarray(labels[start : start + 64])
        assert len(np.unique(chunk)) >= 5
        encoded = codec.encode(chunk)
        assert encoded[4] in (1, 2, 3)
        assert encoded[4] == int(np.argmax(crossings(chunk))) + 1
        # Crackle beats plain Zstd of the same bytes on organ-shaped labels
        plain = zstandard.ZstdCompressor(level=15, write_checksum=True).compress(chunk.tobytes())
        assert len(encoded) < len(plain) + 5
        np.testing.assert_array_equal(decode_chunk(encoded, chunk.shape, chunk.dtype), chunk)
    for dtype in (np.uint8, np.uint16):
        encoded = codec.encode(sparse_chunk((64, 64, 64), dtype))
        assert encoded[4] == 0
        assert len(encoded) < 100


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64])
def test_every_unsigned_dtype_round_trips_with_its_extreme_label(dtype: type) -> None:
    chunk = axis_structured(1).astype(dtype)
    chunk[0, 0, 0] = np.iinfo(dtype).max
    encoded = CrackleZstd(3).encode(chunk)
    assert encoded[4] in (1, 2, 3)
    decoded = CrackleZstd(3).decode(encoded)
    assert decoded.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(decoded, chunk)


def test_non_contiguous_input_round_trips() -> None:
    base = np.random.default_rng(4).integers(0, 4, (20, 30, 40)).astype(np.uint16)
    view = base[::2, 1::3, ::-1]
    assert not view.flags.c_contiguous
    encoded = CrackleZstd(3).encode(view)
    np.testing.assert_array_equal(decode_chunk(encoded, view.shape, view.dtype), view)


@pytest.mark.parametrize("make", [crackle_encoded, plain_encoded], ids=["crackle", "plain"])
def test_decode_into_fortran_ordered_out(make) -> None:
    chunk, encoded = make()
    out = np.zeros(chunk.shape, dtype=chunk.dtype, order="F")
    CrackleZstd(3).decode(encoded, out=out)
    np.testing.assert_array_equal(out, chunk)


# --- configuration ----------------------------------------------------------------------


@given(level=LEVELS)
def test_config_round_trip(level: int) -> None:
    codec = CrackleZstd(level)
    config = codec.get_config()
    assert config == {"id": "crackle_zstd", "level": level}
    again = CrackleZstd.from_config({k: v for k, v in config.items() if k != "id"})
    assert type(again) is CrackleZstd
    assert again.level == level
    assert again == codec
    via_registry = numcodecs.get_codec(dict(config))
    assert type(via_registry) is CrackleZstd
    assert via_registry.level == level


def test_get_codec_by_id() -> None:
    codec = numcodecs.get_codec({"id": "crackle_zstd", "level": 5})
    assert type(codec) is CrackleZstd
    assert codec.level == 5
    assert codec.codec_id == "crackle_zstd"
    assert CrackleZstd().level == 19
    chunk = axis_structured(2)
    np.testing.assert_array_equal(codec.decode(codec.encode(chunk)), chunk)


@pytest.mark.parametrize("level", [0, 23, -1, 100])
def test_invalid_level_raises(level: int) -> None:
    with pytest.raises(ValueError, match=rf"crackle_zstd level must be in 1\.\.22, got {level}"):
        CrackleZstd(level)
    with pytest.raises(ValueError, match=r"level must be in 1\.\.22"):
        numcodecs.get_codec({"id": "crackle_zstd", "level": level})
    with pytest.raises(ValueError, match=r"level must be in 1\.\.22"):
        CrackleZstdCodec(level=level)


@pytest.mark.parametrize(
    ("shape", "dtype", "described"),
    [
        ((4, 4), np.uint8, "2-D uint8"),
        ((64,), np.uint16, "1-D uint16"),
        ((2, 2, 2, 2), np.uint8, "4-D uint8"),
        ((4, 4, 4), np.float32, "3-D float32"),
        ((4, 4, 4), np.float64, "3-D float64"),
        ((4, 4, 4), np.bool_, "3-D bool"),
        ((4, 4, 4), np.int16, "3-D int16"),
        ((4, 4, 4), np.int64, "3-D int64"),
    ],
)
def test_encode_rejects_other_arrays(shape: tuple[int, ...], dtype: type, described: str) -> None:
    with pytest.raises(TypeError, match=rf"crackle_zstd encodes 3-D unsigned-integer chunks, got {described}$"):
        CrackleZstd(3).encode(np.zeros(shape, dtype=dtype))


def test_fresh_interpreter_get_codec_via_entry_point() -> None:
    code = textwrap.dedent(
        """
        import numcodecs, numpy as np
        codec = numcodecs.get_codec({"id": "crackle_zstd", "level": 4})
        chunk = (np.indices((12, 10, 8)).sum(axis=0) // 3 % 4).astype(np.uint8)
        encoded = codec.encode(chunk)
        out = np.empty_like(chunk)
        codec.decode(encoded, out=out)
        print(type(codec).__name__, codec.level, encoded[:4].decode(), bool((out == chunk).all()))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["CrackleZstd", "4", "CKZ1", "True"]


# --- bad chunks -------------------------------------------------------------------------


def decoders(encoded: bytes, shape: tuple[int, ...] = (16, 16, 16), dtype: type = np.uint8):
    """Every way to decode: decode_chunk, decode(out=...) and (no size known) decode()."""
    return [
        lambda: decode_chunk(encoded, shape, np.dtype(dtype)),
        lambda: CrackleZstd().decode(encoded, out=np.zeros(shape, dtype=dtype)),
        lambda: CrackleZstd().decode(encoded),
    ]


@pytest.mark.parametrize("length", [0, 1, 4])
def test_chunk_shorter_than_header(length: int) -> None:
    data = crackle_encoded()[1][:length]
    for decode in decoders(data):
        with pytest.raises(CorruptChunk, match=rf"^crackle_zstd chunk truncated: {length} bytes, header needs 5$"):
            decode()


@BOTH_MODES
@pytest.mark.parametrize("magic", [b"CKZ0", b"CKZ2", b"ckz1", b"PBZ1", b"\x00\x00\x00\x00", ZSTD_MAGIC])
def test_bad_magic(make, magic: bytes) -> None:
    data = magic + make()[1][4:]
    for decode in decoders(data):
        with pytest.raises(
            CorruptChunk, match=re.escape(f"not a crackle_zstd chunk (magic {magic!r}, expected b'CKZ1')")
        ):
            decode()


@BOTH_MODES
@pytest.mark.parametrize("mode", [4, 5, 127, 255])
def test_unknown_mode(make, mode: int) -> None:
    encoded = make()[1]
    data = encoded[:4] + bytes([mode]) + encoded[5:]
    for decode in decoders(data):
        with pytest.raises(CorruptChunk, match=rf"^crackle_zstd chunk has unknown mode {mode}$"):
            decode()


@BOTH_MODES
@pytest.mark.parametrize("cut", [1, 2, 4, 5, 20])
def test_truncated_frame(make, cut: int) -> None:
    data = make()[1][:-cut]
    for decode in decoders(data):
        with pytest.raises(CorruptChunk, match=r"^crackle_zstd chunk truncated: its zstd frame has no end$"):
            decode()


@BOTH_MODES
def test_frame_cut_inside_its_header(make) -> None:
    data = make()[1][:7]  # CKZ1, mode, 2 bytes of the zstd magic
    for decode in decoders(data):
        with pytest.raises(CorruptChunk, match=r"^crackle_zstd chunk is corrupt: "):
            decode()


@settings(max_examples=40, deadline=None)
@given(drawn=label_chunks(), data=st.data())
def test_any_truncation_is_refused(drawn: tuple[str, np.ndarray], data: st.DataObject) -> None:
    _, chunk = drawn
    encoded = CrackleZstd(3).encode(chunk)
    cut = data.draw(st.integers(min_value=1, max_value=len(encoded)), label="cut")
    with pytest.raises(CorruptChunk, match=r"^crackle_zstd chunk (truncated|is corrupt)"):
        decode_chunk(encoded[:-cut], chunk.shape, chunk.dtype)


@BOTH_MODES
@pytest.mark.parametrize("stray", [b"\x00", b"abc", ZSTD_MAGIC, b"\x00" * 100])
def test_trailing_bytes(make, stray: bytes) -> None:
    data = make()[1] + stray
    for decode in decoders(data):
        with pytest.raises(CorruptChunk, match=rf"^crackle_zstd chunk followed by {len(stray)} stray bytes$"):
            decode()


@BOTH_MODES
def test_trailing_second_frame(make) -> None:
    encoded = make()[1]
    data = encoded + encoded[5:]
    for decode in decoders(data):
        with pytest.raises(CorruptChunk, match=rf"followed by {len(encoded) - 5} stray bytes"):
            decode()


@BOTH_MODES
def test_flipped_checksum_byte(make) -> None:
    encoded = bytearray(make()[1])
    encoded[-1] ^= 0x01  # last byte of the zstd content checksum
    for decode in decoders(bytes(encoded)):
        with pytest.raises(CorruptChunk, match=r"^crackle_zstd chunk is corrupt: "):
            decode()


@settings(max_examples=60, deadline=None)
@given(make=st.sampled_from([crackle_encoded, plain_encoded]), data=st.data())
def test_flipped_frame_byte_never_returns_wrong_data(make, data: st.DataObject) -> None:
    """A flip inside the zstd frame is detected or harmless (the frame's checksum covers the payload)."""
    chunk, encoded = make()
    position = data.draw(st.integers(min_value=5, max_value=len(encoded) - 1), label="position")
    bad = bytearray(encoded)
    bad[position] ^= data.draw(st.integers(min_value=1, max_value=255), label="xor")
    try:
        decoded = decode_chunk(bytes(bad), chunk.shape, chunk.dtype)
    except CorruptChunk:
        return
    np.testing.assert_array_equal(decoded, chunk)


def test_plain_frame_larger_than_the_chunk_is_refused() -> None:
    encoded = CrackleZstd(3).encode(sparse_chunk((16, 16, 16)))  # 4096 bytes of payload
    with pytest.raises(CorruptChunk, match=r"^crackle_zstd frame declares 4096 bytes, at most 512 are possible$"):
        decode_chunk(encoded, (8, 8, 8), np.dtype(np.uint8))
    with pytest.raises(CorruptChunk, match="declares 4096 bytes, at most 1024 are possible"):
        CrackleZstd().decode(encoded, out=np.zeros((8, 8, 16), dtype=np.uint8))


def test_plain_frame_smaller_than_the_chunk_is_refused() -> None:
    encoded = CrackleZstd(3).encode(sparse_chunk((8, 8, 8)))
    with pytest.raises(CorruptChunk, match=r"^crackle_zstd chunk decoded to 512 bytes, expected 4096$"):
        decode_chunk(encoded, (16, 16, 16), np.dtype(np.uint8))
    with pytest.raises(CorruptChunk, match="decoded to 512 bytes, expected 1024"):
        decode_chunk(encoded, (8, 8, 8), np.dtype(np.uint16))


def _bomb(mode: int, declared: int) -> bytes:
    """~100 bytes: a zstd frame header declaring ``declared`` content bytes, then 20 RLE blocks."""
    header = ZSTD_MAGIC + bytes([0b1110_0100]) + struct.pack("<Q", declared)
    rle_block = (((128 * 1024) << 3) | (1 << 1)).to_bytes(3, "little") + b"\x00"
    return MAGIC + bytes([mode]) + header + rle_block * 20


@pytest.mark.parametrize(("mode", "limit"), [(0, 4096), (1, 16 * 4096), (3, 16 * 4096)])
def test_frame_claiming_more_bytes_than_possible_is_refused_before_allocating(mode: int, limit: int) -> None:
    data = _bomb(mode, 10**10)
    assert 90 <= len(data) <= 110
    tracemalloc.start()
    try:
        with pytest.raises(CorruptChunk, match=rf"declares 10000000000 bytes, at most {limit} are possible"):
            decode_chunk(data, (16, 16, 16), np.dtype(np.uint8))
        with pytest.raises(CorruptChunk, match=rf"declares 10000000000 bytes, at most {limit} are possible"):
            CrackleZstd().decode(data, out=np.zeros((16, 16, 16), dtype=np.uint8))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 * 1024


@pytest.mark.parametrize(
    "shape",
    [(16, 16, 8), (8, 16, 16), (16, 16, 17), (4, 8, 128)],
    ids=lambda s: "x".join(map(str, s)),
)
def test_crackle_stream_of_the_wrong_shape(shape: tuple[int, int, int]) -> None:
    chunk, encoded = crackle_encoded(axis=0)  # (16, 16, 16)
    with pytest.raises(CorruptChunk, match=rf"^crackle_zstd chunk holds shape \(16, 16, 16\), expected \({shape[0]}, "):
        decode_chunk(encoded, shape, np.dtype(np.uint8))
    out = np.full(shape, 9, dtype=np.uint8)
    with pytest.raises(CorruptChunk, match="holds shape"):
        CrackleZstd().decode(encoded, out=out)
    assert (out == 9).all()  # untouched


def test_crackle_stream_of_a_transposed_shape() -> None:
    """A (8, 12, 16) chunk read as (16, 12, 8): the same byte count, still refused."""
    chunk = np.random.default_rng(2).integers(1, 5, (8, 12, 16)).astype(np.uint8)
    encoded = CrackleZstd(3).encode(chunk)
    assert encoded[4] != 0
    with pytest.raises(CorruptChunk, match=r"holds shape \(8, 12, 16\), expected \(16, 12, 8\)"):
        decode_chunk(encoded, (16, 12, 8), np.dtype(np.uint8))


@pytest.mark.parametrize("mode", [1, 2, 3])
@pytest.mark.parametrize(
    "payload",
    [b"", b"garbage", b"\x00" * 100, b"crkl" + b"\xff" * 60],
    ids=["empty", "garbage", "zeros", "bad-header"],
)
def test_frame_holding_no_crackle_stream(mode: int, payload: bytes) -> None:
    data = MAGIC + bytes([mode]) + zstandard.ZstdCompressor(write_checksum=True).compress(payload)
    for decode in decoders(data):
        with pytest.raises(CorruptChunk, match=r"^crackle_zstd chunk holds an invalid Crackle stream: "):
            decode()


def test_truncated_crackle_stream_in_a_valid_frame() -> None:
    chunk = axis_structured(0, side=16)
    stream = crackle.compress(np.ascontiguousarray(chunk.transpose(SLICE_ORDERS[1])), markov_model_order=3)
    data = MAGIC + b"\x01" + zstandard.ZstdCompressor(write_checksum=True).compress(stream[:40])
    with pytest.raises(CorruptChunk, match="invalid Crackle stream"):
        decode_chunk(data, chunk.shape, chunk.dtype)


def test_labels_beyond_the_target_dtype() -> None:
    chunk = axis_structured(2, side=16).astype(np.uint16) + 298  # labels 299..303
    encoded = CrackleZstd(3).encode(chunk)
    assert encoded[4] == 3
    with pytest.raises(CorruptChunk, match=r"^crackle_zstd chunk holds labels beyond uint8$"):
        decode_chunk(encoded, chunk.shape, np.dtype(np.uint8))
    # labels that fit are narrowed losslessly
    small = chunk - 298
    narrowed = decode_chunk(CrackleZstd(3).encode(small), small.shape, np.dtype(np.uint8))
    assert narrowed.dtype == np.uint8
    np.testing.assert_array_equal(narrowed, small)


# --- Zarr v3 codec ----------------------------------------------------------------------


@given(level=LEVELS)
def test_zarr_codec_dict_round_trip(level: int) -> None:
    codec = CrackleZstdCodec(level=level)
    as_dict = codec.to_dict()
    assert as_dict == {"name": "crackle_zstd", "configuration": {"level": level}}
    again = CrackleZstdCodec.from_dict(as_dict)
    assert again == codec
    assert again.level == level


def test_zarr_codec_defaults_and_registration() -> None:
    from zarr.registry import get_codec_class

    assert CrackleZstdCodec.from_dict({"name": "crackle_zstd"}) == CrackleZstdCodec(level=19)
    assert CrackleZstdCodec(level=4) != CrackleZstdCodec(level=5)
    assert get_codec_class("crackle_zstd") is CrackleZstdCodec
    with pytest.raises(ValueError):
        CrackleZstdCodec.from_dict({"name": "packbits_zstd", "configuration": {"level": 3}})


@pytest.mark.parametrize(
    ("shape", "dtype", "described"),
    [
        ((8, 8), "uint8", "2-D"),
        ((2, 2, 2, 2), "uint16", "4-D"),
        ((4, 4, 4), "int16", "3-D"),
        ((4, 4, 4), "float32", "3-D"),
        ((4, 4, 4), "bool", "3-D"),
    ],
)
def test_zarr_codec_rejects_other_arrays(shape: tuple[int, ...], dtype: str, described: str) -> None:
    # (the message names zarr's dtype object, e.g. "UInt8()", after the dimension count)
    with pytest.raises(TypeError, match=rf"^crackle_zstd needs a 3-D unsigned-integer array, got {described} "):
        zarr.create_array(store={}, shape=shape, dtype=dtype, chunks=shape, serializer=CrackleZstdCodec(level=3))


@st.composite
def zarr_cases(draw: st.DrawFn) -> tuple[np.ndarray, tuple[int, ...], tuple[int, ...] | None]:
    """(labels, chunk shape, shard shape or None) for a small 3-D label array."""
    shape = draw(array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=20))
    dtype = draw(DTYPES)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = np.zeros(shape, dtype=dtype)
    for _ in range(draw(st.integers(0, 6))):
        lo = [int(rng.integers(0, n)) for n in shape]
        hi = [int(rng.integers(a, n)) + 1 for a, n in zip(lo, shape)]
        labels[tuple(slice(a, b) for a, b in zip(lo, hi))] = rng.integers(1, np.iinfo(dtype).max, endpoint=True)
    chunks = tuple(draw(st.integers(1, 8)) for _ in range(3))
    shards = tuple(c * draw(st.integers(1, 3)) for c in chunks) if draw(st.booleans()) else None
    return labels, chunks, shards


@settings(max_examples=40, deadline=None)
@given(case=zarr_cases(), level=LEVELS)
def test_zarr_array_round_trip(case, level: int) -> None:
    labels, chunks, shards = case
    store: dict = {}
    array = zarr.create_array(
        store=store,
        shape=labels.shape,
        dtype=labels.dtype,
        chunks=chunks,
        shards=shards,
        serializer=CrackleZstdCodec(level=level),
        compressors=None,
        fill_value=0,
    )
    array[...] = labels
    back = zarr.open_array(store=store, mode="r")
    assert back.dtype == labels.dtype
    np.testing.assert_array_equal(back[...], labels)
    region = tuple(slice(n // 3, n - n // 4) for n in labels.shape)
    np.testing.assert_array_equal(back[region], labels[region])
    serializer = back.metadata.to_dict()["codecs"][0]
    if shards is not None:
        serializer = serializer["configuration"]["codecs"][0]
    assert serializer == {"name": "crackle_zstd", "configuration": {"level": level}}


def test_zarr_array_chunks_are_codec_frames_with_crc32c(tmp_path: Path) -> None:
    labels = np.zeros((20, 18, 16), dtype=np.uint16)
    labels[2:15, 3:9, 1:16] = 300
    labels[5:20, 7:18, 4:9] = 7
    path = tmp_path / "a.zarr"
    array = zarr.create_array(
        str(path),
        shape=labels.shape,
        dtype="uint16",
        chunks=(8, 8, 8),
        serializer=CrackleZstdCodec(level=3),
        compressors=[zarr.codecs.Crc32cCodec()],
        fill_value=0,
    )
    array[...] = labels
    files = sorted(p for p in (path / "c").rglob("*") if p.is_file())
    assert len(files) == 3 * 3 * 2
    assert all(f.read_bytes()[:4] == b"CKZ1" for f in files)
    np.testing.assert_array_equal(zarr.open_array(str(path), mode="r")[...], labels)
    # a valid, checksummed chunk of another shape copied in is refused, never read as data
    files[0].write_bytes(append_crc32c(CrackleZstd(3).encode(axis_structured(0, side=16).astype(np.uint16))))
    with pytest.raises(CorruptChunk, match=r"holds shape \(16, 16, 16\), expected \(8, 8, 8\)"):
        zarr.open_array(str(path), mode="r")[...]
    # a flipped byte fails the crc32c
    files[1].write_bytes(bytes([files[1].read_bytes()[0] ^ 1]) + files[1].read_bytes()[1:])
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_array(str(path), mode="r")[0:8, 0:8, 8:16]  # files[1] is chunk (0, 0, 1)


@pytest.fixture(scope="module")
def compact_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A compact-preset .zarr archive of one phantom case 'ct1', and its stored label volume."""
    masks, space = make_phantom(shape=(70, 60, 50), n_organs=8, n_empty=1, seed=5)
    path = tmp_path_factory.mktemp("compact") / "compact.zarr"
    with MaskArchive(path, "w", StorageSettings.preset("compact")) as archive:
        labels = archive.add_case("ct1", masks, space=space).read_labels(include_layers=False)
    assert len(np.unique(labels)) >= 8
    return path, labels


def test_compact_label_volume_opens_with_plain_zarr(compact_archive) -> None:
    path, labels = compact_archive
    array = zarr.open_array(path / "cases" / "ct1" / "label_volume", mode="r")
    inner = array.metadata.to_dict()["codecs"][0]["configuration"]["codecs"]
    assert list(inner) == [{"name": "crackle_zstd", "configuration": {"level": 15}}, {"name": "crc32c"}]
    assert array.dtype == labels.dtype
    np.testing.assert_array_equal(array[...], labels)
    np.testing.assert_array_equal(array[10:50, 5:33, 20:49], labels[10:50, 5:33, 20:49])


def test_compact_label_volume_opens_in_a_fresh_process_through_the_entry_point(compact_archive) -> None:
    path, labels = compact_archive
    code = textwrap.dedent(
        f"""
        import hashlib, zarr
        a = zarr.open_array({str(path / "cases" / "ct1" / "label_volume")!r}, mode="r")
        data = a[...]
        print(data.dtype, "x".join(map(str, data.shape)), hashlib.sha256(data.tobytes()).hexdigest())
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=path.parent, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [
        str(labels.dtype),
        "x".join(map(str, labels.shape)),
        hashlib.sha256(labels.tobytes()).hexdigest(),
    ]
