"""PackBits+Zstd: a numcodecs codec for binary (boolean) mask chunks.

Wire format of one encoded chunk (all integers little-endian)::

    offset  size  field
    0       4     magic  b"PBZ1"  (format version 1)
    4       8     n      uint64, number of decoded elements (bits)
    12      ...   frame  one Zstandard frame, with content size and checksum,
                         of ``numpy.packbits(bits, bitorder="little")``
                         (``ceil(n / 8)`` bytes, the last byte zero-padded)

Decoding checks the magic, that ``n`` equals the expected element count when
one is known (``out`` or a chunk shape), that the frame can possibly hold
``ceil(n / 8)`` bytes (Zstandard regenerates at most 128 KiB per block of at
least 4 bytes, so a 100-byte frame claiming 10 GB is refused before any
allocation), that the frame's declared content size matches, the frame
checksum, and that no bytes trail the frame.
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard
from numcodecs.abc import Codec
from numcodecs.compat import ensure_bytes, ensure_ndarray
from numcodecs.registry import register_codec

from medmask_store.errors import CorruptChunk

MAGIC = b"PBZ1"
HEADER = struct.Struct("<4sQ")
# Zstandard regenerates at most 128 KiB per block, and a block costs >= 4 bytes.
MAX_BYTES_PER_FRAME_BYTE = 128 * 1024 // 4


class PackBitsZstd(Codec):
    """Pack booleans 8 per byte, then compress with Zstandard.

    Parameters
    ----------
    level : int
        Zstandard compression level (1-22).
    """

    codec_id = "packbits_zstd"

    def __init__(self, level: int = 19) -> None:
        if not 1 <= int(level) <= 22:
            raise ValueError(f"packbits_zstd level must be in 1..22, got {level}")
        self.level = int(level)

    def encode(self, buf: object) -> bytes:
        """Encode a boolean array (any shape, flattened in C order)."""
        arr = ensure_ndarray(buf)
        if arr.dtype != np.bool_:
            raise TypeError(f"packbits_zstd encodes boolean arrays only, got dtype {arr.dtype}")
        bits = arr.reshape(-1)  # C order, whatever the memory layout
        packed = np.packbits(bits, bitorder="little")
        compressor = zstandard.ZstdCompressor(level=self.level, write_checksum=True)
        return HEADER.pack(MAGIC, bits.size) + compressor.compress(packed.tobytes())

    def decode(self, buf: object, out: object = None) -> np.ndarray:
        """Decode to a flat boolean array, or into ``out`` (same size; filled in C order)."""
        if out is None:
            return decode_frame(ensure_bytes(buf), None)
        target = ensure_ndarray(out)
        bits = decode_frame(ensure_bytes(buf), target.size)
        np.copyto(target, bits.reshape(target.shape))
        return target


def decode_frame(data: bytes, expected_bits: int | None) -> np.ndarray:
    """Decode one frame to a flat boolean array, validating it strictly."""
    if len(data) < HEADER.size:
        raise CorruptChunk(f"packbits_zstd frame truncated: {len(data)} bytes, header needs {HEADER.size}")
    magic, n_bits = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptChunk(f"not a packbits_zstd frame (magic {magic!r}, expected {MAGIC!r})")
    if expected_bits is not None and n_bits != expected_bits:
        raise CorruptChunk(f"packbits_zstd frame declares {n_bits} elements, the chunk holds {expected_bits}")
    frame = data[HEADER.size :]
    n_packed = -(-n_bits // 8)
    if n_packed > MAX_BYTES_PER_FRAME_BYTE * max(len(frame), 1):
        raise CorruptChunk(
            f"packbits_zstd frame of {len(frame)} bytes cannot hold the {n_packed} bytes it declares"
        )
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
        if declared != n_packed:
            raise CorruptChunk(f"zstd frame declares {declared} bytes, header implies {n_packed}")
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        packed = decompressor.decompress(frame)
    except zstandard.ZstdError as exc:
        raise CorruptChunk(f"packbits_zstd frame is corrupt: {exc}") from exc
    if not decompressor.eof:
        raise CorruptChunk("packbits_zstd frame truncated: the zstd frame has no end")
    if len(packed) != n_packed:
        raise CorruptChunk(f"packbits_zstd frame decoded to {len(packed)} bytes, expected {n_packed}")
    if decompressor.unused_data:
        raise CorruptChunk(f"packbits_zstd frame followed by {len(decompressor.unused_data)} stray bytes")
    packed_array = np.frombuffer(packed, dtype=np.uint8)
    if n_bits % 8 and packed_array[-1] >> (n_bits % 8):
        raise CorruptChunk("packbits_zstd frame has set padding bits: the element count does not match the data")
    return np.unpackbits(packed_array, count=n_bits, bitorder="little").view(np.bool_)


register_codec(PackBitsZstd)
