"""TotalSegmentator's ``total`` task (v2): its 117 classes in label-value order (value = position + 1).

TotalSegmentator writes one binary ``<class>.nii.gz`` per class, or one multi-label
file whose values follow this order (liver = 5); ``--labels totalsegmentator``
imports a mask folder with these values instead of numbering files alphabetically;
:func:`write_totalsegmentator_folder` writes a case as TotalSegmentator's output folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from spacetransformer import Space

from medmask_store.model.geometry import nifti_affine

_VERTEBRAE = ("S1", "L5", "L4", "L3", "L2", "L1", *(f"T{n}" for n in range(12, 0, -1)), *(f"C{n}" for n in range(7, 0, -1)))

TOTAL_CLASSES: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus", "trachea",
    "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate", "kidney_cyst_left",
    "kidney_cyst_right", "sacrum", *(f"vertebrae_{v}" for v in _VERTEBRAE), "heart", "aorta", "pulmonary_vein",
    "brachiocephalic_trunk", "subclavian_artery_right", "subclavian_artery_left", "common_carotid_artery_right",
    "common_carotid_artery_left", "brachiocephalic_vein_left", "brachiocephalic_vein_right", "atrial_appendage_left",
    "superior_vena_cava", "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_left",
    "iliac_artery_right", "iliac_vena_left", "iliac_vena_right", "humerus_left", "humerus_right", "scapula_left",
    "scapula_right", "clavicula_left", "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right",
    "spinal_cord", "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left", "gluteus_medius_right",
    "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left", "autochthon_right", "iliopsoas_left",
    "iliopsoas_right", "brain", "skull", *(f"rib_left_{n}" for n in range(1, 13)),
    *(f"rib_right_{n}" for n in range(1, 13)), "sternum", "costal_cartilages",
)  # fmt: skip

#: Class name -> label value, as TotalSegmentator numbers its multi-label output.
TOTAL_LABELS: dict[str, int] = {name: value for value, name in enumerate(TOTAL_CLASSES, 1)}


def write_totalsegmentator_folder(masks: Mapping[str, np.ndarray], space: Space, folder: str | Path) -> list[Path]:
    """Write ``folder`` as TotalSegmentator writes its output: one ``<class>.nii.gz`` (uint8 0/1) per class.

    Every class of TOTAL_CLASSES gets a file with the affine of ``space``; classes
    that ``masks`` lacks are written empty. Masks are taken one at a time, so a lazy
    mapping (a :class:`~medmask_store.phantom.CtPhantom`) never sits in memory whole.
    Names that are not TotalSegmentator classes are refused before anything is written.
    """
    from medmask_store.io.nifti import save_mask  # here: io.nifti reads label tables, which import this module

    unknown = sorted(set(masks) - set(TOTAL_CLASSES))
    if unknown:
        raise ValueError(f"not TotalSegmentator 'total' classes: {', '.join(unknown)}; rename them or leave them out")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    affine = nifti_affine(space)
    written = []
    for name in TOTAL_CLASSES:
        mask = masks.get(name)  # one look-up: a lazy mapping computes each mask once
        if mask is None:
            mask = np.zeros(space.shape, bool, order="F")  # NIfTI's order: nibabel writes it without transposing
        if mask.shape != tuple(space.shape):
            raise ValueError(f"{name}: mask shape {mask.shape} differs from the space's {tuple(space.shape)}")
        path = folder / f"{name}.nii.gz"
        save_mask(mask, affine, path)
        written.append(path)
    return written
