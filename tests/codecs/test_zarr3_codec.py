"""Tests of the Zarr v3 array->bytes codec ``PackBitsZstdCodec``."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes

from medmask_store.codecs.zarr3 import PackBitsZstdCodec
from medmask_store.errors import CorruptChunk

LEVELS = st.integers(min_value=1, max_value=22)


def _create(path: Path, shape: tuple[int, ...], *, level: int = 3, chunks=None, shards=None, **kwargs):
    ndim = len(shape)
    return zarr.create_array(
        str(path),
        shape=shape,
        dtype=bool,
        chunks=chunks or (8,) * ndim,
        shards=shards,
        serializer=PackBitsZstdCodec(level=level),
        compressors=[zarr.codecs.Crc32cCodec()],
        fill_value=False,
        **kwargs,
    )


def _chunk_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "c").rglob("*") if p.is_file())


def _random_mask(shape: tuple[int, ...], seed: int, p: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).random(shape) < p


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    shape = draw(array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=20))
    p = draw(st.sampled_from([0.0, 0.03, 0.5, 1.0]))
    return _random_mask(shape, draw(st.integers(0, 2**32 - 1)), p)


# --- codec object -----------------------------------------------------------------------


@given(level=LEVELS)
def test_dict_round_trip(level: int) -> None:
    codec = PackBitsZstdCodec(level=level)
    as_dict = codec.to_dict()
    assert as_dict == {"name": "packbits_zstd", "configuration": {"level": level}}
    again = PackBitsZstdCodec.from_dict(as_dict)
    assert again == codec
    assert again.level == level


def test_from_dict_without_configuration_uses_default_level() -> None:
    assert PackBitsZstdCodec.from_dict({"name": "packbits_zstd"}) == PackBitsZstdCodec(level=19)
    assert PackBitsZstdCodec(level=4) != PackBitsZstdCodec(level=5)


def test_from_dict_rejects_other_name() -> None:
    with pytest.raises(ValueError):
        PackBitsZstdCodec.from_dict({"name": "bytes", "configuration": {"level": 3}})


@pytest.mark.parametrize("level", [0, 23])
def test_invalid_level(level: int) -> None:
    with pytest.raises(ValueError, match="level must be in 1..22"):
        PackBitsZstdCodec(level=level)


def test_registered_with_zarr() -> None:
    from zarr.registry import get_codec_class

    assert get_codec_class("packbits_zstd") is PackBitsZstdCodec


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
def test_non_bool_array_rejected(tmp_path: Path, dtype: str) -> None:
    with pytest.raises(TypeError, match="needs a bool array"):
        zarr.create_array(
            str(tmp_path / "a.zarr"),
            shape=(4, 4),
            dtype=dtype,
            chunks=(2, 2),
            serializer=PackBitsZstdCodec(level=3),
        )


# --- arrays on disk ---------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(mask=masks(), level=LEVELS)
def test_array_round_trip(mask: np.ndarray, level: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.zarr"
        arr = _create(path, mask.shape, level=level)
        arr[...] = mask
        np.testing.assert_array_equal(zarr.open_array(str(path), mode="r")[...], mask)
        for chunk in _chunk_files(path):
            assert chunk.read_bytes()[:4] == b"PBZ1"


@settings(max_examples=20, deadline=None)
@given(mask=masks(), level=LEVELS)
def test_sharded_array_round_trip(mask: np.ndarray, level: int) -> None:
    ndim = mask.ndim
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "s.zarr"
        arr = _create(path, mask.shape, level=level, chunks=(4,) * ndim, shards=(8,) * ndim)
        arr[...] = mask
        back = zarr.open_array(str(path), mode="r")
        np.testing.assert_array_equal(back[...], mask)
        if ndim == 3 and all(s > 3 for s in mask.shape):
            np.testing.assert_array_equal(back[1:-1, 2:, :3], mask[1:-1, 2:, :3])


def test_partial_writes_and_reads(tmp_path: Path) -> None:
    mask = _random_mask((19, 13, 10), seed=5, p=0.2)
    arr = _create(tmp_path / "a.zarr", mask.shape)
    arr[...] = mask
    arr[3:11, 2:5, :] = True
    mask[3:11, 2:5, :] = True
    back = zarr.open_array(str(tmp_path / "a.zarr"), mode="r")
    np.testing.assert_array_equal(back[...], mask)
    np.testing.assert_array_equal(back[5:17, ::2, 9], mask[5:17, ::2, 9])


def test_all_false_chunks_are_encoded_when_empty_chunks_written(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    arr = _create(path, (10, 10, 10), config={"write_empty_chunks": True})
    arr[...] = False
    files = _chunk_files(path)
    assert len(files) == 8
    assert all(f.read_bytes()[:4] == b"PBZ1" for f in files)
    assert not zarr.open_array(str(path), mode="r")[...].any()


def test_metadata_names_the_codec(tmp_path: Path) -> None:
    arr = _create(tmp_path / "a.zarr", (9, 9), level=7)
    codecs = arr.metadata.to_dict()["codecs"]
    assert codecs[0] == {"name": "packbits_zstd", "configuration": {"level": 7}}
    assert codecs[1]["name"] == "crc32c"


# --- entry-point acceptance in a fresh interpreter -----------------------------------------


@pytest.mark.parametrize("sharded", [False, True], ids=["plain", "sharded"])
def test_fresh_process_reads_without_importing_medmask_store(tmp_path: Path, sharded: bool) -> None:
    mask = _random_mask((21, 17, 12), seed=11, p=0.37)
    path = tmp_path / "a.zarr"
    if sharded:
        arr = _create(path, mask.shape, level=5, chunks=(4, 4, 4), shards=(8, 8, 8))
    else:
        arr = _create(path, mask.shape, level=5)
    arr[...] = mask
    code = f"import zarr, numpy; a = zarr.open_array({str(path)!r}, mode='r'); print(int(a[...].sum()))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(int(mask.sum()))
    assert int(mask.sum()) > 0


def test_fresh_process_reads_region_exactly(tmp_path: Path) -> None:
    """Beyond the count: the exact bits of a region come back in a fresh interpreter."""
    mask = _random_mask((16, 16, 16), seed=12, p=0.5)
    path = tmp_path / "a.zarr"
    _create(path, mask.shape)[...] = mask
    code = textwrap.dedent(
        f"""
        import zarr, numpy
        a = zarr.open_array({str(path)!r}, mode="r")
        print(numpy.packbits(a[2:14, 3:9, 5:16].ravel()).tobytes().hex())
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == np.packbits(mask[2:14, 3:9, 5:16].ravel()).tobytes().hex()


