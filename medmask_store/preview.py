"""Previews of a stored case: axial, coronal and sagittal slices, organs in their colours (matplotlib).

A preview reads only the chunks its three slices cross: the stored label
volume's, and for organs kept in binary layers (they overlap another organ) their
own slices (``case.organ(name)[...]``, inside their bounding box). Where organs
overlap, the pixel shows their colours mixed half and half.

Slices are the stored voxel planes nearest to the anatomical planes (no
resampling: an oblique image shows its own planes), turned to the radiological
convention: patient right on the image's left, anterior at the top of an axial
slice, superior at the top of a coronal or sagittal one. Pixels have their
physical aspect ratio, from the spacing.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from spacetransformer import Space

from medmask_store.extras import require

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from medmask_store.storage.case import Case

BACKGROUND = (0, 0, 0)
# Letters of the LPS world axes' ends: negative, positive.
AXIS_ENDS = (("R", "L"), ("A", "P"), ("I", "S"))
LEGEND_COLUMNS = 6
WIDTH = 12  # inches; the height follows from the slices' proportions and the legend


@dataclass(frozen=True)
class View:
    """A slice orientation: the LPS world axis across its plane, the one shown left to right, and
    the one shown top to bottom (increasing downwards unless ``up``)."""

    title: str
    normal: int
    across: int
    down: int
    up: bool


VIEWS = (View("axial", 2, 0, 1, False), View("coronal", 1, 0, 2, True), View("sagittal", 0, 1, 2, True))


@dataclass(frozen=True)
class Plane:
    """Where a view cuts a case's voxels, and how the cut turns to the screen."""

    selection: tuple[int | slice, ...]
    transpose: bool  # the cut's axes are (columns, rows)
    flip_rows: bool
    flip_cols: bool
    extent: tuple[float, float, float, float]  # mm: left, right, bottom, top

    def to_screen(self, image: np.ndarray) -> np.ndarray:
        """A cut (its first two axes in voxel order) as rows top to bottom, columns left to right."""
        image = image.swapaxes(0, 1) if self.transpose else image
        return image[:: -1 if self.flip_rows else 1, :: -1 if self.flip_cols else 1]


def voxel_axes(space: Space) -> tuple[int, ...]:
    """For each LPS world axis, the voxel axis closest to it (a permutation: oblique images get their nearest)."""
    alignment = np.abs(space.orientation_matrix)  # [world, voxel]
    return max(itertools.permutations(range(3)), key=lambda axes: sum(alignment[w, a] for w, a in enumerate(axes)))


def plane(space: Space, view: View, centre: tuple[int, ...]) -> Plane:
    """The voxel plane of ``view`` through ``centre``."""
    axes = voxel_axes(space)
    normal, cols, rows = axes[view.normal], axes[view.across], axes[view.down]
    orientation = space.orientation_matrix
    selection = tuple(centre[a] if a == normal else slice(None) for a in range(3))
    width, height = (space.shape[a] * space.spacing[a] for a in (cols, rows))
    return Plane(
        selection=selection,
        transpose=cols < rows,
        flip_rows=(orientation[view.down, rows] > 0) == view.up,
        flip_cols=orientation[view.across, cols] < 0,
        extent=(0.0, float(width), float(height), 0.0),
    )


