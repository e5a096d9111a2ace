"""Synthetic abdominal phantoms written in the exact raw download layouts of BTCV and AMOS 2022.

Each case is a body (skin, subcutaneous fat, abdominal wall, visceral fat, spine) holding every organ of the
label table (13 for BTCV, 15 for AMOS) as a smooth, randomly deformed shape (unions of ellipsoids, or tubes
along a jittered centre line) at a plausible position and relative size, plus unlabelled look-alikes
(psoas muscles, iliac vessels, bowel loops, lung bases) that make the task depend on shape and position,
not on intensity alone. Organs never overlap: they are painted in a fixed priority order, each only into
voxels no earlier structure took. Several organs share intensities (liver/spleen, gallbladder/bladder,
the vessels, the soft-tissue tubes).

Intensities: CT in Hounsfield units (contrast-enhanced, per-case jitter, partial-volume blur, Gaussian
noise), stored as int16. AMOS cases with numbers above 500 are MRI-like (T1-like contrast in arbitrary
units, smooth bias field, Rician noise, a random global scale), int16 too.

Geometry: anisotropic spacing (at the default grid: in-plane about 4.7 mm, slices about 7 mm for BTCV and 10 mm
for AMOS, whose field of view reaches the pelvis), sizes that vary by case, a random origin, and a direction made of
axis flips and a small rotation (AMOS MRI cases use another axis flip than CT ones, as real AMOS MRI differs in
orientation). Anatomy is defined in patient coordinates (LPS: x to the patient's left, y posterior, z superior, mm),
so the direction is honoured.

Everything is determined by (seed, kind, case number): a case does not change when more cases are made.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_poolskip.dataset_conversion.labels import AMOS_DOWNLOAD_LABEL_NAMES, label_table
from nnunet_poolskip.dataset_conversion.layouts import (
    AMOS_MRI_MIN_NUMBER,
    BTCV_RAW_ROOT,
    BTCV_TESTING_FIRST_NUMBER,
    BTCV_TESTING_IMAGES,
    BTCV_TRAINING_IMAGES,
    BTCV_TRAINING_LABELS,
    BTCV_TRAINING_NUMBERS,
    amos_case_id,
    amos_modality,
    btcv_image_name,
    btcv_label_name,
)
from nnunet_poolskip.utilities.atomic import (
    check_output_path,
    remove_stale_temporaries,
    replace_directory,
    temporary_folder,
)

DEFAULT_SIZE = (40, 64, 64)  # nominal voxel grid (z, y, x); actual sizes vary by about +-10 % per case
DEFAULT_CASES = {"btcv": 30, "amos": 24}
# Field of view in the reference body frame (mm): in-plane width, and the z range (BTCV: upper abdomen to
# iliac crest; AMOS: down to the pelvis, for bladder and prostate/uterus).
FOV_XY_MM = 300.0
FOV_Z_MM = {"btcv": (-110.0, 165.0), "amos": (-225.0, 165.0)}
BODY_SEMI_AXES_MM = (125.0, 95.0)  # left-right, anterior-posterior
MIN_ORGAN_VOXELS = 8  # at DEFAULT_SIZE; scaled with the voxel count for other sizes (at least 1)
MAX_ATTEMPTS = 6
_KIND_CODE = {"btcv": 1, "amos": 2}

ANATOMY_SCALES: Dict[str, Dict[str, float]] = {
    "standard": {},
    # the small organs grown about the same centres (ellipsoid semi-axes, tube radii times the factor), so that at
    # the demo's coarse grid (about 7.5 mm in-plane, 11 mm slices) each is several voxels across and a short CPU
    # training can see it; the same 13 labels, positions and intensities, painted in the same priority order
    "learnable": {"right adrenal gland": 2.0, "left adrenal gland": 2.0, "portal and splenic veins": 2.0,
                  "esophagus": 1.8, "gallbladder": 1.5, "aorta": 1.4, "inferior vena cava": 1.4, "pancreas": 1.3},
}
"""Phantom anatomies (``synth --anatomy``): organ name -> size factor; organs not named keep their size.
``standard`` is the BTCV-like anatomy; ``learnable`` is made for short CPU runs (the demo) and is not BTCV-sized."""
DEFAULT_ANATOMY = "standard"

Point = Tuple[float, float, float]


@dataclass(frozen=True)
class Structure:
    """A shape in the reference body frame (mm, LPS) with CT (HU) and MRI (a.u.) intensities.

    ``blobs``: ellipsoids ``(centre, semi-axes)``, united; ``path`` + ``radius``: a tube around a polyline.
    ``core``: voxels deeper than this fraction of the shape get ``core_ct`` / ``core_mri`` (kidney medulla,
    gut lumen); 0 means no core.
    """

    name: str
    ct: float
    mri: float
    blobs: Tuple[Tuple[Point, Point], ...] = ()
    path: Tuple[Point, ...] = ()
    radius: float = 0.0
    core: float = 0.0
    core_ct: float = 0.0
    core_mri: float = 0.0


# Organs by label name (the names of nnunet_poolskip.dataset_conversion.labels), in painting priority: earlier ones win.
_ORGANS: Tuple[Structure, ...] = (
    Structure("right adrenal gland", 55, 380, blobs=(((-32, 38, 62), (7, 10, 13)),)),
    Structure("left adrenal gland", 55, 380, blobs=(((30, 40, 58), (7, 10, 13)),)),
    Structure("portal and splenic veins", 160, 800, path=((-38, 8, 62), (-12, 16, 45), (15, 26, 50), (45, 36, 62),
                                                          (60, 38, 72)), radius=6),
    Structure("gallbladder", 12, 180, blobs=(((-42, -42, 35), (14, 14, 24)),)),
    Structure("esophagus", 45, 320, path=((0, 30, 185), (3, 25, 135), (15, 5, 105), (28, -8, 95)), radius=7.5),
    Structure("aorta", 180, 880, path=((8, 30, 185), (10, 28, 80), (8, 24, 0), (6, 18, -70)), radius=11),
    Structure("inferior vena cava", 140, 720, path=((-22, 20, 115), (-24, 24, 40), (-20, 22, -20), (-18, 18, -75)),
              radius=11),
    Structure("pancreas", 95, 560, blobs=(((-18, 0, 28), (17, 15, 18)),),
              path=((-18, 2, 30), (-5, 8, 40), (20, 18, 50), (48, 30, 60)), radius=12),
    Structure("duodenum", 50, 340, path=((2, -30, 52), (-25, -20, 40), (-38, -2, 22), (-33, 10, 0), (-10, 18, -10),
                                         (18, 15, 2)), radius=10, core=0.4, core_ct=25, core_mri=230),
    Structure("right kidney", 170, 520, blobs=(((-58, 48, 5), (24, 20, 45)),), core=0.45, core_ct=120,
              core_mri=300),
    Structure("left kidney", 170, 520, blobs=(((58, 50, 20), (23, 20, 45)),), core=0.45, core_ct=120,
              core_mri=300),
    Structure("spleen", 115, 420, blobs=(((72, 40, 90), (24, 36, 42)),)),
    Structure("stomach", 50, 330, blobs=(((45, -20, 90), (40, 30, 38)), ((15, -48, 55), (30, 18, 22))), core=0.3,
              core_ct=20, core_mri=220),
    Structure("liver", 108, 520, blobs=(((-50, 5, 85), (62, 58, 58)), ((5, -38, 95), (38, 24, 32)),
                                        ((-65, 15, 30), (32, 40, 35)))),
    Structure("bladder", 10, 120, blobs=(((0, -40, -165), (38, 32, 26)),)),
)
_PROSTATE = Structure("prostate/uterus", 45, 330, blobs=(((0, -10, -192), (16, 14, 14)),))
_UTERUS = Structure("prostate/uterus", 80, 420, blobs=(((0, 8, -138), (30, 20, 28)),))
# Label names that differ between the tables but are the same organ here.
_ALIASES = {"postcava (IVC)": "inferior vena cava"}

# Unlabelled structures, painted after the organs into free voxels only.
_DISTRACTORS: Tuple[Structure, ...] = (
    Structure("right psoas", 50, 280, path=((-30, 45, 40), (-42, 40, -40), (-55, 30, -130), (-60, 20, -230)),
              radius=14),
    Structure("left psoas", 50, 280, path=((30, 45, 40), (42, 40, -40), (55, 30, -130), (60, 20, -230)), radius=14),
    Structure("right iliac artery", 180, 880, path=((6, 18, -70), (-40, 10, -130), (-60, 0, -230)), radius=7),
    Structure("left iliac artery", 180, 880, path=((6, 18, -70), (40, 10, -130), (60, 0, -230)), radius=7),
    Structure("right iliac vein", 140, 720, path=((-18, 18, -75), (-45, 18, -130), (-65, 10, -230)), radius=8),
    Structure("left iliac vein", 140, 720, path=((-18, 18, -75), (30, 22, -130), (55, 12, -230)), radius=8),
    Structure("right lung base", -850, 20, blobs=(((-70, 30, 215), (60, 55, 85)),)),
    Structure("left lung base", -850, 20, blobs=(((70, 30, 215), (55, 55, 85)),)),
)
_SPINE = Structure("vertebrae", 400, 350, blobs=(((0, 58, 0), (16, 16, 1e4)),), core=0.25, core_ct=250, core_mri=380)
_CANAL = Structure("spinal canal", 15, 150, blobs=(((0, 82, 0), (7, 7, 1e4)),))
# Background tissues: (CT HU, MRI a.u.)
_AIR = (-1000.0, 5.0)
_SUBCUTANEOUS_FAT = (-100.0, 850.0)
_WALL_MUSCLE = (45.0, 280.0)
_VISCERAL_FAT = (-90.0, 800.0)
_BOWEL = (35.0, 300.0)
_GAS = (-800.0, 10.0)
_CORTICAL_BONE = (750.0, 60.0)
_BODY_WALL = (0.80, 0.87)  # normalised body radius where the wall muscle starts and the fat ends


@dataclass
class PhantomCase:
    """One generated case: arrays in (z, y, x) order and the geometry (SimpleITK order x, y, z; mm)."""

    image: np.ndarray  # int16
    label: np.ndarray  # uint8
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...]  # 3x3 row-major
    modality: str


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


class _Grid:
    """Voxel centres of a case in the reference body frame, with index-space bounding boxes for shapes."""

    def __init__(self, shape: Tuple[int, int, int], spacing_xyz: np.ndarray, direction: np.ndarray,
                 v0: np.ndarray, body_scale: np.ndarray):
        self.shape = shape
        self.spacing = spacing_xyz
        self.direction = direction
        self.v0 = v0
        self.scale = body_scale
        nz, ny, nx = shape
        vx = (np.arange(nx) * spacing_xyz[0] - v0[0]).astype(np.float32)[None, None, :]
        vy = (np.arange(ny) * spacing_xyz[1] - v0[1]).astype(np.float32)[None, :, None]
        vz = (np.arange(nz) * spacing_xyz[2] - v0[2]).astype(np.float32)[:, None, None]
        # reference-frame coordinates q = D (v - v0) / body scale
        self.q = [(float(direction[c, 0]) * vx + float(direction[c, 1]) * vy + float(direction[c, 2]) * vz)
                  / float(body_scale[c]) for c in range(3)]

    def box(self, low: np.ndarray, high: np.ndarray) -> Optional[Tuple[slice, slice, slice]]:
        """Index slices (z, y, x) covering the reference-frame box [low, high], or None if outside the grid."""
        corners = np.array([[a, b, c] for a in (low[0], high[0]) for b in (low[1], high[1])
                            for c in (low[2], high[2])]) * self.scale
        v = corners @ self.direction + self.v0  # D orthonormal: v = D^T p + v0
        index = v / self.spacing
        lo = np.floor(index.min(axis=0)).astype(int) - 1
        hi = np.ceil(index.max(axis=0)).astype(int) + 2
        sizes = np.array(self.shape[::-1])
        lo, hi = np.clip(lo, 0, sizes), np.clip(hi, 0, sizes)
        if np.any(hi <= lo):
            return None
        return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])

    def coords(self, box) -> List[np.ndarray]:
        return [np.broadcast_to(c, self.shape)[box] for c in self.q]


def _jittered(structure: Structure, rng: np.random.Generator, centre_sd: float = 4.0,
              size_range: Tuple[float, float] = (0.85, 1.15)) -> Structure:
    """A random variant of a structure: moved, resized per axis and (tubes) with a jittered centre line."""
    blobs = tuple((tuple(np.add(c, rng.normal(0, centre_sd, 3))), tuple(np.multiply(r, rng.uniform(*size_range, 3))))
                  for c, r in structure.blobs)
    shift = rng.normal(0, centre_sd, 3)
    path = tuple(tuple(np.add(p, shift + rng.normal(0, 2.5, 3))) for p in structure.path)
    return Structure(structure.name, structure.ct, structure.mri, blobs, path,
                     structure.radius * rng.uniform(*size_range), structure.core, structure.core_ct,
                     structure.core_mri)


def _deformation(coords: List[np.ndarray], centre: np.ndarray, scale: float, amplitude: float,
                 rng: np.random.Generator, n_waves: int = 3) -> np.ndarray:
    """A smooth random field: a sum of plane waves of about one cycle per ``scale`` mm."""
    field = np.zeros(coords[0].shape, np.float32)
    for _ in range(n_waves):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        k = 2 * math.pi * rng.uniform(0.5, 1.3) / scale
        # Python floats keep the float32 arrays float32
        weights = [float(k * direction[c]) for c in range(3)]
        phase = float(rng.uniform(0, 2 * math.pi) - sum(weights[c] * float(centre[c]) for c in range(3)))
        field += np.sin(weights[0] * coords[0] + weights[1] * coords[1] + weights[2] * coords[2] + phase)
    return np.float32(amplitude / math.sqrt(n_waves)) * field


def _segment_distance(coords: List[np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, ab = [float(x) for x in a], [float(x) for x in np.subtract(b, a)]
    t = sum((coords[c] - a[c]) * ab[c] for c in range(3)) / max(sum(x * x for x in ab), 1e-6)
    t = np.clip(t, 0, 1)
    return np.sqrt(sum((coords[c] - (a[c] + t * ab[c])) ** 2 for c in range(3)))


def _level(structure: Structure, grid: _Grid, rng: np.random.Generator, deform: float, tilt_sd: float = 10.0
           ) -> Tuple[Optional[Tuple[slice, ...]], Optional[np.ndarray]]:
    """(box, f) with f < 0 inside the (deformed) structure and -1 at its centre line/centre; None outside.

    Ellipsoids are rotated by a random angle (standard deviation ``tilt_sd`` degrees) about a random axis.
    """
    lows, highs = [], []
    for centre, radii in structure.blobs:
        lows.append(np.subtract(centre, np.multiply(radii, 1.3)))
        highs.append(np.add(centre, np.multiply(radii, 1.3)))
    for point in structure.path:
        lows.append(np.subtract(point, 1.3 * structure.radius))
        highs.append(np.add(point, 1.3 * structure.radius))
    low, high = np.min(lows, axis=0), np.max(highs, axis=0)
    # very long shapes (spine) are clipped to the field of view by box()
    box = grid.box(np.maximum(low, -1e3), np.minimum(high, 1e3))
    if box is None:
        return None, None
    coords = grid.coords(box)
    level = None
    for centre, radii in structure.blobs:
        rotation = _rotation(rng.normal(size=3), rng.normal(0, math.radians(tilt_sd)))
        d = [coords[c] - float(centre[c]) for c in range(3)]
        local = [sum(float(rotation[r, c] / radii[r]) * d[c] for c in range(3)) for r in range(3)]
        f = np.sqrt(sum(x * x for x in local)) - 1
        f += _deformation(coords, np.asarray(centre), 2.0 * float(np.mean(np.minimum(radii, 200))), deform, rng)
        level = f if level is None else np.minimum(level, f)
    if structure.path:
        points = np.asarray(structure.path, float)
        distance = np.min([_segment_distance(coords, points[i], points[i + 1]) for i in range(len(points) - 1)],
                          axis=0)
        f = distance / float(structure.radius) - 1
        f += _deformation(coords, points[0], 6.0 * structure.radius, 0.6 * deform, rng)
        level = f if level is None else np.minimum(level, f)
    return box, level.astype(np.float32)


def _scaled(structure: Structure, factor: float) -> Structure:
    """``structure`` grown by ``factor`` about its own centres (semi-axes and tube radius; centres unchanged)."""
    if factor == 1.0:
        return structure
    blobs = tuple((centre, tuple(r * factor for r in radii)) for centre, radii in structure.blobs)
    return dataclasses.replace(structure, blobs=blobs, radius=structure.radius * factor)


def _organ_list(kind: str, rng: np.random.Generator, anatomy: str = DEFAULT_ANATOMY) -> List[Tuple[int, Structure]]:
    """(label value, structure) of every organ of ``kind`` in painting priority, sized as ``anatomy`` says."""
    values = {_ALIASES.get(name, name): value for value, name in label_table(kind).items()}
    scales = ANATOMY_SCALES[anatomy]
    organs = [(values[s.name], _scaled(s, scales.get(s.name, 1.0))) for s in _ORGANS if s.name in values]
    if "prostate/uterus" in values:
        organs.append((values["prostate/uterus"], _PROSTATE if rng.random() < 0.5 else _UTERUS))
    missing = set(values.values()) - {v for v, _ in organs}
    assert not missing, f"phantom anatomy lacks labels {missing} of {kind}"
    return organs


def _bowel_loops(rng: np.random.Generator, z_low: float) -> List[Structure]:
    """6 to 10 random unlabelled bowel segments, mostly in the lower abdomen (some with gas)."""
    loops = []
    for i in range(int(rng.integers(6, 11))):
        start = np.array([rng.uniform(-80, 80), rng.uniform(-75, 20), rng.uniform(z_low + 20, 40)])
        points = [start]
        for _ in range(3):
            points.append(points[-1] + rng.normal(0, 22, 3))
        gas = rng.random() < 0.4
        loops.append(Structure(f"bowel {i}", _BOWEL[0], _BOWEL[1], path=tuple(map(tuple, points)),
                               radius=float(rng.uniform(9, 14)), core=0.35 if gas else 0.0,
                               core_ct=_GAS[0], core_mri=_GAS[1]))
    return loops


def _case_geometry(kind: str, modality: str, size: Sequence[int], rng: np.random.Generator):
    z_low, z_high = FOV_Z_MM[kind]
    nominal = np.array([FOV_XY_MM / size[2], FOV_XY_MM / size[1], (z_high - z_low) / size[0]])
    in_plane = rng.uniform(0.92, 1.08)
    spacing = nominal * np.array([in_plane, in_plane, rng.uniform(0.9, 1.1)])
    if modality == "mri":
        spacing = spacing * np.array([1.05, 1.05, 1.15])
    body_scale = np.array([rng.uniform(0.9, 1.08), rng.uniform(0.88, 1.08), rng.uniform(0.94, 1.06)])
    fov_xy = FOV_XY_MM * body_scale[:2].max() * rng.uniform(0.98, 1.06)
    z_range = np.array([z_low, z_high]) * body_scale[2] + rng.uniform(-8, 8)
    shape_xyz = np.array([fov_xy / spacing[0], fov_xy / spacing[1], (z_range[1] - z_range[0]) / spacing[2]])
    shape_xyz = np.maximum(np.round(shape_xyz).astype(int), 8)
    flips = np.array([-1.0, -1.0, 1.0]) if modality == "ct" else np.array([1.0, -1.0, 1.0])
    tilt = _rotation(np.array([rng.normal(0, 0.2), rng.normal(0, 0.2), 1.0]), math.radians(rng.uniform(-3, 3)))
    direction = tilt @ np.diag(flips)
    # v0: the index-space vector (mm) of the body frame's origin; x/y centred, z at the FOV's lower end
    v0 = np.array([(shape_xyz[0] - 1) / 2 * spacing[0], (shape_xyz[1] - 1) / 2 * spacing[1], -z_range[0]])
    table_position = np.array([rng.uniform(-30, 30), rng.uniform(-250, -150), rng.uniform(-900, -300)])
    origin = table_position - direction @ v0
    return tuple(int(s) for s in shape_xyz[::-1]), spacing, direction, v0, origin, body_scale


def synthesize_case(kind: str, number: int, seed: int = 0, size: Sequence[int] = DEFAULT_SIZE,
                    anatomy: str = DEFAULT_ANATOMY) -> PhantomCase:
    """Generate one phantom.

    Args:
        kind: "btcv" or "amos".
        number: case number (AMOS numbers above 500 give MRI-like cases).
        seed: base seed; the case depends only on (seed, kind, number).
        size: nominal voxel grid (z, y, x); the field of view stays the same, so larger sizes mean finer spacing.
        anatomy: a key of :data:`ANATOMY_SCALES` (``standard``: BTCV-like sizes; ``learnable``: small organs
            grown for short CPU runs). The random draws are the same for every anatomy.

    Raises:
        ValueError: no attempt kept every organ (at least MIN_ORGAN_VOXELS voxels, scaled to ``size``); only
            happens for tiny sizes.
    """
    if kind not in _KIND_CODE:
        raise ValueError(f"unknown phantom kind {kind!r}; expected 'btcv' or 'amos'")
    _check_anatomy(anatomy)
    modality = amos_modality(number) if kind == "amos" else "ct"
    for attempt in range(MAX_ATTEMPTS):
        rng = np.random.default_rng([seed, _KIND_CODE[kind], number, attempt])
        case = _try_case(kind, modality, size, rng, anatomy)
        if case is not None:
            return case
    raise ValueError(f"phantom {kind} {number}: some organ kept fewer than {_min_voxels(size)} voxels in "
                     f"{MAX_ATTEMPTS} attempts; use a larger --size")


def _check_anatomy(anatomy: str) -> None:
    if anatomy not in ANATOMY_SCALES:
        raise ValueError(f"unknown phantom anatomy {anatomy!r}; choose one of {sorted(ANATOMY_SCALES)}")


def _min_voxels(size: Sequence[int]) -> int:
    return max(1, round(MIN_ORGAN_VOXELS * float(np.prod(size)) / float(np.prod(DEFAULT_SIZE))))


def _try_case(kind: str, modality: str, size: Sequence[int], rng: np.random.Generator,
              anatomy: str = DEFAULT_ANATOMY) -> Optional[PhantomCase]:
    from scipy.ndimage import gaussian_filter

    shape, spacing, direction, v0, origin, body_scale = _case_geometry(kind, modality, size, rng)
    grid = _Grid(shape, spacing, direction, v0, body_scale)
    column = 0 if modality == "ct" else 1  # index into the (CT, MRI) intensity pairs
    qx, qy = np.broadcast_arrays(grid.q[0], grid.q[1])
    body_radius = np.sqrt((qx / BODY_SEMI_AXES_MM[0]) ** 2 + (qy / BODY_SEMI_AXES_MM[1]) ** 2)
    intensity = np.full(shape, _AIR[column], np.float32)
    intensity[body_radius < 1] = _SUBCUTANEOUS_FAT[column]
    intensity[body_radius < _BODY_WALL[1]] = _WALL_MUSCLE[column]
    inner = body_radius < _BODY_WALL[0]
    intensity[inner] = _VISCERAL_FAT[column]
    label = np.zeros(shape, np.uint8)
    taken = ~inner  # voxels no organ may take: outside the abdominal cavity, spine, earlier organs
    contrast = rng.normal(1.0, 0.08)  # contrast-phase factor for enhancing tissue

    def paint(structure: Structure, value: int, deform: float, jitter: float) -> None:
        box, level = _level(structure, grid, rng, deform)
        if box is None:
            return
        mean = structure.ct + jitter if column == 0 else structure.mri * (1 + jitter / 100)
        core = structure.core_ct if column == 0 else structure.core_mri
        if column == 0 and structure.ct > 60:
            mean = 60 + (mean - 60) * contrast
        inside = (level < 0) & ~taken[box]
        region = intensity[box]
        region[inside] = mean
        if structure.core:
            region[inside & (level < -structure.core)] = core
        taken[box] |= inside
        if value:
            label[box][inside] = value

    for bone in (_SPINE, _CANAL):
        box, level = _level(bone, grid, rng, 0.0, tilt_sd=0.0)
        if box is None:
            continue
        value = bone.ct if column == 0 else bone.mri
        region = intensity[box]
        region[level < 0] = value
        if bone is _SPINE:
            region[(level < 0) & (level > -0.2)] = _CORTICAL_BONE[column]
            region[level < -bone.core] = bone.core_ct if column == 0 else bone.core_mri
        taken[box] |= level < 0
    for value, organ in _organ_list(kind, rng, anatomy):
        paint(_jittered(organ, rng), value, rng.uniform(0.08, 0.2), rng.normal(0, 8))
    for distractor in list(_DISTRACTORS) + _bowel_loops(rng, FOV_Z_MM[kind][0]):
        paint(_jittered(distractor, rng), 0, rng.uniform(0.05, 0.15), rng.normal(0, 8))

    counts = np.bincount(label.ravel(), minlength=len(label_table(kind)) + 1)
    if counts[1:].min() < _min_voxels(size):
        return None
    if column == 0:
        smooth = gaussian_filter(intensity, sigma=(0.6, 0.5, 0.5)) + rng.normal(0, 5)
        image = smooth + rng.normal(0, rng.uniform(10, 20), shape).astype(np.float32)
        image = np.clip(np.round(image), -1024, 3071)
    else:
        bias = np.exp(_deformation(grid.coords((slice(None),) * 3), np.zeros(3), 400.0, 0.2, rng, n_waves=2))
        smooth = gaussian_filter(intensity, sigma=(0.6, 0.5, 0.5)) * bias * rng.uniform(0.7, 1.4)
        sigma = rng.uniform(15, 30)
        image = np.hypot(smooth + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
        image = np.clip(np.round(image), 0, 32767)
    return PhantomCase(image=image.astype(np.int16), label=label, spacing=tuple(float(s) for s in spacing),
                       origin=tuple(float(o) for o in origin), direction=tuple(float(d) for d in direction.ravel()),
                       modality=modality)


def _write_case(case: PhantomCase, image_path: Optional[Path], label_path: Optional[Path]) -> None:
    import SimpleITK as sitk

    for array, path in ((case.image, image_path), (case.label, label_path)):
        if path is None:
            continue
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(case.spacing)
        image.SetOrigin(case.origin)
        image.SetDirection(case.direction)
        sitk.WriteImage(image, str(path), useCompression=True)


def amos_numbers(cases: int, mri_cases: int) -> List[int]:
    """Case numbers of AMOS phantoms: CT 1..(cases - mri_cases), MRI from 501 on."""
    n_ct = cases - mri_cases
    return list(range(1, n_ct + 1)) + list(range(AMOS_MRI_MIN_NUMBER, AMOS_MRI_MIN_NUMBER + mri_cases))


def default_mri_cases(cases: int) -> int:
    """How many of ``cases`` AMOS phantoms are MRI unless told: one in six, the release's 60 of 360."""
    return cases // 6


