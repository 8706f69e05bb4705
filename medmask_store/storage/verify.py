"""Archive verification: the stored index against the cases, and every chunk against its checksum."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from medmask_store.errors import MaskStoreError
from medmask_store.query.index import ArchiveIndex
from medmask_store.storage.archive import MaskArchive
from medmask_store.storage.case import Case


def verify_archive(archive: MaskArchive, progress: Callable[[Iterable[str]], Iterable[str]] = iter) -> list[str]:
    """Every problem found, one line each; an empty list means the archive is sound.

    Checks that the stored index lists exactly the stored cases with their
    current statistics and metadata, that every stored chunk decodes and passes
    its checksum, and that decoded voxel counts equal the stored statistics.
    """
    problems: list[str] = []
    stored = archive.stored_index()
    case_ids = archive.case_ids()
    indexed = stored is not None or archive.stores_index
    if stored is None:
        if indexed:
            problems.append("index: missing (run `medmask-store reindex`)")
        stored = ArchiveIndex.from_cases([])
    for case_id in sorted(set(stored.case_ids) - set(case_ids)):
        problems.append(f"index: lists case {case_id!r}, which is not stored")
    for case_id in progress(case_ids):
        try:
            case = archive[case_id]
        except MaskStoreError as exc:
            problems.append(f"case {case_id!r}: unreadable attributes ({exc})")
            continue
        if indexed and case_id not in stored.case_ids:
            problems.append(f"index: case {case_id!r} has no entry")
        elif indexed and not _same_entry(stored, ArchiveIndex.from_cases([(case.info, stored.tokens()[case_id])]), case_id):
            problems.append(f"index: entry of case {case_id!r} differs from its attributes")
        problems += [f"case {case_id!r}: {p}" for p in _check_voxels(case)]
    return problems


def _same_entry(stored: ArchiveIndex, truth: ArchiveIndex, case_id: str) -> bool:
    mine = ArchiveIndex(stored.organs[stored.organs["case_id"].astype(str) == case_id],
                        stored.cases[stored.cases["case_id"] == case_id])
    return mine == truth


def _check_voxels(case: Case) -> list[str]:
    """Decode every stored chunk; compare voxel counts with the statistics."""
    info = case.info
    try:
        labels = case.stored_labels[...]
        layers = case.stored_layers[...] if case.stored_layers is not None else None
    except MaskStoreError as exc:
        return [f"chunk check failed: {exc}"]
    counts = np.bincount(labels.ravel(), minlength=max(info.mapping.values(), default=0) + 1)
    problems = []
    for organ, value in info.mapping.items():
        found = int(counts[value])  # layer voxels are where other organs hold the label: disjoint
        if organ in info.layer_names:
            assert layers is not None
            found += int(np.count_nonzero(layers[info.layer_names.index(organ)]))
        if found != info.stats[organ].voxels:
            problems.append(f"organ {organ!r} has {found} voxels, its statistics say {info.stats[organ].voxels}")
    return problems
