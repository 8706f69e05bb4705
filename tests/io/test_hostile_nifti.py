"""Damaged and hostile NIfTI input: a one-line NiftiError naming the file, never a foreign exception,
never an allocation of what the file does not hold."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import (
    GOOD_MASK,
    GOOD_NII,
    GOOD_NII_GZ,
    HOSTILE_NIFTI,
    case_folder_with,
    gzipped,
    header_claiming,
    run_measuring_peak_rss,
    write_gzip_bomb,
)

import medmask_store.io.nifti as nifti
from medmask_store.errors import NiftiError
from medmask_store.io.labels import load_labels
from medmask_store.io.nifti import load_mask_folder, load_multilabel, open_nifti, read_integer_voxels
from medmask_store.io.sources import discover_cases
from medmask_store.limits import MAX_IMAGE_BYTES, MAX_VOXELS


def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def raises_one_line_naming(name: str, load: Callable[[], object]) -> NiftiError:
    with pytest.raises(NiftiError) as caught:
        load()
    message = str(caught.value)
    assert name in message and "\n" not in message, message
    return caught.value


# -- every loader refuses every hostile file ---------------------------------------------
@pytest.mark.parametrize("name", HOSTILE_NIFTI)
def test_multilabel_file(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, HOSTILE_NIFTI[name])
    raises_one_line_naming(name, lambda: load_multilabel(path, {"liver": 1}))


@pytest.mark.parametrize("position", ["aa_", "zz_"], ids=["first_file", "later_file"])
@pytest.mark.parametrize("name", HOSTILE_NIFTI)
def test_mask_in_a_case_folder(tmp_path: Path, name: str, position: str) -> None:
    folder = case_folder_with(tmp_path / "ct01", position + name, HOSTILE_NIFTI[name])
    raises_one_line_naming(position + name, lambda: load_mask_folder(folder))


@pytest.mark.parametrize("name", HOSTILE_NIFTI)
def test_discovery_lists_the_case_and_loading_it_names_the_file(tmp_path: Path, name: str) -> None:
    # Discovery reads folder names only (a resumed import skips stored cases without opening
    # their files); the case with the hostile file fails alone when loaded.
    folder = case_folder_with(tmp_path / "dataset" / "ct01", name, HOSTILE_NIFTI[name])
    [case] = discover_cases(folder.parent)
    raises_one_line_naming(name, case.load)


@pytest.mark.parametrize(
    "name, cause",
    [
        ("truncated_in_voxels.nii.gz", EOFError),
        ("corrupt_deflate.nii.gz", zlib.error),
        ("data_shorter_trailer_lies.nii.gz", gzip.BadGzipFile),
        ("fake_header.nii.gz", nib.spatialimages.HeaderDataError),
    ],
)
def test_foreign_exception_is_chained(tmp_path: Path, name: str, cause: type[BaseException]) -> None:
    path = write(tmp_path / name, HOSTILE_NIFTI[name])
    error = raises_one_line_naming(name, lambda: load_multilabel(path, {"liver": 1}))
    assert isinstance(error.__cause__, cause)


def test_header_bomb_names_the_declared_shape_and_the_limit(tmp_path: Path) -> None:
    path = write(tmp_path / "header_bomb.nii.gz", HOSTILE_NIFTI["header_bomb.nii.gz"])
    message = str(raises_one_line_naming(path.name, lambda: load_multilabel(path, {"liver": 1})))
    assert "(2000, 2000, 1000)" in message and f"{MAX_VOXELS:,}" in message and "MAX_VOXELS" in message


def test_image_bytes_bomb_names_shape_dtype_bytes_limit_and_the_fix(tmp_path: Path) -> None:
    """1024³ int16 is within MAX_VOXELS but declares 2 GiB: refused from the header alone (the file holds none)."""
    path = write(tmp_path / "image_bytes_bomb.nii.gz", HOSTILE_NIFTI["image_bytes_bomb.nii.gz"])
    message = str(raises_one_line_naming(path.name, lambda: load_multilabel(path, {"liver": 1})))
    for part in ("(1024, 1024, 1024)", "int16", f"{2 * 1024**3:,} bytes", f"{MAX_IMAGE_BYTES:,}", "MAX_IMAGE_BYTES", "uint8"):
        assert part in message, (part, message)


@pytest.mark.parametrize("shape, refused", [((512, 512, 1024), False), ((512, 512, 1025), True)])
def test_image_bytes_limit_admits_exactly_max_image_bytes(tmp_path: Path, shape: tuple[int, ...], refused: bool) -> None:
    """A 512 × 512 × 1024 float32 mask is exactly MAX_IMAGE_BYTES: it passes the limit (and then fails
    the size check, as the file holds its header only)."""
    path = write(tmp_path / "float_mask.nii.gz", gzipped(header_claiming(shape, dtype=np.float32)))
    message = str(raises_one_line_naming(path.name, lambda: open_nifti(path)))
    assert ("MAX_IMAGE_BYTES" in message) == refused and ("the file holds" in message) != refused, message


def test_stream_ending_while_the_voxels_are_read_is_truncation(tmp_path: Path) -> None:
    """A file shortened after its header was checked: the read stops where the stream ends."""
    path = write(tmp_path / "seg.nii.gz", GOOD_NII_GZ)
    volume = open_nifti(path)
    write(path, gzipped(GOOD_NII[:-100]))
    message = str(raises_one_line_naming(path.name, lambda: read_integer_voxels(volume)))
    assert f"truncated: the file holds {GOOD_MASK.size - 100:,} of the {GOOD_MASK.size:,} declared voxel bytes" in message


@pytest.mark.parametrize("name", ["data_shorter.nii.gz", "header_bomb_below_limit.nii.gz", "data_longer.nii.gz"])
def test_size_mismatch_says_what_the_header_declares_and_the_file_holds(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, HOSTILE_NIFTI[name])
    message = str(raises_one_line_naming(name, lambda: load_multilabel(path, {"liver": 1})))
    assert "header declares" in message and "the file holds" in message


@pytest.mark.parametrize("name", ["nan_affine.nii.gz", "inf_affine.nii.gz"])
def test_non_finite_affine_is_named_as_such(tmp_path: Path, name: str) -> None:
    path = write(tmp_path / name, HOSTILE_NIFTI[name])
    assert "NaN/inf" in str(raises_one_line_naming(name, lambda: load_multilabel(path, {"liver": 1})))


# -- valid files still load, and cheaply ----------------------------------------------------
def test_agreeing_gzip_trailer_costs_no_decompression_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_count(path: Path, limit: int) -> int:
        raise AssertionError(f"{path} was counted although its trailer agrees with its header")

    monkeypatch.setattr(nifti, "decompressed_size", no_count)
    path = write(tmp_path / "seg.nii.gz", gzipped(GOOD_NII))
    assert np.array_equal(load_multilabel(path, {"liver": 1}).organ_mask("liver"), GOOD_MASK.astype(bool))


def test_multi_member_gzip_is_counted_and_loads(tmp_path: Path) -> None:
    """bgzip-style files: the trailer holds the last member's size only, so the stream is counted."""
    path = write(tmp_path / "seg.nii.gz", gzipped(GOOD_NII[:1000]) + gzipped(GOOD_NII[1000:]))
    assert nifti.gzip_size_trailer(path) != len(GOOD_NII)
    assert np.array_equal(load_multilabel(path, {"liver": 1}).organ_mask("liver"), GOOD_MASK.astype(bool))


