"""Read access to one stored case: metadata from attributes, voxels from chunks."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from spacetransformer import Space

from medmask_store.errors import ArchiveClosed, CorruptChunk, OrganNotFound
from medmask_store.model.attributes import CaseInfo
from medmask_store.model.case_data import CaseData
from medmask_store.model.stats import OrganStats
from medmask_store.storage.backend import Backend, StoredArray
from medmask_store.storage.layout import BINARY_LAYERS, LABEL_VOLUME


class Case:
    """One case of an archive. Metadata is read at once, voxels only on request."""

    def __init__(self, backend: Backend, info: CaseInfo) -> None:
        self._backend = backend
        self.info = info
        self._arrays: dict[str, StoredArray | None] = {}

    def __repr__(self) -> str:
        return f"<Case {self.case_id!r} shape={tuple(self.space.shape)} organs={len(self.mapping)}>"

    @property
    def case_id(self) -> str:
        return self.info.case_id

    @property
    def space(self) -> Space:
        return self.info.space

    @property
    def mapping(self) -> dict[str, int]:
        """Organ name -> label value, including organs with no voxels."""
        return dict(self.info.mapping)

    @property
    def stats(self) -> dict[str, OrganStats]:
        return dict(self.info.stats)

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.info.meta)

    @property
    def organs(self) -> list[str]:
        return list(self.info.mapping)

    def organ_affine(self, organ: str) -> np.ndarray:
        """The organ's NIfTI affine: the Space's, or its source file's exact one if that differed."""
        self._check_organ(organ)
        affine = self.info.organ_affines.get(organ)
        return self.space.to_nifti_affine() if affine is None else affine.copy()

    def representation(self, organ: str) -> str:
        """``"label_volume"`` or ``"binary_layer"``."""
        self._check_organ(organ)
        return self.info.representation(organ)

    def _array(self, name: str) -> StoredArray:
        if name not in self._arrays:
            self._arrays[name] = self._backend.open_array(self.case_id, name)
        array = self._arrays[name]
        if array is None:
            raise FileNotFoundError(f"case {self.case_id!r} has no {name} array")
        return array

    def _read(self, name: str, selection: Any = Ellipsis) -> np.ndarray:
        """Read a selection of a stored array (backends raise :class:`CorruptChunk` on bad chunks)."""
        self._check_open()
        data = self._array(name)[selection]
        if selection is Ellipsis and self._holds_voxels(name) and not data.any():
            raise CorruptChunk(f"case {self.case_id!r}, array {name!r}: its chunks are missing although organs have voxels")
        return data

    def _holds_voxels(self, name: str) -> bool:
        """Whether the statistics say the array has non-zero voxels (catches lost shard files)."""
        if name == BINARY_LAYERS:
            return any(self.info.stats[organ].voxels for organ in self.info.layer_names)
        return any(s.voxels for organ, s in self.info.stats.items() if organ not in self.info.layer_names)

    def _check_open(self) -> None:
        if self._backend.closed:
            raise ArchiveClosed(f"case {self.case_id!r}: its archive is closed; read it inside `with MaskArchive(...)`")

    def _check_organ(self, name: str) -> None:
        if name not in self.info.mapping:
            raise OrganNotFound(f"case {self.case_id!r} has no organ {name!r}; it has {sorted(self.info.mapping)}")

    def read_organ(self, name: str) -> np.ndarray:
        """Boolean mask of one organ; only the chunks of its bounding box are decoded."""
        self._check_open()
        self._check_organ(name)
        mask = np.zeros(self.space.shape, dtype=bool)
        stats = self.info.stats[name]
        if stats.bbox is None:
            return mask
        box = tuple(slice(start, stop) for start, stop in stats.bbox)
        if name in self.info.layer_names:
            layer = self.info.layer_names.index(name)
            mask[box] = self._read(BINARY_LAYERS, (layer, *box))
        else:
            mask[box] = self._read(LABEL_VOLUME, box) == self.info.mapping[name]
        return mask

    def overlapping_organs(self, name: str) -> list[str]:
        """Organs sharing at least one voxel with ``name`` (decodes only ``name``'s bounding box)."""
        mask = self.read_organ(name)
        if not mask.any():
            return []
        box = tuple(slice(start, stop) for start, stop in self.info.stats[name].bbox)  # type: ignore[union-attr]
        inside = mask[box]
        overlapping = set(np.unique(self._read(LABEL_VOLUME, box)[inside]).tolist())
        values = {value: organ for organ, value in self.info.mapping.items()}
        names = {values[v] for v in overlapping if v in values and values[v] != name}
        for other in self.info.layer_names:
            if other != name and (self.read_organ(other)[box] & inside).any():
                names.add(other)
        return sorted(names)

    def read_organs(self, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Boolean masks of several organs (all organs by default)."""
        return {name: self.read_organ(name) for name in (self.organs if names is None else names)}

    def read_labels(self, include_layers: bool = True) -> np.ndarray:
        """The label volume; binary-layer organs are painted over it unless ``include_layers=False``.

        Where a layer organ overlaps a label-volume organ, the voxel shows the
        layer organ: use :meth:`read_organ` for every organ exactly.
        """
        labels = self._read(LABEL_VOLUME)
        if include_layers:
            for name in self.info.layer_names:
                labels[self.read_organ(name)] = self.info.mapping[name]
        return labels

    def to_case_data(self) -> CaseData:
        """The full in-memory content, as written (used to copy cases between archives)."""
        has_layers = bool(self.info.layer_names)
        return CaseData(
            space=self.space,
            mapping=self.mapping,
            label_volume=self._read(LABEL_VOLUME),
            layer_names=list(self.info.layer_names),
            binary_layers=self._read(BINARY_LAYERS) if has_layers else np.zeros((0, *self.space.shape), bool),
            stats=self.stats,
            meta=self.meta,
            organ_affines=dict(self.info.organ_affines),
        )
