"""Small helpers shared by several test modules (import as ``from helpers import ...``)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import zstandard
from click.testing import CliRunner, Result
from hypothesis import strategies as st
from spacetransformer import Space

from medmask_store import Case, StorageSettings
from medmask_store.cli.main import main
from medmask_store.model.geometry import nifti_affine
from medmask_store.storage.packed import CATALOG_DICTIONARY

# -- masks and archives ----------------------------------------------------------------------


def box(shape: tuple[int, ...], *bounds: tuple[int, int]) -> np.ndarray:
    """Boolean mask, True inside the half-open box ``bounds`` (one (start, stop) per axis)."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, b) for a, b in bounds)] = True
    return mask



def tilted_space(shape: tuple[int, int, int], flip: bool = False) -> Space:
    """An LPS Space rotated about z and tilted about x (its slices are not axial), anisotropic spacing;
    ``flip``: its second axis reversed (left-handed)."""
    a, b = np.deg2rad(17.0), np.deg2rad(-25.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    x, y, z = (rz @ rx @ np.diag([1.0, -1.0 if flip else 1.0, 1.0])).T.tolist()
    return Space(shape=shape, origin=(-210.5, 12.25, -305.0), spacing=(0.9, 1.1, 3.0),
                 x_orientation=x, y_orientation=y, z_orientation=z)  # fmt: skip

def chunk_voxels(mask: np.ndarray, edge: int = StorageSettings().chunk_size) -> np.ndarray:
    """A mask's voxels per chunk of an ``edge``³ grid, counted directly (what ``Case.organ_chunk_voxels`` must give)."""
    grid = [-(-n // edge) for n in mask.shape]
    padded = np.zeros([g * edge for g in grid], dtype=np.int64)
    padded[tuple(slice(0, n) for n in mask.shape)] = mask
    return padded.reshape(grid[0], edge, grid[1], edge, grid[2], edge).sum(axis=(1, 3, 5))


def suffix_of(archive_path: Path) -> str:
    """The backend suffix the ``archive_path`` fixture was made with ("archive<suffix>")."""
    assert archive_path.name.startswith("archive")
    return archive_path.name[len("archive"):]


def assert_case_matches(case: Case, masks: dict[str, np.ndarray]) -> None:
    """``case`` holds exactly the organs of ``masks``; each reads back as a bool array equal to its mask,
    and its stored voxel count is the mask's."""
    assert sorted(case.organs) == sorted(masks)
    for name, mask in masks.items():
        got = case.read_organ(name)
        assert got.dtype == np.bool_, name
        assert got.shape == mask.shape, name
        np.testing.assert_array_equal(got, mask, err_msg=name)
        assert case.stats[name].voxels == int(mask.sum()), name


# -- files on disk ---------------------------------------------------------------------------


def snapshot(path: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and directory (None) at ``path``, whatever the backend's layout."""
    if path.is_file():
        return {"": path.read_bytes()}
    result: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(path):
        for d in dirs:
            result[os.path.relpath(os.path.join(root, d), path) + "/"] = None
        for f in files:
            full = os.path.join(root, f)
            result[os.path.relpath(full, path)] = Path(full).read_bytes()
    return result


def side_files(path: Path) -> list[str]:
    """Lock files and working copies a single-file backend keeps beside ``path``."""
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}."))


def flip_byte(path: Path, position: int) -> None:
    """XOR the byte at ``position`` of the file ``path`` with 0x5A, in place."""
    with open(path, "r+b") as handle:
        handle.seek(position)
        byte = handle.read(1)
        assert len(byte) == 1, (path, position)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0x5A]))


# -- hostile NIfTI files --------------------------------------------------------------------


def header_claiming(
    shape: tuple[int, ...],
    dtype: object = np.uint8,
    affine: np.ndarray | None = None,
    header_class: type[nib.Nifti1Header] = nib.Nifti1Header,
) -> bytes:
    """A single-file NIfTI header (and its empty extension flag) declaring ``shape`` voxels of ``dtype``;
    the voxels are the caller's to append, or not."""
    header = header_class()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = header.single_vox_offset
    if affine is not None:
        header.set_sform(affine, code=1)  # set_sform stores any matrix; the qform would need a decomposable one
    return header.binaryblock + bytes(4)


