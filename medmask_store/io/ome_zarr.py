"""OME-Zarr export and import of a case: an OME-NGFF 0.5 image with label images, on Zarr v3.

Written and read with ome-zarr-py (``pip install 'medmask_store[ome-zarr]'``); its
writer emits NGFF 0.5 on Zarr v3, the version this module writes. An export holds::

    <case>.ome.zarr/
      zarr.json              the image: NGFF ``multiscales`` of ``s0``; attribute ``medmask_store``:
                             {"space": the case's Space, "label_volume": "label_volume", "meta": ...}
      s0/                    a zero image of the case's shape (uint8, no chunk stored): we hold no CT
                             intensities, so viewers get the geometry only
      labels/label_volume/   label image of the label volume (values: the case's label values), with
                             ``image-label`` colours and properties (name, voxels, volume_ml) of every organ
      labels/<organ>/        one label image per organ that overlaps others (a binary layer in the archive):
                             its whole mask, holding its label value; its property in ``label_volume``
                             carries ``"full_mask": "<organ>"``

So every organ reads back bit-exact: ``label_volume == value``, or its own label image.

Geometry: arrays are stored with axes (z, y, x) = our voxel axes (k, j, i), in millimetres;
each dataset's ``coordinateTransformations`` are scale = spacing and translation = origin
(LPS, as the Space holds it), both in (z, y, x) order. That is all an NGFF 0.5 reader sees:
voxel (i, j, k) lies at ``origin + (i, j, k) * spacing``, which is the true position only
when the Space's orientation is the identity. NGFF 0.5 transforms hold no rotation or axis
flip, so the direction cosines of an oblique or flipped Space are kept in the image's
``medmask_store`` attribute, from which :func:`load_ome_zarr` restores the exact Space.
"""

from __future__ import annotations

import json
import shutil
import uuid
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from spacetransformer import Space
from spacetransformer.core.exceptions import SpaceTransformerError

from medmask_store.errors import InvalidCase, OmeZarrError, OutputExists
from medmask_store.extras import require
from medmask_store.model.case_data import CaseData
from medmask_store.model.validation import validate_colors
from medmask_store.storage.case import Case

ATTRIBUTE = "medmask_store"  # the image group's attribute holding what NGFF cannot
LABEL_VOLUME = "label_volume"  # the label image of the label volume
AXES = [{"name": name, "type": "space", "unit": "millimeter"} for name in "zyx"]
CHUNKS = (64, 64, 64)
EXTRA = "ome-zarr"


