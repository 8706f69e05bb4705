"""What readers without medmask_store learn from an archive: zarr-python without our codecs, plain h5py.

zarr-python opens every member of a group to list it, and refuses a codec it does not
know: a case with binary layers (``packbits_zstd``) cannot be listed. Its label volume
opens by name, and its attributes name the organs and point to the layers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
from helpers import box

from medmask_store import MaskArchive, StorageSettings
from medmask_store.model.case_data import CaseData
from medmask_store.model.plain_attributes import DECODED_BY
from medmask_store.phantom import make_phantom
from medmask_store.storage.verify import verify_archive

SHAPE = (40, 32, 24)

# zarr-python in a process where medmask_store's entry points are hidden, as if it were not installed.
ZARR_WITHOUT_OUR_CODECS = r"""
import importlib.metadata as metadata
import json
import sys


def entry_points(**params):
    kept = metadata.EntryPoints(
        ep for dist in metadata.distributions() for ep in dist.entry_points if not ep.value.startswith("medmask_store")
    )
    return kept.select(**params) if params else kept


metadata.entry_points = entry_points  # before zarr collects the codecs it knows

import numpy
import zarr
from zarr.errors import UnknownCodecError


def attempt(read):
    try:
        return read()
    except (UnknownCodecError, KeyError) as exc:
        return f"{type(exc).__name__}: {exc}"


path, expected = sys.argv[1], numpy.load(sys.argv[2])
cases = zarr.open_group(path, mode="r")["cases"]
result = {"case_ids": sorted(cases.group_keys())}
for case_id in result["case_ids"]:
    group = cases[case_id]
    labels = group["label_volume"]
    result[case_id] = {
        "same_labels": bool((labels[...] == expected[case_id]).all()),
        "attributes": labels.attrs.asdict(),
        "members": attempt(lambda: sorted(group.keys())),
        "tree": attempt(lambda: "label_volume" in str(group.tree())),
        "binary_layers": attempt(lambda: group["binary_layers"].shape),
    }
result["packbits_zstd"] = attempt(lambda: zarr.registry.get_codec_class("packbits_zstd").__name__)
result["imported"] = sorted(m for m in sys.modules if m.split(".")[0] == "medmask_store")
print(json.dumps(result))
"""
UNKNOWN_LAYERS = "UnknownCodecError: Unknown codec: 'packbits_zstd'"


def write_archive(path: Path, preset: str = "default") -> Path:
    """Two cases: ``overlapping``, a phantom whose organs overlap (binary layers), and ``apart``, two organs apart,
    one with a colour of its own."""
    overlapping, _ = make_phantom(SHAPE, n_organs=5, n_empty=1, seed=0)
    apart = CaseData.from_masks(
        {"left": box(SHAPE, (2, 10), (2, 10), (2, 10)), "right": box(SHAPE, (20, 30), (5, 9), (3, 6))}
    )
    apart.colors["right"] = (10, 20, 30, 255)
    with MaskArchive(path, "w", StorageSettings.preset(preset)) as archive:
        archive.add_case("overlapping", overlapping)
        archive.add_case("apart", apart)
    return path


def label_attributes(archive: MaskArchive, case_id: str) -> dict:
    """The label volume attributes the case's organs with voxels, colours and layers call for (less the layers'
    description)."""
    case = archive[case_id]
    organs = [(name, v) for name, v in case.mapping.items() if case.stats[name].voxels]
    assert len(organs) < len(case.mapping) or case_id == "apart"  # the phantom has an empty organ: left out
    properties = [{"label-value": v, "name": name, "rgba": list(case.colors[name])} for name, v in organs]
    attributes: dict = {"image-label": {"properties": properties}}
    if case.info.layer_names:
        overlaps = {"organs": list(case.info.layer_names), "array": "binary_layers", "decoded_by": DECODED_BY}
        attributes["medmask_store"] = {"overlaps": overlaps}
    return attributes


def without_description(attributes: dict) -> dict:
    """``attributes`` less the layers' description, which must say where overlap voxels are."""
    overlaps = attributes.get("medmask_store", {}).get("overlaps")
    if overlaps is not None:
        description = overlaps.pop("description")
        assert "binary_layers" in description and "label == value misses them" in description
    return attributes


