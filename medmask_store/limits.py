"""Documented limits: every size an input declares is checked against these before anything is allocated.

Archives are shared between groups and NIfTI files come from anywhere, so a
header, a JSON document or a query must not be able to make a reader allocate
gigabytes for a few bytes of input. Each limit is far above what real data needs
(a whole-body CT of 512 × 512 × 2000 voxels is half of ``MAX_VOXELS``).
"""

from __future__ import annotations

#: Voxels of one case volume (a 1024³ volume); also the largest NIfTI image imported.
MAX_VOXELS = 2**30
#: Bytes of voxel data one NIfTI image may declare (a 512 × 512 × 1024 float32 mask): what reading
#: its voxels allocates. A 1024³ int16 image is within ``MAX_VOXELS`` but declares 2 GiB; masks saved as
#: uint8 reach ``MAX_VOXELS`` first.
MAX_IMAGE_BYTES = 2**30
#: Edge of a cubic chunk, and voxels of one stored chunk (a 256³ chunk: 32 MiB decoded at uint16).
MAX_CHUNK_EDGE = 256
MAX_CHUNK_VOXELS = MAX_CHUNK_EDGE**3
#: Chunks of one stored array (its Zarr shard index is then at most 16 MiB).
MAX_CHUNKS_PER_ARRAY = 2**20
#: Bytes of one JSON metadata document (a case's ``zarr.json``, an HDF5 attribute).
MAX_DOCUMENT_BYTES = 16 * 2**20
#: Decompressed bytes of a packed ``.msk`` catalog (some thousands of cases).
MAX_CATALOG_BYTES = 16 * 2**20
#: Bytes of a NIfTI file's header extensions (between its header and its voxels), read to find its label table.
MAX_EXTENSION_BYTES = 16 * 2**20
#: Bytes of one label table parsed: a JSON or text label file, the XML label table of a NIfTI header
#: extension. 2 MiB hold ~15,000 labels as TotalSegmentator writes them (its ``total`` table: 14 KB);
#: parsing hostile XML costs up to ~30x the bytes.
MAX_LABEL_TABLE_BYTES = 2 * 2**20
#: Bytes of a case id (it names a folder or an HDF5 group).
MAX_CASE_ID_BYTES = 200
#: Bytes of an organ name: export writes ``<organ>.nii.gz``, and file names hold 255 bytes.
MAX_ORGAN_NAME_BYTES = 255 - len(".nii.gz")
#: Characters of a query expression.
MAX_QUERY_CHARS = 10_000
#: Syntax-tree nodes of a query expression (names, constants, operators).
MAX_QUERY_NODES = 2_000
#: Nesting depth of a query expression.
MAX_QUERY_DEPTH = 100
