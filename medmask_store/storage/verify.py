"""Archive verification: every case, every chunk and the index, checked; every problem reported.

Verification never stops at the first problem: a damaged case is reported and
the next one checked, so one run lists everything that needs repair.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from medmask_store.errors import MaskStoreError
from medmask_store.query.index import ArchiveIndex
from medmask_store.storage.archive import MaskArchive
from medmask_store.storage.case import Case
from medmask_store.storage.chunked import ChunkedArray, iter_chunks


def verify_archive(archive: MaskArchive, progress: Callable[[Iterable[str]], Iterable[str]] = iter) -> list[str]:
    """Every problem found, one line each; an empty list means the archive is sound.

    Checks that every listed name is a valid case id; that every case's
    attributes and array manifest pass their checksums and checks; that every
    stored chunk decodes and passes its checksum, and its bytes the manifest's
    digest; that decoded voxel counts equal the stored statistics; and that the
    stored index passes its checksum and lists exactly the stored cases with
    their current statistics and metadata.
    """
    case_ids, problems = archive.listing()
    entries: dict[str, tuple[Any, ...]] = {}
    indexed = False  # whether each case is checked against an index entry
    try:
        stored = archive.stored_index()
        if stored is None and archive.stores_index:
            problems.append("index: missing (run `medmask-store reindex`)")
        entries, indexed = (stored.entries() if stored is not None else {}), stored is not None or archive.stores_index
    except MaskStoreError as exc:
        problems.append(f"index: {exc}")
    for case_id in sorted(set(entries) - set(case_ids)):
        problems.append(f"index: lists case {case_id!r}, which is not stored")
    for case_id in progress(case_ids):
        try:
            case = archive[case_id]
            if indexed:
                problems += _index_problems(entries, case)
            problems += [f"case {case_id!r}: {p}" for p in _voxel_problems(case)]
            problems += [
                f"case {case_id!r}: CorruptChunk: the stored bytes of its {name} array differ from its manifest's digest"
                for name in case.arrays_with_changed_bytes()
            ]
        except MaskStoreError as exc:
            problems.append(f"case {case_id!r}: {type(exc).__name__}: {exc}")
    return problems


def _index_problems(entries: dict[str, tuple[Any, ...]], case: Case) -> list[str]:
    entry = entries.get(case.case_id)
    if entry is None:
        return [f"index: case {case.case_id!r} has no entry"]
    truth = ArchiveIndex.from_cases([(case.info, entry[0])]).entries()[case.case_id]
    return [] if entry == truth else [f"index: entry of case {case.case_id!r} differs from its attributes"]


def _voxel_problems(case: Case) -> list[str]:
    """Decode every stored chunk (one at a time: memory stays one chunk); compare voxel counts with the statistics."""
    info = case.info
    labels = case.stored_labels
    counts = np.zeros(2 ** (8 * labels.dtype.itemsize), dtype=np.int64)  # every value the dtype can hold
    for _, chunk in _stored_chunks(labels):
        counts += np.bincount(chunk.ravel(), minlength=counts.size)
    layer_voxels = np.zeros(len(info.layer_names), dtype=np.int64)
    if case.stored_layers is not None:
        for (layer, *_), chunk in _stored_chunks(case.stored_layers):
            layer_voxels[layer] += np.count_nonzero(chunk)
    unmapped = sorted(set(np.flatnonzero(counts).tolist()) - {0, *info.mapping.values()})
    problems = [f"the label volume holds values {unmapped[:10]} that no organ has"] if unmapped else []
    for organ, value in info.mapping.items():
        found = int(counts[value])  # layer voxels are where other organs hold the label: disjoint
        if organ in info.layer_names:
            found += int(layer_voxels[info.layer_names.index(organ)])
        if found != info.stats[organ].voxels:
            problems.append(f"organ {organ!r} has {found} voxels, its statistics say {info.stats[organ].voxels}")
    return problems


def _stored_chunks(array: ChunkedArray) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Every stored chunk of ``array`` with its coordinates, decoded and cut to the part inside the array."""
    for coords, region in iter_chunks(array.shape, array.chunks):
        chunk = array.read_chunk(coords)
        if chunk is not None:
            yield coords, chunk[tuple(slice(0, r.stop - r.start) for r in region)]
