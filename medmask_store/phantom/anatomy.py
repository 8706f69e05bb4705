"""The CT phantom's body plan: every TotalSegmentator ``total`` class as a solid, in priority order.

Sizes follow adult anatomy (liver ~1.5 L, kidney ~150 mL, lumbar vertebra
~60 mL, thin curved ribs, vessels a few millimetres wide). Masks do not overlap,
except the pairs in ``OVERLAPS``: a voxel belongs to the first solid of the plan
that holds it, so bones are carved by nothing and the lungs by everything. A
random generator varies body size, spine, each organ's place and size, the small
bowel's course, kidney cysts, the prostate and whether the arms are raised.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
from numpy.typing import ArrayLike

from medmask_store.phantom import skeleton as bones
from medmask_store.phantom.shapes import Ellipsoid, HalfSpace, Shape, Solid, Tube
from medmask_store.phantom.skeleton import ILIAC_CENTRE, ILIAC_NORMAL, ILIAC_TURN, Level

#: Pairs of masks that share voxels, as in real data: cysts inside their kidney, a stray rib_right_12 label
#: inside the sacrum, the left atrial appendage on the heart, the portal vein within liver and pancreas.
OVERLAPS = frozenset(
    frozenset(pair)
    for pair in (("kidney_left", "kidney_cyst_left"), ("kidney_right", "kidney_cyst_right"), ("sacrum", "rib_right_12"),
                 ("heart", "atrial_appendage_left"), ("liver", "portal_vein_and_splenic_vein"),
                 ("pancreas", "portal_vein_and_splenic_vein"))
)
NOTHING = Solid(())


def body_plan(rng: np.random.Generator) -> dict[str, Solid]:
    """Every class of TOTAL_CLASSES as a solid (NOTHING where this body has none), first claim first."""
    levels = bones.spine_levels(rng)
    plan = {
        **skeleton(rng, levels),
        **nervous_system(rng, levels),
        **vessels(rng),
        **viscera(rng, levels),
        **muscles(rng, levels),
        **lungs(rng, levels),
    }
    scale = rng.uniform(0.92, 1.08)  # body size, about the femoral heads
    return {name: solid.mapped(np.eye(3) * scale, np.zeros(3)) for name, solid in plan.items()}


def wiggled(rng: np.random.Generator, *solids: Solid, shift: float = 4.0, spread: float = 0.08) -> list[Solid]:
    """``solids`` moved by one random shift (mm) and scaled by one random factor about the first one's centre."""
    lo, hi = solids[0].bounds
    centre, factor = (lo + hi) / 2, rng.uniform(1 - spread, 1 + spread)
    offset = centre * (1 - factor) + rng.normal(0, shift, 3)
    return [solid.mapped(np.eye(3) * factor, offset) for solid in solids]


def sides(name: str, build: Callable[[], Solid]) -> dict[str, Solid]:
    """``name`` with ``{side}`` as left and right: ``build()`` makes the left solid, another call the right one."""
    return {name.format(side="left"): build(), name.format(side="right"): build().mirrored()}


def solid(*parts: Shape) -> Solid:
    """The union of ``parts``, without holes."""
    return Solid(parts)


# -- bones and nerves ----------------------------------------------------------------------------
def skeleton(rng: np.random.Generator, levels: dict[str, Level]) -> dict[str, Solid]:
    plan = {f"vertebrae_{name}": bones.vertebra(level) for name, level in levels.items()}
    plan["sacrum"] = bones.sacrum(levels["S1"])
    ribs = [bones.rib(n, levels[f"T{n}"]) for n in range(1, 13)]
    for n, rib in enumerate(ribs, 1):
        plan[f"rib_left_{n}"], plan[f"rib_right_{n}"] = solid(rib), solid(rib).mirrored()
    plan["rib_right_12"] = solid(*plan["rib_right_12"].parts, bones.sacrum_stray(levels["S1"]))
    plan["sternum"], joints = bones.sternum(levels)
    cartilages = bones.costal_cartilage(ribs, joints)
    plan["costal_cartilages"] = Solid((*cartilages, *solid(*cartilages).mirrored().parts))
    limbs: dict[str, Callable[[], Solid | Tube]] = {
        "femur": bones.femur, "hip": bones.hip, "clavicula": bones.clavicula, "scapula": bones.scapula,
        "humerus": partial(bones.humerus, arms_up=bool(rng.random() < 0.5)),
    }
    for name, build in limbs.items():
        def bone(build: Callable[[], Solid | Tube] = build) -> Solid:
            return wiggled(rng, solid(build()), shift=2, spread=0.04)[0]

        plan |= sides(f"{name}_{{side}}", bone)
    plan["skull"] = bones.skull(levels["C1"])
    return plan


