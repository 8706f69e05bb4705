"""Synthetic index statistics of TotalSegmentator-like CTs, shared by the index benchmarks
(query_scale.py, index_formats.py), and index blobs stored as files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from medmask_store.io.totalsegmentator import TOTAL_LABELS

ORGANS = list(TOTAL_LABELS)
COMMON = {"liver": 4.0, "spleen": 3.0, "kidney_left": 3.0, "kidney_right": 3.0}  # presence weight factors


def _organ_table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per organ name, drawn once: presence weight, box side in voxels (Part A), typical volume in ml (Part B)."""
    rng = np.random.default_rng(117)
    weight = rng.uniform(0.2, 1.0, len(ORGANS)) * np.array([COMMON.get(name, 1.0) for name in ORGANS])
    side = rng.uniform(2.0, 10.0, len(ORGANS))
    volume = np.exp(rng.uniform(np.log(1.0), np.log(800.0), len(ORGANS)))
    for name, ml, voxels in (("liver", 1600.0, 11.0), ("spleen", 220.0, 7.0), ("kidney_left", 180.0, 6.0)):
        volume[ORGANS.index(name)], side[ORGANS.index(name)] = ml, voxels
    return weight / weight.sum(), side, volume


WEIGHT, SIDE, VOLUME_ML = _organ_table()


def synthetic_rows(
    first: int, count: int, seed: int = 0, rich_meta: bool = True
) -> tuple[pd.DataFrame, list[dict[str, int]], pd.DataFrame]:
    """Cases ``first`` .. ``first + count - 1`` of CT-like geometry and their non-empty organ rows, as add_rows takes
    them; metadata age, sex, site, and with ``rich_meta`` scanner, bmi and (in 35 % of cases) contrast_phase."""
    rng = np.random.default_rng([seed, first])
    nz = rng.integers(200, 701, count)
    shape = np.stack([np.full(count, 512), np.full(count, 512), nz], axis=1)
    xy = np.round(rng.uniform(0.6, 1.0, count), 4)
    spacing = np.stack([xy, xy, np.round(rng.uniform(0.8, 5.0, count), 3)], axis=1)
    origin = np.round(np.stack([-xy * 256, -xy * 256, -spacing[:, 2] * nz * rng.uniform(0.3, 0.7, count)], axis=1), 3)
    per_case = rng.integers(20, 31, count)
    organ = np.concatenate([rng.choice(len(ORGANS), size=n, replace=False, p=WEIGHT) for n in per_case])
    case = np.repeat(np.arange(count), per_case)
    rows = len(case)
    voxel_mm3 = spacing[case].prod(axis=1)
    ml = VOLUME_ML[organ] * rng.lognormal(0.0, 0.35, rows)
    extent = np.ceil(np.cbrt(ml * 1000.0)[:, None] * rng.uniform(0.8, 1.6, (rows, 3)) / spacing[case])
    extent = np.clip(extent, 1, shape[case]).astype(np.int64)
    voxels = np.clip(np.rint(ml * 1000.0 / voxel_mm3), 1, extent.prod(axis=1)).astype(np.int64)
    start = np.floor(rng.uniform(0, 1, (rows, 3)) * (shape[case] - extent + 1)).astype(np.int64)
    start[rng.random(rows) < 0.05, 2] = 0  # organs cut by the scan's first slice
    stop = start + extent
    centroid = np.round(start + (extent - 1) * rng.uniform(0.3, 0.7, (rows, 3)), 3)
    lps = np.round(origin[case] + spacing[case] * centroid, 3)
    ids = np.array([f"case{n:06d}" for n in range(first, first + count)], dtype=object)
    table = {
        "case_id": ids[case],
        "organ": np.array(ORGANS, dtype=object)[organ],
        "voxels": voxels,
        "volume_ml": np.round(voxels * voxel_mm3 / 1000.0, 6),
        **{f"bbox_{a}{e}": (start if e == "0" else stop)[:, n] for n, a in enumerate("ijk") for e in "01"},
        **{f"centroid_{a}": centroid[:, n] for n, a in enumerate("ijk")},
        **{f"centroid_lps_{a}_mm": lps[:, n] for n, a in enumerate("xyz")},
        "touches_border": ((start == 0) | (stop == shape[case])).any(axis=1),
    }
    metas = []
    for _ in range(count):
        meta: dict[str, object] = {
            "age": int(rng.integers(18, 91)),
            "sex": "F" if rng.random() < 0.5 else "M",
            "site": int(rng.integers(0, 40)),
        }
        if not rich_meta:
            metas.append(meta)
            continue
        meta |= {
            "scanner": ("Siemens Somatom", "GE Revolution", "Philips IQon", "Canon Aquilion")[int(rng.integers(0, 4))],
            "bmi": round(float(rng.normal(26.0, 4.5)), 1),
        }
        if rng.random() < 0.35:
            meta["contrast_phase"] = ("arterial", "venous", "delayed")[int(rng.integers(0, 3))]
        metas.append(meta)
    cases = pd.DataFrame({"case_id": ids, "token": [""] * count, "meta": metas}, dtype=object)
    return cases, [TOTAL_LABELS] * count, pd.DataFrame(table)


def store_blobs(folder: Path, blobs: dict[str, bytes], unused: list[str]) -> int:
    """Write index blobs as files named by their blob names (the manifest last), delete the unused ones; returns
    the bytes written."""
    for name, data in blobs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    for name in unused:
        (folder / name).unlink(missing_ok=True)
    return sum(map(len, blobs.values()))


def reader(folder: Path) -> Callable[[str], bytes | None]:
    return lambda name: (folder / name).read_bytes() if (folder / name).exists() else None