def gzipped(data: bytes, isize: int | None = None) -> bytes:
    """``data`` as one gzip member; ``isize`` overwrites the trailer's size field (a lie)."""
    packed = gzip.compress(data, mtime=0)
    return packed if isize is None else packed[:-4] + struct.pack("<I", isize % 2**32)


def write_gzip_bomb(path: Path, header: bytes, zero_bytes: int, isize: int | None = None) -> Path:
    """``header`` followed by ``zero_bytes`` zeros, streamed through gzip 1 MiB at a time; ``isize``
    overwrites the trailer's size field (a lie)."""
    zeros = bytes(2**20)
    with gzip.GzipFile(path, "wb", compresslevel=1, mtime=0) as stream:
        stream.write(header)
        for start in range(0, zero_bytes, len(zeros)):
            stream.write(zeros[: zero_bytes - start])
    if isize is not None:
        with open(path, "r+b") as raw:
            raw.seek(-4, os.SEEK_END)
            raw.write(struct.pack("<I", isize % 2**32))
    return path


#: A valid binary mask (identity affine) and the bytes of its single-file NIfTI, raw and gzipped.
GOOD_MASK = (np.random.default_rng(7).random((20, 17, 12)) < 0.3).astype(np.uint8)
GOOD_NII = nib.Nifti1Image(GOOD_MASK, np.eye(4)).to_bytes()
GOOD_NII_GZ = gzipped(GOOD_NII)
_VOXELS = GOOD_MASK.tobytes(order="F")
_NOISE = np.random.default_rng(11).bytes(4096)

