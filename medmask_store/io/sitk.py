"""SimpleITK images in and out: a label image, or one binary image per organ, with their geometry.

Axis convention: SimpleITK's size, spacing and direction list the image axes in
index order (i, j, k) and its world is LPS, as a :class:`~spacetransformer.Space`'s,
so the geometry carries over unchanged. Its voxel arrays do not: ``GetArrayFromImage``
returns ``[k, j, i]``, so voxels are transposed on the way in and out to our ``[i, j, k]``.

SimpleITK is imported only when an image is converted (the ``sitk`` extra); images
are recognised by their type's module, so code that passes none never imports it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np
from spacetransformer import Space
from spacetransformer.core.exceptions import SpaceTransformerError

from medmask_store.errors import InvalidCase
from medmask_store.extras import require
from medmask_store.model.case_data import CaseData, Unmapped
from medmask_store.model.geometry import lps_affine
from medmask_store.model.validation import validate_space

if TYPE_CHECKING:
    import SimpleITK as sitk

    from medmask_store.storage.case import Case

# Images of one case whose geometry differs by less than this (mm, and direction cosines) share it:
# the tolerance medmask_store.io.nifti gives the float noise of written headers.
GEOMETRY_ATOL = 1e-3
INTEGER_PIXELS = tuple(f"sitk{sign}Int{bits}" for sign in ("U", "") for bits in (8, 16, 32, 64))


def sitk_module() -> ModuleType:
    return require("SimpleITK", "sitk", "SimpleITK images")


def is_sitk_image(data: object) -> bool:
    """Whether ``data`` is a SimpleITK image (checked without importing SimpleITK)."""
    return type(data).__module__.startswith("SimpleITK")


def holds_sitk_images(data: object) -> TypeGuard[sitk.Image | Mapping[str, sitk.Image]]:
    """Whether ``data`` is a SimpleITK image or a dict holding one: what :func:`case_data_from_sitk` takes."""
    return is_sitk_image(data) or (isinstance(data, dict) and any(map(is_sitk_image, data.values())))


# -- images in -----------------------------------------------------------------
def space_of_image(image: sitk.Image, what: str = "image") -> Space:
    """The Space of a 3-D SimpleITK image: its size, origin, spacing and direction (LPS, as a Space's)."""
    if image.GetDimension() != 3:
        raise InvalidCase(f"{what} is {image.GetDimension()}-D (size {image.GetSize()}); a case needs a 3-D image")
    try:
        return validate_space(Space.from_sitk(image))
    except (SpaceTransformerError, InvalidCase) as exc:
        raise InvalidCase(f"{what}: its geometry does not describe a voxel grid: {exc}") from exc


def check_pixels(image: sitk.Image, what: str) -> None:
    """Refuse images whose pixels are not scalar integers (floats, vectors, complex)."""
    sitk = sitk_module()
    if image.GetPixelID() not in {getattr(sitk, name) for name in INTEGER_PIXELS}:
        raise InvalidCase(
            f"{what} has pixels of type {image.GetPixelIDTypeAsString()}; masks and label images need scalar "
            "integer pixels: cast it, e.g. sitk.Cast(image, sitk.sitkUInt8), once its values are whole"
        )


def image_voxels(image: sitk.Image, what: str = "image") -> np.ndarray:
    """The voxels of a scalar integer image, indexed ``[i, j, k]`` (a transposed view of SimpleITK's copy)."""
    check_pixels(image, what)
    return sitk_module().GetArrayFromImage(image).transpose(2, 1, 0)


def same_geometry(a: Space, b: Space) -> bool:
    """Same shape, and affines equal within ``GEOMETRY_ATOL``."""
    return tuple(a.shape) == tuple(b.shape) and np.allclose(lps_affine(a), lps_affine(b), atol=GEOMETRY_ATOL)


def geometry_text(space: Space) -> str:
    """A Space's geometry on one line, in SimpleITK's terms, for error messages."""
    origin, spacing, direction = (
        np.round(np.asarray(values, float), 6).tolist()
        for values in (space.origin, space.spacing, space.to_sitk_direction())
    )
    return f"size {tuple(space.shape)}, origin {origin}, spacing {spacing}, direction {direction}"


def check_given_space(space: Space | None, image_space: Space, what: str) -> None:
    """Refuse a ``space=`` that disagrees with the images' own geometry."""
    if space is not None and not same_geometry(space, image_space):
        raise InvalidCase(
            f"space= ({geometry_text(space)}) disagrees with the geometry of {what} ({geometry_text(image_space)}); "
            "pass no space: SimpleITK images carry their own"
        )


class MaskImages(Mapping[str, np.ndarray]):
    """Organ name -> binary SimpleITK image, read as ``[i, j, k]`` arrays.

    Every image is checked up front (a 3-D image of scalar integer pixels and of
    the first image's geometry); its voxels are copied out only when the organ is
    read, so :meth:`CaseData.from_masks` holds one organ's array per thread, not all.
    """

    def __init__(self, images: Mapping[str, Any]) -> None:
        self.images = dict(images)
        if not self.images:
            raise InvalidCase("a case needs at least one organ mask")
        spaces = {name: space_of_image(self._checked(name), f"organ {name!r}") for name in self.images}
        first = next(iter(spaces))
        self.space = spaces[first]
        for name, space in spaces.items():
            if not same_geometry(space, self.space):
                raise InvalidCase(
                    f"organ {name!r} has geometry {geometry_text(space)}, organ {first!r} has {geometry_text(self.space)}; "
                    "all masks of a case must share one geometry (resample them onto one grid)"
                )

    def _checked(self, name: str) -> sitk.Image:
        image = self.images[name]
        if not is_sitk_image(image):
            raise InvalidCase(
                f"organ {name!r} is not a SimpleITK image but {type(image).__name__}; pass every mask as a "
                "SimpleITK image, or every mask as an array"
            )
        check_pixels(image, f"organ {name!r}")
        return image

    def __getitem__(self, name: str) -> np.ndarray:
        return image_voxels(self.images[name], f"organ {name!r}")

    def __iter__(self) -> Iterator[str]:
        return iter(self.images)

    def __len__(self) -> int:
        return len(self.images)


def case_data_from_sitk(
    data: sitk.Image | Mapping[str, sitk.Image],
    space: Space | None = None,
    mapping: Mapping[str, int] | None = None,
    meta: Mapping[str, Any] | None = None,
    unmapped: Unmapped = "error",
) -> CaseData:
    """A case from a SimpleITK label image (with ``mapping``) or a dict of organ name -> binary image.

    The geometry is the images'; ``space``, if given, must agree with it. Masks hold
    0/1, labels the mapping's values (see :meth:`CaseData.from_masks` / :meth:`CaseData.from_labels`).
    """
    if isinstance(data, Mapping):
        masks = MaskImages(data)
        check_given_space(space, masks.space, "the mask images")
        return CaseData.from_masks(masks, space=masks.space, mapping=mapping, meta=meta)
    if not is_sitk_image(data):
        raise InvalidCase(f"expected a SimpleITK image or a dict of them, got {type(data).__name__}")
    image_space = space_of_image(data, "the label image")
    check_given_space(space, image_space, "the label image")
    if mapping is None:
        raise InvalidCase("a label image needs a mapping (organ name -> label value)")
    labels = image_voxels(data, "the label image")
    return CaseData.from_labels(labels, mapping, space=image_space, meta=meta, unmapped=unmapped)


# -- images out ----------------------------------------------------------------
def case_to_sitk(case: Case, organ: str | None = None) -> sitk.Image:
    """One organ's mask (uint8 0/1) or, for ``organ=None``, the label volume, as a SimpleITK image of the case's geometry.

    The label volume is :meth:`Case.read_labels`'s: where organs overlap, a voxel
    holds the value of the organ stored in a binary layer (placed later: the smaller
    one), so only per-organ images keep every organ exactly.
    """
    sitk = sitk_module()
    voxels = case.read_labels() if organ is None else case.read_organ(organ).view(np.uint8)
    image = sitk.GetImageFromArray(voxels.transpose(2, 1, 0), isVector=False)
    space = case.space
    image.SetOrigin(tuple(float(v) for v in space.origin))
    image.SetSpacing(tuple(float(v) for v in space.spacing))
    image.SetDirection(tuple(float(v) for v in space.to_sitk_direction()))
    return image
