"""OME-Zarr export, read back with ome-zarr-py's own reader, and import."""

from __future__ import annotations

import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from helpers import assert_case_matches, tilted_space
from ome_zarr.io import parse_url
from ome_zarr.reader import Label, Multiscales, Node, Reader
from spacetransformer import Space

from medmask_store import Case, MaskArchive
from medmask_store.errors import OmeZarrError, OutputExists
from medmask_store.extras import ExtraNotInstalled
from medmask_store.io.nifti import load_mask_folder
from medmask_store.io.ome_zarr import export_ome_zarr, is_ome_zarr, load_ome_zarr
from medmask_store.phantom import make_phantom

with warnings.catch_warnings():  # ome-zarr 0.18's writer module uses its own deprecated Scaler as a default
    warnings.simplefilter("ignore", DeprecationWarning)
    from ome_zarr.writer import write_image, write_multiscale_labels

SHAPE = (40, 32, 24)
EXTRA_MESSAGE = "needs {module}, which is not installed: pip install 'medmask_store[ome-zarr]'"


@pytest.fixture
def phantom_case(tmp_path: Path) -> tuple[Case, dict[str, np.ndarray]]:
    """A stored oblique phantom whose organs overlap (binary layers), with an empty organ and a colour."""
    masks, _ = make_phantom(SHAPE, n_organs=5, n_empty=1, seed=0)
    archive = MaskArchive(tmp_path / "archive.zarr", "w")
    case = archive.add_case("ct1", masks, space=tilted_space(SHAPE, flip=True), meta={"site": "A"})
    assert len(case.info.layer_names) >= 2 and any(not m.any() for m in masks.values())
    yield case, masks
    archive.close()


def ngff_nodes(path: Path) -> dict[str, Node]:
    """The nodes ome-zarr-py's reader finds from the image, by name."""
    return {node.zarr.basename(): node for node in Reader(parse_url(path))()}


def ijk(node: Node) -> np.ndarray:
    return np.asarray(node.data[0]).transpose(2, 1, 0)


def assert_organs_exact(nodes: dict[str, Node], case: Case, organs: dict[str, np.ndarray]) -> None:
    """Every organ reads back bit-exact from the export: ``label_volume == value``, or its own label image.

    Compared in the organ's bounding box, once the volume is known to hold the value exactly
    as often as the organ has voxels (so nowhere outside the box): 117 organs in ~0.5 s.
    """
    volumes = {name: ijk(nodes[name]) for name in ("label_volume", *case.info.layer_names)}
    counts = {name: np.bincount(volume.ravel()) for name, volume in volumes.items()}
    for name, mask in organs.items():
        image, value = name if name in volumes else "label_volume", case.mapping[name]
        found = counts[image][value] if value < len(counts[image]) else 0
        assert found == np.count_nonzero(mask), name
        if found:
            box = tuple(slice(start, stop) for start, stop in case.stats[name].bbox)
            assert np.array_equal(volumes[image][box] == value, mask[box]), name