#: File name -> content of files no NIfTI import may crash on or over-allocate for.
HOSTILE_NIFTI: dict[str, bytes] = {
    "truncated_in_gzip_header.nii.gz": GOOD_NII_GZ[:5],
    "truncated_in_nifti_header.nii.gz": GOOD_NII_GZ[:30],
    "truncated_in_voxels.nii.gz": GOOD_NII_GZ[: len(GOOD_NII_GZ) // 2],
    "truncated_before_trailer.nii.gz": GOOD_NII_GZ[:-8],
    "truncated_in_trailer.nii.gz": GOOD_NII_GZ[:-1],
    "truncated_in_header.nii": GOOD_NII[:200],
    "truncated_after_header.nii": GOOD_NII[:352],
    "truncated_in_voxels.nii": GOOD_NII[: 352 + len(_VOXELS) // 2],
    "empty.nii.gz": b"",
    "empty.nii": b"",
    "not_gzip.nii.gz": GOOD_NII,
    "gzip_named_nii.nii": GOOD_NII_GZ,
    "random_bytes.nii.gz": _NOISE,
    "random_bytes.nii": _NOISE,
    "text.nii.gz": b"liver segmentation, see attached\n",
    "gzipped_text.nii.gz": gzipped(b"liver segmentation, see attached\n" * 40),
    "fake_header.nii.gz": gzipped(struct.pack("<i", 348) + _NOISE[:340] + b"n+1\0" + _NOISE[340:1000]),
    "corrupt_deflate.nii.gz": GOOD_NII_GZ[:10] + b"\xff" + GOOD_NII_GZ[11:],
    "header_bomb.nii.gz": gzipped(header_claiming((2000, 2000, 1000))),
    "header_bomb.nii": header_claiming((2000, 2000, 1000)),
    "header_bomb_below_limit.nii.gz": gzipped(header_claiming((1000, 1000, 600))),
    "header_bomb_below_limit.nii": header_claiming((1000, 1000, 600)),
    "image_bytes_bomb.nii.gz": gzipped(header_claiming((1024, 1024, 1024), dtype=np.int16)),
    "nifti2_header_bomb.nii.gz": gzipped(header_claiming((2**20,) * 3, header_class=nib.Nifti2Header)),
    "voxels_inside_header.nii.gz": gzipped(GOOD_NII[:108] + struct.pack("<f", 0.0) + GOOD_NII[112:]),
    "data_shorter.nii.gz": gzipped(GOOD_NII[:-100]),
    "data_longer.nii.gz": gzipped(GOOD_NII + bytes(1000)),
    "data_shorter_trailer_lies.nii.gz": gzipped(GOOD_NII[:-100], isize=len(GOOD_NII)),
    "nan_affine.nii.gz": gzipped(header_claiming(GOOD_MASK.shape, affine=np.diag([1.0, np.nan, 1.0, 1.0])) + _VOXELS),
    "inf_affine.nii.gz": gzipped(header_claiming(GOOD_MASK.shape, affine=np.diag([1.0, 1.0, np.inf, 1.0])) + _VOXELS),
    "4d.nii.gz": gzipped(nib.Nifti1Image(np.stack([GOOD_MASK, GOOD_MASK], axis=-1), np.eye(4)).to_bytes()),
    "zero_dim.nii.gz": gzipped(header_claiming((20, 0, 12))),
    "complex64.nii.gz": gzipped(nib.Nifti1Image(GOOD_MASK.astype(np.complex64), np.eye(4)).to_bytes()),
    "rgb24.nii.gz": gzipped(header_claiming(GOOD_MASK.shape, dtype="RGB") + bytes(3 * GOOD_MASK.size)),
}

def header_extension(code: int, content: bytes, endianness: str = "<") -> bytes:
    """One NIfTI header extension: its size (padded to 16 bytes), its code and ``content``."""
    size = -(-(len(content) + 8) // 16) * 16
    return struct.pack(endianness + "ii", size, code) + content.ljust(size - 8, b"\0")


def nifti_with_extensions(
    region: bytes, vox_offset: float | None = None, header_class: type[nib.Nifti1Header] = nib.Nifti1Header,
    endianness: str = "<",
) -> bytes:
    """``GOOD_MASK`` as a single-file NIfTI whose header extensions are the raw bytes ``region`` (extender set);
    ``vox_offset`` (default: right after them) may lie."""
    header = header_class(endianness=endianness)
    header.set_data_shape(GOOD_MASK.shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = header.single_vox_offset + len(region) if vox_offset is None else vox_offset
    return header.binaryblock + b"\x01\0\0\0" + region + _VOXELS


#: Hostile files whose header and gzip trailer look right: the fault shows only while the voxels are read.
FOUND_WHILE_READING = {"data_shorter_trailer_lies.nii.gz"}


def case_folder_with(folder: Path, name: str, content: bytes) -> Path:
    """A case folder holding ``liver.nii.gz`` (``GOOD_MASK``) and the file ``name`` with ``content``."""
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(GOOD_MASK, np.eye(4)), folder / "liver.nii.gz")
    (folder / name).write_bytes(content)
    return folder


# -- TotalSegmentator's label tables ------------------------------------------------------------


def totalsegmentator_xml(labels: dict[int, str], colors: dict[int, tuple[int, int, int]] | None = None) -> bytes:
    """A label table laid out as TotalSegmentator writes one into its multi-label files (its spacing, Date and
    StudyMetaDataLinkSet, channels as ``value / 255``, Alpha="1"); ``colors`` default to its palette."""
    from medmask_store.model.palette import PALETTE

    body = ""
    for key, name in labels.items():
        r, g, b = (colors or {}).get(key) or PALETTE[key % len(PALETTE)][:3]
        body += f'<Label Key="{key}" Red="{r / 255}" Green="{g / 255}" Blue="{b / 255}" Alpha="1"><![CDATA[{name}]]></Label>\n'
    return (
        '<?xml version="1.0" encoding="UTF-8"?> <CaretExtension>  <Date><![CDATA[2013-07-14T05:45:09]]></Date>   '
        '<VolumeInformation Index="0">   <LabelTable>\n' + body + "\n  </LabelTable>  <StudyMetaDataLinkSet>  "
        "</StudyMetaDataLinkSet>  <VolumeType><![CDATA[Label]]></VolumeType>   </VolumeInformation></CaretExtension>\n"
        "              "
    ).encode()


def save_totalsegmentator_multilabel(path: Path, labels: np.ndarray, affine: np.ndarray, table: bytes) -> Path:
    """A multi-label NIfTI carrying ``table`` as TotalSegmentator's first header extension (code 0)."""
    image = nib.Nifti1Image(labels, affine)
    image.header.extensions.append(nib.nifti1.Nifti1Extension(0, table))
    nib.save(image, path)
    return path


def totalsegmentator_labels(content: bytes) -> dict[int, str]:
    """Key -> name of a label table as TotalSegmentator's ``load_multilabel_nifti`` reads it (through xmltodict)."""
    import xmltodict

    entries = xmltodict.parse(content)["CaretExtension"]["VolumeInformation"]["LabelTable"]["Label"]
    return {int(e["@Key"]): e["#text"] for e in entries}


def totalsegmentator_colors(content: bytes) -> dict[int, tuple[float, ...]]:
    """Key -> (Red, Green, Blue, Alpha) of a label table, read through xmltodict."""
    import xmltodict

    entries = xmltodict.parse(content)["CaretExtension"]["VolumeInformation"]["LabelTable"]["Label"]
    return {int(e["@Key"]): tuple(float(e[f"@{c}"]) for c in ("Red", "Green", "Blue", "Alpha")) for e in entries}


def write_case_folder(folder: Path, seed: int, organs: int = 5) -> dict[str, np.ndarray]:
    """A case folder of NIfTI masks as TotalSegmentator writes them (a phantom: rib_right_12 inside the liver)."""
    from medmask_store.phantom import make_phantom

    masks, space = make_phantom(shape=(40, 36, 30), n_organs=organs, n_empty=1, seed=seed)
    folder.mkdir(parents=True)
    for name, mask in masks.items():
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), nifti_affine(space)), folder / f"{name}.nii.gz")
    return masks


