"""Previews: only the three slices' chunks are read; organs (and overlaps) show in their colours where they are."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from helpers import ok, run
from matplotlib.figure import Figure
from matplotlib.image import imread
from spacetransformer import Space

from medmask_store import MaskArchive, StorageSettings
from medmask_store.errors import OrganNotFound
from medmask_store.extras import ExtraNotInstalled
from medmask_store.model.case_data import CaseData
from medmask_store.storage.case import Case
from medmask_store.storage.zarr_store import ShardedChunks

SHAPE = (40, 30, 20)
SPACING = (1.0, 1.5, 2.5)
CHUNK = 8  # a grid of 5 x 4 x 3 chunks
COLORS = {
    "body": (200, 40, 40, 255),
    "core": (40, 200, 40, 255),
    "spot": (40, 40, 200, 255),
    "far": (200, 200, 40, 255),
}
BOXES = {
    "body": np.s_[2:30, 3:26, 2:17],
    "core": np.s_[15:24, 10:19, 8:11],  # inside body: a binary layer
    "spot": np.s_[28:36, 12:17, 9:12],  # i 28..29 inside body (its layer), i 30..35 alone
    "far": np.s_[32:36, 27:30, 0:2],  # crosses none of the slices through the centre (20, 15, 10)
}


def phantom_masks() -> dict[str, np.ndarray]:
    masks = {name: np.zeros(SHAPE, bool) for name in [*BOXES, "empty"]}
    for name, box in BOXES.items():
        masks[name][box] = True
    return masks


def stored_case(path: Path, space: Space) -> None:
    data = CaseData.from_masks(phantom_masks(), space=space)
    data.colors.update(COLORS)
    with MaskArchive(path, "w", StorageSettings(chunk_size=CHUNK)) as archive:
        archive.add_case("ct01", data)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "a.zarr"
    stored_case(path, Space(shape=SHAPE, spacing=SPACING))
    return path


@contextmanager
def chunk_reads() -> Iterator[list[tuple[str, tuple[int, ...]]]]:
    """(array name, chunk coords) of every stored chunk a .zarr archive reads (as tests/storage/test_partial_reads.py counts them)."""
    reads: list[tuple[str, tuple[int, ...]]] = []
    original = ShardedChunks.fetch

    def fetch(self: ShardedChunks, coords: tuple[int, ...]) -> bytes | None:
        result = original(self, coords)
        if result is not None:
            reads.append((self.path.rsplit("/", 1)[-1], tuple(int(c) for c in coords)))
        return result

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ShardedChunks, "fetch", fetch)
        yield reads


def crossed(centre: tuple[int, ...]) -> set[tuple[int, ...]]:
    """Stored label chunks (those holding an organ voxel) that the three axis-aligned planes through ``centre`` cross."""
    occupied = {
        tuple(int(c) for c in voxel // CHUNK)
        for voxel in np.argwhere(np.logical_or.reduce(list(phantom_masks().values())))
    }
    return {c for c in occupied if any(c[axis] == centre[axis] // CHUNK for axis in range(3))}


@pytest.mark.parametrize(
    ("organs", "centre"),
    [
        (None, (20, 15, 10)),  # the volume centre
        (["core"], (19, 14, 9)),  # core's centroid
        (["body", "spot"], (16, 14, 9)),  # the voxel-weighted mean of both centroids: (15.70, 14.0, 9.01)
    ],
)
def test_only_the_chunks_of_the_three_slices_are_read(
    archive: Path, organs: list[str] | None, centre: tuple[int, ...]
) -> None:
    with MaskArchive(archive) as opened:
        case = opened["ct01"]
        layer_origins = dict(zip(case.info.layer_names, case.info.layer_origins))
        with chunk_reads() as reads:
            case.preview(organs)
    labels = {coords for name, coords in reads if name == "label_volume"}
    assert labels == crossed(centre)
    layers = [(case.info.layer_names[coords[0]], coords[1:]) for name, coords in reads if name == "binary_layers"]
    volume_chunks = {tuple(c + o // CHUNK for c, o in zip(coords, layer_origins[organ])) for organ, coords in layers}
    assert volume_chunks <= crossed(centre) and {organ for organ, _ in layers} == set(organs or ["core", "spot"]) & {
        "core",
        "spot",
    }
    assert {name for name, _ in reads} <= {"label_volume", "binary_layers"}


# -- what the PNG shows ------------------------------------------------------------------------

Position = Callable[[int, tuple[int, int, int]], tuple[float, float]]


def identity_position(panel: int, voxel: tuple[int, int, int]) -> tuple[float, float]:
    """Where a voxel's centre is drawn (mm from the panel's top-left) in an identity-oriented (LPS) space:
    axial: i right (towards L), j down (towards P); coronal: i right, k up; sagittal: j right (towards P), k up."""
    (i, j, k), (si, sj, sk), (_, _, nk) = voxel, SPACING, SHAPE
    return [
        ((i + 0.5) * si, (j + 0.5) * sj),
        ((i + 0.5) * si, (nk - k - 0.5) * sk),
        ((j + 0.5) * sj, (nk - k - 0.5) * sk),
    ][panel]


def flipped_position(panel: int, voxel: tuple[int, int, int]) -> tuple[float, float]:
    """The same for axes i and j pointing to patient right and anterior (NIfTI's RAS order, read into LPS):
    low i is the patient's left, so it is drawn on the right; low j is posterior, drawn at the bottom."""
    (i, j, k), (si, sj, sk), (ni, nj, nk) = voxel, SPACING, SHAPE
    return [((ni - i - 0.5) * si, (nj - j - 0.5) * sj), ((ni - i - 0.5) * si, (nk - k - 0.5) * sk),
            ((nj - j - 0.5) * sj, (nk - k - 0.5) * sk)][panel]  # fmt: skip


SPACES: dict[str, tuple[Space, Position]] = {
    "identity": (Space(shape=SHAPE, spacing=SPACING), identity_position),
    "flipped": (
        Space(shape=SHAPE, spacing=SPACING, x_orientation=(-1, 0, 0), y_orientation=(0, -1, 0)),
        flipped_position,
    ),
}


def color_at(figure: Figure, png: np.ndarray, panel: int, position: tuple[float, float]) -> tuple[int, ...]:
    """The PNG's RGB at a point (mm) of a panel, found through the panel's own data-to-pixel transform."""
    x, y = figure.axes[panel].transData.transform(position)
    return tuple(int(v) for v in np.round(png[int(png.shape[0] - y), int(x), :3] * 255))


def mixed(a: str, b: str) -> tuple[int, ...]:
    return tuple((x + y) // 2 for x, y in zip(COLORS[a][:3], COLORS[b][:3]))


@pytest.mark.parametrize("geometry", list(SPACES))
def test_organs_and_overlaps_show_in_their_colours_where_they_are(tmp_path: Path, geometry: str) -> None:
    space, position = SPACES[geometry]
    stored_case(tmp_path / "a.zarr", space)
    with MaskArchive(tmp_path / "a.zarr") as opened:
        figure = opened["ct01"].preview(path=tmp_path / "preview.png")
    assert (tmp_path / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = imread(tmp_path / "preview.png")
    body, core = COLORS["body"][:3], mixed("body", "core")  # core lies inside body: half of each
    expected = {
        0: {(5, 5, 10): body, (18, 12, 10): core, (37, 14, 10): (0, 0, 0), (33, 14, 10): COLORS["spot"][:3]},  # k = 10
        1: {(5, 15, 5): body, (18, 15, 9): core, (29, 15, 10): mixed("body", "spot"), (33, 15, 9): COLORS["spot"][:3]},
        2: {(20, 5, 5): body, (20, 12, 9): core, (20, 1, 10): (0, 0, 0), (20, 28, 10): (0, 0, 0)},  # sagittal, i = 20
    }
    for panel, voxels in expected.items():
        for voxel, color in voxels.items():
            assert color_at(figure, png, panel, position(panel, voxel)) == color, (panel, voxel)
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert legend == ["body", "core", "spot"]  # not far (crossed by no slice), nor the empty organ
    assert [ax.get_title() for ax in figure.axes] == ["axial (slice 10)", "coronal (slice 15)", "sagittal (slice 20)"]


def test_each_panel_shows_the_voxel_axis_closest_to_its_anatomical_plane(tmp_path: Path) -> None:
    """Axes i, j, k pointing to S, L, P: the axial panel cuts i and shows j across, k down."""
    space = Space(
        shape=SHAPE, spacing=SPACING, x_orientation=(0, 0, 1), y_orientation=(1, 0, 0), z_orientation=(0, 1, 0)
    )
    stored_case(tmp_path / "a.zarr", space)
    with MaskArchive(tmp_path / "a.zarr") as opened:
        figure = opened["ct01"].preview(path=tmp_path / "preview.png")
    png = imread(tmp_path / "preview.png")
    (si, sj, sk), ni = SPACING, SHAPE[0]
    assert [ax.get_title() for ax in figure.axes] == ["axial (slice 20)", "coronal (slice 10)", "sagittal (slice 15)"]
    assert color_at(figure, png, 0, ((5 + 0.5) * sj, (5 + 0.5) * sk)) == COLORS["body"][:3]  # voxel (20, 5, 5)
    assert color_at(figure, png, 0, ((1 + 0.5) * sj, (10 + 0.5) * sk)) == (0, 0, 0)  # voxel (20, 1, 10)
    assert color_at(figure, png, 1, ((12 + 0.5) * sj, (ni - 18 - 0.5) * si)) == mixed(
        "body", "core"
    )  # voxel (18, 12, 10)
    assert color_at(figure, png, 2, ((9 + 0.5) * sk, (ni - 33 - 0.5) * si)) == COLORS["spot"][:3]  # voxel (33, 15, 9)


def test_chosen_organs_alone_are_drawn_in_their_own_colour(tmp_path: Path, archive: Path) -> None:
    with MaskArchive(archive) as opened:
        figure = opened["ct01"].preview(["core"], path=tmp_path / "core.png")
    png = imread(tmp_path / "core.png")
    assert color_at(figure, png, 0, identity_position(0, (18, 12, 9))) == COLORS["core"][:3]  # no body below it
    assert color_at(figure, png, 0, identity_position(0, (5, 5, 9))) == (0, 0, 0)
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["core"]


def test_pixels_keep_the_physical_aspect_ratio(archive: Path) -> None:
    with MaskArchive(archive) as opened:
        figure = opened["ct01"].preview()
    figure.canvas.draw()
    for ax, (across, down) in zip(figure.axes, [(0, 1), (0, 2), (1, 2)]):
        box = ax.get_images()[0].get_window_extent()
        width_mm, height_mm = SHAPE[across] * SPACING[across], SHAPE[down] * SPACING[down]
        assert box.width / box.height == pytest.approx(width_mm / height_mm, rel=0.02)


def test_unknown_organs_and_a_missing_matplotlib_are_clear(archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with MaskArchive(archive) as opened:
        case: Case = opened["ct01"]
        with pytest.raises(OrganNotFound, match=r"case 'ct01' has no organ 'cor'; did you mean core\?"):
            case.preview(["cor"])
        monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an environment without the extra imports
        missing = "Previews needs matplotlib, which is not installed: pip install 'medmask_store[preview]'"
        with pytest.raises(ExtraNotInstalled, match=f"^{re.escape(missing)}$"):
            case.preview()


def test_cli_writes_the_png_case_preview_writes(tmp_path: Path, archive: Path) -> None:
    out = ok("preview", archive, "ct01", "--organ", "core", "--out", tmp_path / "cli.png").output
    assert out == f"wrote {tmp_path / 'cli.png'}\n"
    with MaskArchive(archive) as opened:
        opened["ct01"].preview(["core"], path=tmp_path / "api.png")
    assert np.array_equal(imread(tmp_path / "cli.png"), imread(tmp_path / "api.png"))
    result = run("preview", archive, "ct01", "--organ", "cor", "--out", tmp_path / "bad.png")
    assert result.exit_code == 1 and "OrganNotFound" in result.output and not (tmp_path / "bad.png").exists()
