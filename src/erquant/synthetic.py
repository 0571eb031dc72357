"""Synthetic high-content screening plates with ground truth.

Two channels per field: ``w1`` nuclear stain (Hoechst) and ``w2`` ERα
immunofluorescence. Fields look like a real screen rather than clean disks:
ellipsoidal, irregular, textured nuclei of varied size and brightness;
clusters of touching (never overlapping) nuclei; small bright mitotic nuclei;
out-of-focus fields; vignetting; camera offset, Poisson and read noise; a dim
cytoplasmic ERα component; log-normal ERα heterogeneity; debris specks.

Image model (per channel ``c``, in ADU)::

    image = offset + gain * Poisson(illum * (signal_c + background_c) / gain) + N(0, read_noise)

``illum`` (max 1.0, the same optics for both channels and every field of a
plate) is exported as :attr:`SyntheticField.illumination`; ``signal_c`` is the
noise-free, background-free signal after the optical blur (PSF). Hence

    (image - offset) / illum - background  ≈  signal      (within noise)

which :meth:`SyntheticField.signal` returns.

ERα truth. ``true_er`` of a cell is the mean of ``signal_w2`` over its nucleus
mask (exact, computed from the rendered noise-free image). Before the blur the
nuclear ERα texture of each nucleus is normalised to average exactly to the
cell's drawn level ``er_level``; the blur moves a few percent of light across
the nucleus border, so ``true_er`` ≈ ``er_level`` (in focus) but ``true_er``
is the reference. Cytoplasmic ERα is ``cyto_fraction`` (default 10 %) of the
cell's level in the cell region (nucleus grown by ``cell_expand`` px, split
between neighbours by nearest nucleus); ``true_er_cyto`` is its exact mean.

Dose/time model (per compound, see :class:`CompoundSpec`), concentration
``c`` (nM), time ``t`` (h)::

    H(c; K, h)    = c**h / (c**h + K**h)
    dmax(t)       = dmax * (1 - exp(-t / tau_deg_h))          # degradation builds up
    ER level      = er_level * (1 - dmax(t) * H(c; DC50, hill))
    imax(t)       = imax * (1 - exp(-t / tau_prolif_h))       # growth loss builds up slower
    vehicle count = n_nuclei * 2 ** ((t - reference_time_h) / doubling_time_h)
    cell count    = vehicle count * (1 - imax(t) * H(c; IC50, hill_prolif))

so the effect at 6 h is smaller than at 24 h or 48 h, while DC50/IC50 (the
inflection points, i.e. relative DC50/IC50) do not change with time. Per-field
counts are Poisson around the model; per-cell levels are log-normal (CV
``er_cv``) around the model level.

Plates (:func:`make_plate`, :func:`write_plate`, the ``synth`` CLI) live in
:mod:`erquant._synthplate` and are re-exported here.

Everything is deterministic from the seed: two calls with one seed give
byte-identical files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

__all__ = [
    "CompoundSpec",
    "PlateSpec",
    "SyntheticField",
    "SyntheticPlate",
    "add_cli",
    "hill",
    "illumination_profile",
    "main_synth",
    "make_clumped_field",
    "make_field",
    "make_plate",
    "write_plate",
]

CHANNELS = ("w1", "w2")
CHANNEL_NAMES = ("Hoechst", "ERa")


def hill(c, k: float, h: float):
    """Fractional Hill occupancy ``c**h / (c**h + k**h)`` (0 at c = 0).

    Examples
    --------
    >>> float(hill(5.0, 5.0, 1.0))
    0.5
    """
    c = np.asarray(c, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(c > 0, 1.0 / (1.0 + (k / np.maximum(c, 1e-300)) ** h), 0.0)


# ---------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class CompoundSpec:
    """True pharmacology of one compound (see the module docstring for the model).

    Parameters
    ----------
    name : str
    dc50_nM, dmax, hill : float
        ERα degradation: half-maximal concentration, maximal fractional loss
        (reached at long times), Hill slope.
    ic50_nM, hill_prolif : float
        Cell-count loss: half-maximal concentration and Hill slope.
    role : {"sample", "reference"}
    imax : float
        Maximal fractional loss of cells (reached at long times).

    Examples
    --------
    >>> c = CompoundSpec("x", dc50_nM=1.0, dmax=0.9, hill=1.0, ic50_nM=10.0, hill_prolif=1.0)
    >>> round(float(c.er_fraction(1.0, 1e6)), 3)
    0.55
    """

    name: str
    dc50_nM: float = 1.0
    dmax: float = 0.9
    hill: float = 1.0
    ic50_nM: float = 10.0
    hill_prolif: float = 1.0
    role: str = "sample"
    imax: float = 0.6

    def dmax_at(self, time_h: float, tau_deg_h: float = 6.0) -> float:
        return float(self.dmax * (1.0 - math.exp(-time_h / tau_deg_h)))

    def imax_at(self, time_h: float, tau_prolif_h: float = 24.0) -> float:
        return float(self.imax * (1.0 - math.exp(-time_h / tau_prolif_h)))

    def er_fraction(self, conc_nM, time_h: float, tau_deg_h: float = 6.0):
        """ERα level relative to vehicle at ``conc_nM`` after ``time_h``."""
        return 1.0 - self.dmax_at(time_h, tau_deg_h) * hill(conc_nM, self.dc50_nM, self.hill)

    def count_fraction(self, conc_nM, time_h: float, tau_prolif_h: float = 24.0):
        """Cell count relative to vehicle at ``conc_nM`` after ``time_h``."""
        return 1.0 - self.imax_at(time_h, tau_prolif_h) * hill(
            conc_nM, self.ic50_nM, self.hill_prolif
        )


IMLUNESTRANT_LIKE = CompoundSpec(
    "imlunestrant-like", dc50_nM=1.0, dmax=0.92, hill=1.2, ic50_nM=3.0, hill_prolif=1.0, imax=0.6
)
FULVESTRANT_LIKE = CompoundSpec(
    "fulvestrant-like", dc50_nM=5.0, dmax=0.85, hill=1.0, ic50_nM=15.0, hill_prolif=1.0, imax=0.5
)
FULVESTRANT_REFERENCE = replace(FULVESTRANT_LIKE, role="reference")


@dataclass(frozen=True)
class PlateSpec:
    """A synthetic plate: layout, optics, biology and seed (defaults: small demo plate).

    The default is 2 compounds × 8 doses (0.1–1000 nM) in rows A–B, 4 vehicle
    (DMSO) wells and 2 reference wells (fulvestrant-like at 1 µM) in column
    11, 2 fields per well, 512² px, one time point (24 h).

    Examples
    --------
    >>> spec = PlateSpec(shape=(128, 128), fields_per_well=1)
    >>> spec.vehicle_nuclei(24.0) > 0
    True
    """

    name: str = "SYN01"
    compounds: tuple[CompoundSpec, ...] = (IMLUNESTRANT_LIKE, FULVESTRANT_LIKE)
    doses_nM: tuple[float, ...] = (0.1, 0.373, 1.39, 5.18, 19.3, 72.0, 268.0, 1000.0)
    replicates: int = 1
    n_vehicle: int = 4
    reference: CompoundSpec | None = FULVESTRANT_REFERENCE
    reference_conc_nM: float = 1000.0
    n_reference: int = 2
    time_points_h: tuple[float, ...] = (24.0,)
    fields_per_well: int = 2
    shape: tuple[int, int] = (512, 512)
    n_nuclei: int | None = None  # vehicle nuclei per field at reference_time_h
    nuclei_density: float = 300 / 1024**2  # used when n_nuclei is None
    nucleus_diameter: float = 24.0
    er_level: float = 800.0
    er_cv: float = 0.35
    cyto_fraction: float = 0.1
    out_of_focus_fraction: float = 0.1
    vignetting: float = 0.25
    offset: float = 100.0
    tau_deg_h: float = 6.0
    tau_prolif_h: float = 24.0
    doubling_time_h: float = 36.0
    reference_time_h: float = 24.0
    plate_format: int = 96
    cell_line: str = "MCF7"
    seed: int = 0
    #: > 0: MCF-7-like confluent clumps of this many touching nuclei of mixed brightness
    #: in every field (:func:`make_clumped_field`'s look); 0: the default scattered field
    clump_size: int = 0

    def vehicle_nuclei(self, time_h: float) -> float:
        """Expected vehicle nuclei per field at ``time_h``."""
        n0 = self.n_nuclei
        if n0 is None:
            n0 = self.nuclei_density * self.shape[0] * self.shape[1]
        return float(n0 * 2.0 ** ((time_h - self.reference_time_h) / self.doubling_time_h))


# ---------------------------------------------------------------------------- one field
@dataclass
class SyntheticField:
    """One rendered field and its ground truth.

    Attributes
    ----------
    image : ndarray (2, Y, X) uint16
        ``w1`` Hoechst, ``w2`` ERα.
    nuclei, cells : ndarray (Y, X) uint32
        Nucleus and cell labels (same ids, 1..N, 0 = background).
    truth : DataFrame
        One row per label: ``label, centroid_y, centroid_x, area_px,
        cell_area_px, cyto_area_px, major_axis_px, minor_axis_px,
        is_mitotic, touching, er_level, true_er, true_er_cyto,
        true_nuc_intensity``.
    illumination : ndarray (Y, X) float32
        Multiplicative illumination (max 1).
    in_focus : bool
    offset : float
    background : tuple of float
        Per-channel background (before illumination).
    """

    image: np.ndarray
    nuclei: np.ndarray
    cells: np.ndarray
    truth: pd.DataFrame
    illumination: np.ndarray
    in_focus: bool
    offset: float
    background: tuple[float, float]
    params: dict = field(default_factory=dict)

    @property
    def n_nuclei(self) -> int:
        return len(self.truth)

    def signal(self, channel: int) -> np.ndarray:
        """Flat-field corrected, background-free float image ``(image - offset)/illum - bg``."""
        img = self.image[channel].astype(np.float32) - np.float32(self.offset)
        return img / self.illumination - np.float32(self.background[channel])


def _place(rng, n, a, b, theta, shape, cluster_fraction, clump_size=0, centres=None):
    """Centres with no heavy overlap; a fraction placed touching an earlier nucleus.

    With ``clump_size`` > 0 the nuclei come in consecutive groups of that many, each
    nucleus after a group's first touching an earlier member of its own group
    (compact confluent clumps; the default path draws exactly as before). The first
    ``len(centres)`` nuclei go at the given ``centres`` (y, x), the others avoid them.
    """
    fixed = np.zeros((0, 2)) if centres is None else np.asarray(centres, float).reshape(-1, 2)
    H, W = shape
    cy = np.empty(n)
    cx = np.empty(n)
    cell = max(4.0, 2.0 * float(a.max()) if n else 4.0)
    grid: dict[tuple[int, int], list[int]] = {}
    cos_t, sin_t = np.cos(theta), np.sin(theta)

    def rho(i, dy, dx):  # radius of ellipse i in direction (dy, dx)
        d = math.hypot(dy, dx) or 1.0
        u = (dx * cos_t[i] + dy * sin_t[i]) / d
        v = (-dx * sin_t[i] + dy * cos_t[i]) / d
        return 1.0 / math.sqrt((u / a[i]) ** 2 + (v / b[i]) ** 2)

    def ok(i, y, x):
        gy, gx = int(y // cell), int(x // cell)
        for oy in (-1, 0, 1):
            for ox in (-1, 0, 1):
                for j in grid.get((gy + oy, gx + ox), ()):
                    dy, dx = y - cy[j], x - cx[j]
                    if math.hypot(dy, dx) < 0.8 * (rho(i, dy, dx) + rho(j, dy, dx)):
                        return False
        return True

    touch = rng.random(n) < cluster_fraction
    for i in range(n):
        if i < len(fixed):
            cy[i], cx[i] = fixed[i]
            grid.setdefault((int(cy[i] // cell), int(cx[i] // cell)), []).append(i)
            continue
        placed = False
        tries = 0
        while not placed and tries < 400:
            tries += 1
            start = i - i % clump_size if clump_size else 0
            j = None  # the neighbour to touch, if any
            if clump_size and i > start and tries <= 300:
                # biased to the group's first (central) members: compact islands
                j = start + int((i - start) * rng.random() ** 2)
            elif touch[i] and i > 0 and tries <= 30:
                j = int(rng.integers(i))
            if j is not None:  # just touching j, in a random direction
                phi = rng.uniform(0, 2 * np.pi)
                dy, dx = math.sin(phi), math.cos(phi)
                d = (rho(i, dy, dx) + rho(j, dy, dx)) * rng.uniform(0.86, 0.97)
                y, x = cy[j] + d * dy, cx[j] + d * dx
                if not (0 <= y < H and 0 <= x < W):
                    continue
            else:
                y, x = rng.uniform(0, H), rng.uniform(0, W)
            placed = ok(i, y, x)
        if not placed:
            raise ValueError(
                f"cannot place {n} nuclei of diameter ~{2 * float(np.mean(a)):.0f} px in a "
                f"{H}x{W} field: too dense; lower n_nuclei or nucleus_diameter"
            )
        cy[i], cx[i] = y, x
        grid.setdefault((int(y // cell), int(x // cell)), []).append(i)
    return cy, cx


def _rasterise(shape, cy, cx, a, b, theta, harm):
    """Label image and normalised radius ``q`` (0 centre … 1 edge); overlaps go to the nearer."""
    H, W = shape
    n = len(cy)
    lab = np.zeros(H * W, np.uint32)
    qmap = np.ones(H * W, np.float32)
    if n == 0:
        return lab.reshape(shape), qmap.reshape(shape)
    amp = np.abs(harm[:, 0]) + np.abs(harm[:, 1])
    half = int(np.ceil(float((a * (1 + amp)).max()))) + 2
    off = np.arange(-half, half + 1, dtype=np.float32)
    oy = np.floor(cy).astype(np.int64)
    ox = np.floor(cx).astype(np.int64)
    dy = (oy[:, None] - cy[:, None]).astype(np.float32)[:, :, None] + off[None, :, None]
    dx = (ox[:, None] - cx[:, None]).astype(np.float32)[:, None, :] + off[None, None, :]
    c = np.cos(theta).astype(np.float32)[:, None, None]
    s = np.sin(theta).astype(np.float32)[:, None, None]
    u = dx * c + dy * s
    v = dy * c - dx * s
    r = np.sqrt(
        (u / a[:, None, None].astype(np.float32)) ** 2
        + (v / b[:, None, None].astype(np.float32)) ** 2
    )
    phi = np.arctan2(v, u)
    h = harm.astype(np.float32)
    q = r / (
        1
        + h[:, 0, None, None] * np.cos(2 * phi + h[:, 2, None, None])
        + h[:, 1, None, None] * np.cos(3 * phi + h[:, 3, None, None])
    )
    yy = oy[:, None, None] + off.astype(np.int64)[None, :, None]
    xx = ox[:, None, None] + off.astype(np.int64)[None, None, :]
    inside = (q < 1) & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
    k, iy, ix = np.nonzero(inside)
    pix = (oy[k] + iy - half) * W + (ox[k] + ix - half)
    qv = q[k, iy, ix]
    key = (pix << 20) | np.minimum(qv * (1 << 20), (1 << 20) - 1).astype(np.int64)
    order = np.argsort(key, kind="stable")
    pix_s = pix[order]
    first = np.ones(len(order), bool)
    first[1:] = pix_s[1:] != pix_s[:-1]
    win = order[first]
    lab[pix[win]] = (k[win] + 1).astype(np.uint32)
    qmap[pix[win]] = qv[win]
    return lab.reshape(shape), qmap.reshape(shape)


def _keep_largest_part(lab: np.ndarray) -> np.ndarray:
    """Drop stray fragments so that each label is one 4-connected region."""
    from skimage.measure import label as cc_label

    comp = cc_label(lab, background=0, connectivity=1)
    ncomp = int(comp.max())
    if ncomp <= int(lab.max()):
        return lab
    comp_lab = np.zeros(ncomp + 1, np.int64)
    comp_lab[comp.ravel()] = lab.ravel()
    area = np.bincount(comp.ravel(), minlength=ncomp + 1)
    order = np.lexsort((-area[1:], comp_lab[1:])) + 1
    keep = np.zeros(ncomp + 1, bool)
    sorted_lab = comp_lab[order]
    first = np.ones(len(order), bool)
    first[1:] = sorted_lab[1:] != sorted_lab[:-1]
    keep[order[first]] = True
    out = lab.copy()
    out[~keep[comp]] = 0
    return out


def _grow_cells(lab: np.ndarray, distance: float) -> np.ndarray:
    """Nuclei grown by ``distance`` px, each background pixel to the nearest nucleus."""
    import cv2

    src = (lab == 0).astype(np.uint8)
    # each nucleus pixel is a site; every other pixel gets the index of its nearest site
    dist, near = cv2.distanceTransformWithLabels(
        src, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    sites = src == 0
    lut = np.zeros(int(near.max()) + 1, np.uint32)
    lut[near[sites]] = lab[sites]
    cells = lut[near]
    cells[dist > distance] = 0
    return cells


def _gauss(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (OpenCV, reflect border; truncated at 4 sigma)."""
    import cv2

    if sigma <= 0:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def _smooth_noise(rng, shape, sigma):
    f = _gauss(rng.standard_normal(shape, dtype=np.float32), sigma)
    return f / max(float(f.std()), 1e-6)


