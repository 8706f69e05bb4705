"""The phantom's bones: spine, ribs, sternum, pelvis, shoulders, skull (left-side solids are mirrored for the right).

Millimetres, axes as in :mod:`.shapes`, origin on the midline at the height of
the femoral heads. The spine sets the heights of everything that hangs on it:
rib ``n`` leaves vertebra ``T<n>``, the spinal cord runs through the canals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medmask_store.io.totalsegmentator import TOTAL_CLASSES
from medmask_store.phantom.shapes import Ellipsoid, HalfSpace, Solid, Tube, rotation

#: Vertebra names from the bottom up (S1, L5 ... L1, T12 ... T1, C7 ... C1), as in TOTAL_CLASSES.
VERTEBRAE = tuple(name.removeprefix("vertebrae_") for name in TOTAL_CLASSES if name.startswith("vertebrae_"))
#: Height of S1's centre above the femoral heads, and from each region to the next vertebra up.
S1_HEIGHT = 100.0
PITCH = {"S": 36.0, "L": 36.0, "T": 25.0, "C": 17.0}
#: How far forward (-y) the spine lies, at vertebra positions 0 (S1) .. 24 (C1): lordosis and kyphosis.
SPINE_CURVE = ((0, 30.0), (3, 0.0), (5, 8.0), (11, 38.0), (15, 38.0), (17, 25.0), (21, 2.0), (24, 8.0))
#: Per rib 1..12: lateral half-width of its arc, how far it drops towards the front, where its arc ends.
RIB_WIDTH = (48, 72, 92, 106, 117, 126, 132, 136, 138, 137, 134, 128)
RIB_DROP = (15, 35, 55, 70, 80, 90, 95, 100, 100, 95, 60, 45)
RIB_END = (2.5,) * 10 + (1.9, 1.6)
#: Front of the chest (y) where ribs 1 and 12 would end; ribs between are interpolated.
CHEST_FRONT = (-95.0, -125.0)


@dataclass(frozen=True)
class Level:
    """One vertebra: its body's centre (y, z), half-width, half-depth, half-height, and its canal's radius."""

    name: str
    y: float
    z: float
    width: float
    depth: float
    half_height: float
    canal: float

    @property
    def canal_y(self) -> float:
        return self.y + self.depth + self.canal


def spine_levels(rng: np.random.Generator) -> dict[str, Level]:
    """The 25 vertebrae of one body, bottom up; pitch and curvature vary with ``rng``."""
    pitch = {region: step * rng.uniform(0.94, 1.06) for region, step in PITCH.items()}
    index, forward = np.array(SPINE_CURVE).T
    forward = forward + rng.normal(0, 3, len(forward))
    levels, z = {}, S1_HEIGHT
    for k, name in enumerate(VERTEBRAE):
        region, number = name[0], int(name[1:])
        if region == "T":
            up = (12 - number) / 11  # T12 -> 0, T1 -> 1: thoracic vertebrae shrink upwards
            size = (21 - 6 * up, 16 - 4 * up, 11 - 3 * up, 8.0)
        else:
            size = {"S": (25, 18, 13, 10), "L": (25, 19, 14, 11), "C": (11, 8, 6.5, 9)}[region]
        levels[name] = Level(name, float(np.interp(k, index, forward)), z, *size)
        z += pitch[region]
    return levels


def vertebra(level: Level) -> Solid:
    """Body (a cylinder-like cut ellipsoid), arch, spinous and transverse processes, less the canal."""
    y, z, h = level.y, level.z, level.half_height
    region = level.name[0]
    body = Solid((Ellipsoid.of((0, y, z), (level.width, level.depth, 2 * h)),),
                 (HalfSpace.of((0, 0, z + h), (0, 0, 1)), HalfSpace.of((0, 0, z - h), (0, 0, -1))))
    canal_y = level.canal_y
    arch = Ellipsoid.of((0, canal_y, z), (level.canal + 7, level.canal + 6, 0.8 * h))
    tilt = {"T": -35, "C": -15}.get(region, 0)
    spinous = Ellipsoid.of((0, canal_y + level.canal + 18, z - 0.4 * h), (4, 20, 0.5 * h), (0, 0, tilt))
    reach = {"C": 8, "T": 15}.get(region, 22)
    transverse = Ellipsoid.of((0, canal_y - 0.2 * level.canal, z), (level.width + reach, 6, 5))
    canal = Ellipsoid.of((0, canal_y, z), (level.canal, level.canal, 3 * h))
    return Solid((body, arch, spinous, transverse), (canal,))


def sacrum(s1: Level) -> Solid:
    """The sacrum below S1: a plate leaning back towards its tip, with wings (alae) to the hips."""
    plate = Ellipsoid.of((0, s1.y + 25, s1.z - 55), (40, 14, 48), (0, 0, 30))
    alae = Ellipsoid.of((0, s1.y + 15, s1.z - 12), (55, 18, 15))
    return Solid((plate, alae))


def sacrum_stray(s1: Level) -> Ellipsoid:
    """A few voxels inside the sacrum, as real label maps hold a stray ``rib_right_12`` there."""
    return Ellipsoid.of((0, s1.y + 25, s1.z - 55), (1.5, 1.5, 2.5))


def rib(number: int, level: Level) -> Tube:
    """Left rib ``number``: from its vertebra round the chest on an elliptic arc, dropping towards the front."""
    i = number - 1
    front = np.interp(i, (0, 11), CHEST_FRONT)
    back = level.y + 25
    # The arc runs from angle 0.3 (at the back) to RIB_END (2.5 reaches the front, where cartilage takes over).
    depth = (back - front) / (np.cos(0.3) - np.cos(2.5))
    centre_y = back - depth * np.cos(0.3)
    angles = np.linspace(0.3, RIB_END[i], 10)
    drop = RIB_DROP[i] * ((angles - 0.3) / (2.5 - 0.3)) ** 1.2
    arc = np.column_stack([RIB_WIDTH[i] * np.sin(angles), centre_y + depth * np.cos(angles), level.z - drop])
    head = (level.width + 3, level.y + 8, level.z + 3)
    return Tube.of(np.vstack([head, arc]), 6.0 if number == 1 else 4.5 if number < 11 else 4.0)


def sternum(levels: dict[str, Level]) -> tuple[Solid, list[tuple[float, float, float]]]:
    """The sternum (manubrium and body) from T2 to T9 height, and where cartilages 1..7 meet it."""
    top, bottom = levels["T2"].z, levels["T9"].z
    body = Ellipsoid.of((0, -124, (top + bottom) / 2 - 10), (19, 7, (top - bottom) / 2), (0, 0, 8))
    manubrium = Ellipsoid.of((0, -114, top - 15), (28, 8, 22))
    joints = [(18.0, -118.0 - 1.5 * n, top - 10 - n * (top - bottom) / 7) for n in range(7)]
    return Solid((manubrium, body)), joints


def costal_cartilage(ribs: list[Tube], joints: list[tuple[float, float, float]]) -> list[Tube]:
    """Left cartilages: ribs 1..7 to the sternum, ribs 8..10 up to the cartilage above."""
    cartilages = []
    for n, rib_tube in enumerate(ribs[:10]):
        end = rib_tube.points[-1]
        target = joints[n] if n < 7 else (40 + 12 * (n - 7), -112 + 4 * (n - 7), joints[6][2] - 20 * (n - 6))
        bend = end + (np.asarray(target) - end) / 2 + (4, -6, 0)  # cartilages curve out and forward
        cartilages.append(Tube.of([end, bend, target], 5.0))
    return cartilages


def femur() -> Solid:
    """Left femur: head in the hip socket, neck, greater trochanter, shaft."""
    head = Ellipsoid.of((95, -5, 0), (23, 23, 23))
    neck = Tube.of([(95, -5, 0), (120, 5, -30)], 16.0, smooth=0)
    trochanter = Ellipsoid.of((130, 10, -25), (15, 18, 20))
    shaft = Tube.of([(125, 5, -40), (115, 0, -250), (100, 0, -430)], [14, 13, 12])
    return Solid((head, neck, trochanter, shaft))


ILIAC_TURN = (35.0, 15.0, 0.0)  # the iliac wing's plate faces front-inwards and flares outwards at the top
ILIAC_CENTRE = np.array((80.0, 0.0, 110.0))


#: Unit normal of the left iliac wing's outer (gluteal) surface, where the gluteal muscles lie.
ILIAC_NORMAL = rotation(ILIAC_TURN)[:, 0]


def hip() -> Solid:
    """Left hip bone: iliac wing, acetabulum round the femoral head, pubic and ischial rami."""
    wing = Ellipsoid.of(tuple(ILIAC_CENTRE), (10, 60, 50), ILIAC_TURN)
    acetabulum = Ellipsoid.of((95, 0, 10), (28, 32, 35))
    pubis = Tube.of([(95, -25, -5), (55, -55, -20), (6, -60, -25)], 10.0)
    ischium = Tube.of([(100, 10, -10), (85, 25, -50), (60, 15, -60), (35, -35, -40)], 12.0)
    return Solid((wing, acetabulum, pubis, ischium))


def scapula() -> Solid:
    """Left shoulder blade: a plate on the back of the upper ribs, its spine, acromion and glenoid."""
    plate = Ellipsoid.of((95, 92, 540), (50, 7, 70), (-30, 0, 0))
    spine = Tube.of([(60, 100, 580), (110, 90, 600), (145, 55, 610)], 8.0)
    glenoid = Ellipsoid.of((140, 45, 580), (12, 14, 18))
    return Solid((plate, spine, glenoid))


def clavicula() -> Tube:
    return Tube.of([(18, -105, 565), (60, -100, 585), (110, -80, 600), (142, -55, 605)], 7.0)


def humerus(arms_up: bool) -> Solid:
    """Left upper arm bone, hanging by the body or raised beside the head (as many abdominal scans are taken)."""
    head = Ellipsoid.of((160, 45, 575), (23, 23, 23))
    elbow = [(150, 35, 700), (120, 30, 850)] if arms_up else [(180, 50, 450), (190, 50, 300)]
    return Solid((head, Tube.of([(165, 45, 560), *elbow], [14, 12, 11])))


def skull(c1: Level) -> Solid:
    """Cranial vault (a shell round the brain) and mandible, above C1."""
    centre = (0, -10, c1.z + 118)
    vault = Ellipsoid.of(centre, (74, 92, 72))
    inside = Ellipsoid.of(centre, (67, 85, 64))
    z = c1.z
    mandible = Tube.of([(-45, -20, z + 35), (-40, -70, z), (0, -90, z - 5), (40, -70, z), (45, -20, z + 35)], 8.0)
    return Solid((Solid((vault,), (inside,)), mandible))
