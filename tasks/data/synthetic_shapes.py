"""Geometry of the synthetic BraTS-like data set: a warped MNI152 brain and a nested, irregular glioma.

Everything is evaluated on a rectilinear grid given by three 1-D arrays of output voxel indices (xs, ys, zs),
so the same code renders a whole 240x240x155 volume or only the few axial slices a 2D image needs.
Smooth random fields are separable (a coarse random lattice, Gaussian-interpolated along each axis), which
makes them matrix products instead of 3-D interpolation: the cheap way to vary anatomy per patient.
`tasks/data/synthetic.py` turns this geometry into MRI intensities.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

BRATS_SHAPE = (240, 240, 155)
# Template channels, in this order.
MASK, GM, WM, RIM = range(4)


@dataclass(frozen=True)
class Template:
    """The MNI152 brain (nilearn ships it offline) in BraTS's LPS voxel order, 1 mm, cropped to the brain."""

    channels: np.ndarray  # (4, X, Y, Z) float32: brain mask, grey matter, white matter, periventricular rim
    centre: np.ndarray  # (3,) centre of the brain's bounding box, template voxels
    tumour_sites: np.ndarray  # (N, 3) deep hemispheric white matter: where gliomas are centred
    wmh_sites: np.ndarray  # (M, 3) white matter, mostly periventricular: where small hyperintensities go


@lru_cache(maxsize=1)
def load_template() -> Template:
    """Load and prepare the template once per process (about 3 s, a third of it importing nilearn)."""
    from nilearn import datasets  # imported here: nilearn is slow to import and only this needs it

    images = [
        datasets.load_mni152_brain_mask(resolution=1),
        datasets.load_mni152_gm_template(resolution=1),
        datasets.load_mni152_wm_template(resolution=1),
    ]
    mask, gm, wm = (np.asarray(img.dataobj, dtype=np.float32) for img in images)
    mni = _mni_coordinates(images[0].affine, mask.shape)
    depth = _depth_mm(mask > 0)
    csf = np.clip(mask - gm - wm, 0, 1)
    # Ventricles: CSF deep inside the brain near the midline (sulcal CSF is near the surface).
    ventricles = ndimage.gaussian_filter(((csf > 0.5) & (depth > 12) & (np.abs(mni[0]) < 35)).astype(np.float32), 0.7)
    rim = np.clip(ndimage.gaussian_filter(ventricles, 2.5) - ventricles, 0, None) * (1 - csf)
    rim /= max(float(rim.max()), 1e-6)
    supratentorial = (mni[2] > -25) & ~((mni[2] < 0) & (mni[1] < -45)) & (np.abs(mni[0]) > 12)
    tumour_sites = (wm > 0.55) & (depth > 12) & supratentorial
    wmh_sites = (wm > 0.7) & (depth > 8) & (mni[2] > -10)
    wmh_sites &= (rim > 0.25) | (np.random.default_rng(0).random(wm.shape, dtype=np.float32) < 0.2)  # favour periventricular
    stack = np.stack([mask, gm, wm, rim])[:, ::-1, ::-1, :]  # RAS -> LPS, the order BraTS stores
    sites = [np.stack(np.nonzero(s[::-1, ::-1, :]), axis=1)[::7].astype(np.float32) for s in (tumour_sites, wmh_sites)]
    lo = np.min(np.nonzero(stack[MASK] > 0), axis=1) - 3
    hi = np.max(np.nonzero(stack[MASK] > 0), axis=1) + 4
    lo, hi = np.maximum(lo, 0), np.minimum(hi, stack.shape[1:])
    cropped = np.ascontiguousarray(stack[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], dtype=np.float32)
    return Template(
        channels=cropped,
        centre=(np.array(cropped.shape[1:], dtype=np.float32) - 1) / 2,
        tumour_sites=sites[0] - lo,
        wmh_sites=sites[1] - lo,
    )


def _depth_mm(mask: np.ndarray) -> np.ndarray:
    """Distance to the brain surface, computed at 2 mm (8x cheaper; only thresholded at 8 mm and more)."""
    coarse = ndimage.distance_transform_edt(mask[::2, ::2, ::2], sampling=2).astype(np.float32)
    return coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)[: mask.shape[0], : mask.shape[1], : mask.shape[2]]