def test_zarr_without_our_codecs_lists_cases_and_reads_label_volumes_and_organ_names(tmp_path: Path) -> None:
    path = write_archive(tmp_path / "archive.zarr")
    expected = tmp_path / "expected.npz"
    with MaskArchive(path) as archive:
        np.savez(expected, **{case_id: archive[case_id].read_labels(include_layers=False) for case_id in archive})
        assert verify_archive(archive) == []  # the attributes are covered by each array's metadata checksum
        attributes = {case_id: label_attributes(archive, case_id) for case_id in archive}
        layer_organs = archive["overlapping"].info.layer_names
    proc = subprocess.run(
        [sys.executable, "-c", ZARR_WITHOUT_OUR_CODECS, path, expected], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["packbits_zstd"] == "KeyError: 'packbits_zstd'" and result["imported"] == []  # hidden indeed
    assert result["case_ids"] == ["apart", "overlapping"]
    overlapping, apart = result["overlapping"], result["apart"]
    assert overlapping["same_labels"] and apart["same_labels"]
    assert without_description(overlapping["attributes"]) == attributes["overlapping"]
    assert overlapping["attributes"]["medmask_store"]["overlaps"]["organs"] == list(layer_organs)
    assert apart["attributes"] == attributes["apart"]
    assert apart["attributes"]["image-label"]["properties"][1] == {
        "label-value": 2,
        "name": "right",
        "rgba": [10, 20, 30, 255],
    }
    # A case with layers cannot be listed without our codecs; one without lists as any Zarr group.
    assert overlapping["members"] == overlapping["tree"] == overlapping["binary_layers"] == UNKNOWN_LAYERS
    assert apart["members"] == ["label_volume", "organ_chunk_voxels"] and apart["tree"] is True
    assert apart["binary_layers"] == "KeyError: 'binary_layers'"


def test_hdf5_datasets_carry_the_same_attributes_as_zarr_arrays(tmp_path: Path) -> None:
    described = {}
    for suffix in (".zarr", ".h5"):
        path = write_archive(tmp_path / f"archive{suffix}")
        with MaskArchive(path) as archive:
            assert verify_archive(archive) == []
            for name in ("label_volume", "binary_layers", "organ_chunk_voxels"):
                if suffix == ".zarr":
                    document = json.loads((path / "cases" / "overlapping" / name / "zarr.json").read_text())
                    described[suffix, name] = document["attributes"]
                else:
                    with h5py.File(path, "r") as f:
                        stored = f["cases/overlapping"][name].attrs
                        described[suffix, name] = {
                            k: json.loads(v) for k, v in stored.items() if k != "dimension_names"
                        }
    for name in ("label_volume", "binary_layers", "organ_chunk_voxels"):
        assert described[".zarr", name] == described[".h5", name], name
    assert described[".zarr", "binary_layers"] == {
        "medmask_store": {"codec": "packbits_zstd", "checksum": "crc32c", "decoded_by": DECODED_BY}
    }
    assert described[".zarr", "organ_chunk_voxels"] == {}


def test_compact_label_volume_names_its_codec(tmp_path: Path) -> None:
    """The compact preset's label volume needs medmask_store too: its own metadata says so, and no more (a plain
    reader cannot read its labels)."""
    path = write_archive(tmp_path / "archive.zarr", "compact")
    document = json.loads((path / "cases" / "apart" / "label_volume" / "zarr.json").read_text())
    assert document["attributes"] == {
        "medmask_store": {"codec": "crackle_zstd", "checksum": "crc32c", "decoded_by": DECODED_BY}
    }