def nervous_system(rng: np.random.Generator, levels: dict[str, Level]) -> dict[str, Solid]:
    cord = [levels[name] for name in bones.VERTEBRAE[bones.VERTEBRAE.index("L1") :]]
    radii = [3.0, *(5.0 if level.name[0] == "T" else 6.0 for level in cord[1:])]  # the cord tapers at L1
    c1 = levels["C1"]
    brain = Ellipsoid.of((0, -10, c1.z + 118), (65, 82, 58))
    return {
        "spinal_cord": solid(Tube.of([(0, level.canal_y, level.z) for level in cord], radii)),
        "brain": wiggled(rng, solid(brain), shift=1, spread=0.04)[0],
    }


# -- vessels -------------------------------------------------------------------------------------
def vessels(rng: np.random.Generator) -> dict[str, Solid]:
    def vessel(points: ArrayLike, radius: ArrayLike) -> Solid:
        return wiggled(rng, solid(Tube.of(points, radius)), shift=2, spread=0.05)[0]

    plan = {
        "aorta": vessel([(5, -45, 455), (0, -45, 520), (8, -25, 555), (22, 0, 555), (25, 15, 520), (22, 15, 440),
                         (18, 0, 380), (15, -25, 320), (12, -35, 250), (5, -35, 180)],
                        [13, 13, 11, 10, 10, 10, 9, 8.5, 8, 7.5]),
        "inferior_vena_cava": vessel([(0, -22, 165), (-20, -22, 230), (-25, -25, 300), (-28, -5, 380), (-20, -30, 445)],
                                     10),
        "superior_vena_cava": vessel([(-22, -45, 585), (-22, -48, 540), (-18, -48, 500)], 10),
        "brachiocephalic_trunk": vessel([(0, -40, 560), (-8, -38, 585), (-18, -35, 610)], 7),
        "subclavian_artery_right": vessel([(-18, -35, 610), (-40, -30, 625), (-70, -25, 628), (-100, -20, 615)], 5),
        "subclavian_artery_left": vessel([(18, -10, 560), (28, -18, 600), (45, -22, 625), (75, -22, 628),
                                          (100, -20, 615)], 5),
        "common_carotid_artery_right": vessel([(-18, -35, 610), (-22, -30, 650), (-25, -25, 700)], 4),
        "common_carotid_artery_left": vessel([(8, -32, 562), (18, -30, 600), (24, -25, 650), (25, -25, 700)], 4),
        "brachiocephalic_vein_left": vessel([(70, -35, 605), (35, -45, 600), (0, -50, 590), (-20, -46, 585)], 7),
        "brachiocephalic_vein_right": vessel([(-60, -35, 610), (-40, -42, 600), (-22, -45, 588)], 7),
        "pulmonary_vein": solid(*(  # upper and lower veins of each lung, from the left atrium to the hilum
            Tube.of([(8 * sign, -20, 470 + dz), (40 * sign, -10, 472 + 1.5 * dz), (58 * sign, -5, 475 + 3 * dz)], 6)
            for sign in (1, -1) for dz in (-8, 8)
        )),
        "portal_vein_and_splenic_vein": vessel([(75, 15, 300), (40, -15, 278), (5, -35, 268), (-25, -35, 290),
                                                (-45, -25, 320)], [5, 6, 7, 8, 7]),
    }
    iliac_artery = [(5, -35, 180), (30, -40, 140), (55, -45, 90), (75, -55, 40), (85, -65, 0)]
    iliac_vein = [(0, -22, 165), (20, -22, 140), (50, -30, 95), (70, -45, 45), (80, -55, 0)]
    plan |= sides("iliac_artery_{side}", lambda: vessel(iliac_artery, 5.5))
    plan |= sides("iliac_vena_{side}", lambda: vessel(iliac_vein, 7.5))
    return plan


