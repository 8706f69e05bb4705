"""NIfTI import and export: mask folders, multi-label files, float-noise affines, bad inputs."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from spacetransformer import Space

from medmask_store.errors import NiftiError
from medmask_store.io.nifti import (
    export_mask_folder,
    export_multilabel,
    load_mask_folder,
    load_multilabel,
    mask_files,
    open_nifti,
    read_voxels,
)
from medmask_store.model.geometry import nifti_affine, space_from_nifti_affine
from medmask_store.storage.archive import MaskArchive


def rotated_space(shape: tuple[int, int, int]) -> Space:
    """A Space with an oblique orientation (rotated about two axes) and anisotropic spacing."""
    a, b = np.deg2rad(23.0), np.deg2rad(-11.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.8, 1.25, 2.5])
    affine[:3, 3] = [-151.25, 88.5, 412.75]
    return space_from_nifti_affine(affine, shape)


def save(path: Path, voxels: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(voxels, affine), path)
    return path


def write_mask_folder(folder: Path, masks: dict[str, np.ndarray], affine: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        save(folder / f"{name}.nii.gz", mask.astype(np.uint8), affine)
    return folder


def assert_same_files(original: Path, exported: Path) -> None:
    """Every original file is in ``exported`` with identical voxels and an equal affine."""
    originals = sorted(p.name for p in original.iterdir())
    assert sorted(p.name for p in exported.iterdir()) == originals
    for name in originals:
        source, copy = nib.load(original / name), nib.load(exported / name)
        assert copy.shape == source.shape, name
        assert np.array_equal(np.asanyarray(copy.dataobj), np.asanyarray(source.dataobj)), name
        assert np.allclose(copy.affine, source.affine, rtol=0, atol=1e-5), name


@pytest.fixture(params=["axis_aligned", "rotated"])
def space(request: pytest.FixtureRequest, phantom: tuple[dict[str, np.ndarray], Space]) -> Space:
    masks, phantom_space = phantom
    return phantom_space if request.param == "axis_aligned" else rotated_space(tuple(phantom_space.shape))


@pytest.fixture
def mask_folder(tmp_path: Path, phantom: tuple[dict[str, np.ndarray], Space], space: Space) -> Path:
    return write_mask_folder(tmp_path / "ct01", phantom[0], nifti_affine(space))


# -- mask folders ------------------------------------------------------------
def test_folder_round_trip_is_bit_exact(mask_folder: Path, archive_path: Path, tmp_path: Path) -> None:
    with MaskArchive(archive_path, "w") as archive:
        archive.add_case("ct01", load_mask_folder(mask_folder))
    with MaskArchive(archive_path) as archive:
        written = export_mask_folder(archive["ct01"], tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(p.name for p in mask_folder.iterdir())
    assert_same_files(mask_folder, tmp_path / "out")


def test_exported_file_names_are_organ_names(mask_folder: Path, archive_path: Path, tmp_path: Path, phantom) -> None:
    with MaskArchive(archive_path, "w") as archive:
        case = archive.add_case("ct01", load_mask_folder(mask_folder))
        export_mask_folder(case, tmp_path / "out")
    assert set(case.organs) == set(phantom[0])
    assert {p.name for p in (tmp_path / "out").iterdir()} == {f"{name}.nii.gz" for name in phantom[0]}


def test_empty_masks_are_exported_as_all_zero_files(mask_folder: Path, archive_path: Path, tmp_path: Path, phantom) -> None:
    masks, _ = phantom
    empty = [name for name, mask in masks.items() if not mask.any()]
    assert len(empty) == 2
    with MaskArchive(archive_path, "w") as archive:
        case = archive.add_case("ct01", load_mask_folder(mask_folder))
        export_mask_folder(case, tmp_path / "out")
    for name in empty:
        assert case.stats[name].voxels == 0
        image = nib.load(tmp_path / "out" / f"{name}.nii.gz")
        assert image.shape == masks[name].shape
        assert not np.asanyarray(image.dataobj).any()


def test_overlaps_are_preserved_bit_exact(mask_folder: Path, archive_path: Path, tmp_path: Path, phantom) -> None:
    masks, _ = phantom
    pairs = [(a, b) for a in masks for b in masks if a < b and (masks[a] & masks[b]).any()]
    assert ("liver", "rib_right_12") in pairs
    with MaskArchive(archive_path, "w") as archive:
        case = archive.add_case("ct01", load_mask_folder(mask_folder))
        assert case.info.layer_names  # overlaps went to binary layers
        export_mask_folder(case, tmp_path / "out")
        exported = {name: np.asanyarray(nib.load(tmp_path / "out" / f"{name}.nii.gz").dataobj) for name in masks}
        for a, b in pairs:
            assert np.array_equal((exported[a] & exported[b]).astype(bool), masks[a] & masks[b]), (a, b)
            assert np.array_equal(case.read_organ(a), masks[a]) and np.array_equal(case.read_organ(b), masks[b])


def test_uncompressed_nii_and_other_files_in_the_folder(tmp_path: Path, phantom) -> None:
    masks, space = phantom
    folder = tmp_path / "ct01"
    (folder / "notes").mkdir(parents=True)
    (folder / "README.txt").write_text("not a mask")
    save(folder / "liver.nii", masks["liver"].astype(np.uint8), nifti_affine(space))
    save(folder / "spleen.nii.gz", masks["spleen"].astype(np.uint8), nifti_affine(space))
    case = load_mask_folder(folder)
    assert case.mapping.keys() == {"liver", "spleen"}
    assert np.array_equal(case.organ_mask("liver"), masks["liver"])


# -- float-noise affines (TotalSegmentator writes some sforms with float32 noise) --
@pytest.mark.parametrize("noisy", [("liver", "stomach"), ("aorta", "kidney_left")], ids=["later_files", "first_file"])
def test_float_noise_affines_import_as_one_case_and_export_their_own_affine(
    tmp_path: Path, archive_path: Path, phantom, noisy: tuple[str, str]
) -> None:
    masks, _ = phantom
    base = nifti_affine(rotated_space(tuple(phantom[1].shape)))
    affines = {name: base for name in masks}
    affines[noisy[0]] = base + np.pad([[0.0, 1e-4], [0.0, 0.0]], ((0, 2), (0, 2)))
    affines[noisy[1]] = base + np.pad([[0.0, 0.0], [-1.5e-4, 0.0]], ((0, 2), (0, 2)))
    folder = tmp_path / "ct01"
    folder.mkdir()
    for name, mask in masks.items():
        save(folder / f"{name}.nii.gz", mask.astype(np.uint8), affines[name])
    # As stored on disk (float32 sform), the noisy affines really differ from the others.
    on_disk = {name: nib.load(folder / f"{name}.nii.gz").affine for name in masks}
    assert not np.allclose(on_disk[noisy[0]], on_disk["spleen"], rtol=0, atol=1e-5)
    assert not np.allclose(on_disk[noisy[1]], on_disk["spleen"], rtol=0, atol=1e-5)

    with MaskArchive(archive_path, "w") as archive:
        archive.add_case("ct01", load_mask_folder(folder))
    with MaskArchive(archive_path) as archive:
        case = archive["ct01"]
        assert archive.case_ids() == ["ct01"]
        for name in masks:
            assert np.allclose(case.organ_affine(name), on_disk[name], rtol=0, atol=1e-5), name
        export_mask_folder(case, tmp_path / "out")
    assert_same_files(folder, tmp_path / "out")


def test_float_noise_in_first_file_with_scanner_qform(tmp_path: Path, phantom) -> None:
    masks, _ = phantom
    base = nifti_affine(rotated_space(tuple(phantom[1].shape)))
    noisy = base.copy()
    noisy[0, 1] += 1.5e-4
    folder = tmp_path / "ct01"
    folder.mkdir()
    for name in ("aorta", "liver"):
        affine = noisy if name == "aorta" else base
        image = nib.Nifti1Image(masks[name].astype(np.uint8), affine)
        image.set_qform(base, code=1)  # scanner qform, as dcm2niix-converted CTs carry
        image.set_sform(affine, code=1)
        nib.save(image, folder / f"{name}.nii.gz")
    case = load_mask_folder(folder)
    assert set(case.mapping) == {"aorta", "liver"}


# -- multi-label files -------------------------------------------------------
def label_volume(masks: dict[str, np.ndarray], mapping: dict[str, int], dtype: type) -> np.ndarray:
    labels = np.zeros(next(iter(masks.values())).shape, dtype=dtype)
    for name, value in mapping.items():
        if name in masks:
            labels[masks[name]] = value
    return labels


@pytest.mark.parametrize("map_kind", ["dict", "json_path", "json_str"])
@pytest.mark.parametrize("dtype, top_value", [(np.uint8, 200), (np.int16, 300), (np.uint16, 4000)])
def test_multilabel_round_trip(
    tmp_path: Path, archive_path: Path, phantom, space: Space, map_kind: str, dtype: type, top_value: int
) -> None:
    masks, _ = phantom
    mapping = {"liver": 5, "spleen": 1, "kidney_left": 12, "pancreas": 7, "stomach": top_value, "aorta": 40}
    labels = label_volume(masks, mapping, dtype)
    assert set(np.unique(labels)) == {0, 1, 5, 7, 12, top_value}  # aorta is empty, liver keeps voxels
    source = save(tmp_path / "ct01.nii.gz", labels, nifti_affine(space))
    map_path = tmp_path / "map.json"
    map_path.write_text(json.dumps(mapping))
    label_map = {"dict": mapping, "json_path": map_path, "json_str": str(map_path)}[map_kind]

    with MaskArchive(archive_path, "w") as archive:
        case = archive.add_case("ct01", load_multilabel(source, label_map))
        assert case.mapping == mapping
        nii, sidecar = export_multilabel(case, tmp_path / "out" / "ct01.nii.gz")
    assert nii == tmp_path / "out" / "ct01.nii.gz"
    assert sidecar == tmp_path / "out" / "ct01.json"
    assert json.loads(sidecar.read_text()) == mapping
    exported = nib.load(nii)
    assert np.array_equal(np.asanyarray(exported.dataobj), labels)
    assert np.allclose(exported.affine, nib.load(source).affine, rtol=0, atol=1e-5)


def test_multilabel_export_of_overlapping_organs_names_them(
    mask_folder: Path, archive_path: Path, tmp_path: Path, phantom
) -> None:
    masks, _ = phantom
    with MaskArchive(archive_path, "w") as archive:
        case = archive.add_case("ct01", load_mask_folder(mask_folder))
        _check_multilabel_export_refuses_overlaps(case, masks, tmp_path)


def _check_multilabel_export_refuses_overlaps(case, masks: dict[str, np.ndarray], tmp_path: Path) -> None:
    layers = case.info.layer_names
    assert layers
    with pytest.raises(NiftiError, match="overlapping") as caught:
        export_multilabel(case, tmp_path / "out" / "ct01.nii.gz")
    for name in layers:
        assert name in str(caught.value)
    assert not (tmp_path / "out" / "ct01.nii.gz").exists()

    nii, sidecar = export_multilabel(case, tmp_path / "out" / "ct01.nii.gz", allow_overlap=True)
    labels = np.asanyarray(nib.load(nii).dataobj)
    assert json.loads(sidecar.read_text()) == case.mapping
    assert np.array_equal(labels, case.read_labels())
    for position, name in enumerate(layers):  # painted over their neighbours, in layer order
        painted_later = np.zeros_like(masks[name])
        for later in layers[position + 1 :]:
            painted_later |= masks[later]
        assert np.array_equal(labels[masks[name] & ~painted_later], np.full((masks[name] & ~painted_later).sum(), case.mapping[name]))


def test_multilabel_unmapped_value_is_an_error_naming_it(tmp_path: Path, phantom) -> None:
    masks, space = phantom
    labels = label_volume(masks, {"liver": 1, "spleen": 2, "stomach": 7}, np.uint8)
    source = save(tmp_path / "seg_unmapped.nii.gz", labels, nifti_affine(space))
    with pytest.raises(NiftiError, match=r"seg_unmapped\.nii\.gz.*\b7\b"):
        load_multilabel(source, {"liver": 1, "spleen": 2})

    case = load_multilabel(source, {"liver": 1, "spleen": 2}, unmapped="name")
    assert case.mapping == {"liver": 1, "spleen": 2, "label_7": 7}
    assert np.array_equal(case.organ_mask("label_7"), labels == 7)


# -- voxels: exactly the array nibabel's proxy gives ------------------------
#: name -> (stored dtype with byte order, raw scl_slope, raw scl_inter); NaN or 0 slope means unscaled.
STORED_VOXELS = {
    "uint8": ("u1", np.nan, np.nan),
    "int16": ("<i2", np.nan, np.nan),
    "float32": ("<f4", np.nan, np.nan),
    "int16_big_endian": (">i2", np.nan, np.nan),
    "float32_big_endian": (">f4", np.nan, np.nan),
    "uint8_unit_scaling": ("u1", 1.0, 0.0),
    "int16_zero_slope": ("<i2", 0.0, 5.0),
    "uint8_scaled": ("u1", 0.5, 1.0),
    "int16_scaled": ("<i2", 2.0, -3.0),
    "int16_big_endian_scaled": (">i2", 3.0, 0.25),
    "float32_scaled": ("<f4", 2.0, 1.0),
    "float32_big_endian_scaled": (">f4", 0.25, -1.0),
}


def stored_nifti(path: Path, kind: str) -> Path:
    """A single-file NIfTI-1 (gzipped if ``path`` ends in .gz) of random voxels stored as ``STORED_VOXELS[kind]``,
    its header in the voxels' byte order."""
    dtype, slope, inter = STORED_VOXELS[kind]
    dtype = np.dtype(dtype)
    header = nib.Nifti1Header(endianness=">" if dtype.byteorder == ">" else "<")
    header.set_data_shape((13, 7, 5))
    header.set_data_dtype(dtype)
    header["vox_offset"], header["scl_slope"], header["scl_inter"] = header.single_vox_offset, slope, inter
    rng = np.random.default_rng(5)
    voxels = rng.normal(0, 50, (13, 7, 5)) if dtype.kind == "f" else rng.integers(0, 200, (13, 7, 5))
    content = header.binaryblock + bytes(4) + voxels.astype(dtype).tobytes(order="F")
    path.write_bytes(gzip.compress(content) if path.name.endswith(".gz") else content)
    return path


