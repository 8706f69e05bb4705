"""Attributes of stored arrays for readers without medmask_store (zarr-python, tensorstore, h5py).

They describe the arrays and nothing reads them back: a case's sealed attributes are
the truth. The Zarr and HDF5 backends write them on the arrays they store (a ``.msk``
file has no per-array metadata):

- an array stored with one of our codecs (binary layers; the compact preset's label
  volume) names its codec and what decodes it, and nothing more: a plain reader cannot
  read it;
- a plain label volume names every organ with voxels and its colour as NGFF
  ``image-label`` ``properties`` (label value, name, RGBA; empty organs are left out: the
  case document lists them, and 96 empty TotalSegmentator names would double a small
  case's metadata), and says which organs it holds only partly: where organs overlap, one
  organ keeps the voxel here and the others' voxels there are in the ``binary_layers``
  array, so a reader of the label volume alone learns that those organs are incomplete in it.

Every byte here is paid once per case (about 1.3 KB for s0000's 21 organs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medmask_store.model.attributes import ATTRIBUTE_KEY
from medmask_store.model.manifest import BINARY_LAYERS, LABEL_VOLUME, LAYER_CODEC
from medmask_store.model.palette import organ_colors

DECODED_BY = "pip install medmask_store"
OUR_CODECS = ("crackle_zstd", LAYER_CODEC)  # the label volume's "zstd" is Zarr's and HDF5's own


def array_attributes(name: str, codec: str, content: Mapping[str, Any]) -> dict[str, Any]:
    """The plain attributes of array ``name`` stored with ``codec`` (``content``: the case's unsealed attributes)."""
    if codec in OUR_CODECS:  # unreadable without medmask_store: say what decodes it, and nothing more
        return {ATTRIBUTE_KEY: {"codec": codec, "checksum": "crc32c", "decoded_by": DECODED_BY}}
    if name != LABEL_VOLUME:
        return {}
    attributes: dict[str, Any] = {"image-label": image_label(content)}
    if content["binary_layers"]:
        attributes[ATTRIBUTE_KEY] = {"overlaps": overlaps(content)}
    return attributes


def image_label(content: Mapping[str, Any]) -> dict[str, Any]:
    """The name and colour of every organ with voxels, by label value: NGFF ``image-label`` ``properties``."""
    mapping = content["mapping"]
    colors = organ_colors(mapping, {name: tuple(color) for name, color in content.get("colors", {}).items()})
    present = set(content["stats"]["organs"])
    return {
        "properties": [
            {"label-value": value, "name": name, "rgba": list(colors[name])}
            for name, value in mapping.items()
            if name in present
        ]
    }


def overlaps(content: Mapping[str, Any]) -> dict[str, Any]:
    """Where the label volume's organs that overlap others keep the rest of their voxels."""
    return {
        "organs": content["binary_layers"],
        "array": BINARY_LAYERS,
        "decoded_by": DECODED_BY,
        "description": f"voxels these organs share with others are in {BINARY_LAYERS}: label == value misses them",
    }