# -- organs --------------------------------------------------------------------------------------
def viscera(rng: np.random.Generator, levels: dict[str, Level]) -> dict[str, Solid]:
    def organ(*parts: Ellipsoid | Tube, holes: tuple[HalfSpace | Ellipsoid, ...] = ()) -> Solid:
        return wiggled(rng, Solid(parts, holes))[0]

    plan = {
        "thyroid_gland": organ(Ellipsoid.of((20, -32, 625), (9, 10, 22)), Ellipsoid.of((-20, -32, 625), (9, 10, 22)),
                               Ellipsoid.of((0, -42, 615), (12, 4, 6))),
        "trachea": organ(Tube.of([(0, -35, 710), (0, -30, 640), (0, -20, 560), (2, -15, 495)], 9)),
        "esophagus": organ(Tube.of([(0, -12, 710), (2, -8, 640), (5, -2, 560), (8, 0, 480), (15, -5, 420),
                                    (25, -5, 392)], 7)),
    }
    heart, appendage = wiggled(rng, solid(Ellipsoid.of((15, -55, 470), (52, 42, 58), (40, 30, 0))),
                               solid(Ellipsoid.of((48, -38, 497), (9, 14, 8), (30, 0, 0))))
    plan |= {"heart": heart, "atrial_appendage_left": appendage}
    for side, drop in (("left", 0), ("right", 15)):  # the liver pushes the right kidney down
        group = kidney_group(rng, levels["L1"].z - 5 - drop)
        if side == "right":
            group = [solid.mirrored() for solid in group]
        plan |= dict(zip((f"kidney_{side}", f"kidney_cyst_{side}", f"adrenal_gland_{side}"), group))
    bladder_fill = rng.uniform(0.7, 1.3) ** (1 / 3)  # bladder volume varies by ±30 %
    plan |= {
        "spleen": organ(Ellipsoid.of((90, 35, 345), (22, 55, 40), (40, 0, 0))),
        "gallbladder": organ(Ellipsoid.of((-55, -75, 295), (15, 16, 38), (0, 0, -30))),
        "liver": organ(Ellipsoid.of((-68, -15, 345), (64, 66, 70)), Ellipsoid.of((0, -62, 375), (50, 35, 35))),
        "pancreas": organ(Tube.of([(-35, -40, 250), (-10, -55, 262), (25, -45, 272), (55, -20, 282), (80, 5, 295)],
                                  [16, 12, 12, 11, 9])),
        "prostate": organ(Ellipsoid.of((0, -25, -5), (20, 15, 17))) if rng.random() < 0.5 else NOTHING,
        "urinary_bladder": organ(Ellipsoid.of((0, -45, 35), np.multiply((45, 35, 35), bladder_fill))),
        "stomach": organ(Tube.of([(25, 5, 390), (60, -10, 400), (75, -35, 350), (55, -70, 300), (15, -80, 285),
                                  (-15, -65, 290), (-30, -55, 295)], [16, 34, 30, 25, 20, 14, 11])),
        "duodenum": organ(Tube.of([(-30, -55, 295), (-55, -40, 285), (-62, -25, 255), (-55, -30, 222), (-20, -45, 210),
                                   (20, -50, 215), (35, -45, 240)], 13)),
        "colon": organ(Tube.of([(-75, -40, 130), (-85, -25, 200), (-85, -25, 270), (-70, -55, 310), (-20, -100, 285),
                                (30, -95, 290), (75, -40, 330), (95, 5, 300), (90, 5, 200), (75, -20, 130),
                                (35, -55, 100), (0, -20, 90), (0, 45, 70), (0, 50, 20)], [28, *[20] * 13])),
        "small_bowel": solid(small_bowel(rng)),
    }
    return plan


def kidney_group(rng: np.random.Generator, height: float) -> list[Solid]:
    """Left kidney (hilum hollowed, upper pole tilted in and back), an optional cyst inside it, its adrenal gland."""
    centre = np.array((60.0, 30.0, height))
    kidney = Solid((Ellipsoid.of(centre, (27, 23, 57), (-30, -15, -10)),),
                   (Ellipsoid.of(centre + (-24, -8, 0), (12, 10, 22)),))
    cyst = NOTHING
    if rng.random() < 0.5:
        where = centre + rng.uniform(-1, 1, 3) * (8, 6, 30)
        cyst = solid(Ellipsoid.of(where, rng.uniform(5, 12, 3)))
    adrenal = solid(Ellipsoid.of(centre + (-15, -5, 60), (4, 14, 20), (30, 0, 0)))
    return wiggled(rng, kidney, cyst, adrenal)


