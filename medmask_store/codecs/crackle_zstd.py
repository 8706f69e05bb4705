"""Crackle+Zstd: a numcodecs codec for label-volume chunks of compact archives.

Crackle (seung-lab's crackle-codec) codes a label volume slice by slice as the
crack codes of its region boundaries; Zstd then squeezes the crack codes. Which
axis the slices run along changes the size by up to 15 %: each chunk is sliced
along the axis that most boundaries cross (within 2 % of the best of all three
on TotalSegmentator masks, at a third of the time). Sparse chunks (a few small
structures) are smaller as plain Zstd of their bytes, which is tried as well.

Wire format of one encoded chunk::

    offset  size  field
    0       4     magic  b"CKZ1"  (format version 1)
    4       1     mode   0: the frame holds the chunk's C-order bytes;
                         1, 2, 3: the frame holds a Crackle stream of the chunk
                         transposed by ``SLICE_ORDERS[mode]`` (slices along axis mode - 1)
    5       ...   frame  one Zstandard frame, with content size and checksum
"""

from __future__ import annotations

import math
import struct

import crackle
import numpy as np
import zstandard
from numcodecs.abc import Codec
from numcodecs.compat import ensure_bytes, ensure_ndarray, ndarray_copy
from numcodecs.registry import register_codec

from medmask_store.errors import CorruptChunk

MAGIC = b"CKZ1"
HEADER = struct.Struct("<4sB")
RAW = 0
# Crackle slices along its last axis; mode m moves axis m - 1 there.
SLICE_ORDERS = {1: (2, 1, 0), 2: (0, 2, 1), 3: (0, 1, 2)}
MARKOV_MODEL_ORDER = 3  # smallest crack codes on TotalSegmentator masks (orders 0-7 measured)
# Plain Zstd is tried only when Crackle is already this small: below it, the structures are
# sparse enough for plain Zstd to win sometimes; above, it never did on TotalSegmentator
# masks (1024 or 2048 gave the same bytes), and it costs 10x the time.
RAW_CANDIDATE_BYTES = 512
MAX_CRACKLE_EXPANSION = 16  # a Crackle stream is far smaller than its labels; cap decoding at 16x


class CrackleZstd(Codec):
    """Label chunks (3-D, unsigned integers) as the smallest of Crackle+Zstd along each axis and Zstd.

    Parameters
    ----------
    level : int
        Zstandard compression level (1-22).
    """

    codec_id = "crackle_zstd"

    def __init__(self, level: int = 19) -> None:
        if not 1 <= int(level) <= 22:
            raise ValueError(f"crackle_zstd level must be in 1..22, got {level}")
        self.level = int(level)

    def encode(self, buf: object) -> bytes:
        """Encode a 3-D unsigned-integer chunk."""
        chunk = ensure_ndarray(buf)
        if chunk.ndim != 3 or chunk.dtype.kind != "u":
            raise TypeError(f"crackle_zstd encodes 3-D unsigned-integer chunks, got {chunk.ndim}-D {chunk.dtype}")
        compressor = zstandard.ZstdCompressor(level=self.level, write_checksum=True)
        crossings = [np.count_nonzero(np.diff(chunk, axis=axis)) for axis in range(3)]
        mode = int(np.argmax(crossings)) + 1  # slices along the axis most boundaries cross
        stream = crackle.compress(
            np.ascontiguousarray(chunk.transpose(SLICE_ORDERS[mode])), markov_model_order=MARKOV_MODEL_ORDER
        )
        candidates = {mode: compressor.compress(stream)}
        if len(candidates[mode]) < RAW_CANDIDATE_BYTES:
            candidates[RAW] = compressor.compress(np.ascontiguousarray(chunk).tobytes())
        mode = min(candidates, key=lambda m: len(candidates[m]))
        return HEADER.pack(MAGIC, mode) + candidates[mode]

    def decode(self, buf: object, out: object = None) -> object:
        """Decode to an array (Crackle modes) or bytes (plain mode); into ``out`` if given.

        ``out`` of the chunk's shape is filled element by element (any memory
        order); a flat ``out`` of the same byte size receives the C-order bytes.
        """
        if out is None:
            mode, payload = _open_frame(ensure_bytes(buf), None)
            return payload if mode == RAW else _decrackle(payload, mode)
        target = ensure_ndarray(out)
        mode, payload = _open_frame(ensure_bytes(buf), target.nbytes)
        if mode == RAW:
            if len(payload) != target.nbytes:
                raise CorruptChunk(f"crackle_zstd chunk decoded to {len(payload)} bytes, expected {target.nbytes}")
            decoded = np.frombuffer(payload, dtype=target.dtype).reshape(target.shape)
        else:
            decoded = _decrackle(payload, mode)
        if decoded.shape == target.shape:
            np.copyto(target, decoded, casting="unsafe")
            return target
        if target.ndim != 1 or decoded.nbytes != target.nbytes:
            raise CorruptChunk(f"crackle_zstd chunk holds shape {decoded.shape}, expected {target.shape}")
        return ndarray_copy(np.ascontiguousarray(decoded), target)


