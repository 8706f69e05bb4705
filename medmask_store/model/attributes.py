"""The JSON attributes of an archive and of a stored case, sealed with their checksums.

Attributes read from an archive are untrusted: :meth:`CaseInfo.from_attributes`
checks the checksum, then every name (like names given to ``add_case``), every
size (against :mod:`medmask_store.limits`) and every cross-reference (organs of
statistics and layers, array shapes against the Space) before anything uses them.
Statistics, colours, organ affines and the Space object itself (its values are
checked at open) are decoded and checked on first use (a voxel read needs none of
them), and refused then as they would be at open.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from spacetransformer import Space
from spacetransformer.core.exceptions import SpaceTransformerError

from medmask_store.errors import CorruptMetadata, InvalidArchive, InvalidCase
from medmask_store.model.case_data import CaseData, label_dtype
from medmask_store.model.manifest import (
    BINARY_LAYERS,
    LABEL_CODECS,
    LABEL_VOLUME,
    LAYER_CODEC,
    ORGAN_CHUNK_VOXELS,
    ArrayManifest,
    seal,
    unseal,
)
from medmask_store.model.palette import Color, default_color, organ_colors
from medmask_store.model.stats import OrganStats, stats_from_attributes, stats_to_attributes
from medmask_store.model.validation import validate_case_id, validate_colors, validate_geometry, validate_mapping

FORMAT_VERSION = 3
ATTRIBUTE_KEY = "medmask_store"
ARCHIVE_CONTENT = {"format_version": FORMAT_VERSION, "kind": "archive"}
SPACE_FIELDS = ("shape", "origin", "spacing", "x_orientation", "y_orientation", "z_orientation")
CASE_FIELDS = {"format_version", "space", "mapping", "binary_layers", "stats", "meta", "arrays"}
# colors: added within format 3 (cases written before have none: every organ takes the default palette's).
OPTIONAL_CASE_FIELDS = {"layer_origins", "organ_affines", "colors"}


def archive_attributes(**extra: Any) -> dict[str, Any]:
    """The sealed root attributes of an archive (``extra``: what a backend records there)."""
    return {ATTRIBUTE_KEY: seal({**ARCHIVE_CONTENT, **extra})}


def check_archive_attributes(attributes: object, where: object) -> dict[str, Any]:
    """The root content, if the root attributes name a readable archive; else :class:`InvalidArchive`
    (not an archive, another format version) or :class:`CorruptMetadata` (damaged)."""
    content = attributes.get(ATTRIBUTE_KEY) if isinstance(attributes, dict) else None
    if not isinstance(content, dict) or content.get("kind") != "archive":
        raise InvalidArchive(f"{where} is not a medmask_store archive (its root has no archive attributes)")
    if content.get("format_version") != FORMAT_VERSION:
        raise InvalidArchive(
            f"{where} has format version {content.get('format_version')!r}; "
            f"this medmask_store reads version {FORMAT_VERSION}"
        )
    return unseal(content, f"{where}: root attributes")


def case_document(content: Mapping[str, Any], manifests: Mapping[str, ArrayManifest]) -> dict[str, Any]:
    """The sealed attributes of a case: its content (:func:`case_attributes`) and the manifest of its arrays."""
    arrays = {name: manifest.to_json() for name, manifest in manifests.items()}
    return {ATTRIBUTE_KEY: seal({**content, "arrays": arrays})}


K = TypeVar("K")
V = TypeVar("V")


class DecodedOnUse(Mapping[K, V]):
    """A mapping decoded by ``decode`` on first access (an error it raises is raised at each access)."""

    def __init__(self, decode: Callable[[], dict[K, V]]) -> None:
        self._decode = decode
        self._decoded: dict[K, V] | None = None

    @property
    def _items(self) -> dict[K, V]:
        if self._decoded is None:
            self._decoded = self._decode()
        return self._decoded

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return repr(self._items)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as the plain dict it decodes to (so a :class:`CaseInfo` crosses processes)."""
        return dict, (self._items,)


@dataclass(frozen=True)
class StoredSpace:
    """A stored case's Space fields, their values checked at open. The Space itself is built on first use:
    spacetransformer's own checks (an orthonormal basis, ...) cost ~0.25 ms, most of an open, and voxel
    reads need only the shape. A Space it refuses raises :class:`CorruptMetadata` at every use."""

    fields: dict[str, Any]
    what: str  # the archive and case, for messages

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.fields["shape"])

    @functools.cached_property
    def space(self) -> Space:
        with _decoding(self.what):
            return Space.from_dict(self.fields)  # its values were checked at open (validate_geometry)