def labelled_phantom_strata(kind: str, cases: int, mri_cases: Optional[int] = None) -> Dict[str, str]:
    """``{case id: stratum}`` ("ct" / "mri") of the labelled phantoms :func:`write_phantoms` writes for these
    arguments, known without writing them (the converters split by these ids and strata)."""
    from nnunet_poolskip.dataset_conversion.layouts import btcv_case_id

    if kind == "btcv":
        return {btcv_case_id(n): "ct" for n in btcv_numbers(cases)}
    numbers = amos_numbers(cases, default_mri_cases(cases) if mri_cases is None else mri_cases)
    return {amos_case_id(n): amos_modality(n) for n in numbers}


def btcv_numbers(cases: int) -> List[int]:
    """Case numbers of BTCV phantoms: the 30 real training numbers (1-10, 21-40) first, then 41, 42, ..."""
    numbers = list(BTCV_TRAINING_NUMBERS[:cases])
    numbers += list(range(BTCV_TRAINING_NUMBERS[-1] + 1, BTCV_TRAINING_NUMBERS[-1] + 1 + cases - len(numbers)))
    return numbers


LAYOUT_ENTRIES = {"btcv": {BTCV_RAW_ROOT},
                  "amos": {"dataset.json", "imagesTr", "labelsTr", "imagesVa", "labelsVa", "imagesTs"}}


