"""Chunk codecs: PackBits+Zstd for binary layers, as a numcodecs and a Zarr v3 codec."""

from medmask_store.codecs.packbits_zstd import PackBitsZstd
from medmask_store.codecs.zarr3 import PackBitsZstdCodec

__all__ = ["PackBitsZstd", "PackBitsZstdCodec"]