def test_export_reads_back_with_ome_zarr_reader(phantom_case, tmp_path: Path) -> None:
    case, masks = phantom_case
    path = export_ome_zarr(case, tmp_path / "ct1.ome.zarr")
    layers = set(case.info.layer_names)
    nodes = ngff_nodes(path)
    assert set(nodes) == {"ct1.ome.zarr", "labels", "label_volume", *layers}
    image = nodes["ct1.ome.zarr"]
    assert image.load(Multiscales) and not image.load(Label)
    assert image.data[0].shape == SHAPE[::-1] and not (path / "s0" / "c").exists()  # a zero image: no chunk stored
    for name in ["ct1.ome.zarr", "label_volume", *layers]:
        assert nodes[name].metadata["axes"] == [{"name": n, "type": "space", "unit": "millimeter"} for n in "zyx"]
        assert nodes[name].metadata["coordinateTransformations"] == [[
            {"type": "scale", "scale": [3.0, 1.1, 0.9]},
            {"type": "translation", "translation": [-305.0, 12.25, -210.5]},
        ]]  # fmt: skip
    labels = nodes["label_volume"].metadata
    assert labels["properties"] == {
        value: {
            "name": name, "voxels": case.stats[name].voxels if name in case.stats else 0,
            "volume_ml": case.stats[name].volume_ml if name in case.stats else 0.0,
            **({"full_mask": name} if name in layers else {}),
        }
        for name, value in case.mapping.items()
    }  # fmt: skip
    assert {value: [round(c * 255) for c in rgba] for value, rgba in labels["color"].items()} == {
        case.mapping[name]: list(color) for name, color in case.colors.items()
    }
    assert_organs_exact(nodes, case, masks)
    for name in layers:
        value = case.mapping[name]
        assert set(np.unique(ijk(nodes[name]))) == {0, value}
        assert nodes[name].metadata["properties"] == {value: labels["properties"][value]}
        assert not np.array_equal(ijk(nodes["label_volume"]) == value, masks[name])  # the label volume alone is not
    ours = zarr.open_group(path, mode="r").attrs["medmask_store"]
    assert Space.from_dict(ours["space"]) == case.space and ours["meta"] == {"site": "A"}


def test_load_restores_every_organ_the_space_colours_and_metadata(phantom_case, tmp_path: Path) -> None:
    case, masks = phantom_case
    path = export_ome_zarr(case, tmp_path / "ct1.ome.zarr")
    assert is_ome_zarr(path) and not is_ome_zarr(tmp_path / "archive.zarr") and not is_ome_zarr(tmp_path / "none")
    data = load_ome_zarr(path)
    assert data.mapping == case.mapping and data.colors == case.colors and data.meta == case.meta
    assert data.space == case.space  # exactly: from the Space the export recorded
    with MaskArchive(tmp_path / "copy.zarr", "w") as copy:
        assert_case_matches(copy.add_case("ct1", data), masks)