def illumination_profile(
    shape: tuple[int, int], vignetting: float = 0.25, center: tuple[float, float] = (0.47, 0.53)
) -> np.ndarray:
    """Radial (quadratic) vignetting, 1.0 at ``center`` (fractions of Y, X), ≥ 1 - vignetting.

    Examples
    --------
    >>> p = illumination_profile((64, 64), 0.3)
    >>> round(float(p.max()), 3), round(float(p.min()), 3)
    (1.0, 0.7)
    """
    H, W = shape
    y = (np.arange(H, dtype=np.float32) - center[0] * (H - 1))[:, None]
    x = (np.arange(W, dtype=np.float32) - center[1] * (W - 1))[None, :]
    r2 = y**2 + x**2
    return (1.0 - vignetting * r2 / float(r2.max())).astype(np.float32)


def make_field(
    *,
    shape: tuple[int, int] = (1024, 1024),
    n_nuclei: int = 300,
    seed: int | Sequence[int] = 0,
    er_scale: float = 1.0,
    er_level: float = 800.0,
    er_cv: float = 0.35,
    nucleus_diameter: float = 24.0,
    diameter_cv: float = 0.15,
    nuc_intensity: float = 1500.0,
    nuc_cv: float = 0.3,
    in_focus: bool = True,
    psf_sigma: float = 1.0,
    defocus_sigma: float = 4.0,
    vignetting: float = 0.25,
    vignetting_center: tuple[float, float] = (0.47, 0.53),
    offset: float = 100.0,
    background: tuple[float, float] = (40.0, 60.0),
    read_noise: float = 3.0,
    gain: float = 1.0,
    cyto_fraction: float = 0.1,
    cell_expand: float | None = None,
    cluster_fraction: float = 0.35,
    mitotic_fraction: float = 0.03,
    n_debris: int | None = None,
    clump_size: int = 0,
    centres=None,
    dim_fraction: float = 0.0,
    dim_factor: float = 0.3,
) -> SyntheticField:
    """Render one two-channel field with its ground truth.

    Parameters
    ----------
    shape : (int, int)
        Field size (Y, X).
    n_nuclei : int
        Exact number of nuclei (labels 1..n_nuclei).
    seed : int or sequence of int
        Seed of :func:`numpy.random.default_rng`; same seed → identical field.
    er_scale : float
        Multiplies the vehicle ERα level ``er_level`` (e.g. the fraction left
        by a degrader).
    er_level, er_cv : float
        Vehicle nuclear ERα level (ADU at illumination 1) and the coefficient
        of variation of the cell-to-cell log-normal heterogeneity.
    nucleus_diameter, diameter_cv : float
        Mean diameter (px) and log-normal CV of nuclear size.
    nuc_intensity, nuc_cv : float
        Mean Hoechst level (ADU) and its log-normal CV (mitotic nuclei ×2.2).
    in_focus : bool
        False blurs with ``defocus_sigma`` instead of ``psf_sigma``.
    vignetting, vignetting_center : float, (float, float)
        Illumination fall-off at the farthest corner and the optical centre.
    offset, background, read_noise, gain : float
        Camera offset (ADU), per-channel background (before illumination),
        Gaussian read noise (ADU), ADU per photo-electron.
    cyto_fraction : float
        Cytoplasmic ERα as a fraction of the cell's nuclear level.
    cell_expand : float, optional
        Cell radius beyond the nucleus (px); default ``nucleus_diameter / 2``.
    cluster_fraction, mitotic_fraction : float
        Fraction of nuclei placed touching an earlier one; fraction mitotic.
    dim_fraction, dim_factor : float
        A bimodal stain: this fraction of the nuclei is ``dim_factor`` times as bright
        (0, the default: one population).
    n_debris : int, optional
        Bright specks outside cells (not in the truth); default ``n // 40 + 2``.
    clump_size : int
        0 (default): free placement with ``cluster_fraction`` touching. > 0: the
        nuclei form compact clumps of this many touching nuclei (see
        :func:`make_clumped_field`).
    centres : (k, 2) array of (y, x), optional
        Put the first k nuclei there (e.g. on tile seams, to test tiling); the others
        are placed as usual, avoiding them. Default: every nucleus placed at random.

    Returns
    -------
    SyntheticField

    Examples
    --------
    >>> f = make_field(shape=(128, 128), n_nuclei=12, seed=1)
    >>> f.image.shape, f.image.dtype.name, int(f.nuclei.max()), len(f.truth)
    ((2, 128, 128), 'uint16', 12, 12)
    """
    params = {k: v for k, v in locals().items() if k != "seed"}
    if centres is not None:
        params["centres"] = np.asarray(centres, float).reshape(-1, 2).tolist()
    params["seed"] = list(np.atleast_1d(seed).tolist())
    rng = np.random.default_rng(seed)
    H, W = int(shape[0]), int(shape[1])
    n = int(n_nuclei)

    def lognormal(cv, size):
        s = math.sqrt(math.log1p(cv**2))
        return np.exp(rng.normal(-0.5 * s * s, s, size))

    # --- per-nucleus geometry and intensities
    mitotic = rng.random(n) < mitotic_fraction
    radius = 0.5 * nucleus_diameter * np.clip(lognormal(diameter_cv, n), 0.6, 1.5)
    radius[mitotic] *= 0.65
    aspect = 1.0 + np.clip(np.abs(rng.normal(0, 0.18, n)), 0, 0.6)
    aspect[mitotic] = 1.0 + np.clip(np.abs(rng.normal(0, 0.08, mitotic.sum())), 0, 0.3)
    a, b = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    theta = rng.uniform(0, np.pi, n)
    harm = np.column_stack(
        [rng.normal(0, 0.035, n), rng.normal(0, 0.025, n), rng.uniform(0, 2 * np.pi, (n, 2))]
    )
    harm[:, :2] = np.clip(harm[:, :2], -0.08, 0.08)
    brightness = nuc_intensity * lognormal(nuc_cv, n) * np.where(mitotic, 2.2, 1.0)
    if dim_fraction > 0:  # a second, dimmer population (drawn only then: defaults unchanged)
        brightness = np.where(rng.random(n) < dim_fraction, dim_factor, 1.0) * brightness
    levels = er_level * er_scale * lognormal(er_cv, n)

    cy, cx = _place(rng, n, a, b, theta, (H, W), cluster_fraction, int(clump_size),
                    centres=centres)
    lab, q = _rasterise((H, W), cy, cx, a, b, theta, harm)
    lab = _keep_largest_part(lab)
    q = np.where(lab > 0, q, np.float32(1))
    cells = _grow_cells(lab, nucleus_diameter / 2 if cell_expand is None else cell_expand)

    # --- textures: full-image smooth noise, used only at nucleus/cytoplasm pixels
    fine = _smooth_noise(rng, (H, W), 1.0).ravel()
    coarse = _smooth_noise(rng, (H, W), 3.0).ravel()
    er_tex = _smooth_noise(rng, (H, W), 1.5).ravel()
    flat = lab.ravel()
    pn = np.flatnonzero(flat)  # nucleus pixels
    ln = flat[pn].astype(np.intp)
    dome = np.sqrt(np.clip(1.0 - q.ravel()[pn], 0, 1))
    tex_amp = np.where(np.r_[False, mitotic][ln], np.float32(0.35), np.float32(0.18))
    hoechst = np.zeros(H * W, np.float32)
    hoechst[pn] = (
        np.r_[0.0, brightness].astype(np.float32)[ln]
        * (0.7 + 0.3 * dome)
        * np.clip(1 + tex_amp * fine[pn] + 0.12 * coarse[pn], 0.3, None)
    )
    nb = n + 1
    raw = (0.85 + 0.15 * dome) * np.clip(1 + 0.15 * er_tex[pn] + 0.08 * coarse[pn], 0.3, None)
    area = np.bincount(ln, minlength=nb).astype(np.float64)
    raw_mean = np.bincount(ln, weights=raw, minlength=nb) / np.maximum(area, 1)
    scale = np.r_[0.0, levels] / np.where(raw_mean > 0, raw_mean, 1.0)
    er = np.zeros(H * W, np.float32)
    er[pn] = raw * scale.astype(np.float32)[ln]  # mean over each nucleus == its level
    cflat = cells.ravel()
    pc = np.flatnonzero((cflat > 0) & (flat == 0))  # cytoplasm pixels
    lc = cflat[pc].astype(np.intp)
    er[pc] = np.r_[0.0, levels * cyto_fraction].astype(np.float32)[lc] * np.clip(
        1 + 0.2 * er_tex[pc], 0.2, None
    )
    hoechst = hoechst.reshape(H, W)
    er = er.reshape(H, W)

    # --- debris: bright specks in the background (both channels)
    nd = n // 40 + 2 if n_debris is None else int(n_debris)
    if nd:
        py = rng.integers(0, H, 4 * nd)
        px = rng.integers(0, W, 4 * nd)
        free = cells[py, px] == 0
        py, px = py[free][:nd], px[free][:nd]
        amp = rng.uniform(2.0, 6.0, len(py)).astype(np.float32)
        er_amp = amp * rng.uniform(0.1, 0.5, len(py)).astype(np.float32)
        for dy in (0, 1):
            for dx in (0, 1):
                yy_, xx_ = np.minimum(py + dy, H - 1), np.minimum(px + dx, W - 1)
                hoechst[yy_, xx_] += amp * np.float32(nuc_intensity)
                er[yy_, xx_] += er_amp * np.float32(er_level)

    # --- optics: blur, illumination; camera: noise, offset
    sigma = psf_sigma if in_focus else defocus_sigma
    hoechst = _gauss(hoechst, sigma)
    er = _gauss(er, sigma)
    illum = illumination_profile((H, W), vignetting, vignetting_center)
    image = np.empty((2, H, W), np.uint16)
    for c, sig in enumerate((hoechst, er)):
        expected = illum * (sig + np.float32(background[c]))
        if gain != 1:
            expected /= np.float32(gain)
        counts = rng.poisson(expected).astype(np.float32)
        if gain != 1:
            counts *= np.float32(gain)
        noise = rng.standard_normal((H, W), dtype=np.float32)
        noise *= np.float32(read_noise)
        counts += noise
        counts += np.float32(offset)
        np.rint(counts, out=counts)
        image[c] = np.clip(counts, 0, 65535).astype(np.uint16)

    # --- truth: exact reductions of the noise-free signal over the labels
    ern, hon = er.ravel()[pn], hoechst.ravel()[pn]
    safe = np.maximum(area, 1)
    py_, px_ = np.divmod(pn, W)
    cell_area = np.bincount(cflat, minlength=nb).astype(np.float64)
    cyto_area = np.bincount(lc, minlength=nb).astype(np.float64)
    touching = np.zeros(nb, bool)
    for l1, l2 in ((lab[:, :-1], lab[:, 1:]), (lab[:-1, :], lab[1:, :])):
        m = (l1 > 0) & (l2 > 0) & (l1 != l2)
        touching[l1[m]] = True
        touching[l2[m]] = True
    truth = pd.DataFrame(
        {
            "label": np.arange(1, nb, dtype=np.uint32),
            "centroid_y": (np.bincount(ln, py_, nb) / safe)[1:],
            "centroid_x": (np.bincount(ln, px_, nb) / safe)[1:],
            "area_px": area[1:].astype(np.int64),
            "cell_area_px": cell_area[1:].astype(np.int64),
            "cyto_area_px": cyto_area[1:].astype(np.int64),
            "major_axis_px": 2 * np.maximum(a, b),
            "minor_axis_px": 2 * np.minimum(a, b),
            "is_mitotic": mitotic,
            "touching": touching[1:],
            "er_level": levels,
            "true_er": (np.bincount(ln, ern, nb) / safe)[1:],
            "true_er_cyto": (np.bincount(lc, er.ravel()[pc], nb) / np.maximum(cyto_area, 1))[1:],
            "true_nuc_intensity": (np.bincount(ln, hon, nb) / safe)[1:],
        }
    )
    return SyntheticField(
        image=image,
        nuclei=lab,
        cells=cells,
        truth=truth,
        illumination=illum,
        in_focus=bool(in_focus),
        offset=float(offset),
        background=(float(background[0]), float(background[1])),
        params=params,
    )


