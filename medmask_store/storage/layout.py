"""Backend-neutral on-disk layout: array names, chunking and codec settings."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medmask_store.model.case_data import CaseData

LABEL_VOLUME = "label_volume"
BINARY_LAYERS = "binary_layers"
CASES_GROUP = "cases"
INDEX = "index.npz.zst"


@dataclass(frozen=True)
class StorageSettings:
    """How arrays are chunked and compressed.

    ``chunk_size`` is the edge of the cubic chunks (the unit of partial reads);
    ``label_level`` and ``layer_level`` are the Zstd levels of the label volume
    and of the PackBits+Zstd binary layers.
    """

    chunk_size: int = 64
    label_level: int = 19
    layer_level: int = 19


@dataclass(frozen=True)
class ArrayToWrite:
    """One array of a case: its name, data, inner chunk shape and dimension names."""

    name: str
    data: np.ndarray
    chunks: tuple[int, ...]
    dimension_names: tuple[str, ...]

    @property
    def is_binary(self) -> bool:
        return self.data.dtype == np.bool_


def arrays_to_write(data: CaseData, settings: StorageSettings) -> list[ArrayToWrite]:
    """The arrays of a case; the binary-layer array is omitted when no organ overlaps."""
    cube = (settings.chunk_size,) * 3
    arrays = [ArrayToWrite(LABEL_VOLUME, data.label_volume, cube, ("i", "j", "k"))]
    if data.layer_names:
        arrays.append(ArrayToWrite(BINARY_LAYERS, data.binary_layers, (1, *cube), ("layer", "i", "j", "k")))
    return arrays