def test_existing_output_is_refused_unless_overwrite(phantom_case, tmp_path: Path) -> None:
    case, masks = phantom_case
    path = export_ome_zarr(case, tmp_path / "ct1.ome.zarr")
    before = sorted(p.relative_to(path) for p in path.rglob("*"))
    with pytest.raises(OutputExists, match=f"^{re.escape(str(path))} already exists; pass overwrite=True"):
        export_ome_zarr(case, path)
    assert export_ome_zarr(case, path, overwrite=True) == path
    assert sorted(p.relative_to(path) for p in path.rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []
    folder = tmp_path / "results"
    (folder / "keep.txt").parent.mkdir()
    (folder / "keep.txt").write_text("mine")
    with pytest.raises(OutputExists, match="is not an OME-Zarr image: not replacing it"):
        export_ome_zarr(case, folder, overwrite=True)
    assert (folder / "keep.txt").read_text() == "mine"


def write_foreign(path: Path, labels_zyx: dict[str, np.ndarray], properties: list[dict]) -> None:
    """An OME-Zarr image written by ome-zarr-py alone: scale (2, 0.5, 0.5), a multiscale-level translation."""
    root = zarr.open_group(path, mode="w", zarr_format=3)
    shape = next(iter(labels_zyx.values())).shape
    scale = {"z": 2.0, "y": 0.5, "x": 0.5}
    write_image(np.zeros(shape, np.uint8), root, axes="zyx", scale=scale, scale_factors=())
    for name, voxels in labels_zyx.items():
        write_multiscale_labels(
            [voxels], root, name, axes="zyx", scale=scale, label_metadata={"properties": properties}
        )
        group = root["labels"][name]
        ome = group.attrs["ome"]
        ome["multiscales"][0]["coordinateTransformations"] = [
            {"type": "scale", "scale": [1.0, 1.0, 1.0]},
            {"type": "translation", "translation": [10.0, 20.0, 30.0]},
        ]
        group.attrs["ome"] = ome


def test_load_reads_other_ome_zarr_label_images(tmp_path: Path) -> None:
    cells = np.zeros((6, 8, 10), np.uint16)
    cells[1:3, 2:5, 3:9] = 4
    cells[4, 1, 1] = 300
    path = tmp_path / "cells.ome.zarr"
    write_foreign(path, {"cells": cells}, [{"label-value": 4, "name": "nucleus"}, {"label-value": 9, "name": "gone"}])
    data = load_ome_zarr(path)
    assert data.mapping == {"nucleus": 4, "gone": 9, "label_300": 300}
    np.testing.assert_array_equal(data.label_volume, cells.transpose(2, 1, 0))
    assert data.space.shape == (10, 8, 6) and data.space.spacing == (0.5, 0.5, 2.0)
    assert data.space.origin == (30.0, 20.0, 10.0)  # the dataset's own translation is 0


def test_load_needs_a_choice_among_several_label_images(tmp_path: Path) -> None:
    path = tmp_path / "two.ome.zarr"
    first, second = np.zeros((4, 4, 4), np.uint8), np.ones((4, 4, 4), np.uint8)
    write_foreign(path, {"first": first, "second": second}, [])
    with pytest.raises(OmeZarrError, match=re.escape("label images ['first', 'second']: choose one")):
        load_ome_zarr(path)
    assert load_ome_zarr(path, label_image="second").mapping == {"label_1": 1}
    with pytest.raises(OmeZarrError, match=re.escape("no label image 'third'; it has ['first', 'second']")):
        load_ome_zarr(path, label_image="third")


def test_load_refuses_what_it_cannot_read(phantom_case, tmp_path: Path) -> None:
    with pytest.raises(OmeZarrError, match="archive.zarr: not an OME-Zarr image"):
        load_ome_zarr(tmp_path / "archive.zarr")
    path = export_ome_zarr(phantom_case[0], tmp_path / "ct1.ome.zarr")
    group = zarr.open_group(path / "labels" / "label_volume", mode="r+")
    ome = group.attrs["ome"]
    ome["image-label"]["properties"][1]["name"] = ome["image-label"]["properties"][0]["name"]
    group.attrs["ome"] = ome
    with pytest.raises(OmeZarrError, match="label image 'label_volume': several label values have the same name"):
        load_ome_zarr(path)
    ome["image-label"]["properties"][1]["label-value"] = "two"
    ome["image-label"]["properties"][1]["name"] = "two"
    group.attrs["ome"] = ome
    with pytest.raises(OmeZarrError, match="label image 'label_volume': label value of organ 'two' must be an integer"):
        load_ome_zarr(path)


@pytest.mark.parametrize("module", ["ome_zarr.writer", "ome_zarr.io"])
def test_without_ome_zarr_the_error_names_the_extra(phantom_case, tmp_path, monkeypatch, module: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the extra imports
    with pytest.raises(ExtraNotInstalled, match=re.escape(EXTRA_MESSAGE.format(module=module))):
        if module == "ome_zarr.writer":
            export_ome_zarr(phantom_case[0], tmp_path / "ct1.ome.zarr")
        else:
            load_ome_zarr(tmp_path / "ct1.ome.zarr")
    assert not (tmp_path / "ct1.ome.zarr").exists()


def test_real_case_round_trips_bit_exact(real_case_dir: Path, tmp_path: Path) -> None:
    with MaskArchive(tmp_path / "s0000.zarr", "w") as archive:
        case = archive.add_case("s0000", load_mask_folder(real_case_dir))
        path = export_ome_zarr(case, tmp_path / "s0000.ome.zarr")
        organs = case.read_organs()
        assert case.info.layer_names  # s0000 has overlapping organs (rib_right_12 inside the sacrum...)
        nodes = ngff_nodes(path)
        assert_organs_exact(nodes, case, organs)
        properties = nodes["label_volume"].metadata["properties"]
        assert {p["name"]: value for value, p in properties.items()} == case.mapping
    data = load_ome_zarr(path)  # every organ's exactness on import is shown on the phantom; here, the statistics
    assert data.mapping == case.mapping and data.colors == case.colors
    assert data.stats == dict(case.stats)
    assert data.space == case.space  # exactly: from the Space the export recorded
    assert json.loads((path / "zarr.json").read_text())["attributes"]["ome"]["version"] == "0.5"