def assert_same_array(got: np.ndarray, expected: np.ndarray) -> None:
    """Same type, dtype (byte order included), shape, memory order and bits."""
    assert type(got) is type(expected) and got.dtype.str == expected.dtype.str, (got.dtype, expected.dtype)
    assert got.shape == expected.shape and got.strides == expected.strides
    assert got.tobytes(order="A") == expected.tobytes(order="A")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("kind", STORED_VOXELS)
def test_voxels_are_the_array_nibabel_gives(tmp_path: Path, kind: str, suffix: str) -> None:
    path = stored_nifti(tmp_path / f"{kind}{suffix}", kind)
    assert_same_array(read_voxels(open_nifti(path)), np.asanyarray(nib.load(path).dataobj))


def test_real_case_voxels_are_the_arrays_nibabel_gives(real_case_dir: Path) -> None:
    files = mask_files(real_case_dir)
    assert len(files) == 117
    for path in files:
        assert_same_array(read_voxels(open_nifti(path)), np.asanyarray(nib.load(path).dataobj))


# -- bad inputs: NiftiError naming the file ---------------------------------
def folder_with(tmp_path: Path, phantom, bad_name: str, bad_voxels: np.ndarray, bad_affine: np.ndarray | None = None) -> Path:
    """A case folder of two good masks plus one bad file."""
    masks, space = phantom
    folder = write_mask_folder(tmp_path / "case", {n: masks[n] for n in ("liver", "spleen")}, nifti_affine(space))
    save(folder / f"{bad_name}.nii.gz", bad_voxels, nifti_affine(space) if bad_affine is None else bad_affine)
    return folder