def export_ome_zarr(case: Case, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``case`` as an OME-Zarr image with its label images (see the module docstring); returns ``path``.

    An existing ``path`` raises :class:`OutputExists`, unless ``overwrite`` is set and it is
    an OME-Zarr image, which is then replaced. The export is written beside ``path`` and
    renamed into place, so an interrupted export leaves no half-written image there.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputExists(f"{path} already exists; pass overwrite=True to replace it")
        if not is_ome_zarr(path):
            raise OutputExists(f"{path} exists and is not an OME-Zarr image: not replacing it")
    if LABEL_VOLUME in case.info.layer_names:
        raise OmeZarrError(
            f"case {case.case_id!r}: an overlapping organ named {LABEL_VOLUME!r} would replace the label image"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    try:
        _write_image(case, staging)
        if path.exists():
            shutil.rmtree(path)
        staging.rename(path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _writer() -> ModuleType:
    with warnings.catch_warnings():  # ome-zarr 0.18's writer builds a default Scaler, its own deprecated class
        warnings.simplefilter("ignore", DeprecationWarning)
        return require("ome_zarr.writer", EXTRA, "OME-Zarr export")


def _write_image(case: Case, path: Path) -> None:
    import dask.array as da
    import zarr

    root = zarr.open_group(str(path), mode="w-", zarr_format=3)
    shape = case.space.shape[::-1]
    _writer().write_multiscale([da.zeros(shape, dtype=np.uint8, chunks=CHUNKS)], root, axes=AXES, name=case.case_id)
    _place(root, case.space, case.case_id)
    layers = case.info.layer_names
    labels = case.read_labels(include_layers=False)  # every organ without a layer is exactly label == value
    _write_label_image(root, LABEL_VOLUME, labels, case, list(case.mapping), layers)
    for name in layers:
        mask = case.read_organ(name)
        _write_label_image(root, name, mask * labels.dtype.type(case.mapping[name]), case, [name], layers)
    root.attrs[ATTRIBUTE] = {"space": json.loads(case.space.to_json()), "label_volume": LABEL_VOLUME, "meta": case.meta}


def _write_label_image(
    root: Any, name: str, voxels: np.ndarray, case: Case, organs: list[str], layers: tuple[str, ...]
) -> None:
    """One label image under ``labels/``, with colours and properties of ``organs``."""
    metadata = {
        "source": {"image": "../../"},
        "colors": [{"label-value": case.mapping[organ], "rgba": list(case.colors[organ])} for organ in organs],
        "properties": [_properties(case, organ, layers) for organ in organs],
    }
    volume = voxels.transpose(2, 1, 0)  # (z, y, x): a view
    _writer().write_multiscale_labels(
        [volume], root, name, axes=AXES, storage_options={"chunks": CHUNKS}, label_metadata=metadata
    )
    _place(root["labels"][name], case.space, name)


def _properties(case: Case, organ: str, layers: tuple[str, ...]) -> dict[str, Any]:
    stats = case.stats.get(organ)
    return {
        "label-value": case.mapping[organ],
        "name": organ,
        "voxels": stats.voxels if stats else 0,
        "volume_ml": stats.volume_ml if stats else 0.0,
        **({"full_mask": organ} if organ in layers else {}),
    }


def _place(group: Any, space: Space, name: str) -> None:
    """The dataset's transforms: scale = spacing, translation = origin, in (z, y, x) order.

    ome-zarr's writers take a scale but no translation, so the ``multiscales`` they wrote are
    rewritten here, with their own metadata writer.
    """
    transforms = [
        {"type": "scale", "scale": [float(v) for v in space.spacing[::-1]]},
        {"type": "translation", "translation": [float(v) for v in space.origin[::-1]]},
    ]
    _writer().write_multiscales_metadata(
        group, [{"path": "s0", "coordinateTransformations": transforms}], axes=AXES, name=name
    )


# -- import ------------------------------------------------------------------------------------


def is_ome_zarr(path: str | Path) -> bool:
    """Whether ``path`` is an OME-Zarr image: a folder whose group attributes hold NGFF ``multiscales``."""
    try:
        return "multiscales" in _ngff_attributes(Path(path))
    except (OSError, ValueError):
        return False


def _ngff_attributes(path: Path) -> dict[str, Any]:
    """The NGFF attributes of the group at ``path`` (Zarr v3 ``ome`` attributes, or Zarr v2 ``.zattrs``)."""
    if (path / "zarr.json").is_file():
        attributes = json.loads((path / "zarr.json").read_bytes()).get("attributes", {})
        return attributes.get("ome", {}) if isinstance(attributes, dict) else {}
    if (path / ".zattrs").is_file():
        attributes = json.loads((path / ".zattrs").read_bytes())
        return attributes if isinstance(attributes, dict) else {}
    return {}


def load_ome_zarr(path: str | Path, label_image: str | None = None) -> CaseData:
    """An OME-Zarr image's label image as a case: organs named by its ``image-label`` properties
    (unnamed values become ``label_<value>``), coloured by its colours.

    ``label_image`` names the label image under ``labels/``; by default, that of a
    medmask_store export, else the only one. The Space is the exact one a medmask_store
    export recorded, else the axis-aligned one of the label image's scale and translation.
    Organs of a medmask_store export that overlap others are read from their own label images.
    """
    path = Path(path)
    io = require("ome_zarr.io", EXTRA, "OME-Zarr import")
    reader = require("ome_zarr.reader", EXTRA, "OME-Zarr import")
    if not is_ome_zarr(path):
        raise OmeZarrError(f"{path}: not an OME-Zarr image (no NGFF multiscales in its group attributes)")
    ours = _our_attributes(path)
    nodes = {node.zarr.basename(): node for node in reader.Reader(io.parse_url(path))() if node.load(reader.Label)}
    name = label_image or ours.get("label_volume") or _only(nodes, path)
    if name not in nodes:
        raise OmeZarrError(f"{path}: no label image {name!r}; it has {sorted(nodes) or 'none'}")
    with _input_errors(path, name):
        return _case(nodes, name, ours)


def _case(nodes: Mapping[str, Any], name: str, ours: Mapping[str, Any]) -> CaseData:
    """The case of label image ``name`` (``nodes``: the label images by name; ``ours``: what an export recorded)."""
    attributes = nodes[name].zarr.root_attrs
    labels = _voxels(nodes[name])
    label_metadata = attributes.get("image-label", {})
    properties = [p for p in label_metadata.get("properties", []) if isinstance(p.get("name"), str)]
    mapping = {p["name"]: p["label-value"] for p in properties}
    if len(mapping) != len(properties):
        raise OmeZarrError("several label values have the same name")
    space = Space.from_dict(ours["space"]) if "space" in ours else _axis_aligned_space(attributes, labels.shape)
    data = CaseData.from_labels(labels, mapping, space, meta=ours.get("meta"), unmapped="name")
    full_masks = {p["name"]: nodes[p["full_mask"]] for p in properties if p.get("full_mask") in nodes}
    if full_masks:
        data = CaseData.from_masks(OrganMasks(data, full_masks), space, data.mapping, data.meta)
    names = {value: organ for organ, value in data.mapping.items()}
    colors = {names[c["label-value"]]: c["rgba"] for c in label_metadata.get("colors", []) if c["label-value"] in names}
    data.colors.update(validate_colors(colors, data.mapping))
    return data


def _our_attributes(path: Path) -> dict[str, Any]:
    """What a medmask_store export recorded beside the NGFF attributes ({} for other OME-Zarr images)."""
    document = path / "zarr.json"
    attributes = json.loads(document.read_bytes()).get("attributes", {}) if document.is_file() else {}
    ours = attributes.get(ATTRIBUTE, {})
    return ours if isinstance(ours, dict) else {}


def _only(nodes: Mapping[str, Any], path: Path) -> str:
    if len(nodes) != 1:
        found = f"label images {sorted(nodes)}: choose one" if nodes else "no label image"
        raise OmeZarrError(f"{path}: {found}")
    return next(iter(nodes))


def _voxels(node: Any) -> np.ndarray:
    """A label image's full-resolution voxels, in our (i, j, k) order."""
    axes = node.metadata.get("axes", [])
    if [axis.get("type") for axis in axes] != ["space"] * 3:
        raise OmeZarrError(f"axes {axes}; only 3-D spatial (z, y, x) label images are read")
    voxels = np.asarray(node.data[0])
    if voxels.dtype.kind not in "ui":
        raise OmeZarrError(f"{voxels.dtype} voxels; label images hold integers")
    return voxels.transpose(2, 1, 0)


def _axis_aligned_space(attributes: Mapping[str, Any], shape: tuple[int, ...]) -> Space:
    """The Space of the first dataset's transforms, then the multiscale's (scales and translations only)."""
    multiscale = attributes["multiscales"][0]
    transforms = [
        *multiscale["datasets"][0].get("coordinateTransformations", []),
        *multiscale.get("coordinateTransformations", []),
    ]
    scale, translation = np.ones(3), np.zeros(3)
    for transform in transforms:
        if transform["type"] == "scale":
            scale, translation = scale * transform["scale"], translation * transform["scale"]
        elif transform["type"] == "translation":
            translation = translation + transform["translation"]
        elif transform["type"] != "identity":
            raise OmeZarrError(
                f"a {transform['type']!r} coordinate transformation: only scale and translation are read"
            )
    return Space(shape=tuple(shape), spacing=tuple(scale[::-1].tolist()), origin=tuple(translation[::-1].tolist()))


class OrganMasks(Mapping[str, np.ndarray]):
    """Every organ's mask, read when asked for: from its own label image, or from the label volume."""

    def __init__(self, data: CaseData, images: Mapping[str, Any]) -> None:
        self._data, self._images = data, images

    def __getitem__(self, name: str) -> np.ndarray:
        voxels = _voxels(self._images[name]) if name in self._images else self._data.label_volume
        return voxels == self._data.mapping[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data.mapping)

    def __len__(self) -> int:
        return len(self._data.mapping)


@contextmanager
def _input_errors(path: Path, name: str) -> Iterator[None]:
    """Raise what building the case refuses as :class:`OmeZarrError` naming the image."""
    try:
        yield
    except (OmeZarrError, InvalidCase) as exc:
        raise OmeZarrError(f"{path}: label image {name!r}: {exc}") from exc
    except (SpaceTransformerError, KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise OmeZarrError(f"{path}: label image {name!r}: malformed metadata ({type(exc).__name__}: {exc})") from exc