#: the MCF-7-like look of :func:`make_clumped_field` (its defaults for
#: :func:`make_field`, also used by ``PlateSpec(clump_size=...)``): mixed brightness,
#: no loose touching pairs besides the clumps
CLUMPED_LOOK = {"nuc_cv": 0.45, "cluster_fraction": 0.0}

# the plate layer (planning, lazy rendering, writing, CLI) builds on the above
from erquant._synthplate import (
    SyntheticPlate,
    add_cli,
    main_synth,
    make_plate,
    write_plate,
)


def make_clumped_field(*, shape: tuple[int, int] = (1024, 1024), n_nuclei: int = 300,
                       clump_size: int = 20, seed: int | Sequence[int] = 0,
                       **kw) -> SyntheticField:
    """An MCF-7-like confluent field: compact clumps of ``clump_size`` touching nuclei.

    MCF-7 grows in tight islands; the nuclei of a clump press against each other
    with mixed brightness (Hoechst CV 0.45 instead of 0.3), so a clump of 10-30
    nuclei can look like one large object at a coarse scale. Other keywords go to
    :func:`make_field` (the default generator's output is unchanged).

    Examples
    --------
    >>> f = make_clumped_field(shape=(256, 256), n_nuclei=40, clump_size=10, seed=1)
    >>> int(f.nuclei.max()), len(f.truth)
    (40, 40)
    """
    kw = {**CLUMPED_LOOK, **kw}
    return make_field(shape=shape, n_nuclei=n_nuclei, seed=seed, clump_size=clump_size, **kw)