def _amos_dataset_json(training: List[int], validation: List[int], test: List[int], seed: int) -> Dict:
    """An imitation of the AMOS 2022 release's dataset.json for the phantoms."""
    entry = lambda part, n: {"image": f"./images{part}/{amos_case_id(n)}.nii.gz",  # noqa: E731
                             "label": f"./labels{part}/{amos_case_id(n)}.nii.gz"}
    return {
        "name": "AMOS",
        "description": (f"SYNTHETIC PHANTOMS in the layout of the AMOS 2022 release (MICCAI 2022 Multi-Modality "
                        f"Abdominal Multi-Organ Segmentation Challenge), made by nnunet-poolskip synth --kind amos "
                        f"--seed {seed}. Case numbers above 500 are MRI-like, the others CT-like."),
        "tensorImageSize": "3D",
        "reference": "SRIBD, CUHK-SZ (layout only; the images are synthetic)",
        "licence": "synthetic data made by nnunet-poolskip: no restrictions",
        "release": "phantoms",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in AMOS_DOWNLOAD_LABEL_NAMES.items()},
        "numTraining": len(training),
        "numValidation": len(validation),
        "numTest": len(test),
        "training": [entry("Tr", n) for n in training],
        "validation": [entry("Va", n) for n in validation],
        "test": [{"image": f"./imagesTs/{amos_case_id(n)}.nii.gz"} for n in test],
    }


