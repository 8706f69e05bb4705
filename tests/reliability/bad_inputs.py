"""Hostile and broken inputs: files, ids, names, masks, spaces, queries and crafted archives.

Each :class:`BadInput` prepares its input in a work folder beside an intact archive
(``archive.zarr``, one case) and then acts on it as a user would. The act must raise a
``MaskStoreError`` subclass naming what is wrong and leave every file of the work folder
byte-identical (:func:`run_bad_input`); ``benchmarks/reliability.py`` also measures each
act's peak memory in a fresh process.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zstandard
from harness import SETTINGS, add_truth_case
from helpers import (
    GOOD_MASK,
    GOOD_NII_GZ,
    HOSTILE_NIFTI,
    case_content,
    gzipped,
    header_claiming,
    packed_header,
    read_packed,
    reseal_packed_case,
    write_case_content,
    write_gzip_bomb,
    write_packed,
    write_zip_members,
)
from spacetransformer import Space

from medmask_store import MaskArchive, MaskStoreError
from medmask_store.io.nifti import export_mask_folder
from medmask_store.io.sources import discover_cases
from medmask_store.model.manifest import crc32c
from medmask_store.storage.packed import CATALOG_DICTIONARY
from medmask_store.storage.verify import verify_archive

ARCHIVE = "archive.zarr"


@dataclass(frozen=True)
class BadInput:
    name: str
    group: str  # file, id, organ name, mask, space, query, crafted archive
    act: Callable[[Path], object]
    prepare: Callable[[Path], object] = lambda workdir: None
    heavy: bool = False  # preparing it writes gigabytes: the benchmark runs it, the tests do not


def intact_archive(workdir: Path) -> Path:
    """The intact archive every act starts beside: case "c0" (a phantom with a binary layer)."""
    path = workdir / ARCHIVE
    if not path.exists():
        with MaskArchive(path, "w", SETTINGS["default"]) as archive:
            add_truth_case(archive, "c0", 0)
    return path


# -- files ---------------------------------------------------------------------------------------


def _import(source: Path) -> Callable[[Path], object]:
    """Import ``source`` (relative to the work folder) into the archive, as ``medmask-store import`` does."""

    def act(workdir: Path) -> None:
        with MaskArchive(workdir / ARCHIVE, "a", SETTINGS["default"]) as archive:
            for case in discover_cases(workdir / source, {"liver": 1}):
                archive.add_case(case.case_id, case.load())

    return act


def _file(name: str, content: bytes) -> BadInput:
    return BadInput(f"file {name}", "file", _import(Path(name)), lambda w: (w / name).write_bytes(content))


def _folder(name: str, files: dict[str, bytes]) -> BadInput:
    def prepare(workdir: Path) -> None:
        (workdir / name).mkdir()
        for file, content in files.items():
            (workdir / name / file).write_bytes(content)

    return BadInput(f"mask folder: {name}", "file", _import(Path(name)), prepare)


def _nifti(mask: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    import nibabel as nib

    return gzipped(nib.Nifti1Image(mask, np.eye(4) if affine is None else affine).to_bytes())


FILES = [_file(name, content) for name, content in HOSTILE_NIFTI.items()] + [
    BadInput(
        "file gzip bomb (1300³ voxels over 64 MiB of zeros)", "file", _import(Path("bomb.nii.gz")),
        lambda w: write_gzip_bomb(w / "bomb.nii.gz", header_claiming((1300, 1300, 1300)), 2**26), heavy=True,
    ),
    _folder("value_2", {"liver.nii.gz": GOOD_NII_GZ, "spleen.nii.gz": _nifti(GOOD_MASK * 2)}),
    _folder("other_shape", {"liver.nii.gz": GOOD_NII_GZ, "spleen.nii.gz": _nifti(GOOD_MASK[:-1])}),
    _folder("other_affine", {"liver.nii.gz": GOOD_NII_GZ, "spleen.nii.gz": _nifti(GOOD_MASK, np.diag([2.0, 1, 1, 1]))}),
    _folder("float_fractions", {"liver.nii.gz": _nifti(GOOD_MASK * np.float32(0.5))}),
    _folder("negative", {"liver.nii.gz": _nifti(GOOD_MASK.astype(np.int16) * -1)}),
    _folder("too_large_label", {"liver.nii.gz": _nifti(GOOD_MASK.astype(np.int32) * 70000)}),
    _folder("organ_name_with_newline", {"liv\ner.nii.gz": GOOD_NII_GZ}),
]


def _label_map(content: bytes) -> BadInput:
    def act(workdir: Path) -> None:
        from medmask_store.io.nifti import load_multilabel

        with MaskArchive(workdir / ARCHIVE, "a") as archive:
            archive.add_case("x", load_multilabel(workdir / "labels.nii.gz", workdir / "map.json"))

    def prepare(workdir: Path) -> None:
        (workdir / "labels.nii.gz").write_bytes(GOOD_NII_GZ)
        (workdir / "map.json").write_bytes(content)

    return BadInput(f"label map {content[:30]!r}", "file", act, prepare)


LABEL_MAPS = [
    _label_map(content)
    for content in (b"not json", b"[1, 2]", b'{"../x": 1}', b'{"liver": 0}', b'{"liver": 70000}', b"\xff\xfe", b"[" * 100_000)
]

# -- ids, names, masks, spaces -----------------------------------------------------------------------


def _add(case_id: str = "x", masks: object = None, space: Space | None = None, **kwargs: object) -> Callable[[Path], object]:
    def act(workdir: Path) -> None:
        data = {"liver": GOOD_MASK.astype(bool)} if masks is None else masks
        with MaskArchive(workdir / ARCHIVE, "a") as archive:
            archive.add_case(case_id, data, space=space, **kwargs)  # type: ignore[arg-type]

    return act


IDS = [
    BadInput(f"case id {case_id[:20]!r}", "id", _add(case_id))
    for case_id in ("", "../x", "a/b", ".hidden", "x\x00y", " padded", "zarr.json", "x" * 300, "c0")  # c0 exists
]
ORGAN_NAMES = [
    BadInput(f"organ name {name[:20]!r}", "organ name", _add(masks={name: GOOD_MASK.astype(bool)}))
    for name in ("../x", "a/b", "", "..", "x\ny", "o" * 249)
]
MASKS = [
    BadInput("mask of another shape", "mask", _add(masks={"a": GOOD_MASK.astype(bool), "b": GOOD_MASK[:-1].astype(bool)})),
    BadInput("float mask", "mask", _add(masks={"a": GOOD_MASK.astype(np.float32)})),
    BadInput("mask holding 2", "mask", _add(masks={"a": GOOD_MASK * 2})),
    BadInput("no masks", "mask", _add(masks={})),
    BadInput("2-D mask", "mask", _add(masks={"a": GOOD_MASK[0].astype(bool)})),
    BadInput("mapping without a mask", "mask", _add(mapping={"a": 1, "b": 2})),
    BadInput("label volume with an unmapped value", "mask", _add(masks=GOOD_MASK * 3, mapping={"liver": 1})),
    BadInput("label volume of floats", "mask", _add(masks=GOOD_MASK.astype(np.float64), mapping={"liver": 1})),
    BadInput("label value 0", "mask", _add(masks=GOOD_MASK, mapping={"liver": 0})),
]
SPACES = [
    BadInput("space with a NaN origin", "space", _add(space=Space(shape=GOOD_MASK.shape, origin=(0.0, float("nan"), 0.0)))),
    BadInput("space of another shape", "space", _add(space=Space(shape=(5, 5, 5)))),
]

# -- queries ---------------------------------------------------------------------------------------


def _query(expression: str) -> Callable[[Path], object]:
    def act(workdir: Path) -> None:
        with MaskArchive(workdir / ARCHIVE) as archive:
            archive.query(expression)

    return act


QUERIES = [
    BadInput(f"query {label}", "query", _query(expression))
    for label, expression in {
        "'x' * 3000000000": "liver.voxels > 0 and 'x' * 3000000000 == 'y'",
        "metadata text × 3e9": "site * 3000000000 == 'y'",
        "100k terms": " + ".join(["liver.voxels"] * 100_000) + " > 0",
        "200k parentheses": "(" * 100_000 + "age" + ")" * 100_000 + " > 1",
        "5000-digit number": "age > " + "9" * 5000,
        "a call": "__import__('os').system('true') == 0",
        "a subscript": "liver.voxels[0] > 0",
        "an unknown organ": "lvier.voxels > 0",
        "a dunder attribute": "liver.__class__ == 1",
    }.items()
]

# -- crafted archives (every checksum recomputed: only the checks on names and sizes stop them) --------


def _crafted(label: str, edit: Callable[[dict], None], act: str = "read") -> BadInput:
    def prepare(workdir: Path) -> None:
        content = case_content(intact_archive(workdir), "c0")
        edit(content)
        write_case_content(workdir / ARCHIVE, "c0", content)

    return BadInput(f"crafted archive: {label}", "crafted archive", ACTS[act], prepare)


def _read_everything(workdir: Path) -> None:
    with MaskArchive(workdir / ARCHIVE) as archive:
        for case_id in archive.case_ids():
            archive[case_id].read_labels()


def _export(workdir: Path) -> None:
    with MaskArchive(workdir / ARCHIVE) as archive:
        export_mask_folder(archive["c0"], workdir / "out" / "a" / "b")


def _verify(workdir: Path) -> None:
    with MaskArchive(workdir / ARCHIVE) as archive:
        problems = verify_archive(archive)
    if problems:
        raise _Reported(problems[0])


class _Reported(MaskStoreError):
    """``verify`` found the problem (it reports instead of raising)."""


ACTS = {"read": _read_everything, "export": _export, "verify": _verify}


def _rename_organ(content: dict, new: str) -> None:
    content["mapping"][new] = content["mapping"].pop("liver")
    content["stats"]["organs"] = [new if o == "liver" else o for o in content["stats"]["organs"]]


def _chunk_1024(workdir: Path) -> None:
    path = intact_archive(workdir)
    key = path / "cases/c0/label_volume/zarr.json"
    metadata = json.loads(key.read_text())
    metadata["codecs"][0]["configuration"]["chunk_shape"] = [1024] * 3
    metadata["chunk_grid"]["configuration"]["chunk_shape"] = [1024] * 3
    key.write_text(json.dumps(metadata))
    content = case_content(path, "c0")
    content["arrays"]["label_volume"]["chunks"] = [1024] * 3
    content["arrays"]["label_volume"]["metadata_crc32c"] = crc32c(key.read_bytes())
    write_case_content(path, "c0", content)


def _packed(workdir: Path) -> Path:
    path = workdir / "crafted.msk"
    with MaskArchive(path, "w", SETTINGS["default"]) as archive:
        add_truth_case(archive, "c0", 0)
    return path


def _catalog_bomb(workdir: Path) -> None:
    """A .msk whose catalog frame (~64 KB) declares and holds 2 GiB, streamed so no process holds it."""
    head, pad, tail = b'{"attributes":{},"cases":{},"index":null,"pad":"', 2 * 2**30, b'"}'
    compressor = zstandard.ZstdCompressor(level=1, dict_data=CATALOG_DICTIONARY)
    frame = io.BytesIO()
    with compressor.stream_writer(frame, size=len(head) + pad + len(tail), closefd=False) as writer:
        writer.write(head)
        for _ in range(pad // 2**20):
            writer.write(b" " * 2**20)
        writer.write(tail)
    (workdir / "crafted.msk").write_bytes(packed_header(frame.getvalue()) + frame.getvalue())


def _packed_offset(workdir: Path) -> None:
    path = _packed(workdir)
    catalog, data = read_packed(path)
    catalog["cases"]["c0"]["chunks"]["label_volume"][0][-2:] = [2**62, 2**40]
    reseal_packed_case(catalog, "c0", data)
    write_packed(path, catalog, data)


def _zip_escape(workdir: Path) -> None:
    path = workdir / "crafted.zarr.zip"
    with MaskArchive(path, "w", SETTINGS["default"]) as archive:
        add_truth_case(archive, "c0", 0)
    import zipfile

    with zipfile.ZipFile(path) as zf:
        members = {info.filename: zf.read(info) for info in zf.infolist()}
    members["cases/../../../escaped"] = b"{}"
    write_zip_members(path, members)


def _open_for_writing(name: str) -> Callable[[Path], object]:
    def act(workdir: Path) -> None:
        with MaskArchive(workdir / name, "a") as archive:
            for case_id in archive.case_ids():
                archive[case_id].read_labels()

    return act


def _nested_json(workdir: Path) -> None:
    path = intact_archive(workdir) / "cases/c0/zarr.json"
    path.write_text('{"attributes": {"medmask_store": ' + "[" * 100_000 + "]" * 100_000 + "}}")


def _huge_document(workdir: Path) -> None:
    path = intact_archive(workdir) / "cases/c0/zarr.json"
    with open(path, "w") as handle:
        handle.write('{"attributes": {"medmask_store": {"pad": "')
        for _ in range(20):
            handle.write(" " * 2**20)
        handle.write('"}}}')


def _pickled_index(workdir: Path) -> None:
    """A stored index whose case-id column is a pickle, its checksum and declared size valid."""
    import pickle

    from medmask_store.codecs.chunks import append_crc32c, strip_crc32c
    from medmask_store.query.index import MANIFEST, ArchiveIndex

    path = intact_archive(workdir)
    with MaskArchive(path) as archive:
        blobs, _ = ArchiveIndex.from_cases([(archive["c0"].info, "")]).changes()
    manifest = json.loads(zstandard.ZstdDecompressor().decompress(strip_crc32c(blobs[MANIFEST])))
    segment = manifest["segments"][0]
    payload = pickle.dumps(print)
    segment["blobs"]["case_id"][1] = len(payload)
    blobs[f"{segment['name']}/case_id"] = append_crc32c(zstandard.ZstdCompressor().compress(payload))
    blobs[MANIFEST] = append_crc32c(zstandard.ZstdCompressor().compress(json.dumps(manifest).encode()))
    for name, data in blobs.items():
        (path / "index" / name).parent.mkdir(parents=True, exist_ok=True)
        (path / "index" / name).write_bytes(data)


CRAFTED = [
    _crafted("organ name ../../evil", lambda c: _rename_organ(c, "../../evil"), act="export"),
    _crafted("organ name ../../evil, verified", lambda c: _rename_organ(c, "../../evil"), act="verify"),
    _crafted("organ name of 300 bytes", lambda c: _rename_organ(c, "o" * 300)),
    _crafted("shape of 2**40 voxels", lambda c: c["space"].__setitem__("shape", [2**14, 2**13, 2**13])),
    # statistics are checked where they are used (organ reads, exports), not by label reads
    _crafted("bounding box beyond the volume", lambda c: c["stats"]["bbox"][0].__setitem__(1, 10**6), act="export"),
    _crafted("voxel count beyond the bounding box", lambda c: c["stats"]["voxels"].__setitem__(0, 10**9), act="export"),
    _crafted("layer origin inside a chunk", lambda c: c["layer_origins"][0].__setitem__(0, 3)),
    _crafted("unknown array name", lambda c: c["arrays"].__setitem__("../../x", c["arrays"]["label_volume"])),
    BadInput("crafted archive: chunk shape 1024³", "crafted archive", _read_everything, _chunk_1024),
    BadInput(
        "crafted archive: 2 GiB .msk catalog in a small frame", "crafted archive", _open_for_writing("crafted.msk"),
        _catalog_bomb, heavy=True,
    ),
    BadInput("crafted archive: .msk chunk at offset 2**62", "crafted archive", _open_for_writing("crafted.msk"), _packed_offset),
    BadInput("crafted archive: zip member escaping the archive", "crafted archive", _open_for_writing("crafted.zarr.zip"), _zip_escape),
    BadInput("crafted archive: zarr.json nested 100,000 deep", "crafted archive", _read_everything, _nested_json),
    BadInput("crafted archive: 20 MiB zarr.json", "crafted archive", _read_everything, _huge_document),
    BadInput("crafted archive: pickled index with a valid checksum", "crafted archive", _query("age >= 0"), _pickled_index),
]

BAD_INPUTS = FILES + LABEL_MAPS + IDS + ORGAN_NAMES + MASKS + SPACES + QUERIES + CRAFTED
BY_NAME = {bad.name: bad for bad in BAD_INPUTS}
assert len(BY_NAME) == len(BAD_INPUTS), "bad input names must be unique"


@dataclass(frozen=True)
class BadOutcome:
    error: str  # the exception's type, "none" if nothing was raised
    named: bool  # a MaskStoreError subclass
    unchanged: bool  # every file of the work folder byte-identical
    message: str


def prepare(bad: BadInput, workdir: Path) -> None:
    intact_archive(workdir)
    bad.prepare(workdir)


def fingerprint(workdir: Path) -> dict[str, str]:
    """Every file under ``workdir`` and a digest of its bytes (digests, not bytes: the memory measured is the act's)."""
    return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(workdir.rglob("*")) if p.is_file()}


def run_bad_input(bad: BadInput, workdir: Path) -> BadOutcome:
    """Act on a prepared work folder; what was raised, and whether the folder is unchanged."""
    before = fingerprint(workdir)
    try:
        bad.act(workdir)
    except MaskStoreError as exc:
        error, named, message = type(exc).__name__, True, str(exc)
    except Exception as exc:  # noqa: BLE001 - an exception that is not ours is what this looks for
        error, named, message = type(exc).__name__, False, str(exc)
    else:
        error, named, message = "none", False, ""
    return BadOutcome(error, named, fingerprint(workdir) == before, message.splitlines()[0][:300] if message else "")

