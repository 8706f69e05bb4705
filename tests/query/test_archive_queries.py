"""MaskArchive.query / stats / verify against brute force, on every backend, and concurrent writers.

- a 200-case archive per backend (built once per module): ``query(expr)`` equals the ids computed
  by brute force from the *decoded* masks (``read_organ``) and the metadata; ``stats()`` has one
  row per case x organ of its mapping with brute-force statistics plus the metadata columns;
- ``verify_archive`` is clean on it; a label chunk swapped for a valid chunk of another case is
  reported as a voxel-count mismatch;
- ``.zarr``: two processes adding 20 cases each at once both end present and indexed.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import BACKEND_SUFFIXES
from helpers import case_content, read_packed, suffix_of, write_case_content, write_packed

from medmask_store import CorruptMetadata, MaskArchive, StorageSettings
from medmask_store.phantom import make_phantom
from medmask_store.query import ORGAN_FIELDS, ArchiveIndex
from medmask_store.storage.verify import verify_archive

pytestmark = pytest.mark.usefixtures("index_every_archive")

SHAPE = (16, 16, 16)
N_CASES = 200
FAST = StorageSettings(chunk_size=16, label_level=3, layer_level=3)  # one chunk per array, quick to write


@dataclass
class Truth:
    """One case as brute force sees it: decoded masks, geometry, metadata."""

    mapping: dict[str, int]
    masks: dict[str, np.ndarray]  # decoded with read_organ
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    directions: np.ndarray  # columns: world direction of the i, j, k axes
    meta: dict[str, object]
    stats: dict[str, dict[str, float]] = field(default_factory=dict)


def brute_stats(mask: np.ndarray, value: int, truth: Truth) -> dict[str, float]:
    voxels = int(np.count_nonzero(mask))
    row: dict[str, float] = {f: math.nan for f in ORGAN_FIELDS}
    row.update(value=value, voxels=voxels, volume_ml=voxels * float(np.prod(truth.spacing)) / 1000.0,
               touches_border=False)  # fmt: skip
    if voxels:
        coords = np.nonzero(mask)
        for axis, c in zip("ijk", coords):
            row[f"bbox_{axis}0"], row[f"bbox_{axis}1"] = int(c.min()), int(c.max()) + 1
        centroid = np.array([c.mean() for c in coords])
        for axis, c in zip("ijk", centroid):
            row[f"centroid_{axis}"] = float(c)
        world = np.asarray(truth.origin) + truth.directions @ (centroid * np.asarray(truth.spacing))
        for axis, c, ras_sign in zip("xyz", world, (-1, -1, 1)):  # RAS: LPS with x and y negated
            row[f"centroid_lps_{axis}_mm"], row[f"centroid_ras_{axis}_mm"] = float(c), ras_sign * float(c)
        row["touches_border"] = any(
            row[f"bbox_{a}0"] == 0 or row[f"bbox_{a}1"] == size for a, size in zip("ijk", mask.shape)
        )
    return row


def random_cases(n: int):
    """(case_id, masks, space, meta) of n random phantom cases; some lack organs or metadata fields."""
    rng = np.random.default_rng(2024)
    for i in range(n):
        masks, space = make_phantom(SHAPE, n_organs=int(rng.integers(6, 11)), n_empty=int(rng.integers(0, 4)), seed=i)
        meta: dict[str, object] = {"age": int(rng.integers(20, 90)), "sex": str(rng.choice(["F", "M"]))}
        if i % 3 == 0:
            meta["site"] = str(rng.choice(["A", "B"]))
        yield f"case{i:03d}", masks, space, meta


@pytest.fixture(scope="module", params=BACKEND_SUFFIXES, ids=lambda s: s.strip("."))
def big(request, tmp_path_factory):
    """(path, truth per case): a 200-case archive, closed, and brute force from its decoded masks."""
    path = tmp_path_factory.mktemp("big") / f"archive{request.param}"
    originals = {}
    with MaskArchive(path, "w", FAST) as archive, archive.batch():
        for case_id, masks, space, meta in random_cases(N_CASES):
            archive.add_case(case_id, masks, space=space, meta=meta)
            originals[case_id] = masks
    truth: dict[str, Truth] = {}
    with MaskArchive(path, "r") as archive:
        assert archive.case_ids() == sorted(originals)
        for case_id in archive.case_ids():
            case = archive[case_id]
            space = case.space
            directions = np.column_stack([space.x_orientation, space.y_orientation, space.z_orientation])
            t = Truth(case.mapping, {o: case.read_organ(o) for o in case.mapping}, tuple(space.spacing),
                      tuple(space.origin), directions.astype(float), case.meta)  # fmt: skip
            for organ, mask in t.masks.items():
                np.testing.assert_array_equal(mask, originals[case_id][organ], err_msg=f"{case_id}/{organ}")
                t.stats[organ] = brute_stats(mask, t.mapping[organ], t)
            truth[case_id] = t
    return path, truth


@pytest.fixture(scope="module")
def opened(big):
    path, truth = big
    with MaskArchive(path, "r") as archive:
        yield archive, truth


# -- queries --------------------------------------------------------------------------------


def get(t: Truth, organ: str, name: str) -> float:
    """Brute-force value of organ.field; NaN (never matches a comparison) when the organ is missing."""
    return t.stats[organ][name] if organ in t.stats else math.nan


def meta(t: Truth, name: str) -> object:
    return t.meta.get(name, math.nan)


def touches(t: Truth, organ: str) -> bool:
    return bool(organ in t.stats and t.stats[organ]["touches_border"])


EXPRESSIONS = {
    "liver.voxels > 50": lambda t: get(t, "liver", "voxels") > 50,
    "liver.volume_ml > 0.5 and age >= 60": lambda t: get(t, "liver", "volume_ml") > 0.5 and t.meta["age"] >= 60,
    "kidney_left.voxels > 100 or spleen.touches_border": lambda t: (
        get(t, "kidney_left", "voxels") > 100 or touches(t, "spleen")
    ),
    "not (stomach.voxels > 100)": lambda t: not get(t, "stomach", "voxels") > 100,
    # aorta is missing from some cases' mappings, empty in others: `not` is true for both
    "not (aorta.voxels > 10)": lambda t: not get(t, "aorta", "voxels") > 10,
    "not (gallbladder.voxels > 0)": lambda t: not get(t, "gallbladder", "voxels") > 0,
    'sex == "F" and aorta.bbox_i0 < 5': lambda t: t.meta["sex"] == "F" and get(t, "aorta", "bbox_i0") < 5,
    "liver.voxels + spleen.voxels > 250": lambda t: get(t, "liver", "voxels") + get(t, "spleen", "voxels") > 250,
    "aorta.voxels >= 0": lambda t: get(t, "aorta", "voxels") >= 0,
    "aorta.voxels == 0": lambda t: get(t, "aorta", "voxels") == 0,
    "inferior_vena_cava.voxels > 0 and age < 40": lambda t: (
        get(t, "inferior_vena_cava", "voxels") > 0 and t.meta["age"] < 40
    ),
    "liver.bbox_k1 == 16 or liver.bbox_k0 == 0": lambda t: (
        get(t, "liver", "bbox_k1") == 16 or get(t, "liver", "bbox_k0") == 0
    ),
    "kidney_right.centroid_k > 8": lambda t: get(t, "kidney_right", "centroid_k") > 8,
    "pancreas.centroid_lps_x_mm < -90": lambda t: get(t, "pancreas", "centroid_lps_x_mm") < -90,
    "40 < liver.voxels < 120": lambda t: 40 < get(t, "liver", "voxels") < 120,
    "liver.voxels / spleen.voxels > 1.5": lambda t: get(t, "liver", "voxels") / get(t, "spleen", "voxels") > 1.5,
    "age * 2 - 100 >= 40 and not (sex == 'M')": lambda t: t.meta["age"] * 2 - 100 >= 40 and t.meta["sex"] != "M",
    "age % 7 == 3 or -pancreas.voxels < -150": lambda t: t.meta["age"] % 7 == 3 or -get(t, "pancreas", "voxels") < -150,
    "site == 'A'": lambda t: meta(t, "site") == "A",
    "not (site == 'B') and liver.touches_border": lambda t: not meta(t, "site") == "B" and touches(t, "liver"),
    "rib_right_12.voxels > 0 and rib_right_12.value == kidney_left.value + 4": lambda t: (
        get(t, "rib_right_12", "voxels") > 0 and get(t, "rib_right_12", "value") == get(t, "kidney_left", "value") + 4
    ),
}


@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_query_equals_brute_force(opened, expression):
    archive, truth = opened
    expected = sorted(c for c, t in truth.items() if EXPRESSIONS[expression](t))
    assert 0 < len(expected) < len(truth), f"{expression!r} does not discriminate: {len(expected)} cases"
    assert archive.query(expression) == expected


def test_the_data_has_missing_and_empty_organs(opened):
    """Premises of the expressions above: some cases lack aorta / gallbladder, some have them empty."""
    _, truth = opened
    for organ in ("aorta", "gallbladder", "inferior_vena_cava"):
        missing = [c for c, t in truth.items() if organ not in t.mapping]
        empty = [c for c, t in truth.items() if organ in t.mapping and not t.masks[organ].any()]
        present = [c for c, t in truth.items() if organ in t.mapping and t.masks[organ].any()]
        assert missing and empty and present, organ
    assert any("site" not in t.meta for t in truth.values())


def test_query_without_organs_reads_no_voxels(big, monkeypatch):
    """Queries use the index only: no chunk is decoded."""
    from medmask_store.storage.chunked import ChunkedArray

    path, truth = big

    def refuse(self, *args, **kwargs):
        raise AssertionError("a query decoded voxels")

    monkeypatch.setattr(ChunkedArray, "__getitem__", refuse)
    with MaskArchive(path, "r") as archive:
        expected = sorted(c for c, t in truth.items() if get(t, "liver", "voxels") > 50)
        assert archive.query("liver.voxels > 50") == expected


QUERY_IN_A_FRESH_PROCESS = """
import sys
from medmask_store import MaskArchive
with MaskArchive(sys.argv[1]) as archive:
    print(",".join(archive.query(sys.argv[2])))