def _check_output_folder(out_dir: Path, kind: str, overwrite: bool) -> None:
    check_output_path(out_dir, "-o", folder=True)  # an OutputPathError is a ValueError
    if not out_dir.exists():
        return
    entries = {p.name for p in out_dir.iterdir()}
    if not entries:
        return
    if not overwrite:
        raise ValueError(f"-o {out_dir} is not empty; use --overwrite to replace phantoms written there")
    unexpected = sorted(entries - LAYOUT_ENTRIES[kind])
    if unexpected:
        raise ValueError(f"-o {out_dir} holds {unexpected[:5]}, which are not part of the {kind} layout; "
                         f"refusing to replace it (choose another folder)")


def write_phantoms(kind: str, out_dir: os.PathLike, cases: Optional[int] = None, seed: int = 0,
                   size: Sequence[int] = DEFAULT_SIZE, mri_cases: Optional[int] = None, unlabelled: int = 0,
                   overwrite: bool = False, progress: bool = True, anatomy: str = DEFAULT_ANATOMY) -> List[str]:
    """Write phantoms in the raw download layout of ``kind`` into ``out_dir``, atomically.

    BTCV: ``out_dir/RawData/Training/{img,label}/`` (``imgNNNN`` / ``labelNNNN``; numbers 1-10, 21-40, then
    41, ...) and, with ``unlabelled``, ``RawData/Testing/img/`` from number 61. AMOS: ``out_dir/dataset.json``,
    ``imagesTr``/``labelsTr`` and ``imagesVa``/``labelsVa`` (every third case of each modality in Va, 2:1 as
    in the release), ``imagesTs`` (``unlabelled`` cases); CT numbers 1.., MRI numbers 501...

    Args:
        kind: "btcv" or "amos".
        out_dir: output folder; must be absent or empty (or, with ``overwrite``, hold only this layout).
        cases: number of labelled cases (default 30 for BTCV, 24 for AMOS).
        seed: base seed.
        size: nominal voxel grid (z, y, x) per case.
        mri_cases: AMOS only: how many of ``cases`` are MRI (default cases // 6, the release's 60 of 360).
        unlabelled: number of unlabelled test images (BTCV Testing/img, AMOS imagesTs).
        overwrite: replace an earlier phantom folder.
        progress: show a progress bar.
        anatomy: organ sizes, a key of :data:`ANATOMY_SCALES` (see :func:`synthesize_case`).

    Returns:
        The labelled case ids written (``img0001`` / ``amos_0001`` style).

    Raises:
        ValueError: bad arguments or output folder.
    """
    from tqdm import tqdm

    from nnunet_poolskip.dataset_conversion.layouts import btcv_case_id

    if kind not in _KIND_CODE:
        raise ValueError(f"--kind must be 'btcv' or 'amos', got {kind!r}")
    cases = DEFAULT_CASES[kind] if cases is None else cases
    if cases < 1 or unlabelled < 0:
        raise ValueError(f"--cases must be at least 1 and --unlabelled at least 0 (got {cases}, {unlabelled})")
    if len(size) != 3 or min(size) < 8:
        raise ValueError(f"--size takes three voxel counts (z y x), each at least 8; got {list(size)}")
    if kind == "btcv" and mri_cases:
        raise ValueError("--mri-cases is for --kind amos only (BTCV is CT)")
    _check_anatomy(anatomy)
    out_dir = Path(out_dir).expanduser().resolve()
    _check_output_folder(out_dir, kind, overwrite)

    jobs: List[Tuple[int, Optional[Path], Optional[Path]]] = []  # (number, image path, label path) relative
    ids = []
    if kind == "btcv":
        root = Path(BTCV_RAW_ROOT)
        for n in btcv_numbers(cases):
            jobs.append((n, root.joinpath(*BTCV_TRAINING_IMAGES, btcv_image_name(n)),
                         root.joinpath(*BTCV_TRAINING_LABELS, btcv_label_name(n))))
            ids.append(btcv_case_id(n))
        for n in range(BTCV_TESTING_FIRST_NUMBER, BTCV_TESTING_FIRST_NUMBER + unlabelled):
            jobs.append((n, root.joinpath(*BTCV_TESTING_IMAGES, btcv_image_name(n)), None))
        folders = {root.joinpath(*BTCV_TRAINING_IMAGES), root.joinpath(*BTCV_TRAINING_LABELS)}
        if unlabelled:
            folders.add(root.joinpath(*BTCV_TESTING_IMAGES))
        dataset_json = None
    else:
        mri_cases = default_mri_cases(cases) if mri_cases is None else mri_cases
        if not 0 <= mri_cases <= cases:
            raise ValueError(f"--mri-cases must be between 0 and --cases ({cases}), got {mri_cases}")
        numbers = amos_numbers(cases, mri_cases)
        parts: Dict[str, List[int]] = {"Tr": [], "Va": []}
        for modality in ("ct", "mri"):
            same = [n for n in numbers if amos_modality(n) == modality]
            for position, n in enumerate(same):
                parts["Va" if position % 3 == 2 else "Tr"].append(n)
        for part in ("Tr", "Va"):
            for n in parts[part]:
                jobs.append((n, Path(f"images{part}") / f"{amos_case_id(n)}.nii.gz",
                             Path(f"labels{part}") / f"{amos_case_id(n)}.nii.gz"))
                ids.append(amos_case_id(n))
        # unlabelled test images continue the CT numbering, as in the release where all parts interleave
        test_numbers = list(range(len(numbers) - mri_cases + 1, len(numbers) - mri_cases + 1 + unlabelled))
        for n in test_numbers:
            jobs.append((n, Path("imagesTs") / f"{amos_case_id(n)}.nii.gz", None))
        folders = {Path(n) for n in ("imagesTr", "labelsTr", "imagesVa", "labelsVa", "imagesTs")}
        dataset_json = _amos_dataset_json(sorted(parts["Tr"]), sorted(parts["Va"]), test_numbers, seed)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    temporary = temporary_folder(out_dir)
    if temporary.exists():
        shutil.rmtree(temporary)
    try:
        for folder in folders:
            (temporary / folder).mkdir(parents=True, exist_ok=True)
        for number, image_path, label_path in tqdm(jobs, desc=f"synth {kind}", unit="case", disable=not progress):
            case = synthesize_case(kind, number, seed, size, anatomy)
            _write_case(case, temporary / image_path, temporary / label_path if label_path else None)
        if dataset_json is not None:
            (temporary / "dataset.json").write_text(json.dumps(dataset_json, indent=4))
        replace_directory(temporary, out_dir)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary, ignore_errors=True)
    return sorted(ids)