@dataclass(frozen=True)
class CaseInfo:
    """A stored case's metadata, decoded from its attributes without touching voxels."""

    case_id: str
    geometry: Space | StoredSpace  # a stored case's Space, built on first use (see :attr:`space`)
    mapping: dict[str, int]
    layer_names: tuple[str, ...]
    stats: Mapping[str, OrganStats]
    meta: dict[str, Any]
    organ_affines: Mapping[str, np.ndarray]
    layer_origins: tuple[tuple[int, int, int], ...] = ()  # voxel offset of each binary-layer window
    arrays: Mapping[str, ArrayManifest] | None = None  # what the stored arrays must be (None: not stored yet)
    colors: Mapping[str, Color] = field(default_factory=dict)  # every organ's RGBA colour, 0..255

    @property
    def space(self) -> Space:
        """The case's geometry (for a stored case, built from its fields on first use)."""
        return self.geometry if isinstance(self.geometry, Space) else self.geometry.space

    @property
    def shape(self) -> tuple[int, ...]:
        """The volume's shape, known without building the Space."""
        return tuple(self.geometry.shape)

    @property
    def label_dtype(self) -> np.dtype:
        return label_dtype(self.mapping)

    def representation(self, organ: str) -> str:
        """``"binary_layer"`` if the organ has a layer of overlap voxels (the rest are in the label volume)."""
        return "binary_layer" if organ in self.layer_names else "label_volume"

    @classmethod
    def from_attributes(cls, case_id: str, attributes: object, where: object) -> CaseInfo:
        """Decode and check a case's attributes; :class:`CorruptMetadata` names ``where``, the case and the fault."""
        what = f"{where}: case {case_id!r}"
        content = attributes.get(ATTRIBUTE_KEY) if isinstance(attributes, dict) else None
        if not isinstance(attributes, dict) or set(attributes) != {ATTRIBUTE_KEY} or not isinstance(content, dict):
            raise CorruptMetadata(f"{what}: no medmask_store case attributes")
        if content.get("format_version") != FORMAT_VERSION:
            raise InvalidArchive(
                f"{what} has format version {content.get('format_version')!r}; "
                f"this medmask_store reads version {FORMAT_VERSION}"
            )
        content = unseal(content, f"{what}: attributes")
        with _decoding(what):
            return cls._from_content(validate_case_id(case_id), content, what)

    @classmethod
    def _from_content(cls, case_id: str, content: dict[str, Any], what: str) -> CaseInfo:
        _require(CASE_FIELDS <= set(content) <= CASE_FIELDS | OPTIONAL_CASE_FIELDS, what, f"fields {sorted(content)}")
        space_fields = content["space"]
        _require(isinstance(space_fields, dict) and set(space_fields) == set(SPACE_FIELDS), what, "space fields")
        _require(all(_numbers(space_fields[f], 3) for f in SPACE_FIELDS), what, "space values")
        _require(all(type(n) is int for n in space_fields["shape"]), what, "space shape")
        validate_geometry(**space_fields)
        geometry = StoredSpace(space_fields, what)
        _require(isinstance(content["mapping"], dict), what, "mapping")
        mapping = validate_mapping(content["mapping"])
        layer_names = content["binary_layers"]
        _require(_names(layer_names, mapping) and len(set(layer_names)) == len(layer_names), what, "binary layer names")
        _require(isinstance(content["meta"], dict), what, "metadata")

        def on_use(decode: Callable[[], dict[Any, Any]]) -> DecodedOnUse[Any, Any]:
            def checked() -> dict[Any, Any]:
                with _decoding(what):
                    return decode()

            return DecodedOnUse(checked)

        info = cls(
            case_id=case_id,
            geometry=geometry,
            mapping=mapping,
            layer_names=tuple(layer_names),
            stats=on_use(lambda: _stats(content["stats"], mapping, geometry.space, what)),
            meta=content["meta"],
            organ_affines=on_use(lambda: _decode_affines(content.get("organ_affines"), mapping, what)),
            layer_origins=tuple(tuple(o) for o in content.get("layer_origins", ())),  # type: ignore[misc]
            arrays=_arrays(content["arrays"], what),
            colors=on_use(lambda: _decode_colors(content.get("colors"), mapping, what)),
        )
        info._check_arrays(what)
        return info

    def _check_arrays(self, what: str) -> None:
        """The manifest must describe exactly the arrays this case's content implies."""
        arrays = self.arrays or {}
        expected = {LABEL_VOLUME, BINARY_LAYERS} if self.layer_names else {LABEL_VOLUME}
        allowed = expected | {ORGAN_CHUNK_VOXELS}  # cases written before the table have none
        _require(expected <= set(arrays) <= allowed, what, f"arrays {sorted(arrays)}, expected {sorted(expected)}")
        labels = arrays[LABEL_VOLUME]
        edge = labels.chunks[0]
        _require(labels.shape == self.shape, what, f"label volume shape {labels.shape}")
        _require(labels.dtype == self.label_dtype and labels.codec in LABEL_CODECS, what, "label volume dtype or codec")
        _require(labels.chunks == (edge,) * 3, what, f"label volume chunks {labels.chunks}")
        counts = arrays.get(ORGAN_CHUNK_VOXELS)
        if counts is not None:
            cells = math.prod(-(-n // edge) for n in self.shape)
            _require(
                counts.shape == (len(self.mapping), cells) and counts.chunks[1:] == (cells,)
                and counts.dtype == np.dtype("<u4") and counts.codec == "zstd",
                what, f"organ chunk voxels {counts.shape} in chunks {counts.chunks}",
            )  # fmt: skip
        if not self.layer_names:
            _require(not self.layer_origins, what, "layer origins without layers")
            return
        layers = arrays[BINARY_LAYERS]
        grid = [-(-n // edge) * edge for n in self.shape]
        window = layers.shape[1:]
        _require(layers.shape[0] == len(self.layer_names) and len(window) == 3, what, f"binary layers shape {layers.shape}")
        _require(layers.dtype == np.dtype(bool) and layers.codec == LAYER_CODEC, what, "binary layers dtype or codec")
        _require(layers.chunks == (1, edge, edge, edge), what, f"binary layer chunks {layers.chunks}")
        _require(len(self.layer_origins) == len(self.layer_names), what, "one layer origin per layer")
        for origin in self.layer_origins:
            _require(
                _numbers(list(origin), 3) and all(type(o) is int and o >= 0 and o % edge == 0 for o in origin)
                and all(o + w <= g for o, w, g in zip(origin, window, grid)),
                what, f"layer origin {list(origin)}",
            )  # fmt: skip


def case_attributes(data: CaseData, layer_origins: list[list[int]]) -> dict[str, Any]:
    """The content of a case's attributes (sealed by :func:`case_document`); empty organs cost only their mapping entry,
    organs of the default palette's colour no colour entry."""
    space = data.space
    colors = {
        name: list(color) for name, color in validate_colors(data.colors, data.mapping).items()
        if color != default_color(data.mapping[name])
    }  # fmt: skip
    return {
        "format_version": FORMAT_VERSION,
        "space": {
            "shape": [int(s) for s in space.shape],
            "origin": [float(v) for v in space.origin],
            "spacing": [float(v) for v in space.spacing],
            "x_orientation": [float(v) for v in space.x_orientation],
            "y_orientation": [float(v) for v in space.y_orientation],
            "z_orientation": [float(v) for v in space.z_orientation],
        },
        "mapping": data.mapping,
        "binary_layers": list(data.layer_names),
        **({"layer_origins": layer_origins} if layer_origins else {}),
        "stats": stats_to_attributes(data.stats),
        "meta": data.meta,
        **({"organ_affines": _encode_affines(data.organ_affines)} if data.organ_affines else {}),
        **({"colors": colors} if colors else {}),
    }


@contextmanager
def _decoding(what: str) -> Iterator[None]:
    """Raise what decoding stored attributes refuses as :class:`CorruptMetadata` naming ``what``."""
    try:
        yield
    except InvalidCase as exc:  # a name or value refused as it would be by add_case
        raise CorruptMetadata(f"{what}: {exc}") from exc
    except CorruptMetadata:
        raise
    except (KeyError, TypeError, ValueError, IndexError, SpaceTransformerError) as exc:
        raise CorruptMetadata(f"{what}: malformed attributes ({type(exc).__name__}: {exc})") from exc


def _require(condition: bool, what: str, detail: str) -> None:
    if not condition:
        raise CorruptMetadata(f"{what}: malformed attributes: {detail}")


def _numbers(values: object, count: int) -> bool:
    """Whether ``values`` is a list of ``count`` finite JSON numbers."""
    return (
        isinstance(values, list) and len(values) == count
        and all(type(v) in (int, float) and math.isfinite(v) for v in values)
    )  # fmt: skip


def _names(names: object, mapping: Mapping[str, int]) -> bool:
    return isinstance(names, list) and all(isinstance(n, str) and n in mapping for n in names)


def _arrays(stored: object, what: str) -> dict[str, ArrayManifest]:
    if not isinstance(stored, dict):
        raise CorruptMetadata(f"{what}: malformed attributes: array manifest")
    return {name: ArrayManifest.from_json(entry, f"{what}: array {name!r}") for name, entry in stored.items()}


def _stats(stored: object, mapping: dict[str, int], space: Space, what: str) -> dict[str, OrganStats]:
    """Statistics columns, checked: organs of the mapping, counts that fit their boxes, boxes inside the volume."""
    columns = ("organs", "voxels", "bbox", "centroid_voxel")
    _require(isinstance(stored, dict) and set(stored) == set(columns), what, "statistics columns")
    assert isinstance(stored, dict)
    organs = stored["organs"]
    _require(_names(organs, mapping) and len(set(organs)) == len(organs), what, "statistics organs")
    _require(all(isinstance(stored[c], list) and len(stored[c]) == len(organs) for c in columns), what, "statistics lengths")
    for organ, voxels, bbox, centroid in zip(organs, stored["voxels"], stored["bbox"], stored["centroid_voxel"]):
        box_ok = _numbers(bbox, 6) and all(type(v) is int for v in bbox) and all(
            0 <= bbox[2 * a] < bbox[2 * a + 1] <= n for a, n in enumerate(space.shape)
        )
        _require(box_ok, what, f"bounding box {bbox} of organ {organ!r}")
        volume = math.prod(bbox[2 * a + 1] - bbox[2 * a] for a in range(3))
        _require(type(voxels) is int and 1 <= voxels <= volume, what, f"voxel count {voxels} of organ {organ!r}")
        _require(_numbers(centroid, 3), what, f"centroid {centroid} of organ {organ!r}")
    return stats_from_attributes(stored, list(mapping), space)


def _encode_affines(organ_affines: dict[str, np.ndarray]) -> dict[str, Any]:
    """Distinct affines once, organs by index: 25 noisy TotalSegmentator files cost ~1 KB."""
    distinct: list[list[float]] = []
    organs: dict[str, int] = {}
    for name, affine in organ_affines.items():
        flat = [float(v) for v in np.asarray(affine)[:3].ravel()]
        if flat not in distinct:
            distinct.append(flat)
        organs[name] = distinct.index(flat)
    return {"affines": distinct, "organs": organs}


def _decode_colors(stored: object, mapping: dict[str, int], what: str) -> dict[str, Color]:
    """Every organ's colour: the stored ones (RGBA, 4 integers 0..255), the default palette's for the others."""
    if stored is None:
        return organ_colors(mapping, {})
    _require(isinstance(stored, dict) and _names(list(stored), mapping), what, "colour organs")
    assert isinstance(stored, dict)
    for name, color in stored.items():
        channels_ok = _numbers(color, 4) and all(type(c) is int and 0 <= c <= 255 for c in color)
        _require(channels_ok, what, f"colour {color} of organ {name!r}")
    return organ_colors(mapping, {name: tuple(color) for name, color in stored.items()})


def _decode_affines(encoded: object, mapping: Mapping[str, int], what: str) -> dict[str, np.ndarray]:
    if encoded is None:
        return {}
    _require(isinstance(encoded, dict) and set(encoded) == {"affines", "organs"}, what, "organ affines")
    assert isinstance(encoded, dict)
    affines, organs = encoded["affines"], encoded["organs"]
    _require(isinstance(affines, list) and all(_numbers(a, 12) for a in affines), what, "organ affine values")
    _require(isinstance(organs, dict) and _names(list(organs), mapping), what, "organ affine organs")
    _require(all(type(i) is int and 0 <= i < len(affines) for i in organs.values()), what, "organ affine indices")
    matrices = [np.vstack([np.reshape(a, (3, 4)), [0.0, 0.0, 0.0, 1.0]]) for a in affines]
    return {name: matrices[index] for name, index in organs.items()}
