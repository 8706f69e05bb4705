"""``MaskArchive.rename_case``: the stored bytes move to the new id, on every backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from spacetransformer import Space

from medmask_store.errors import CaseExists, CaseNotFound, CorruptArchive
from medmask_store.storage.archive import MaskArchive
from medmask_store.storage.verify import verify_archive


def test_rename_keeps_voxels_metadata_and_index(
    archive_path: Path, phantom: tuple[dict[str, np.ndarray], Space]
) -> None:
    masks, space = phantom
    with MaskArchive(archive_path, "w") as archive:
        archive.add_case("a", masks, space=space, meta={"age": 61})
        archive.add_case("b", {"liver": masks["liver"]}, space=space)
        before = archive["a"].info.arrays
    with MaskArchive(archive_path, "r+") as archive:
        renamed = archive.rename_case("a", "a2")
        assert renamed.case_id == "a2" and renamed.meta == {"age": 61}
    with MaskArchive(archive_path) as archive:
        assert archive.case_ids() == ["a2", "b"]
        assert archive.query("age == 61") == ["a2"]
        case = archive["a2"]
        assert {name: m.bytes_crc32c for name, m in case.info.arrays.items()} == {
            name: m.bytes_crc32c for name, m in before.items()
        }  # the same chunk bytes, not re-encoded
        for name, mask in masks.items():
            assert np.array_equal(case.read_organ(name), mask), name
        assert verify_archive(archive) == []


def test_rename_refuses_a_missing_case_and_an_existing_id(tmp_path: Path, phantom) -> None:
    masks, space = phantom
    path = tmp_path / "a.h5"
    with MaskArchive(path, "w") as archive:
        archive.add_case("a", masks, space=space)
        archive.add_case("b", masks, space=space)
    with MaskArchive(path, "r+") as archive:
        with pytest.raises(CaseNotFound, match=f"^cannot rename case 'x': there is no such case in {path}$"):
            archive.rename_case("x", "y")
        with pytest.raises(CaseExists, match=f"^cannot rename case 'a' to 'b': 'b' already exists in {path}$"):
            archive.rename_case("a", "b")
        assert archive.case_ids() == ["a", "b"]


def test_rename_refuses_a_damaged_case(tmp_path: Path, phantom) -> None:
    masks, space = phantom
    path = tmp_path / "a.zarr"
    with MaskArchive(path, "w") as archive:
        archive.add_case("a", masks, space=space)
    shard = path / "cases" / "a" / "label_volume" / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0xFF  # inside the first chunk, not the shard index
    shard.write_bytes(bytes(data))
    with MaskArchive(path, "r+") as archive:
        with pytest.raises(CorruptArchive, match="label_volume: its stored chunks do not match its manifest"):
            archive.rename_case("a", "b")
        assert archive.case_ids() == ["a"]
