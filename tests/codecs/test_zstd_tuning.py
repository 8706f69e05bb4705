"""Label-chunk Zstd parameters: plain Zstd frames, libzstd's own levels but 19, level-19 sizes."""

from __future__ import annotations

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from medmask_store.codecs.zstd_tuning import TUNED_LEVEL, label_compressor
from medmask_store.model.case_data import CaseData
from medmask_store.phantom import make_phantom


def phantom_chunks() -> list[bytes]:
    masks, space = make_phantom(shape=(128, 128, 64), n_organs=12, seed=5)
    labels = CaseData.from_masks(masks, space).label_volume
    return [labels[i : i + 64, j : j + 64].tobytes() for i in (0, 64) for j in (0, 64)]


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=0, max_size=4096), st.sampled_from([1, 3, 15, TUNED_LEVEL, 22]))
def test_frames_are_plain_zstd_with_the_asked_frame_fields(raw: bytes, level: int) -> None:
    frame = label_compressor(level, len(raw), write_checksum=True, write_content_size=True).compress(raw)
    parameters = zstandard.get_frame_parameters(frame)
    assert (parameters.content_size, parameters.has_checksum) == (len(raw), True)
    assert zstandard.ZstdDecompressor().decompress(frame) == raw


@pytest.mark.parametrize("level", [1, 3, 9, 18, 20])
def test_levels_other_than_the_tuned_one_are_libzstd_own(level: int) -> None:
    raw = phantom_chunks()[0]
    ours = label_compressor(level, len(raw), write_checksum=True).compress(raw)
    assert ours == zstandard.ZstdCompressor(level=level, write_checksum=True).compress(raw)


def test_tuned_level_stores_label_chunks_within_3_percent_of_libzstd_level_19() -> None:
    chunks = phantom_chunks()
    tuned = sum(len(label_compressor(TUNED_LEVEL, len(c)).compress(c)) for c in chunks)
    libzstd = sum(len(zstandard.ZstdCompressor(level=19).compress(c)) for c in chunks)
    level_15 = sum(len(zstandard.ZstdCompressor(level=15).compress(c)) for c in chunks)
    assert tuned <= 1.03 * libzstd
    assert tuned < level_15  # the search is no shallower than it must be
    assert label_compressor(TUNED_LEVEL, 64**3).compress(chunks[0]) != zstandard.ZstdCompressor(level=19).compress(
        chunks[0]
    )