def preview_centre(case: Case, organs: list[str]) -> tuple[int, ...]:
    """The voxel at the organs' centroid (their voxel-weighted mean), or the volume centre without voxels."""
    shape = case.space.shape
    stats = [s for s in map(case.stats.__getitem__, organs) if s.voxels]
    if not stats:
        return tuple(n // 2 for n in shape)
    voxels = np.array([s.voxels for s in stats], dtype=float)
    centroid = voxels @ np.array([s.centroid_voxel for s in stats]) / voxels.sum()
    return tuple(int(np.clip(round(c), 0, n - 1)) for c, n in zip(centroid, shape))


def paint(
    case: Case, names: list[str], layered: list[str], selection: tuple[int | slice, ...]
) -> tuple[np.ndarray, set[str]]:
    """The RGB cut of organs ``names`` (``layered``: those of them with a binary layer), and the organs it shows."""
    labels = case.stored_labels[selection]
    colors, values = case.colors, case.mapping
    palette = np.tile(np.array(BACKGROUND, np.uint8), (np.iinfo(labels.dtype).max + 1, 1))
    painted = np.zeros(len(palette), bool)
    for name in names:
        palette[values[name]], painted[values[name]] = colors[name][:3], True
    rgb, drawn = palette[labels], painted[labels]
    present = set(np.unique(labels).tolist())
    shown = {name for name in names if values[name] in present}
    for name in layered:  # whole organs over the label volume's voxels: overlaps mix both colours
        mask = case.organ(name)[selection]
        color = np.array(colors[name][:3], np.uint16)
        rgb[mask] = np.where(drawn[mask][:, None], (rgb[mask] + color) // 2, color)
        drawn |= mask
        if mask.any():
            shown.add(name)
    return rgb, shown


def draw(ax: Axes, view: View, cut: Plane, rgb: np.ndarray, index: int) -> None:
    """One slice on ``ax``: the image in mm, its title, and the patient directions at its edges."""
    ax.imshow(cut.to_screen(rgb), extent=cut.extent, interpolation="nearest", aspect="equal")
    ax.set_title(f"{view.title} (slice {index})")
    ax.set_xticks([])
    ax.set_yticks([])
    left, right = AXIS_ENDS[view.across]
    top, bottom = AXIS_ENDS[view.down][::-1] if view.up else AXIS_ENDS[view.down]
    edges = ((left, 0.02, 0.5, "left", "center"), (right, 0.98, 0.5, "right", "center"),
             (top, 0.5, 0.98, "center", "top"), (bottom, 0.5, 0.02, "center", "bottom"))  # fmt: skip
    for letter, x, y, ha, va in edges:
        ax.text(x, y, letter, transform=ax.transAxes, ha=ha, va=va, color="white", fontsize=9)


def render_preview(case: Case, organs: list[str] | None = None, path: str | os.PathLike[str] | None = None) -> Figure:
    """Axial, coronal and sagittal slices of ``case`` with a legend of the organs they show.

    The slices cross at the centroid of ``organs`` (their voxel-weighted mean), or
    at the volume centre without ``organs``; ``organs`` are drawn (default: all) in
    their colours (``case.colors``, alpha ignored). Saved as PNG at ``path`` if given.
    """
    require("matplotlib", "preview", "Previews")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    names = case.organs if organs is None else list(organs)
    layered = [name for name in names if case.representation(name) == "binary_layer"]  # unknown: OrganNotFound
    centre = preview_centre(case, [] if organs is None else names)
    cuts = [plane(case.space, view, centre) for view in VIEWS]
    painted = [paint(case, names, layered, cut.selection) for cut in cuts]
    shown = set().union(*(in_cut for _, in_cut in painted))
    colors = case.colors
    handles = [Patch(color="#" + bytes(colors[name][:3]).hex(), label=name) for name in names if name in shown]
    legend_rows = -(-len(handles) // LEGEND_COLUMNS)
    widths, heights = zip(*((cut.extent[1], cut.extent[2]) for cut in cuts))
    figure = Figure(
        figsize=(WIDTH, WIDTH * max(heights) / sum(widths) + 0.8 + 0.25 * legend_rows), layout="constrained"
    )
    FigureCanvasAgg(figure)  # renders without a display, whatever pyplot's backend
    panels = figure.subplots(1, 3, width_ratios=widths)  # one mm scale for all three
    for ax, view, cut, (rgb, _) in zip(panels, VIEWS, cuts, painted):
        draw(ax, view, cut, rgb, centre[voxel_axes(case.space)[view.normal]])
    if handles:
        figure.legend(handles=handles, loc="outside lower center", ncols=min(LEGEND_COLUMNS, len(handles)), fontsize=8)
    figure.suptitle(f"case {case.case_id}")
    if path is not None:
        figure.savefig(path, format="png")
    return figure