# -- the CLI ---------------------------------------------------------------------------------


def run(*args: object) -> Result:
    """Invoke the CLI; a library error must never escape as an exception other than SystemExit."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{result.exception!r}\n{result.output}"
    )
    assert "Traceback" not in result.output
    return result


def ok(*args: object) -> Result:
    """Invoke the CLI (as ``run``) and require exit code 0."""
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


# -- writer subprocesses ---------------------------------------------------------------------


def kill_writer_when_ready(
    source: str, path: Path, while_ready: Callable[[subprocess.Popen[str]], object]
) -> subprocess.Popen[str]:
    """Run ``python -c source path``; once it prints "ready", call ``while_ready(proc)``, then SIGKILL
    and reap it. A watchdog kills it after 120 s so the suite never hangs. Returns the reaped process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", source, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    watchdog = threading.Timer(120, proc.kill)  # never hang the suite
    watchdog.start()
    try:
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"writer did not get ready: stdout={line!r} stderr={err[-2000:]}")
        while_ready(proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()  # reap it: a zombie would still count as a live process
    finally:
        watchdog.cancel()
        if proc.poll() is None:  # ``while_ready`` failed: do not leave the writer running
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    return proc


def index_for(draw, size: int):
    """One basic index for an axis of ``size``: an in-range int (often negative) or any slice."""
    options = ["slice"] + (["int"] if size > 0 else [])
    if draw(st.sampled_from(options)) == "int":
        value = draw(st.integers(-size, size - 1))
        return draw(st.sampled_from([int, np.int64, np.intp]))(value)
    bound = st.none() | st.integers(-size - 3, size + 3)
    step = st.none() | st.integers(-5, 5).filter(bool)
    return slice(draw(bound), draw(bound), draw(step))


@st.composite
def selections(draw, shape: tuple[int, ...]):
    """A basic selection: up to ndim explicit indices, at most one Ellipsis anywhere among them."""
    ndim = len(shape)
    k = draw(st.integers(0, ndim))
    ellipsis_at = draw(st.none() | st.integers(0, k))
    if ellipsis_at is None:
        axes = list(range(k))
    else:  # items before the Ellipsis index the first axes, items after it the last ones
        axes = list(range(ellipsis_at)) + list(range(ndim - (k - ellipsis_at), ndim))
    items = [index_for(draw, shape[axis]) for axis in axes]
    if ellipsis_at is not None:
        items.insert(ellipsis_at, Ellipsis)
    if len(items) == 1 and draw(st.booleans()):
        return items[0]  # a bare index, not a tuple
    return tuple(items)


def read_packed(path: Path) -> tuple[dict, bytes]:
    """The catalog and the data section of a packed ``.msk`` file, read without the library."""
    raw = path.read_bytes()
    magic, _version, length, _crc = struct.unpack("<4sBII", raw[:13])
    assert magic == b"MSKP"
    catalog = zstandard.ZstdDecompressor(dict_data=CATALOG_DICTIONARY).decompress(raw[13 : 13 + length])
    return json.loads(catalog), raw[13 + length :]


def write_packed(path: Path, catalog: dict, data: bytes) -> None:
    """Write a packed file (behind the library's back) from a catalog and a data section."""
    frame = zstandard.ZstdCompressor(dict_data=CATALOG_DICTIONARY).compress(json.dumps(catalog).encode())
    path.write_bytes(packed_header(frame) + frame + data)


def packed_header(frame: bytes) -> bytes:
    """The header of a packed file whose catalog is ``frame``: magic, version, length, crc32c."""
    import google_crc32c

    return struct.pack("<4sBII", b"MSKP", 2, len(frame), google_crc32c.value(frame))


def index_blobs(path: Path) -> dict[str, bytes]:
    """The stored index's blobs by name (empty: no index), read without the library, on every backend."""
    suffix = suffix_of(path)
    if suffix == ".msk":
        catalog, data = read_packed(path)
        return {name: data[offset : offset + length] for name, (offset, length) in (catalog["index"] or {}).items()}
    if suffix == ".zarr":
        folder = path / "index"
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    if suffix == ".zarr.zip":
        with zipfile.ZipFile(path) as zf:
            return {n[len("index/") :]: zf.read(n) for n in zf.namelist() if n.startswith("index/") and not n.endswith("/")}
    with h5py.File(path, "r") as f:
        blobs: dict[str, bytes] = {}
        if "index" in f:
            f["index"].visititems(lambda n, o: blobs.update({n: o[...].tobytes()}) if isinstance(o, h5py.Dataset) else None)
        return blobs


def write_index_blobs(path: Path, blobs: dict[str, bytes]) -> None:
    """Make ``blobs`` the stored index (empty: remove it), behind the library's back."""
    suffix = suffix_of(path)
    if suffix == ".msk":
        catalog, data = read_packed(path)
        catalog["index"], start = {}, len(data)
        for name, blob in blobs.items():
            catalog["index"][name] = [start, len(blob)]
            start += len(blob)
        catalog["index"] = catalog["index"] or None
        write_packed(path, catalog, data + b"".join(blobs.values()))
    elif suffix == ".zarr":
        shutil.rmtree(path / "index", ignore_errors=True)
        for name, blob in blobs.items():
            (path / "index" / name).parent.mkdir(parents=True, exist_ok=True)
            (path / "index" / name).write_bytes(blob)
    elif suffix == ".zarr.zip":
        with zipfile.ZipFile(path) as zf:
            members = {i.filename: zf.read(i) for i in zf.infolist() if not i.filename.startswith("index/")}
        members.update({f"index/{name}": blob for name, blob in blobs.items()})
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
    else:
        with h5py.File(path, "r+") as f:
            if "index" in f:
                del f["index"]
            for name, blob in blobs.items():
                f.create_dataset(f"index/{name}", data=np.frombuffer(blob, dtype=np.uint8))
    assert index_blobs(path) == blobs


def packed_manifest(catalog: dict, case_id: str, array: str) -> dict:
    """The manifest entry of one array of a case in a packed catalog (shape, dtype, chunks, codec, ...)."""
    return catalog["cases"][case_id]["attributes"]["medmask_store"]["arrays"][array]


def packed_chunks(catalog: dict, case_id: str, array: str) -> list[list[int]]:
    """``[coords..., offset, length]`` of every stored chunk of one array of a case in a packed catalog."""
    return catalog["cases"][case_id]["chunks"].get(array, [])


def reseal(sealed: dict) -> dict:
    """A sealed attributes content with its checksum recomputed, as an attacker editing an archive would."""
    from medmask_store.model.manifest import seal

    return seal({key: value for key, value in sealed.items() if key != "checksum"})


def reseal_packed_case(catalog: dict, case_id: str, data: bytes) -> None:
    """Make a packed case's manifest (chunk counts and digests) agree with its chunk rows and the data
    section ``data`` again, and reseal its attributes: a crafted archive that passes every checksum."""
    from medmask_store.model.manifest import chunk_bytes_digest, chunk_list_digest

    case = catalog["cases"][case_id]
    content = case["attributes"]["medmask_store"]
    for name, manifest in content["arrays"].items():
        rows = case["chunks"].get(name, [])
        lengths = {tuple(row[:-2]): row[-1] for row in rows}
        chunk_bytes = [(tuple(row[:-2]), data[row[-2] : row[-2] + row[-1]]) for row in rows]
        manifest["stored"], manifest["chunks_crc32c"] = len(lengths), chunk_list_digest(lengths)
        manifest["bytes_crc32c"] = chunk_bytes_digest(chunk_bytes)
    case["attributes"]["medmask_store"] = reseal(content)


def _zip_members(path: Path) -> dict[str, bytes]:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def write_zip_members(path: Path, members: dict[str, bytes]) -> None:
    """Rewrite a stored (uncompressed) zip with exactly these members."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def case_content(path: Path, case_id: str) -> dict:
    """The sealed ``medmask_store`` attributes of a stored case, read without the library (any backend)."""
    import h5py

    suffix = suffix_of_path(path)
    if suffix == ".msk":
        return read_packed(path)[0]["cases"][case_id]["attributes"]["medmask_store"]
    if suffix in (".h5", ".hdf5"):
        with h5py.File(path, "r") as f:
            return json.loads(f[f"cases/{case_id}"].attrs["medmask_store"])
    key = f"cases/{case_id}/zarr.json"
    raw = (path / key).read_bytes() if suffix == ".zarr" else _zip_members(path)[key]
    return json.loads(raw)["attributes"]["medmask_store"]


def write_case_content(path: Path, case_id: str, content: dict, sealed: bool = True) -> None:
    """Replace a stored case's attributes behind the library's back; ``sealed``: with a valid checksum
    (a crafted archive), else as given (damage)."""
    import h5py

    content = reseal(content) if sealed else content
    suffix = suffix_of_path(path)
    if suffix == ".msk":
        catalog, data = read_packed(path)
        catalog["cases"][case_id]["attributes"]["medmask_store"] = content
        write_packed(path, catalog, data)
    elif suffix in (".h5", ".hdf5"):
        with h5py.File(path, "r+") as f:
            f[f"cases/{case_id}"].attrs["medmask_store"] = json.dumps(content)
    else:
        key = f"cases/{case_id}/zarr.json"
        document = json.loads((path / key).read_bytes() if suffix == ".zarr" else _zip_members(path)[key])
        document["attributes"]["medmask_store"] = content
        if suffix == ".zarr":
            (path / key).write_text(json.dumps(document))
        else:
            members = _zip_members(path)
            members[key] = json.dumps(document).encode()
            write_zip_members(path, members)


def suffix_of_path(path: Path) -> str:
    """The backend suffix of an archive path."""
    for suffix in (".zarr.zip", ".zarr", ".hdf5", ".h5", ".msk"):
        if path.name.endswith(suffix):
            return suffix
    raise ValueError(path)


# -- peak memory of a fresh process ----------------------------------------------------------

# ru_maxrss of a child includes the resident size of the (large) pytest process it was forked from;
# VmHWM is the high-water mark of the child's own address space, so it measures the child alone.
PRINT_PEAK_RSS_MIB = (
    "import re\nprint(int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)) // 1024)\n"
)
REPOSITORY = Path(__file__).resolve().parents[1]


def run_measuring_peak_rss(script: str, *args: object, stdin: str | None = None) -> tuple[str, int]:
    """Run ``script`` with ``args`` in a fresh interpreter (importing this checkout's package); return what it
    printed and its peak resident memory in MiB. Linux only (/proc)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("peak memory is read from /proc")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", script + "\n" + PRINT_PEAK_RSS_MIB, *map(str, args)],
        input=stdin, capture_output=True, text=True, cwd=REPOSITORY, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    *output, peak = done.stdout.rstrip("\n").split("\n")
    return "\n".join(output), int(peak)
