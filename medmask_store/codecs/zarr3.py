"""Zarr v3 array->bytes codec ``packbits_zstd`` wrapping :class:`PackBitsZstd`.

Registered under the entry-point group ``zarr.codecs``, so any zarr-python 3
process with medmask_store installed decodes binary layers without importing it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

from medmask_store.codecs.packbits_zstd import PackBitsZstd, decode_frame

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer


@dataclass(frozen=True)
class PackBitsZstdCodec(ArrayBytesCodec):
    """Serialize boolean chunks as PackBits+Zstd frames (see :mod:`.packbits_zstd`)."""

    is_fixed_size = False

    level: int = 19

    def __init__(self, *, level: int = 19) -> None:
        object.__setattr__(self, "level", PackBitsZstd(level).level)

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, configuration = parse_named_configuration(data, "packbits_zstd", require_configuration=False)
        return cls(**(configuration or {}))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": "packbits_zstd", "configuration": {"level": self.level}}

    def validate(self, *, dtype: Any, **_kwargs: Any) -> None:
        if dtype.to_native_dtype() != np.bool_:
            raise TypeError(f"packbits_zstd needs a bool array, got {dtype}")

    @cached_property
    def _codec(self) -> PackBitsZstd:
        return PackBitsZstd(self.level)

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        shape = chunk_spec.shape
        bits = decode_frame(chunk_bytes.to_bytes(), int(np.prod(shape)))
        return chunk_spec.prototype.nd_buffer.from_numpy_array(bits.reshape(shape))

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        encoded = self._codec.encode(chunk_array.as_numpy_array())
        return chunk_spec.prototype.buffer.from_bytes(encoded)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError


register_codec("packbits_zstd", PackBitsZstdCodec)
