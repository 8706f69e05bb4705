"""In-memory case content and the split of organs into label volume and binary layers.

A case is a :class:`~spacetransformer.Space`, a label mapping (organ name ->
integer value) and voxels.  Every voxel that belongs to some organ holds one
organ's value in the **label volume**.  Where organs overlap, the voxel goes to
the organ placed first (organs are placed largest first) and the other organ's
voxels there go to its own **binary layer**, so an organ is exactly
``(label_volume == value) | layer``: rib_right_12 inside sacrum becomes a layer,
while two large organs touching in a few voxels cost a layer of those voxels only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from spacetransformer import Space

from medmask_store.concurrency import thread_pool
from medmask_store.errors import InvalidCase
from medmask_store.model.palette import Color
from medmask_store.model.stats import OrganStats
from medmask_store.model.validation import validate_mapping, validate_meta, validate_organ_name, validate_space
from medmask_store.model.voxels import nonzero_voxels

Unmapped = Literal["error", "name"]


def label_dtype(mapping: Mapping[str, int]) -> np.dtype:
    """uint8 while every value fits, uint16 beyond 255."""
    return np.dtype(np.uint8 if max(mapping.values(), default=0) <= 255 else np.uint16)


@dataclass
class CaseData:
    """Everything stored for one case, validated and ready to write."""

    space: Space
    mapping: dict[str, int]
    label_volume: np.ndarray
    # Per binary-layer organ, its voxels that other organs hold in the label volume, as sorted
    # C-order flat indices: a layer of a few overlap voxels costs their indices, not a volume.
    layer_voxels: dict[str, np.ndarray]
    stats: dict[str, OrganStats]
    meta: dict[str, Any] = field(default_factory=dict)
    # Exact NIfTI affines of organs whose source file deviated from the Space by float noise.
    organ_affines: dict[str, np.ndarray] = field(default_factory=dict)
    # RGBA colours (0..255) given to organs, e.g. by a label table; the others take the default palette's.
    colors: dict[str, Color] = field(default_factory=dict)

    @classmethod
    def from_masks(
        cls,
        masks: Mapping[str, np.ndarray],
        space: Space | None = None,
        mapping: Mapping[str, int] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> CaseData:
        """Build a case from one binary mask per organ (overlaps allowed, stored losslessly).

        ``mapping`` assigns label values; by default organs get 1, 2, ... in the
        order of ``masks``.
        """
        if not masks:
            raise InvalidCase("a case needs at least one organ mask")
        first = next(iter(masks))
        space = _resolve_space(space, masks[first], f"mask {first!r}")
        mapping = validate_mapping(mapping if mapping is not None else {n: i for i, n in enumerate(masks, 1)})
        if set(mapping) != set(masks):
            missing, extra = sorted(set(masks) - set(mapping)), sorted(set(mapping) - set(masks))
            raise InvalidCase(f"mapping does not match the masks: no value for {missing}, no mask for {extra}")
        # Each thread takes a mask from ``masks`` itself (a lazy mapping reads it then), so at most one
        # mask per thread is in memory, however fast masks load; numpy scans release the GIL.
        with thread_pool() as pool:
            found = pool.map(lambda name: _mask_indices(name, masks[name], space), list(masks))
            voxel_indices = dict(zip(masks, found))
        return cls._from_voxel_indices(space, mapping, voxel_indices, validate_meta(meta))

    @classmethod
    def from_labels(
        cls,
        labels: np.ndarray,
        mapping: Mapping[str, int],
        space: Space | None = None,
        meta: Mapping[str, Any] | None = None,
        unmapped: Unmapped = "error",
    ) -> CaseData:
        """Build a case from a label volume; every organ lands in the label volume.

        Values present in ``labels`` but absent from ``mapping`` raise
        :class:`InvalidCase`, unless ``unmapped="name"`` names them ``label_<value>``.
        """
        labels = np.asarray(labels)
        space = _resolve_space(space, labels, "label volume")
        if labels.dtype.kind not in "ui":
            raise InvalidCase(f"label volume must have an integer dtype, got {labels.dtype}")
        mapping = validate_mapping(mapping)
        coords, values = nonzero_voxels(labels)
        if values.size and values.min() < 0:
            raise InvalidCase(f"label volume holds negative values (down to {values.min()}); labels are 1, 2, ...")
        order = np.argsort(values, kind="stable")  # a radix sort for 8- and 16-bit labels
        starts = np.flatnonzero(np.diff(values[order])) + 1
        present = values[order[np.r_[0, starts]]] if values.size else values
        unknown = sorted(set(present.tolist()) - set(mapping.values()))
        if unknown and unmapped == "error":
            raise InvalidCase(
                f"label volume holds values {unknown} that the mapping does not name; "
                "add them to the mapping or pass unmapped='name'"
            )
        generated = {f"label_{v}": v for v in unknown}
        taken = sorted(set(generated) & set(mapping))
        if taken:
            raise InvalidCase(f"cannot name unmapped values: the mapping already uses the names {taken}")
        mapping.update(validate_mapping(generated))
        by_value = {int(v): voxels for v, voxels in zip(present, np.split(order, starts))}
        stats = {
            name: OrganStats.from_coords(tuple(c[by_value.get(v, order[:0])] for c in coords), space)  # type: ignore[arg-type]
            for name, v in mapping.items()
        }
        volume = labels.astype(label_dtype(mapping), copy=False)
        return cls(space, mapping, volume, {}, stats, validate_meta(meta))

    @classmethod
    def _from_voxel_indices(
        cls,
        space: Space,
        mapping: dict[str, int],
        voxel_indices: dict[str, np.ndarray],
        meta: dict[str, Any],
    ) -> CaseData:
        volume = np.zeros(space.shape, dtype=label_dtype(mapping))
        flat_volume = volume.reshape(-1)
        overlaps: dict[str, np.ndarray] = {}  # per organ, its voxels already taken by another organ
        for name in sorted(voxel_indices, key=lambda n: -voxel_indices[n].size):
            indices = voxel_indices[name]
            taken = flat_volume[indices] != 0
            if taken.any():
                overlaps[name] = indices[taken]
                indices = indices[~taken]
            flat_volume[indices] = mapping[name]
        stats = {name: OrganStats.from_flat_indices(voxel_indices[name], space) for name in mapping}
        return cls(space, mapping, volume, overlaps, stats, meta)

    @property
    def layer_names(self) -> list[str]:
        """The organs with a binary layer, in layer order."""
        return list(self.layer_voxels)

    @property
    def binary_layers(self) -> np.ndarray:
        """The binary layers as one dense bool array (layer, i, j, k); a full volume per layer."""
        layers = np.zeros((len(self.layer_voxels), *self.space.shape), dtype=bool)
        for layer, indices in zip(layers, self.layer_voxels.values()):
            layer.reshape(-1)[indices] = True
        return layers

    def organ_mask(self, name: str) -> np.ndarray:
        """Boolean mask of one organ: its label-volume voxels and its binary layer, if any."""
        mask = self.label_volume == self.mapping[name]
        if name in self.layer_voxels:
            mask.reshape(-1)[self.layer_voxels[name]] = True
        return mask


def _resolve_space(space: Space | None, array: np.ndarray, what: str) -> Space:
    shape = tuple(int(s) for s in np.shape(array))
    if space is None:
        if len(shape) != 3:
            raise InvalidCase(f"{what} must be 3-D, got shape {shape}")
        space = Space(shape=shape)  # type: ignore[arg-type]
    validate_space(space)
    if shape != tuple(space.shape):
        raise InvalidCase(f"{what} has shape {shape}, the case's Space has shape {tuple(space.shape)}")
    return space


def _mask_indices(name: str, mask: np.ndarray, space: Space) -> np.ndarray:
    """C-order flat indices of the mask's voxels, without copying F-ordered (NIfTI) arrays."""
    validate_organ_name(name)
    mask = np.asarray(mask)
    if tuple(mask.shape) != tuple(space.shape):
        raise InvalidCase(f"mask {name!r} has shape {mask.shape}, the case's Space has shape {tuple(space.shape)}")
    if mask.dtype != np.bool_ and mask.dtype.kind not in "ui":
        raise InvalidCase(f"mask {name!r} has dtype {mask.dtype}; binary masks must be bool or integer 0/1")
    coords, values = nonzero_voxels(mask)
    if mask.dtype != np.bool_ and (values != 1).any():
        raise InvalidCase(f"mask {name!r} holds values other than 0 and 1; pass mask > 0 if that is meant")
    return np.ravel_multi_index(coords, mask.shape)