def test_uncompressed_file_longer_than_declared_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "seg.nii", GOOD_NII + bytes(64))
    assert np.array_equal(load_multilabel(path, {"liver": 1}).organ_mask("liver"), GOOD_MASK.astype(bool))


# -- label maps ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, content",
    [
        ("list_map.json", b'[["liver", 1]]'),
        ("string_map.json", b'"liver"'),
        ("null_map.json", b"null"),
        ("nested_map.json", b"[" * 100_000 + b"]" * 100_000),
        ("latin1_map.json", '{"f\u00e9gado": 1}'.encode("latin-1")),
        ("binary_map.json", HOSTILE_NIFTI["random_bytes.nii"]),
        ("empty_map.json", b""),
    ],
)
def test_bad_label_map(tmp_path: Path, name: str, content: bytes) -> None:
    path = write(tmp_path / name, content)
    raises_one_line_naming(name, lambda: load_labels(path))
    seg = write(tmp_path / "seg.nii.gz", gzipped(GOOD_NII))
    raises_one_line_naming(name, lambda: load_multilabel(seg, path))


def test_utf8_label_map_with_non_ascii_names_loads(tmp_path: Path) -> None:
    path = write(tmp_path / "map.json", json.dumps({"f\u00edgado": 1}, ensure_ascii=False).encode("utf-8"))
    assert load_labels(path).values == {"f\u00edgado": 1}


# -- bombs: peak memory of a fresh process --------------------------------------------------
PEAK_RSS_LIMIT_MB = 256
LOAD_MULTILABEL = """
import sys
from medmask_store.errors import NiftiError
from medmask_store.io.nifti import load_multilabel
try:
    load_multilabel(sys.argv[1], {"liver": 1})
except NiftiError as exc:
    print("NiftiError", exc)
"""


def write_forged_trailer_bomb(path: Path) -> Path:
    """Declares 1 GB (within both limits), holds 1 MiB, its trailer forged to agree: every header check passes,
    and nibabel would zero-fill the declared gigabyte before finding the stream short."""
    header = header_claiming((1024, 1024, 1000))
    return write_gzip_bomb(path, header, 2**20, isize=len(header) + 1024 * 1024 * 1000)


BOMBS = {
    # 57 bytes declaring 4 GB: nibabel would allocate all of it before reading.
    "header_bomb": lambda path: write(path, HOSTILE_NIFTI["header_bomb.nii.gz"]),
    # Declares 2.2 G voxels (above MAX_VOXELS) over 512 MiB of real zeros: refused before decompressing.
    "gzip_bomb_above_limit": lambda path: write_gzip_bomb(path, header_claiming((1300, 1300, 1300)), 2**29),
    # Declares 600 MB (within the limit), holds 50 MB: the trailer disagrees, the count stops at 50 MB.
    "gzip_bomb_below_limit": lambda path: write_gzip_bomb(path, header_claiming((1000, 1000, 600)), 50 * 10**6),
    "forged_trailer": lambda path: write_forged_trailer_bomb(path),
    # Declares and holds 2 GiB of int16 zeros (1024³ voxels, within MAX_VOXELS, trailer agreeing): refused by
    # MAX_IMAGE_BYTES before any voxel is read.
    "gzip_bomb_above_byte_limit": lambda path: write_gzip_bomb(
        path, header_claiming((1024, 1024, 1024), dtype=np.int16), 2 * 1024**3
    ),
}


@pytest.mark.parametrize("bomb", BOMBS)
def test_bomb_is_refused_in_bounded_memory(tmp_path: Path, bomb: str) -> None:
    path = BOMBS[bomb](tmp_path / f"{bomb}.nii.gz")
    output, rss_mb = run_measuring_peak_rss(LOAD_MULTILABEL, path)
    assert output.startswith("NiftiError") and path.name in output and "\n" not in output, output
    assert rss_mb < PEAK_RSS_LIMIT_MB, f"{bomb}: peak RSS {rss_mb} MiB"
