"""``--preset`` on ``import`` and ``convert``, and the demo's backend x preset report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import assert_case_matches, ok, packed_manifest, read_packed, run
from spacetransformer import Space

from medmask_store.model.geometry import nifti_affine
from medmask_store.phantom import make_phantom
from medmask_store.storage.archive import MaskArchive

ZARR_CHAINS = {
    "default": [{"name": "bytes"}, {"name": "zstd"}, {"name": "crc32c"}],  # (uint8: no endianness)
    "compact": [{"name": "crackle_zstd", "configuration": {"level": 15}}, {"name": "crc32c"}],
}
LABEL_CODECS = {"default": "zstd", "compact": "crackle_zstd"}


def write_case_folder(folder: Path, masks: dict[str, np.ndarray], space: Space) -> Path:
    """A TotalSegmentator-style folder: one uint8 NIfTI per organ."""
    folder.mkdir(parents=True)
    for name, mask in masks.items():
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), nifti_affine(space)), folder / f"{name}.nii.gz")
    return folder


def label_volume_metadata(archive: Path, case_id: str) -> dict:
    return json.loads((archive / "cases" / case_id / "label_volume" / "zarr.json").read_text())


def zarr_label_chain(archive: Path, case_id: str) -> list[dict]:
    """The codecs inside the label volume's shard, with Zstd's configuration reduced to its level check."""
    (sharding,) = label_volume_metadata(archive, case_id)["codecs"]
    assert sharding["name"] == "sharding_indexed"
    chain = []
    for codec in sharding["configuration"]["codecs"]:
        if codec["name"] == "zstd":
            assert codec["configuration"]["level"] == 19
            codec = {"name": "zstd"}
        chain.append(codec)
    return chain


def label_codec(archive: Path, case_id: str) -> str:
    """The label volume codec of a case in a .zarr or .msk archive."""
    if archive.name.endswith(".msk"):
        catalog, _ = read_packed(archive)
        return packed_manifest(catalog, case_id, "label_volume")["codec"]
    chain = zarr_label_chain(archive, case_id)
    return next(preset_codec for preset, preset_codec in LABEL_CODECS.items() if ZARR_CHAINS[preset] == chain)


@pytest.fixture
def cases(tmp_path: Path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """tmp_path/dataset with two case folders (small phantoms), and their masks."""
    dataset = tmp_path / "dataset"
    masks = {}
    for case_id, seed in [("ct_a", 1), ("ct_b", 2)]:
        masks[case_id], space = make_phantom(shape=(40, 36, 30), n_organs=4, n_empty=1, seed=seed)
        write_case_folder(dataset / case_id, masks[case_id], space)
    return dataset, masks


@pytest.mark.parametrize("preset", ["default", "compact"])
def test_import_with_preset_writes_its_label_codec(tmp_path: Path, cases, preset: str) -> None:
    dataset, masks = cases
    archive = tmp_path / "X.zarr"
    assert "imported 2, skipped 0 (already in the archive), failed 0" in ok("import", archive, dataset, "--preset", preset).output
    for case_id in masks:
        assert zarr_label_chain(archive, case_id) == ZARR_CHAINS[preset]
        metadata = label_volume_metadata(archive, case_id)
        assert (metadata["data_type"], metadata["shape"]) == ("uint8", [40, 36, 30])
    with MaskArchive(archive) as store:
        assert store.case_ids() == ["ct_a", "ct_b"]
        for case_id, case_masks in masks.items():
            assert_case_matches(store[case_id], case_masks)


def test_import_without_preset_is_default(tmp_path: Path, cases) -> None:
    dataset, _ = cases
    ok("import", tmp_path / "X.zarr", dataset / "ct_a")
    assert zarr_label_chain(tmp_path / "X.zarr", "ct_a") == ZARR_CHAINS["default"]


def test_import_compact_into_a_packed_file(tmp_path: Path, cases) -> None:
    dataset, masks = cases
    archive = tmp_path / "X.msk"
    ok("import", archive, dataset, "--preset", "compact", "--commit-every", "1")
    catalog, _ = read_packed(archive)
    assert [packed_manifest(catalog, c, "label_volume")["codec"] for c in ("ct_a", "ct_b")] == ["crackle_zstd"] * 2
    with MaskArchive(archive) as store:
        for case_id, case_masks in masks.items():
            assert_case_matches(store[case_id], case_masks)


def test_import_presets_mix_in_one_archive(tmp_path: Path, cases) -> None:
    dataset, masks = cases
    archive = tmp_path / "X.zarr"
    ok("import", archive, dataset / "ct_a", "--preset", "compact")
    ok("import", archive, dataset / "ct_b")
    assert [label_codec(archive, c) for c in ("ct_a", "ct_b")] == ["crackle_zstd", "zstd"]
    with MaskArchive(archive) as store:
        for case_id, case_masks in masks.items():
            assert_case_matches(store[case_id], case_masks)


@pytest.mark.parametrize("destination", ["Y.zarr", "Y.msk"])
@pytest.mark.parametrize("preset", ["compact", "default"])
def test_convert_with_preset_is_lossless(tmp_path: Path, cases, destination: str, preset: str) -> None:
    dataset, masks = cases
    source = tmp_path / "X.zarr"
    ok("import", source, dataset, "--preset", "compact" if preset == "default" else "default")
    target = tmp_path / destination
    output = ok("convert", source, target, "--preset", preset).output
    assert f"copied 2 case(s) from {source} to {target}" in output
    assert [label_codec(target, c) for c in ("ct_a", "ct_b")] == [LABEL_CODECS[preset]] * 2
    if destination.endswith(".zarr"):
        assert zarr_label_chain(target, "ct_a") == ZARR_CHAINS[preset]
    with MaskArchive(source) as original, MaskArchive(target) as copy:
        assert copy.case_ids() == original.case_ids() == ["ct_a", "ct_b"]
        for case_id, case_masks in masks.items():
            a, b = original[case_id], copy[case_id]
            assert_case_matches(b, case_masks)
            assert (b.space, b.mapping, b.stats, b.meta) == (a.space, a.mapping, a.stats, a.meta)
            for name in case_masks:
                np.testing.assert_array_equal(b.organ_affine(name), a.organ_affine(name))
            np.testing.assert_array_equal(b.read_labels(include_layers=False), a.read_labels(include_layers=False))


def test_convert_then_export_gives_the_input_files(tmp_path: Path, cases) -> None:
    dataset, masks = cases
    ok("import", tmp_path / "X.zarr", dataset / "ct_a")
    ok("convert", tmp_path / "X.zarr", tmp_path / "Y.msk", "--preset", "compact")
    ok("export", tmp_path / "Y.msk", "ct_a", tmp_path / "out")
    for name, mask in masks["ct_a"].items():
        original: nib.Nifti1Image = nib.load(dataset / "ct_a" / f"{name}.nii.gz")  # type: ignore[assignment]
        exported: nib.Nifti1Image = nib.load(tmp_path / "out" / f"{name}.nii.gz")  # type: ignore[assignment]
        np.testing.assert_array_equal(np.asanyarray(exported.dataobj).astype(bool), mask)
        np.testing.assert_allclose(exported.affine, original.affine, atol=1e-4)


@pytest.mark.parametrize("command", ["import", "convert"])
def test_unknown_preset_is_a_usage_error(tmp_path: Path, cases, command: str) -> None:
    dataset, _ = cases
    source = tmp_path / "X.zarr"
    ok("import", source, dataset / "ct_a")
    target = tmp_path / "Y.msk"
    args = ["import", target, dataset] if command == "import" else ["convert", source, target]
    result = run(*args, "--preset", "nope")
    assert result.exit_code == 2
    assert f"Usage: main {command} [OPTIONS]" in result.output
    assert "Error: Invalid value for '--preset': 'nope' is not one of 'default', 'compact'." in result.output
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.zarr", "dataset"]


@pytest.mark.parametrize("command", ["import", "convert"])
def test_help_lists_the_presets(command: str) -> None:
    output = ok(command, "--help").output
    assert "--preset [default|compact]" in output
    assert "[default: default]" in output


def test_demo_reports_every_backend_and_preset() -> None:
    output = ok("demo").output
    lines = output.splitlines()
    pattern = re.compile(r"^(default|compact)  (\.zarr|\.zarr\.zip|\.h5|\.msk) +(\d+\.\d) KB in (\d+) file\(s\) \(")
    rows = [(m[1], m[2], float(m[3]), int(m[4])) for m in map(pattern.match, lines) if m]
    expected = [(p, s) for p in ("default", "compact") for s in (".zarr", ".zarr.zip", ".h5", ".msk")]
    assert [(p, s) for p, s, _, _ in rows] == expected
    assert "default  .zarr" in output and "compact  .msk" in output
    sizes = {(p, s): size for p, s, size, _ in rows}
    files = {(p, s): n for p, s, _, n in rows}
    assert all(files[p, s] == 1 for p in ("default", "compact") for s in (".zarr.zip", ".h5", ".msk"))
    assert files["default", ".zarr"] > 1 and files["compact", ".zarr"] > 1
    for suffix in (".zarr", ".zarr.zip", ".h5", ".msk"):  # Crackle pays off on 18 organs in 64^3 chunks
        assert sizes["compact", suffix] < sizes["default", suffix], suffix
    assert all(sizes[p, ".msk"] == min(sizes[p, s] for _, s in expected) for p in ("default", "compact"))
    assert lines[-1] == "round trip   all 24 organs bit-exact in every backend, NIfTI affines equal"
    assert "bit-exact" in output and "FAILED" not in output
