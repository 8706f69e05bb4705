"""The crc32c suffix that Zarr's ``crc32c`` codec appends to every chunk (uint32, little-endian).

Backends that store chunk bytes themselves (HDF5 direct chunk writes) use these
two functions so their chunks are byte-identical to the Zarr backend's.
"""

from __future__ import annotations

import struct

import google_crc32c

from medmask_store.errors import CorruptChunk

CRC = struct.Struct("<I")


def append_crc32c(data: bytes) -> bytes:
    return data + CRC.pack(google_crc32c.value(data))


def strip_crc32c(data: bytes) -> bytes:
    """The payload, after checking its crc32c suffix."""
    if len(data) < CRC.size:
        raise CorruptChunk(f"chunk of {len(data)} bytes is too short to hold its crc32c")
    payload, (stored,) = data[: -CRC.size], CRC.unpack(data[-CRC.size :])
    if google_crc32c.value(payload) != stored:
        raise CorruptChunk("chunk fails its crc32c checksum")
    return payload