def shifted(affine: np.ndarray, mm: float) -> np.ndarray:
    affine = affine.copy()
    affine[0, 3] += mm
    return affine


def bad_file(kind: str, shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voxels and affine of one kind of invalid mask file."""
    voxels = np.zeros(shape, np.uint8)
    voxels[10:20, 10:20, 10:20] = 1
    if kind == "shape":
        return np.zeros((shape[0] + 1, *shape[1:]), np.uint8), affine
    if kind == "affine":
        return voxels, shifted(affine, 0.5)
    if kind == "float":
        return voxels.astype(np.float32) * np.float32(0.5), affine
    if kind == "nan":
        floats = voxels.astype(np.float32)
        floats[15, 15, 15] = np.nan
        return floats, affine
    if kind == "value2":
        return voxels * np.uint8(2), affine
    if kind == "4d":
        return np.stack([voxels, voxels], axis=-1), affine
    raise ValueError(kind)


BAD_KINDS = ["shape", "affine", "float", "nan", "value2", "4d"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_mask_file_raises_niftierror_naming_it(tmp_path: Path, phantom, kind: str) -> None:
    _, space = phantom
    voxels, affine = bad_file(kind, tuple(space.shape), nifti_affine(space))
    folder = folder_with(tmp_path, phantom, f"zz_bad_{kind}", voxels, affine)
    with pytest.raises(NiftiError, match=re.escape(f"zz_bad_{kind}.nii.gz")):
        load_mask_folder(folder)


@pytest.mark.parametrize("kind", ["float", "nan", "value2", "4d"])
def test_bad_first_mask_file_raises_niftierror_naming_it(tmp_path: Path, phantom, kind: str) -> None:
    _, space = phantom
    voxels, affine = bad_file(kind, tuple(space.shape), nifti_affine(space))
    folder = folder_with(tmp_path, phantom, f"aa_bad_{kind}", voxels, affine)
    with pytest.raises(NiftiError, match=re.escape(f"aa_bad_{kind}.nii.gz")):
        load_mask_folder(folder)


@pytest.mark.parametrize("kind", ["shape", "affine"])
def test_geometry_mismatch_names_the_file_sorting_first(tmp_path: Path, phantom, kind: str) -> None:
    _, space = phantom
    voxels, affine = bad_file(kind, tuple(space.shape), nifti_affine(space))
    folder = folder_with(tmp_path, phantom, f"aa_odd_{kind}", voxels, affine)
    with pytest.raises(NiftiError, match=re.escape(f"aa_odd_{kind}.nii.gz")):
        load_mask_folder(folder)


def test_affine_within_float_noise_is_accepted_but_half_a_millimetre_is_not(tmp_path: Path, phantom) -> None:
    masks, space = phantom
    folder = write_mask_folder(tmp_path / "case", {"liver": masks["liver"]}, nifti_affine(space))
    save(folder / "spleen.nii.gz", masks["spleen"].astype(np.uint8), shifted(nifti_affine(space), 2e-4))
    assert set(load_mask_folder(folder).mapping) == {"liver", "spleen"}
    save(folder / "spleen.nii.gz", masks["spleen"].astype(np.uint8), shifted(nifti_affine(space), 0.5))
    with pytest.raises(NiftiError, match=re.escape("spleen.nii.gz")):
        load_mask_folder(folder)


@pytest.mark.parametrize("extra", [None, "notes.txt"])
def test_folder_without_masks_raises_niftierror_naming_it(tmp_path: Path, extra: str | None) -> None:
    folder = tmp_path / "empty_case_folder"
    folder.mkdir()
    if extra:
        (folder / extra).write_text("no masks here")
    with pytest.raises(NiftiError, match=re.escape("empty_case_folder")):
        load_mask_folder(folder)


@pytest.mark.parametrize("kind", ["float", "nan", "4d"])
def test_bad_multilabel_file_raises_niftierror_naming_it(tmp_path: Path, phantom, kind: str) -> None:
    _, space = phantom
    voxels, affine = bad_file(kind, tuple(space.shape), nifti_affine(space))
    source = save(tmp_path / f"seg_{kind}.nii.gz", voxels, affine)
    with pytest.raises(NiftiError, match=re.escape(f"seg_{kind}.nii.gz")):
        load_multilabel(source, {"liver": 1})


def test_unreadable_label_map_raises_niftierror_naming_it(tmp_path: Path, phantom) -> None:
    masks, space = phantom
    source = save(tmp_path / "seg.nii.gz", masks["liver"].astype(np.uint8), nifti_affine(space))
    broken = tmp_path / "broken_map.json"
    broken.write_text("{liver: 1")
    with pytest.raises(NiftiError, match=re.escape("broken_map.json")):
        load_multilabel(source, broken)


def test_float_mask_beyond_uint16_is_refused(tmp_path: Path, phantom) -> None:
    masks, space = phantom
    folder = tmp_path / "case"
    folder.mkdir()
    save(folder / "liver.nii.gz", masks["liver"].astype(np.float32) * np.float32(65536.0), nifti_affine(space))
    with pytest.raises(NiftiError, match=re.escape("liver.nii.gz")):
        load_mask_folder(folder)


def test_float_multilabel_beyond_uint16_is_refused(tmp_path: Path, phantom) -> None:
    masks, space = phantom
    labels = masks["spleen"].astype(np.float32) * np.float32(65541.0)
    source = save(tmp_path / "seg_big.nii.gz", labels, nifti_affine(space))
    with pytest.raises(NiftiError, match=re.escape("seg_big.nii.gz")):
        load_multilabel(source, {"liver": 5})


def test_a_sheared_affine_is_refused_naming_the_file(tmp_path: Path) -> None:
    affine = np.eye(4)
    affine[:3, 1] = [0.0, 0.3, 1.0]
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), affine), tmp_path / "liver.nii.gz")
    expected = f"{tmp_path / 'liver.nii.gz'}: its affine does not describe a voxel grid: Orientation vectors are not orthonormal"
    with pytest.raises(NiftiError, match=re.escape(expected)):
        load_mask_folder(tmp_path)