def _mni_coordinates(affine: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    """World (MNI, mm) coordinate of every voxel along each axis, as broadcastable arrays (the affine is diagonal)."""
    axes = [affine[a, a] * np.arange(n, dtype=np.float32) + affine[a, 3] for a, n in enumerate(shape)]
    return [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]


class SmoothField:
    """A smooth random field over a box: N(0, 1) coefficients on a coarse lattice, Gaussian-interpolated.

    Separable, so evaluating it on a grid is three small matrix products; each basis row is L2-normalised so
    the field has unit variance everywhere inside the box.
    """

    def __init__(self, rng: np.random.Generator, lo, hi, n, components: int = 1):
        self.centres = [np.linspace(a - 0.5 * (b - a) / (k - 1), b + 0.5 * (b - a) / (k - 1), k, dtype=np.float32)
                        for a, b, k in zip(lo, hi, n)]
        self.widths = [float(c[1] - c[0]) for c in self.centres]
        self.coeffs = rng.standard_normal((components, *n), dtype=np.float32)

    def __call__(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """(components, len(xs), len(ys), len(zs)) float32."""
        bases = []
        for points, centres, width in zip((xs, ys, zs), self.centres, self.widths):
            b = np.exp(-0.5 * ((np.asarray(points, np.float32)[:, None] - centres[None, :]) / width) ** 2)
            bases.append(b / (np.linalg.norm(b, axis=1, keepdims=True) + 1e-12))
        return np.einsum("cijk,xi,yj,zk->cxyz", self.coeffs, *bases, optimize=True).astype(np.float32, copy=False)


@dataclass(frozen=True)
class Pose:
    """Where and how big this patient's brain is: template voxel = centre + inverse @ (output voxel - out_centre)."""

    inverse: np.ndarray  # (3, 3)
    out_centre: np.ndarray  # (3,)
    tmpl_centre: np.ndarray  # (3,)
    deformation: SmoothField  # 3 components, in template mm per unit of `deformation_mm`
    deformation_mm: float

    def to_output(self, points: np.ndarray) -> np.ndarray:
        """Template voxel coordinates (N, 3) → output voxel coordinates, ignoring the small smooth deformation."""
        return (points - self.tmpl_centre) @ np.linalg.inv(self.inverse).T + self.out_centre

    def template_coordinates(self, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
        """(3, X, Y, Z) template coordinates of every grid voxel: affine part + smooth deformation."""
        offsets = [np.asarray(v, np.float32) - c for v, c in zip((xs, ys, zs), self.out_centre)]
        coords = self.deformation(xs, ys, zs)
        coords *= self.deformation_mm
        for k in range(3):
            coords[k] += self.tmpl_centre[k]
            coords[k] += self.inverse[k, 0] * offsets[0][:, None, None]
            coords[k] += self.inverse[k, 1] * offsets[1][None, :, None]
            coords[k] += self.inverse[k, 2] * offsets[2][None, None, :]
        return coords


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix from angles in degrees about the z, x and y axes."""
    a, b, c = np.deg2rad([yaw, pitch, roll])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


def sample_pose(rng: np.random.Generator, template: Template) -> Pose:
    """Random head size, tilt and position, with the top of the brain near the top slice as in BraTS."""
    scale = rng.uniform(0.86, 0.98) * rng.uniform(0.96, 1.04, size=3)
    forward = rotation(*rng.uniform(-1, 1, size=3) * (6, 8, 4)) @ np.diag(scale)
    half_height = (template.channels.shape[3] - 1) / 2 * forward[2, 2]
    out_centre = np.array([119.5 + rng.uniform(-5, 5), 119.5 + rng.uniform(-6, 6), rng.uniform(139, 150) - half_height])
    amplitude = float(rng.uniform(1.5, 4.0))
    field = SmoothField(rng, (0, 0, 0), np.array(BRATS_SHAPE) - 1, (5, 5, 4), components=3)
    return Pose(np.linalg.inv(forward).astype(np.float32), out_centre.astype(np.float32),
                template.centre, field, amplitude)


def brain_region(pose: Pose, template: Template, margin: int = 8) -> tuple[slice, slice, slice]:
    """The output box the warped template can reach: everything outside it is background."""
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in template.channels.shape[1:]], indexing="ij")).reshape(3, -1).T
    out = pose.to_output(corners.astype(np.float32))
    lo = np.maximum(np.floor(out.min(0)) - margin, 0).astype(int)
    hi = np.minimum(np.ceil(out.max(0)) + margin + 1, BRATS_SHAPE).astype(int)
    return tuple(slice(a, b) for a, b in zip(lo, hi))


@dataclass
class Anatomy:
    """Warped tissue maps on a grid (all (X, Y, Z) float32 except `brain`)."""

    brain: np.ndarray  # bool: inside the skull-stripped brain
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    rim: np.ndarray  # the bright band around the ventricles on FLAIR


def warp_anatomy(template: Template, coords: np.ndarray) -> Anatomy:
    """Sample the template at `coords`; only voxels inside the brain pay for the tissue channels."""
    mask = ndimage.map_coordinates(template.channels[MASK], coords, order=1, output=np.float32)
    brain = mask > 0.5
    points = coords[:, brain]
    maps = []
    for channel in (GM, WM, RIM):
        full = np.zeros(brain.shape, np.float32)
        full[brain] = ndimage.map_coordinates(template.channels[channel], points, order=1, output=np.float32)
        maps.append(full)
    gm, wm, rim = maps
    csf = np.where(brain, np.clip(1 - gm - wm, 0, 1), 0).astype(np.float32)
    return Anatomy(brain, gm, wm, csf, rim)


@dataclass(frozen=True)
class Tumour:
    """A glioma: necrotic core inside an enhancing rim inside an oedema envelope, each an irregular ellipsoid."""

    site: np.ndarray  # (3,) template voxel of its centre
    centre: np.ndarray  # (3,) output voxel of its centre
    core_mm: float  # radius of the tumour core (enhancing rim + necrosis)
    rim_mm: float  # thickness of the enhancing rim
    necrosis: float  # extent of the necrosis, as a fraction of the core inside the rim
    oedema_mm: float  # radius of the oedema envelope
    oedema_offset: np.ndarray  # (3,) oedema centre relative to the core centre, voxels
    metric: np.ndarray  # (3, 3) voxel offset -> ellipsoid-normalised offset (random orientation and axes)
    irregularity: float  # amplitude of the random radius perturbation
    fields: SmoothField  # 4 components: core, necrosis and oedema radius perturbations, texture
    push: float  # mass effect: how far surrounding tissue is pushed away

    @property
    def reach(self) -> float:
        """Half-size of the box that surely contains the whole tumour, voxels."""
        longest = 1 / np.linalg.svd(self.metric, compute_uv=False).min()
        return float(self.oedema_mm * longest * self.max_perturbation * 1.3 + np.abs(self.oedema_offset).max() + 3)

    @property
    def max_perturbation(self) -> float:
        return 1 + 1.5 * self.irregularity


def sample_tumour(rng: np.random.Generator, template: Template, pose: Pose, small_fraction: float = 0.2) -> Tumour:
    """Random site (hemisphere, lobe) and size; some are small, so even their central slices show small areas."""
    site = template.tumour_sites[rng.integers(len(template.tumour_sites))] + rng.uniform(-2, 2, 3).astype(np.float32)
    centre = pose.to_output(site[None])[0]
    small = rng.random() < small_fraction
    core = rng.uniform(4.0, 9.0) if small else float(np.exp(rng.uniform(np.log(10), np.log(28))))
    oedema = core * rng.uniform(1.1, 1.5) + rng.uniform(2, 6)
    axes = rng.uniform(0.8, 1.25, 3)
    metric = np.diag(1 / axes) @ rotation(*rng.uniform(-180, 180, 3)).T
    irregularity = float(rng.uniform(0.12, 0.35))
    reach = oedema * 1.25 * (1 + 1.5 * irregularity) * 1.3 + 8
    return Tumour(
        site=site,
        centre=centre,
        core_mm=float(core),
        rim_mm=float(min(rng.uniform(1.5, 5.0), 0.4 * core)),
        necrosis=float(rng.uniform(0.65, 1.0)),
        oedema_mm=float(oedema),
        oedema_offset=(rng.uniform(-0.25, 0.25, 3) * core).astype(np.float32),
        metric=metric.astype(np.float32),
        irregularity=irregularity,
        fields=SmoothField(rng, centre - reach, centre + reach, (11, 11, 11), components=4),  # lobulated
        push=float(rng.uniform(0.1, 0.35) * min(1.0, core / 12)),
    )


def sub_box(grid: tuple[np.ndarray, ...], centre: np.ndarray, half: float) -> tuple[slice, slice, slice]:
    """Index ranges of the (sorted) grid axes within `half` of `centre`."""
    return tuple(
        slice(int(np.searchsorted(ax, c - half)), int(np.searchsorted(ax, c + half, side="right")))
        for ax, c in zip(grid, centre)
    )


def push_tissue(coords: np.ndarray, grid: tuple[np.ndarray, ...], tumour: Tumour) -> None:
    """Mass effect, in place: voxels near the tumour sample the template closer to its site, so tissue bulges out."""
    sigma = 1.2 * tumour.core_mm + 2
    box = sub_box(grid, tumour.centre, 3 * sigma)
    xs, ys, zs = (ax[b] - c for ax, b, c in zip(grid, box, tumour.centre))
    weight = np.exp(-(xs[:, None, None] ** 2 + ys[None, :, None] ** 2 + zs[None, None, :] ** 2) / (2 * sigma**2))
    weight = (tumour.push * weight).astype(np.float32)
    for k in range(3):
        view = coords[k][box]
        view -= weight * (view - tumour.site[k])


def ramp(phi: np.ndarray, threshold, radius_mm: float, width_mm: float = 1.2) -> np.ndarray:
    """Soft membership of the level set phi < threshold, with a partial-volume edge about width_mm wide."""
    return np.clip((threshold - phi) * (radius_mm / width_mm) + 0.5, 0, 1)


@dataclass
class TumourMaps:
    """Soft memberships on a sub-box of the grid; necrotic <= core <= whole everywhere, so labels nest."""

    box: tuple[slice, slice, slice]
    necrotic: np.ndarray
    core: np.ndarray
    whole: np.ndarray
    oedema_level: np.ndarray  # how strongly each voxel shows oedema (fades towards the border)
    texture: np.ndarray  # smooth N(0, 1) field for intensity heterogeneity


def tumour_maps(tumour: Tumour, anatomy: Anatomy, grid: tuple[np.ndarray, ...]) -> TumourMaps:
    """Level sets of perturbed ellipsoids; oedema follows white matter and stays out of CSF."""
    box = sub_box(grid, tumour.centre, tumour.reach)
    axes = [ax[b] for ax, b in zip(grid, box)]
    offsets = [a - c for a, c in zip(axes, tumour.centre)]
    fields = tumour.fields(*axes)
    # Core and necrosis shrink at most to 60 % so every tumour keeps all three labels; oedema may nearly vanish.
    perturb = [np.clip(1 + s * tumour.irregularity * fields[i], low, tumour.max_perturbation)
               for i, s, low in ((0, 1.0, 0.6), (1, 1.0, 0.6), (2, 1.0, 0.4))]

    def radius(shift: np.ndarray) -> np.ndarray:
        m = tumour.metric
        parts = [m[r, 0] * (offsets[0] - shift[0])[:, None, None] + m[r, 1] * (offsets[1] - shift[1])[None, :, None]
                 + m[r, 2] * (offsets[2] - shift[2])[None, None, :] for r in range(3)]
        return np.sqrt(parts[0] ** 2 + parts[1] ** 2 + parts[2] ** 2)

    distance = radius(np.zeros(3))
    core_phi = distance / (tumour.core_mm * perturb[0])
    inner = 1 - tumour.rim_mm / tumour.core_mm
    necrotic = np.minimum(ramp(core_phi, inner, tumour.core_mm),
                          ramp(core_phi / perturb[1], tumour.necrosis * inner, tumour.core_mm))
    # A seed of necrosis at the centre, well inside the rim, so even the smallest tumour has label 1.
    necrotic = np.maximum(necrotic, ramp(distance / 1.2, 1.0, 1.2, width_mm=0.8))
    core = ramp(core_phi, 1.0, tumour.core_mm)
    shell = ramp(core_phi, 1 + 2.5 / tumour.core_mm, tumour.core_mm)
    oedema_phi = radius(tumour.oedema_offset) / (tumour.oedema_mm * perturb[2])
    sub = tuple(getattr(anatomy, name)[box] for name in ("gm", "wm", "csf", "brain"))
    gm, wm, csf, brain = sub
    spread = 1 + 0.2 * (wm - gm)  # oedema reaches further along white matter than into cortex
    oedema = ramp(oedema_phi, spread, tumour.oedema_mm) * (csf < 0.6)
    whole = np.maximum(oedema, shell)
    # Oedema fades out towards its border (half strength at the labelled edge, full 2.5 mm inside), as on FLAIR.
    graded = np.clip((spread - oedema_phi) * (tumour.oedema_mm / 5.0) + 0.5, 0, 1) * (csf < 0.6)
    inside = brain.astype(np.float32)
    oedema_level = np.maximum(np.minimum(graded, whole), shell) - core
    return TumourMaps(box, necrotic * inside, core * inside, whole * inside, oedema_level * inside, fields[3])