def decode_chunk(data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Decode one chunk of known shape and dtype, validating it strictly."""
    size = math.prod(shape) * np.dtype(dtype).itemsize
    mode, payload = _open_frame(data, size)
    if mode == RAW:
        if len(payload) != size:
            raise CorruptChunk(f"crackle_zstd chunk decoded to {len(payload)} bytes, expected {size}")
        return np.frombuffer(payload, dtype=dtype).reshape(shape)
    labels = _decrackle(payload, mode)
    if labels.shape != tuple(shape):
        raise CorruptChunk(f"crackle_zstd chunk holds shape {labels.shape}, expected {tuple(shape)}")
    if labels.dtype.itemsize > np.dtype(dtype).itemsize and labels.max(initial=0) > np.iinfo(dtype).max:
        raise CorruptChunk(f"crackle_zstd chunk holds labels beyond {np.dtype(dtype)}")
    return labels.astype(dtype, copy=False)


def _open_frame(data: bytes, decoded_size: int | None) -> tuple[int, bytes]:
    """The mode and the decompressed payload of a chunk."""
    if len(data) < HEADER.size:
        raise CorruptChunk(f"crackle_zstd chunk truncated: {len(data)} bytes, header needs {HEADER.size}")
    magic, mode = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise CorruptChunk(f"not a crackle_zstd chunk (magic {magic!r}, expected {MAGIC!r})")
    if mode != RAW and mode not in SLICE_ORDERS:
        raise CorruptChunk(f"crackle_zstd chunk has unknown mode {mode}")
    frame = data[HEADER.size :]
    limit = None if decoded_size is None else decoded_size * (1 if mode == RAW else MAX_CRACKLE_EXPANSION)
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
        if limit is not None and declared > limit:
            raise CorruptChunk(f"crackle_zstd frame declares {declared} bytes, at most {limit} are possible")
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        payload = decompressor.decompress(frame)
    except zstandard.ZstdError as exc:
        raise CorruptChunk(f"crackle_zstd chunk is corrupt: {exc}") from exc
    if not decompressor.eof or len(payload) != declared:
        raise CorruptChunk("crackle_zstd chunk truncated: its zstd frame has no end")
    if decompressor.unused_data:
        raise CorruptChunk(f"crackle_zstd chunk followed by {len(decompressor.unused_data)} stray bytes")
    return mode, payload


def _decrackle(stream: bytes, mode: int) -> np.ndarray:
    try:
        labels = crackle.decompress(stream)
    except Exception as exc:  # crackle raises plain RuntimeError/ValueError on bad streams
        raise CorruptChunk(f"crackle_zstd chunk holds an invalid Crackle stream: {exc}") from exc
    return np.ascontiguousarray(labels.transpose(np.argsort(SLICE_ORDERS[mode])))


register_codec(CrackleZstd)
