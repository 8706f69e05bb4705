"""Zstd parameters for label chunks: libzstd's level-19 size at a seventh of its time.

libzstd's level 19 runs its slowest parser (``btultra2``, 2^8 searches, target
length 256). On 64³ label chunks of TotalSegmentator masks, ``btopt`` with a
shallow search and long target length gives the same size within 1 % about 7x
faster (s0000's 4-organ gluteus group: 13.5 KB either way, 81 ms against 566 ms
of one core). Every other level is libzstd's own; decoding is the same Zstd.
"""

from __future__ import annotations

import zstandard

TUNED_LEVEL = 19


def label_compressor(
    level: int, source_size: int, *, write_checksum: bool = False, write_content_size: bool = True
) -> zstandard.ZstdCompressor:
    """A compressor for one label chunk of ``source_size`` bytes, writing the frame fields asked for."""
    if level != TUNED_LEVEL:
        return zstandard.ZstdCompressor(
            level=level, write_checksum=write_checksum, write_content_size=write_content_size
        )
    base = zstandard.ZstdCompressionParameters.from_level(level, source_size=source_size)
    params = zstandard.ZstdCompressionParameters(
        window_log=base.window_log,
        chain_log=min(base.chain_log, 16),
        hash_log=min(base.hash_log, 16),
        search_log=6,
        min_match=4,
        target_length=512,
        strategy=zstandard.STRATEGY_BTOPT,
        write_checksum=int(write_checksum),
        write_content_size=int(write_content_size),
    )
    return zstandard.ZstdCompressor(compression_params=params)
