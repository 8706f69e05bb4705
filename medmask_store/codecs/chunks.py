"""Encoding and decoding of single stored chunks, for backends that move chunk bytes themselves.

Byte formats (what our Zarr codec chains, HDF5 filters and packed files hold):

- Zarr label chunk: ``bytes -> zstd -> crc32c``: a Zstd frame of the C-order
  chunk, then its crc32c (uint32, little-endian).
- HDF5 label chunk: a Zstd frame with its content checksum (XXH64), so HDF5's
  registered Zstd filter (hdf5plugin, id 32015) decodes it and verifies it.
- Compact label chunk, every backend: a Crackle+Zstd chunk, then its crc32c.
- Binary-layer chunk, every backend: a PackBits+Zstd frame, then its crc32c.
"""

from __future__ import annotations

import math
import struct
import threading
from collections.abc import Callable

import google_crc32c
import numpy as np
import zstandard

from medmask_store.errors import CorruptChunk

# The codec modules (numcodecs, crackle) are imported by the functions that use them: listing
# or describing cases needs neither.

CRC = struct.Struct("<I")


def append_crc32c(data: bytes) -> bytes:
    return data + CRC.pack(google_crc32c.value(data))


def strip_crc32c(data: bytes) -> bytes:
    """The payload, after checking its crc32c suffix."""
    if len(data) < CRC.size:
        raise CorruptChunk(f"{len(data)} bytes are too short to hold a crc32c")
    payload, (stored,) = data[: -CRC.size], CRC.unpack(data[-CRC.size :])
    if google_crc32c.value(payload) != stored:
        raise CorruptChunk("fails its crc32c checksum")
    return payload


def encode_label_chunk(chunk: np.ndarray, level: int) -> bytes:
    """A checksummed Zstd frame (the HDF5 label-chunk format)."""
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=True)
    return compressor.compress(np.ascontiguousarray(chunk).tobytes())


_local = threading.local()


def _decompressor() -> zstandard.ZstdDecompressor:
    """One decompressor per thread: creating one costs as much as decoding a small chunk."""
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


def decode_label_chunk(raw: bytes, dtype: np.dtype, shape: tuple[int, ...], crc32c: bool) -> np.ndarray:
    """Decode a label chunk; ``crc32c`` says whether it carries the Zarr crc32c suffix."""
    frame = strip_crc32c(raw) if crc32c else raw
    size = math.prod(shape) * dtype.itemsize
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
        if declared != size:  # checked before decoding: a damaged header must not allocate its claim
            raise CorruptChunk(f"label chunk declares {declared} bytes, the chunk holds {size}")
        data = _decompressor().decompress(frame, allow_extra_data=False)  # refuses stray bytes too
    except zstandard.ZstdError as exc:
        raise CorruptChunk(f"label chunk does not decode: {exc}") from exc
    if len(data) != size:
        raise CorruptChunk(f"label chunk decoded to {len(data)} bytes, expected {size}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def encode_binary_chunk(chunk: np.ndarray, level: int) -> bytes:
    from medmask_store.codecs.packbits_zstd import PackBitsZstd

    return append_crc32c(PackBitsZstd(level).encode(chunk))


def decode_binary_chunk(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    from medmask_store.codecs.packbits_zstd import decode_frame

    return decode_frame(strip_crc32c(raw), math.prod(shape)).reshape(shape)


def encode_crackle_chunk(chunk: np.ndarray, level: int) -> bytes:
    from medmask_store.codecs.crackle_zstd import CrackleZstd

    return append_crc32c(CrackleZstd(level).encode(chunk))


def decode_crackle_chunk(raw: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    from medmask_store.codecs.crackle_zstd import decode_chunk

    return decode_chunk(strip_crc32c(raw), shape, dtype)


def chunk_decoder(codec: str, dtype: np.dtype, shape: tuple[int, ...], zarr: bool) -> Callable[[bytes], np.ndarray]:
    """How to decode one stored chunk of an array written with ``codec``.

    ``codec`` is ``"zstd"`` (label volume, default), ``"crackle_zstd"`` (label
    volume, compact) or ``"packbits_zstd"`` (binary layers); ``zarr`` says whether
    Zstd label chunks carry Zarr's crc32c suffix (HDF5's carry a frame checksum).
    """
    if codec == "zstd":
        return lambda raw: decode_label_chunk(raw, dtype, shape, crc32c=zarr)
    if codec == "crackle_zstd":
        return lambda raw: decode_crackle_chunk(raw, dtype, shape)
    if codec == "packbits_zstd":
        return lambda raw: decode_binary_chunk(raw, shape)
    raise ValueError(f"unknown chunk codec {codec!r}")


def encode_zarr_label_chunk(chunk: np.ndarray, level: int) -> bytes:
    """A Zstd frame and its crc32c: what Zarr's ``bytes -> zstd -> crc32c`` chain stores."""
    compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return append_crc32c(compressor.compress(np.ascontiguousarray(chunk).tobytes()))


Encoder = Callable[[np.ndarray, int], bytes]
# Encoders of whole chunks, by chunk codec: HDF5 and packed files, and Zarr.
ENCODERS: dict[str, Encoder] = {
    "zstd": encode_label_chunk,
    "crackle_zstd": encode_crackle_chunk,
    "packbits_zstd": encode_binary_chunk,
}
ZARR_ENCODERS: dict[str, Encoder] = {**ENCODERS, "zstd": encode_zarr_label_chunk}