# --- corruption on disk -----------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_flipped_byte_in_chunk_file_is_never_silent(data: st.DataObject) -> None:
    mask = _random_mask((8, 8, 8), seed=data.draw(st.integers(0, 1000), label="seed"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.zarr"
        _create(path, mask.shape)[...] = mask
        (chunk,) = _chunk_files(path)
        raw = bytearray(chunk.read_bytes())
        pos = data.draw(st.integers(0, len(raw) - 1), label="pos")
        raw[pos] ^= data.draw(st.integers(1, 255), label="xor")
        chunk.write_bytes(bytes(raw))
        with pytest.raises(ValueError, match="checksum|packbits_zstd"):
            zarr.open_array(str(path), mode="r")[...]


def test_flipped_byte_without_crc_raises_corrupt_chunk(tmp_path: Path) -> None:
    """Without the crc32c codec, the frame's own zstd checksum still catches the flip."""
    mask = _random_mask((8, 8, 8), seed=3)
    path = tmp_path / "a.zarr"
    arr = zarr.create_array(
        str(path), shape=mask.shape, dtype=bool, chunks=(8, 8, 8),
        serializer=PackBitsZstdCodec(level=3), compressors=None,
    )
    arr[...] = mask
    (chunk,) = _chunk_files(path)
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    chunk.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunk):
        zarr.open_array(str(path), mode="r")[...]


def test_chunk_of_wrong_shape_raises_corrupt_chunk(tmp_path: Path) -> None:
    """A valid frame for a different element count (e.g. a chunk copied from another array)."""
    from medmask_store.codecs.packbits_zstd import PackBitsZstd

    path = tmp_path / "a.zarr"
    arr = zarr.create_array(
        str(path), shape=(8, 8), dtype=bool, chunks=(8, 8),
        serializer=PackBitsZstdCodec(level=3), compressors=None,
    )
    arr[...] = True
    (chunk,) = _chunk_files(path)
    chunk.write_bytes(PackBitsZstd(3).encode(np.ones(63, dtype=bool)))
    with pytest.raises(CorruptChunk, match="declares 63 elements, the chunk holds 64"):
        zarr.open_array(str(path), mode="r")[...]


def test_truncated_chunk_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "a.zarr"
    _create(path, (8, 8, 8))[...] = _random_mask((8, 8, 8), seed=4)
    (chunk,) = _chunk_files(path)
    chunk.write_bytes(chunk.read_bytes()[:-7])
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_array(str(path), mode="r")[...]