def small_bowel(rng: np.random.Generator) -> Tube:
    """A random walk through the lower abdomen, from the duodenum's end to the caecum."""
    lo, hi = np.array((-70.0, -115.0, 120.0)), np.array((60.0, -30.0, 260.0))
    point = np.array((35.0, -45.0, 240.0))
    points = [tuple(point)]
    for _ in range(45):
        step = rng.normal(size=3)
        point = point + 35 * step / np.linalg.norm(step)
        point = np.where(point < lo, 2 * lo - point, np.where(point > hi, 2 * hi - point, point))  # bounce off walls
        points.append(tuple(point))
    return Tube.of([*points, (-70, -40, 140)], 14.0)


# -- muscles and lungs ---------------------------------------------------------------------------
def muscles(rng: np.random.Generator, levels: dict[str, Level]) -> dict[str, Solid]:
    def muscle(*parts: Ellipsoid | Tube) -> Solid:
        return wiggled(rng, Solid(parts), shift=3, spread=0.06)[0]

    l1, l3, l5 = levels["L1"], levels["L3"], levels["L5"]
    psoas = Tube.of([(30, l1.y + 10, l1.z), (45, l3.y + 5, l3.z), (60, l5.y - 5, l5.z), (75, -25, 70), (85, -40, 20),
                     (100, -20, -40), (110, 0, -70)], [10, 18, 22, 22, 18, 12, 8])
    iliacus = Ellipsoid.of(ILIAC_CENTRE - 20 * ILIAC_NORMAL, (12, 45, 45), ILIAC_TURN)
    # Erector spinae: beside the spinous processes from the sacrum to the neck, thinning upwards.
    spine = [levels[bones.VERTEBRAE[k]] for k in (0, 3, 6, 9, 12, 15, 18, 21, 23)]
    radii = [24, 24, 20, 16, 16, 15, 12, 12, 10]
    back = Tube.of([(12 + r, level.canal_y + level.canal + 15, level.z) for level, r in zip(spine, radii)], radii)
    # The small and middle gluteal muscles lie on the iliac wing's outer surface, the great one behind the hip.
    minimus = Ellipsoid.of(ILIAC_CENTRE + 18 * ILIAC_NORMAL + (0, 0, -25), (10, 40, 35), ILIAC_TURN)
    medius = Ellipsoid.of(ILIAC_CENTRE + 33 * ILIAC_NORMAL + (0, 0, -10), (18, 50, 45), ILIAC_TURN)
    maximus = Ellipsoid.of((95, 80, 10), (55, 32, 85), (-20, 0, 0))
    plan: dict[str, Solid] = {}
    plan |= sides("iliopsoas_{side}", lambda: muscle(psoas, iliacus))
    plan |= sides("gluteus_minimus_{side}", lambda: muscle(minimus))
    plan |= sides("gluteus_medius_{side}", lambda: muscle(medius))
    plan |= sides("gluteus_maximus_{side}", lambda: muscle(maximus))
    plan |= sides("autochthon_{side}", lambda: muscle(back))
    return plan


def lungs(rng: np.random.Generator, levels: dict[str, Level]) -> dict[str, Solid]:
    """Five lobes: each lung split by its oblique fissure, the right one also by the horizontal fissure."""
    apex, base = levels["T1"].z + 30, levels["T11"].z
    plan = {}
    for side, sign in (("left", 1), ("right", -1)):
        whole = Ellipsoid.of((75 * sign, -20, (apex + base) / 2), (55, 85, (apex - base) / 2))
        (lung,) = wiggled(rng, solid(whole), spread=0.05)
        back, front = (0, 70, levels["T3"].z + 10 + rng.normal(0, 8)), (0, -110, base + 70 + rng.normal(0, 8))
        lower_side = (0, back[2] - front[2], front[1] - back[1])  # normal of the oblique fissure, into the lower lobe
        upper_side = tuple(-n for n in lower_side)
        lower = HalfSpace.of(back, lower_side)
        plan[f"lung_lower_lobe_{side}"] = Solid(lung.parts, (HalfSpace.of(back, upper_side),))
        if side == "left":
            plan["lung_upper_lobe_left"] = Solid(lung.parts, (lower,))
        else:
            horizontal = levels["T5"].z + rng.normal(0, 8)
            plan["lung_upper_lobe_right"] = Solid(lung.parts, (lower, HalfSpace.of((0, 0, horizontal), (0, 0, -1))))
            plan["lung_middle_lobe_right"] = Solid(lung.parts, (lower, HalfSpace.of((0, 0, horizontal), (0, 0, 1))))
    return plan
