"""The JSON attributes of a stored case (format version, Space, mapping, layers, stats, meta)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from spacetransformer import Space

from medmask_store.errors import InvalidArchive
from medmask_store.model.case_data import CaseData, label_dtype
from medmask_store.model.stats import OrganStats, stats_from_attributes, stats_to_attributes

FORMAT_VERSION = 2
ATTRIBUTE_KEY = "medmask_store"
ARCHIVE_ATTRIBUTES = {ATTRIBUTE_KEY: {"format_version": FORMAT_VERSION, "kind": "archive"}}


def check_archive_attributes(attributes: dict[str, Any], where: object) -> None:
    """Raise :class:`InvalidArchive` unless the root attributes name a readable archive."""
    content = attributes.get(ATTRIBUTE_KEY)
    if not isinstance(content, dict) or content.get("kind") != "archive":
        raise InvalidArchive(f"{where} is not a medmask_store archive (its root has no archive attributes)")
    if content.get("format_version") != FORMAT_VERSION:
        raise InvalidArchive(
            f"{where} has format version {content.get('format_version')!r}; "
            f"this medmask_store reads version {FORMAT_VERSION}"
        )


@dataclass(frozen=True)
class CaseInfo:
    """A stored case's metadata, decoded from its attributes without touching voxels."""

    case_id: str
    space: Space
    mapping: dict[str, int]
    layer_names: tuple[str, ...]
    stats: dict[str, OrganStats]
    meta: dict[str, Any]
    organ_affines: dict[str, np.ndarray]
    layer_origins: tuple[tuple[int, int, int], ...] = ()  # voxel offset of each binary-layer window

    @property
    def label_dtype(self) -> np.dtype:
        return label_dtype(self.mapping)

    def representation(self, organ: str) -> str:
        """``"binary_layer"`` if the organ has a layer of overlap voxels (the rest are in the label volume)."""
        return "binary_layer" if organ in self.layer_names else "label_volume"

    @classmethod
    def from_attributes(cls, case_id: str, attributes: dict[str, Any]) -> CaseInfo:
        content = attributes.get(ATTRIBUTE_KEY)
        if not isinstance(content, dict):
            raise InvalidArchive(f"case {case_id!r} has no {ATTRIBUTE_KEY!r} attributes")
        if content.get("format_version") != FORMAT_VERSION:
            raise InvalidArchive(
                f"case {case_id!r} has format version {content.get('format_version')!r}; "
                f"this medmask_store reads version {FORMAT_VERSION}"
            )
        mapping = dict(content["mapping"])
        space = Space.from_dict(content["space"])
        return cls(
            case_id=case_id,
            space=space,
            mapping=mapping,
            layer_names=tuple(content["binary_layers"]),
            stats=stats_from_attributes(content["stats"], list(mapping), space),
            meta=dict(content["meta"]),
            organ_affines=_decode_affines(content.get("organ_affines")),
            layer_origins=tuple(tuple(origin) for origin in content.get("layer_origins", ())),  # type: ignore[misc]
        )


def case_attributes(data: CaseData, layer_origins: list[list[int]]) -> dict[str, Any]:
    """JSON attributes of a case; empty organs cost only their mapping entry."""
    space = data.space
    return {
        ATTRIBUTE_KEY: {
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
        }
    }


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


def _decode_affines(encoded: dict[str, Any] | None) -> dict[str, np.ndarray]:
    if not encoded:
        return {}
    affines = [np.vstack([np.reshape(a, (3, 4)), [0.0, 0.0, 0.0, 1.0]]) for a in encoded["affines"]]
    return {name: affines[index] for name, index in encoded["organs"].items()}