print(sorted(name for name in ("pandas", "numcodecs") if name in sys.modules))
"""


def test_a_query_imports_neither_pandas_nor_numcodecs(big):
    """Importing pandas takes most of a second: a cold query must not pay for it (tables do)."""
    path, truth = big
    expression = "liver.voxels > 50 and age >= 50"
    expected = sorted(c for c, t in truth.items() if get(t, "liver", "voxels") > 50 and (meta(t, "age") or 0) >= 50)
    assert 0 < len(expected) < len(truth)
    done = subprocess.run(
        [sys.executable, "-c", QUERY_IN_A_FRESH_PROCESS, str(path), expression], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    answer, imported = done.stdout.splitlines()
    assert answer.split(",") == expected
    assert imported == "[]"


# -- stats ----------------------------------------------------------------------------------


def test_stats_equal_brute_force(opened):
    archive, truth = opened
    stats = archive.stats(include_empty=True)
    assert list(stats.columns[: 2 + len(ORGAN_FIELDS)]) == ["case_id", "organ", *ORGAN_FIELDS]
    assert set(stats.columns[2 + len(ORGAN_FIELDS) :]) == {"age", "sex", "site"}
    # exactly one row per case x organ of its mapping
    pairs = list(zip(stats["case_id"], stats["organ"]))
    assert len(pairs) == len(set(pairs))
    assert sorted(pairs) == sorted((c, o) for c, t in truth.items() for o in t.mapping)
    assert pairs == sorted(pairs)  # sorted by case, organ
    integer_like = ("value", "voxels", *(f"bbox_{a}{e}" for a in "ijk" for e in "01"))
    for row in stats.itertuples(index=False):
        t = truth[row.case_id]
        expected = t.stats[row.organ]
        where = f"{row.case_id}/{row.organ}"
        for name in ORGAN_FIELDS:
            got, want = getattr(row, name), expected[name]
            if isinstance(want, float) and math.isnan(want):
                assert pd.isna(got), (where, name, got)
            elif name in integer_like or name == "touches_border":
                assert got == want, (where, name, got, want)
            elif name == "volume_ml":
                assert got == pytest.approx(want, abs=1e-6), (where, name)
            else:  # centroids are stored rounded to 3 decimals
                assert got == pytest.approx(want, abs=1.5e-3), (where, name)
        assert row.age == t.meta["age"] and row.sex == t.meta["sex"]
        site = t.meta.get("site")
        assert (isinstance(row.site, float) and math.isnan(row.site)) if site is None else row.site == site


def test_stats_has_empty_organs_with_zero_voxels(opened):
    archive, truth = opened
    stats = archive.stats(include_empty=True)
    empty = stats[stats["voxels"] == 0]
    assert len(empty) == sum(1 for t in truth.values() for m in t.masks.values() if not m.any()) > 0
    assert (empty["volume_ml"] == 0).all() and not empty["touches_border"].astype(bool).any()
    assert empty["bbox_i0"].isna().all() and empty["centroid_lps_x_mm"].isna().all()


def test_index_of_reader_equals_truth(opened):
    archive, truth = opened
    index = archive.index()
    assert index.case_ids == sorted(truth)
    stored = archive.stored_index()
    assert stored is not None and stored.case_ids == sorted(truth)
    rows = stored.organs.astype({"case_id": str, "organ": str})
    assert dict(zip(zip(rows["case_id"], rows["organ"]), rows["voxels"])) == {
        (c, o): int(t.masks[o].sum()) for c, t in truth.items() for o in t.mapping if t.masks[o].any()
    }


def test_verify_clean(opened):
    archive, _ = opened
    assert verify_archive(archive) == []


# -- verify: a valid chunk of the wrong case -------------------------------------------------


def case_pair(path: Path) -> None:
    """Two cases with the same organs, shape and chunking but different voxels."""
    with MaskArchive(path, "w") as archive:
        for case_id, seed in (("a", 1), ("b", 2)):
            masks, space = make_phantom(SHAPE, n_organs=6, n_empty=0, seed=seed)
            archive.add_case(case_id, masks, space=space)


def copy_label_chunks(path: Path, source: str, target: str, metadata: bool = False) -> None:
    """Replace the target case's stored label-volume chunks by the source case's (valid, checksummed); with
    ``metadata``, its Zarr metadata document too (it names the case's organs)."""
    suffix = suffix_of(path)
    members_copied = ["cases/{}/label_volume/c/0/0/0"] + (["cases/{}/label_volume/zarr.json"] if metadata else [])
    if suffix == ".zarr":
        for member in members_copied:
            shutil.copyfile(path / member.format(source), path / member.format(target))
    elif suffix == ".zarr.zip":
        with zipfile.ZipFile(path) as zf:
            members = {i.filename: zf.read(i) for i in zf.infolist()}
        for member in members_copied:
            members[member.format(target)] = members[member.format(source)]
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    elif suffix == ".msk":
        catalog, data = read_packed(path)
        catalog["cases"][target]["chunks"]["label_volume"] = catalog["cases"][source]["chunks"]["label_volume"]
        write_packed(path, catalog, data)
    else:
        with h5py.File(path, "r+") as f:
            src, dst = f[f"cases/{source}/label_volume"], f[f"cases/{target}/label_volume"]
            assert src.id.get_num_chunks() == dst.id.get_num_chunks() == 1
            mask, data = src.id.read_direct_chunk((0, 0, 0))
            dst.id.write_direct_chunk((0, 0, 0), data, mask)


def test_verify_and_reads_report_chunks_of_another_case(archive_path):
    """Valid, checksummed chunks of another case: the manifest's chunk digest tells them apart."""
    case_pair(archive_path)
    copy_label_chunks(archive_path, "a", "b")
    with MaskArchive(archive_path) as archive:
        problems = verify_archive(archive)
        assert len(problems) == 1 and problems[0].startswith("case 'b': CorruptMetadata: "), problems
        assert "stored chunks do not match" in problems[0]
        with pytest.raises(CorruptMetadata, match=rf"^{re.escape(str(archive_path))}: case 'b'/label_volume: "):
            archive["b"].read_labels()
        archive["a"].read_labels()  # the other case is intact


def test_verify_reports_voxel_counts_that_disagree_with_stats(archive_path):
    """A crafted archive (chunks and array metadata of another case, manifest edited to match, attributes
    resealed): every checksum passes, and verify still finds the voxel counts wrong."""
    case_pair(archive_path)
    with MaskArchive(archive_path) as archive:
        assert verify_archive(archive) == []
        a, b = archive["a"], archive["b"]
        assert a.mapping == b.mapping and a.stats != b.stats
    copy_label_chunks(archive_path, "a", "b", metadata=True)
    content = case_content(archive_path, "b")
    content["arrays"]["label_volume"] = case_content(archive_path, "a")["arrays"]["label_volume"]
    write_case_content(archive_path, "b", content)
    with MaskArchive(archive_path) as archive:
        problems = verify_archive(archive)
        assert problems
        assert all(p.startswith("case 'b': organ ") for p in problems), problems
        # found = voxels of the value in the label volume (now a's) + b's layer voxels; stats = b's
        info_b = archive["b"].info
        labels = archive["a"].stored_labels[...]
        layers = archive["b"].stored_layers
        expected = []
        for organ, value in info_b.mapping.items():
            found = int(np.count_nonzero(labels == value))
            if organ in info_b.layer_names:
                found += int(np.count_nonzero(layers[info_b.layer_names.index(organ)]))
            if found != info_b.stats[organ].voxels:
                expected.append(f"case 'b': organ {organ!r} has {found} voxels, its statistics say {info_b.stats[organ].voxels}")
        assert expected and sorted(problems) == sorted(expected)


# -- metadata whose names collide with index columns -----------------------------------------


@pytest.fixture
def collision_archive(tmp_path):
    path = tmp_path / "archive.h5"
    with MaskArchive(path, "w") as archive:
        for i, meta in enumerate([{"age": 70, "case_id": "someone-else"}, {"age": 50}]):
            masks, space = make_phantom(SHAPE, n_organs=6, n_empty=0, seed=i)
            archive.add_case(f"c{i}", masks, space=space, meta=meta)
    return path


def test_metadata_field_named_case_id_does_not_hide_the_case(collision_archive):
    with MaskArchive(collision_archive) as archive:
        assert archive.query("age == 70") == ["c0"]


def test_metadata_field_named_like_a_statistic_keeps_the_statistics_columns(tmp_path):
    path = tmp_path / "archive.zarr"
    with MaskArchive(path, "w") as archive:
        masks, space = make_phantom(SHAPE, n_organs=6, n_empty=0, seed=1)
        archive.add_case("c0", masks, space=space, meta={"voxels": 3, "organ": "x"})
    with MaskArchive(path) as archive:
        stats = archive.stats()
        assert list(stats.columns[: 2 + len(ORGAN_FIELDS)]) == ["case_id", "organ", *ORGAN_FIELDS]


# -- concurrent writers (.zarr) --------------------------------------------------------------

WRITER = r"""
import sys
import time
from pathlib import Path

from medmask_store import MaskArchive, StorageSettings
from medmask_store.phantom import make_phantom

path, prefix, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
offset = 0 if prefix == "p" else 1000
cases = [make_phantom((16, 16, 16), n_organs=6 + i % 4, n_empty=i % 3, seed=offset + i) for i in range(20)]
archive = MaskArchive(path, "a")
print("ready", flush=True)
deadline = time.monotonic() + 60
while not go.exists():
    if time.monotonic() > deadline:
        sys.exit("never told to start")
    time.sleep(0.0005)
for i, (masks, space) in enumerate(cases):
    archive.add_case(f"{prefix}{i:02d}", masks, space=space, meta={"writer": prefix, "i": i})
archive.close()
print("done", flush=True)
"""


@pytest.mark.parametrize("attempt", range(3))
def test_zarr_two_processes_add_cases_at_once(tmp_path, attempt):
    path = tmp_path / "archive.zarr"
    go = tmp_path / "go"
    MaskArchive(path, "w").close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), prefix, str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for prefix in ("p", "q")
    ]
    try:
        for proc in procs:
            assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        go.touch()  # both writers hold the archive open; start them at the same time
        outputs = [proc.communicate(timeout=120) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0 and out.strip() == "done", err
    expected = sorted(f"{p}{i:02d}" for p in "pq" for i in range(20))
    with MaskArchive(path, "r") as archive:
        assert archive.case_ids() == expected
        stored = archive.stored_index()
        assert stored is not None
        assert stored.case_ids == expected  # no lost entry
        tokens = archive._backend.case_tokens()
        truth = ArchiveIndex.from_cases((archive[c].info, tokens[c]) for c in expected)
        assert stored == truth
        assert verify_archive(archive) == []
        assert archive.query("writer == 'p'") == expected[:20]
        assert archive.query("writer == 'q' and i < 5") == expected[20:25]
    staging = path / ".staging"
    assert not staging.exists() or not any(staging.iterdir())
