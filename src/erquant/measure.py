"""Per-cell measurements: areas, centroids, nuclear / cytoplasmic / cell intensities.

Every statistic is a reduction over the label image (``xp.bincount`` with
weights), so the same code runs on NumPy and CuPy and no Python loop ever runs
over objects. Per channel the image is read by at most four weighted bincounts
(sum, shifted sum of squares, background map, and the background-corrected sum
when a flat-field is given) over ONE combined region index in which nucleus
pixels of cell *k* go to slot *k* and cytoplasm pixels go to slot ``K + k``;
cell statistics are the sum of both. Only the small per-label result vectors
travel to the host, once, to build the :class:`pandas.DataFrame`.

Regions
-------
* nucleus *k*: pixels where ``nuclei == k``;
* cell *k*: nucleus *k* plus the pixels where ``cells == k``;
* cytoplasm *k*: cell *k* minus nucleus *k* (empty when ``cells`` is None).

Rows exist for nucleus labels only; pixels of a ``cells`` label without a
nucleus are ignored. Standard deviations are population values (``ddof=0``,
as CellProfiler's ``StdIntensity``). Means of empty regions are NaN.

Background
----------
``background="local"`` (default) estimates a smooth background map per
channel from the pixels outside all cells (cells dilated by
``background_margin`` px): a robust statistic (median by default) per
``tile`` × ``tile`` tile, tiles with too few background pixels filled from the
nearest valid tile, then bilinear interpolation between tile centres to full
size, extrapolated linearly up to the border (see :func:`background_map`). The per-cell ``{c}_background`` column is
the **mean of the map over the cell** (nucleus + cytoplasm), which is exactly
the value subtracted from ``cell_{c}_mean`` when no flat-field is given.
``"field"`` uses one scalar per channel (median of the background pixels,
see :func:`field_background`), a float or ``{channel: float}`` a fixed value,
``None`` no subtraction (``*_bgcorr`` = raw, divided by the flat-field if one
is given, and ``{c}_background`` = 0).

Background-corrected values are computed pixel-wise as
``(image - background_map) / flatfield`` before the per-label reduction.

CellProfiler name mapping
-------------------------
==============================  ====================================================
erquant column                  CellProfiler measurement
==============================  ====================================================
``label``                       ``ObjectNumber`` (Nuclei / Cells share numbers)
``nucleus_area_px``             ``Nuclei: AreaShape_Area``
``cell_area_px``                ``Cells: AreaShape_Area``
``cyto_area_px``                ``Cytoplasm: AreaShape_Area``
``centroid_y``, ``centroid_x``  ``Nuclei: Location_Center_Y``, ``Location_Center_X``
``nucleus_er_mean``             ``Nuclei: Intensity_MeanIntensity_ER``
``nucleus_er_std``              ``Nuclei: Intensity_StdIntensity_ER``
``nucleus_er_integrated``       ``Nuclei: Intensity_IntegratedIntensity_ER``
``cyto_er_mean``                ``Cytoplasm: Intensity_MeanIntensity_ER``
``cyto_er_integrated``          ``Cytoplasm: Intensity_IntegratedIntensity_ER``
``cell_er_mean``                ``Cells: Intensity_MeanIntensity_ER``
``cell_er_integrated``          ``Cells: Intensity_IntegratedIntensity_ER``
``er_background``               (``MeasureImageIntensity`` of a background mask)
``*_mean_bgcorr``               mean after ``CorrectIlluminationApply`` (subtract /
                                divide) of the corresponding object
``er_nc_ratio``                 ``CalculateMath``: nuclear / cytoplasmic mean
number of rows                  ``Image: Count_Nuclei``
==============================  ====================================================

CellProfiler intensities are usually rescaled to 0–1 (divided by 65535 for
16-bit images); erquant keeps raw detector units.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from erquant import kernels as K_
from erquant.backend import Backend, backend_for, stack_to_host, to_numpy

__all__ = [
    "CHANNEL_COLUMN_TEMPLATES",
    "GEOMETRY_COLUMNS",
    "background_map",
    "cytoplasm_mask",
    "field_background",
    "measure_cells",
    "measurement_columns",
    "occupied_mask",
]

GEOMETRY_COLUMNS: tuple[str, ...] = (
    "label",
    "nucleus_area_px",
    "cell_area_px",
    "cyto_area_px",
    "centroid_y",
    "centroid_x",
)

CHANNEL_COLUMN_TEMPLATES: tuple[str, ...] = (
    "nucleus_{c}_mean",
    "nucleus_{c}_std",
    "nucleus_{c}_integrated",
    "cyto_{c}_mean",
    "cyto_{c}_integrated",
    "cell_{c}_mean",
    "cell_{c}_integrated",
    "{c}_background",
    "nucleus_{c}_mean_bgcorr",
    "cyto_{c}_mean_bgcorr",
    "cell_{c}_mean_bgcorr",
    "{c}_nc_ratio",
)

_INT_COLUMNS = ("label", "nucleus_area_px", "cell_area_px", "cyto_area_px")

# Label images whose largest id is at most this are indexed directly by id;
# larger ids are first compressed to 1..n (a sort of the nucleus image).
_DIRECT_MAX_LABEL = 1 << 20


def measurement_columns(channel_names: Any = ()) -> list[str]:
    """Column names of :func:`measure_cells` output, in order.

    Parameters
    ----------
    channel_names : iterable of str
        Channel names, in the order of the ``channels`` mapping.

    Returns
    -------
    list of str

    Examples
    --------
    >>> measurement_columns(["er"])[:7]
    ['label', 'nucleus_area_px', 'cell_area_px', 'cyto_area_px', 'centroid_y', 'centroid_x', 'nucleus_er_mean']
    """
    cols = list(GEOMETRY_COLUMNS)
    for c in channel_names:
        cols.extend(t.format(c=c) for t in CHANNEL_COLUMN_TEMPLATES)
    return cols


def _empty_table(channel_names: list[str]) -> pd.DataFrame:
    data = {
        col: pd.Series([], dtype=np.int64 if col in _INT_COLUMNS else np.float64)
        for col in measurement_columns(channel_names)
    }
    return pd.DataFrame(data)


# --------------------------------------------------------------------------- validation


def _as_labels(bk: Backend, labels: Any, name: str):
    arr = bk.asarray(labels)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer label image, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(arr.shape)})")
    return arr


def _as_channels(bk: Backend, channels: Mapping[str, Any] | None, shape: tuple) -> dict:
    if channels is None:
        return {}
    if not isinstance(channels, Mapping):
        raise TypeError("channels must be a mapping {name: 2-D image}")
    out = {}
    for name, img in channels.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"channel names must be non-empty strings, got {name!r}")
        arr = bk.asarray(img)
        if arr.dtype == bool or not (
            np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
        ):
            raise TypeError(f"channel {name!r} must be numeric, got dtype {arr.dtype}")
        if arr.ndim != 2:
            raise ValueError(f"channel {name!r} must be 2-D, got shape {tuple(arr.shape)}")
        if tuple(arr.shape) != shape:
            raise ValueError(
                f"channel {name!r} has shape {tuple(arr.shape)} but the label images "
                f"have shape {shape}"
            )
        # host sync: one boolean per float channel to reject NaN early
        if np.issubdtype(arr.dtype, np.floating) and bool(bk.xp.isnan(arr).any()):
            raise ValueError(f"channel {name!r} contains NaN values")
        out[name] = arr
    return out


def _as_flatfields(bk: Backend, flatfield: Any, names: list[str], shape: tuple) -> dict:
    if flatfield is None:
        return {}
    if isinstance(flatfield, Mapping):
        unknown = set(flatfield) - set(names)
        if unknown:
            raise ValueError(f"flatfield given for unknown channel(s) {sorted(unknown)}")
        items = {k: v for k, v in flatfield.items() if v is not None}
    else:
        items = {k: flatfield for k in names}
    out = {}
    cache: dict[int, Any] = {}
    for name, ff in items.items():
        if id(ff) in cache:  # one shared gain image: validate once
            out[name] = cache[id(ff)]
            continue
        arr = bk.asarray(ff, dtype=np.float64)
        if tuple(arr.shape) != shape:
            raise ValueError(
                f"flatfield for channel {name!r} has shape {tuple(arr.shape)}, expected {shape}"
            )
        # host sync: one boolean per flat-field image
        if not bool(bk.xp.all(bk.xp.isfinite(arr) & (arr > 0))):
            raise ValueError(f"flatfield for channel {name!r} must be finite and > 0 everywhere")
        out[name] = cache[id(ff)] = arr
    return out


def _background_spec(background: Any, names: list[str]) -> dict:
    """Normalise ``background`` to ``{channel: "local" | "field" | None | float}``."""
    if isinstance(background, Mapping):
        missing = [n for n in names if n not in background]
        if missing:
            raise ValueError(f"background dict lacks channel(s) {missing}")
        spec = {n: background[n] for n in names}
    else:
        spec = {n: background for n in names}
    for n, v in spec.items():
        if v is None or v in ("local", "field"):
            continue
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            if not math.isfinite(float(v)):
                raise ValueError(f"background for channel {n!r} must be finite, got {v}")
            spec[n] = float(v)
            continue
        raise ValueError(
            f"background for channel {n!r} must be 'local', 'field', None or a number, got {v!r}"
        )
    return spec


# --------------------------------------------------------------------------- masks / background


def cytoplasm_mask(nuclei: Any, cells: Any):
    """Boolean mask of cytoplasm pixels: inside a cell but outside every nucleus.

    Parameters
    ----------
    nuclei, cells : (Y, X) integer arrays
        Label images (NumPy or CuPy); the result is on the same device.

    Returns
    -------
    (Y, X) bool array

    Examples
    --------
    >>> import numpy as np
    >>> n = np.array([[0, 1, 1, 0]]); c = np.array([[1, 1, 1, 0]])
    >>> cytoplasm_mask(n, c).astype(int).tolist()
    [[1, 0, 0, 0]]
    """
    return (cells > 0) & (nuclei == 0)


def occupied_mask(labels: Any, margin: int = 3):
    """Pixels of ``labels > 0`` dilated by ``margin`` px (square neighbourhood).

    Everything outside this mask counts as background.

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((1, 7), int); lab[0, 3] = 5
    >>> occupied_mask(lab, margin=1).astype(int).tolist()
    [[0, 0, 1, 1, 1, 0, 0]]
    """
    bk = backend_for(labels)
    mask = K_.positive(bk, labels)
    margin = int(margin)
    if margin < 0:
        raise ValueError(f"background_margin must be >= 0, got {margin}")
    if margin == 0:
        return mask
    # OpenCV on the CPU, cupyx on the GPU
    return K_.maximum_filter(bk, mask.view(np.uint8), 2 * margin + 1).view(bool)


def field_background(
    image: Any,
    background: Any,
    *,
    min_fraction: float = 0.01,
    fallback_percentile: float = 5.0,
):
    """One background value for a field: median of the background pixels.

    Parameters
    ----------
    image : (Y, X) array
    background : (Y, X) bool array
        True where a pixel is background (outside all dilated cells).
    min_fraction : float
        When fewer than this fraction of pixels are background, return the
        ``fallback_percentile`` of the whole image instead.
    fallback_percentile : float
        Low percentile used as fallback (default 5).

    Returns
    -------
    0-d array (float64) on the input's device.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((10, 10), 7.0); img[2:8, 2:8] = 100
    >>> float(field_background(img, img < 50))
    7.0
    """
    bk = backend_for(image, background)
    xp = bk.xp
    vals = image[background]  # host sync on CuPy: boolean indexing sizes its output
    if vals.size > 0 and vals.size >= min_fraction * image.size:
        return xp.median(vals.astype(np.float64))
    return xp.percentile(image.astype(np.float64), fallback_percentile)


def _interp_weights(xp, n: int, centres: np.ndarray):
    """Indices and weights to interpolate ``len(centres)`` nodes linearly onto ``n`` pixels.

    Inside the outermost centres this is ordinary linear interpolation; over the
    (at most half-tile) margins beyond them the first / last segment is
    extrapolated linearly, so a smooth gradient is followed up to the border.
    (Computed once per ``n`` and centres: read-only host arrays, cached.)
    """
    i0, i1, w = _interp_weights_host(int(n), np.asarray(centres, np.float64).tobytes())
    return xp.asarray(i0), xp.asarray(i1), xp.asarray(w)


@functools.lru_cache(maxsize=32)
def _interp_weights_host(n: int, centres_bytes: bytes):
    centres = np.frombuffer(centres_bytes, np.float64)
    m = len(centres)
    y = np.arange(n, dtype=np.float64)
    if m == 1:
        zero = np.zeros(n, dtype=np.intp)
        out = zero, zero, np.zeros(n)
    else:
        pos = np.interp(y, centres, np.arange(m, dtype=np.float64))
        left, right = y < centres[0], y > centres[-1]
        pos[left] = (y[left] - centres[0]) / (centres[1] - centres[0])
        pos[right] = (m - 1) + (y[right] - centres[-1]) / (centres[-1] - centres[-2])
        i0 = np.clip(np.floor(pos).astype(np.intp), 0, m - 2)
        w = pos - i0  # < 0 or > 1 on the extrapolated margins
        out = i0, i0 + 1, w
    for a in out:
        a.flags.writeable = False
    return out


def background_map(
    image: Any,
    occupied: Any,
    *,
    tile: int | None = 128,
    quantile: float = 0.5,
    min_tile_fraction: float = 0.05,
    fallback_percentile: float = 5.0,
    separable: bool = False,
):
    """Smooth background map from the pixels outside ``occupied``.

    The image is cut into ``tile`` × ``tile`` tiles; in each tile the
    ``quantile`` (median by default) of the unoccupied pixels is taken as the
    background at the tile centre. Tiles with fewer than
    ``min_tile_fraction`` of their pixels unoccupied take the value of the
    nearest valid tile; when no tile is valid the map is constant
    (:func:`field_background`). The coarse grid is interpolated bilinearly
    between tile centres and extrapolated linearly over the half tile beyond
    the outermost centres (a linear gradient is reproduced exactly). All work is
    vectorised over tiles (one sort of the tiled image).

    Parameters
    ----------
    image : (Y, X) array
        One channel (NumPy or CuPy).
    occupied : (Y, X) bool array
        True on cells and a margin around them (see :func:`occupied_mask`).
    tile : int or None
        Tile edge in pixels; None derives it as ``min(Y, X) // 8`` clipped to
        [32, 256]. Choose it several times larger than a cell.
    quantile : float
        Statistic per tile, 0.5 = median; a lower value (e.g. 0.2) is more
        robust to unsegmented dim cells.
    min_tile_fraction : float
        Minimum fraction of background pixels for a tile to count.
    fallback_percentile : float
        Passed to :func:`field_background` when no tile is valid.

    separable : bool
        Return the map's factors instead of the map (see Returns).

    Returns
    -------
    (Y, X) float32 array on the input's device; with ``separable`` the tuple
    ``(rows, c0, c1, cw)`` such that the map is
    ``rows[:, c0] * (1 - cw) + rows[:, c1] * cw`` (``rows`` (Y, nx) float32,
    ``c0``/``c1`` (X,) column indices, ``cw`` (X,) float32 weights), which
    per-cell sums can evaluate on the fly (:func:`erquant.kernels.label_moments`).

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.mgrid[:64, :64]
    >>> ramp = 100.0 + xx
    >>> bg = background_map(ramp, np.zeros(ramp.shape, bool), tile=16)
    >>> bool(np.allclose(bg, ramp))
    True
    """
    bk = backend_for(image, occupied)
    xp, ndi = bk.xp, bk.ndi
    if image.ndim != 2 or tuple(occupied.shape) != tuple(image.shape):
        raise ValueError(
            f"image must be 2-D and match occupied: {tuple(image.shape)} vs {tuple(occupied.shape)}"
        )
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    Y, X = (int(s) for s in image.shape)
    if tile is None:
        tile = int(np.clip(min(Y, X) // 8, 32, 256))
    t = max(4, min(int(tile), max(Y, X)))
    ny, nx = -(-Y // t), -(-X // t)
    # tiles of >= 32² pixels: their statistic over step × step block means, ≤ 32²
    # per tile (the same median within noise for a few % of the sorting); a block is
    # occupied when its first pixel is (``occupied`` carries a margin of 3 px around
    # the cells by default, so no cell pixel falls in an unoccupied block of ≤ 4²)
    step = min(4, max(1, t // 32))
    while step > 1 and (t % step or min(Y, X) < step):
        step -= 1
    ts = t // step
    Ys, Xs = Y // step, X // step  # whole blocks (a partial last row/column is left out)

    src = K_.block_mean(bk, image, step) if step > 1 else image
    occ_s = occupied[: Ys * step: step, : Xs * step: step] if step > 1 else occupied
    if K_._numba_ok(bk) and isinstance(src, np.ndarray) and isinstance(occ_s, np.ndarray):
        # one compiled pass: each tile's unoccupied pixels gathered and their two order
        # statistics selected (the same values as _tile_quantile's sort of the tiled image)
        from erquant import _numba_kernels

        grid = np.empty((ny, nx), np.float64)
        ok = np.empty((ny, nx), np.bool_)
        _numba_kernels.tile_quantile(src, occ_s.astype(np.bool_, copy=False), ts,
                                     float(quantile), float(min_tile_fraction), grid, ok)
    else:
        grid, ok = _tile_quantile(xp, src, occ_s, ts, ny, nx, quantile, min_tile_fraction)
    # host sync: two booleans decide how missing tiles are filled
    all_ok, any_ok = (bool(b) for b in to_numpy(xp.stack([ok.all(), ok.any()])))
    if not any_ok:
        value = field_background(image, ~occupied, fallback_percentile=fallback_percentile)
        if separable:
            zero = xp.zeros(X, dtype=np.intp)
            return (xp.full((Y, 1), value, dtype=np.float32), zero, zero,
                    xp.zeros(X, dtype=np.float32))
        return xp.full((Y, X), value, dtype=np.float32)
    if not all_ok:
        idx = ndi.distance_transform_edt(~ok, return_distances=False, return_indices=True)
        grid = grid[tuple(idx)]
    else:
        grid = xp.where(ok, grid, 0.0)  # no-op, keeps dtype/shape

    # bilinear interpolation between tile centres, separable (rows then columns)
    cy = np.array([(i * t + min((i + 1) * t, Y) - 1) / 2.0 for i in range(ny)])
    cx = np.array([(j * t + min((j + 1) * t, X) - 1) / 2.0 for j in range(nx)])
    # as two small matrix products (BLAS; C-ordered float32 output): Wy @ grid @ Wx
    # (on one BLAS thread: a woken OpenBLAS pool spins on after the product, taking a
    # core from the kernels that follow; see erquant._blas)
    wy = _interp_matrix(xp, Y, cy)  # (Y, ny)
    with _blas_one_thread(bk):
        rows = xp.ascontiguousarray((wy @ grid.astype(np.float64)).astype(np.float32))
    if separable:  # rows: (Y, nx)
        c0, c1, cw = _interp_weights(xp, X, cx)
        return rows, c0, c1, cw.astype(np.float32)
    wx = _interp_matrix(xp, X, cx)  # (X, nx)
    with _blas_one_thread(bk):
        return xp.ascontiguousarray(rows @ wx.T.astype(np.float32))


def _tile_quantile(xp, src, occ, ts: int, ny: int, nx: int, quantile: float,
                   min_tile_fraction: float):
    """:func:`background_map`'s per-tile quantile and validity (whole-array version):
    the tiled image (ny, nx, ts * ts), occupied and padding pixels set to inf, sorted
    along the last axis."""
    Ys, Xs = (int(v) for v in src.shape)
    vals = xp.full((ny * ts, nx * ts), np.inf, dtype=np.float32)
    vals[:Ys, :Xs] = xp.where(occ, np.float32(np.inf), src.astype(np.float32))
    vals = vals.reshape(ny, ts, nx, ts).transpose(0, 2, 1, 3).reshape(ny, nx, ts * ts)
    valid = xp.isfinite(vals)
    inside = xp.zeros((ny * ts, nx * ts), dtype=bool)
    inside[:Ys, :Xs] = True
    n_inside = inside.reshape(ny, ts, nx, ts).sum(axis=(1, 3))
    k = valid.sum(axis=-1)
    vals = xp.sort(vals, axis=-1)  # invalid (inf) pixels sort last

    pos = quantile * xp.maximum(k - 1, 0).astype(np.float64)
    lo = xp.floor(pos).astype(np.intp)
    hi = xp.minimum(lo + 1, xp.maximum(k - 1, 0))
    frac = pos - lo
    v_lo = xp.take_along_axis(vals, lo[..., None], axis=-1)[..., 0].astype(np.float64)
    v_hi = xp.take_along_axis(vals, hi[..., None], axis=-1)[..., 0].astype(np.float64)
    v_lo = xp.where(xp.isfinite(v_lo), v_lo, 0.0)  # empty tiles (all inf): filled below
    v_hi = xp.where(xp.isfinite(v_hi), v_hi, v_lo)
    grid = v_lo + (v_hi - v_lo) * frac
    ok = (k >= xp.maximum(1, min_tile_fraction * n_inside)) & (k > 0)
    return grid, ok


def _blas_one_thread(bk: Backend):
    if bk.is_gpu:
        return contextlib.nullcontext()
    from erquant import _blas

    return _blas.one_thread()


def _interp_matrix(xp, n: int, centres: np.ndarray):
    """(n, len(centres)) matrix of the weights of :func:`_interp_weights` (cached: a
    read-only host array)."""
    return xp.asarray(_interp_matrix_host(int(n), np.asarray(centres, np.float64).tobytes()))


@functools.lru_cache(maxsize=16)
def _interp_matrix_host(n: int, centres_bytes: bytes):
    i0, i1, w = _interp_weights_host(n, centres_bytes)
    m = np.zeros((n, max(1, len(centres_bytes) // 8)), dtype=np.float64)
    rows = np.arange(n)
    np.add.at(m, (rows, i0), 1.0 - w)
    np.add.at(m, (rows, i1), w)
    m.flags.writeable = False
    return m


# --------------------------------------------------------------------------- region index


def _region_slots(bk: Backend, nuclei, cells, label_max: int | None = None):
    """Slot images for :func:`erquant.kernels.label_moments` → ``(nuc, cyt, K, ids)``.

    Nucleus ``k`` sums into slot ``s(k)`` in [1, K), its cytoplasm into ``K + s(k)``.
    Label ids up to ``_DIRECT_MAX_LABEL`` are their own slots (``ids`` None; the label
    images are used as they are); larger ids are compressed to ``1..n`` through the
    sorted nucleus ids ``ids`` (slot s ↔ ``ids[s-1]``), both slot images then being
    the combined index.
    """
    xp = bk.xp
    if label_max is not None:  # unsigned labels of a known upper bound (the pipeline's)
        top = int(label_max)
    else:
        # host sync: label range (min, max of each: one compiled pass on all cores on
        # the CPU) picks direct vs compressed indexing
        r = [int(v) for lab in (nuclei, cells) if lab is not None
             for v in K_.range_and_count(bk, lab, None)[:2]]
        if r[0] < 0 or (cells is not None and r[2] < 0):
            raise ValueError("label images must not contain negative labels")
        top = int(r[1] if cells is None else max(r[1], r[3]))
    if top <= _DIRECT_MAX_LABEL:
        # without cells, the "cytoplasm" image is the nuclei image: where nuc == 0 it is 0
        return nuclei, (nuclei if cells is None else cells), top + 1, None
    ids = xp.unique(nuclei)  # sorted; one sort of the image
    ids = ids[1:] if int(ids[0]) == 0 else ids  # host sync: one scalar
    K = int(ids.size) + 1
    nuc = xp.where(nuclei > 0, xp.searchsorted(ids, nuclei) + 1, 0).astype(np.int64)
    index = nuc
    if cells is not None:
        pos = xp.minimum(xp.searchsorted(ids, cells), max(K - 2, 0))
        match = (cells > 0) & (ids[pos] == cells) if K > 1 else xp.zeros(cells.shape, bool)
        cyt = xp.where(match, pos + 1, 0).astype(np.int64)
        index = xp.where(nuc > 0, nuc, xp.where(cyt > 0, cyt + K, 0))
    return index, index, K, ids


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, np.nan, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


# --------------------------------------------------------------------------- main entry


def measure_cells(
    nuclei: Any,
    cells: Any = None,
    channels: Mapping[str, Any] | None = None,
    *,
    background: Any = "local",
    flatfield: Any = None,
    background_margin: int = 3,
    tile: int | None = 128,
    background_quantile: float = 0.5,
    min_tile_fraction: float = 0.05,
    fallback_percentile: float = 5.0,
    _label_max: int | None = None,
) -> pd.DataFrame:
    """Measure every nucleus / cell / cytoplasm of a field: one row per nucleus.

    Parameters
    ----------
    nuclei : (Y, X) integer array
        Nucleus labels (0 = background). Ids may be non-contiguous and large.
    cells : (Y, X) integer array, optional
        Cell labels with the ids of their nucleus (``cells[nuclei == k] == k``).
        None: no cytoplasm (cell = nucleus).
    channels : mapping of str to (Y, X) array, optional
        Intensity images by channel name (e.g. ``{"nuclei": dapi, "er": er}``).
    background : {"local", "field"}, float, dict or None
        Background model (see module docstring); a dict gives one entry
        (``"local"``, ``"field"``, None or a number) per channel.
    flatfield : (Y, X) array or dict of str to array, optional
        Gain image(s); corrected values are ``(image - background) / flatfield``.
    background_margin : int
        Cells are dilated by this many pixels before taking background pixels.
    tile, background_quantile, min_tile_fraction, fallback_percentile
        Passed to :func:`background_map` / :func:`field_background`.

    Returns
    -------
    pandas.DataFrame
        Columns :func:`measurement_columns` (``label``, areas, nucleus centroid,
        then per channel ``c``: ``nucleus_{c}_mean``, ``nucleus_{c}_std``,
        ``nucleus_{c}_integrated``, ``cyto_{c}_mean``, ``cyto_{c}_integrated``,
        ``cell_{c}_mean``, ``cell_{c}_integrated``, ``{c}_background``,
        ``nucleus_{c}_mean_bgcorr``, ``cyto_{c}_mean_bgcorr``,
        ``cell_{c}_mean_bgcorr``, ``{c}_nc_ratio``), sorted by ``label``. An
        image without nuclei gives an empty table with the same columns.

    Raises
    ------
    TypeError
        Non-integer labels or non-numeric channels.
    ValueError
        Shape mismatch, non-2-D input, NaN in a channel, negative labels,
        invalid flat-field or background specification.

    Examples
    --------
    >>> import numpy as np
    >>> nuc = np.zeros((6, 6), np.uint16); nuc[1:3, 1:3] = 4
    >>> cel = nuc.copy(); cel[1:3, 3] = 4
    >>> er = np.full((6, 6), 10.0); er[1:3, 1:3] = 50.0; er[1:3, 3] = 30.0
    >>> t = measure_cells(nuc, cel, {"er": er}, background="field")
    >>> t[["label", "nucleus_area_px", "cyto_area_px", "nucleus_er_mean_bgcorr", "er_nc_ratio"]]
       label  nucleus_area_px  cyto_area_px  nucleus_er_mean_bgcorr  er_nc_ratio
    0      4                4             2                    40.0          2.0
    """
    ch_in = dict(channels or {})
    ff_in = list(flatfield.values()) if isinstance(flatfield, Mapping) else [flatfield]
    bk = backend_for(nuclei, cells, *ch_in.values(), *ff_in)
    xp = bk.xp

    nuclei = _as_labels(bk, nuclei, "nuclei")
    shape = tuple(int(s) for s in nuclei.shape)
    if cells is not None:
        cells = _as_labels(bk, cells, "cells")
        if tuple(cells.shape) != shape:
            raise ValueError(f"cells has shape {tuple(cells.shape)} but nuclei has shape {shape}")
    chans = _as_channels(bk, ch_in, shape)
    names = list(chans)
    flats = _as_flatfields(bk, flatfield, names, shape)
    bg_spec = _background_spec(background, names)

    nuc_s, cyt_s, K, ids = _region_slots(bk, nuclei, cells, _label_max)
    nbins = 2 * K

    occ = None
    if any(v in ("local", "field") for v in bg_spec.values()):
        occ = occupied_mask(nuclei if cells is None else cells, background_margin)

    # every per-pixel quantity summed per slot in one pass (kernels.label_moments):
    # per channel the image (with Σ(v - shift)²), and its background map or its
    # flat-field-corrected copy where the table needs their per-cell sums
    images, squared, shifts, bilinear = [], [], [], []

    def add(arr, square: bool = False, shift: float = 0.0) -> int:
        """Queue ``arr`` for the one-pass sums; its row in ``sums`` (Σ(v - shift)² next)."""
        row = 3 + len(images) + sum(squared)
        images.append(arr)
        squared.append(square)
        shifts.append(shift)
        return row

    plan: dict[str, dict] = {}
    for name, img in chans.items():
        mode, ff = bg_spec[name], flats.get(name)
        # any shift keeps Σ(v - shift)² free of cancellation; a strided mean is enough
        shift = float(img[::8, ::8].astype(np.float64).mean())  # host sync: one scalar
        e: dict[str, Any] = {"shift": shift, "s1": add(img, True, shift)}
        if mode == "local" and ff is None:
            # the map's separable factors: its per-cell sums evaluated on the fly
            e["sep"] = len(bilinear)
            bilinear.append(background_map(
                img, occ, tile=tile, quantile=background_quantile,
                min_tile_fraction=min_tile_fraction, fallback_percentile=fallback_percentile,
                separable=True))
        elif mode == "local":
            bmap = background_map(img, occ, tile=tile, quantile=background_quantile,
                                  min_tile_fraction=min_tile_fraction,
                                  fallback_percentile=fallback_percentile)
            e["sb"] = add(bmap)
            e["sc"] = add((img.astype(np.float32) - bmap) / ff)
        else:
            if mode == "field":
                bval = float(field_background(img, ~occ, fallback_percentile=fallback_percentile))
            else:
                bval = 0.0 if mode is None else float(mode)
            e["bval"] = bval
            if ff is not None:
                e["sc"] = add((img.astype(np.float32) - np.float32(bval)) / ff)
        plan[name] = e
    sums = K_.label_moments(bk, nuc_s, cyt_s, K, images, squared, shifts, nbins,
                            bilinear=bilinear)
    first_sep = 3 + len(images) + sum(squared)  # the separable maps' rows follow the images'

    area = sums[0]
    slots = xp.flatnonzero(area[1:K]) + 1  # host sync on CuPy: output size
    n = int(slots.size)
    if n == 0:
        return _empty_table(names)
    cslots = slots + K
    rows = [area[slots], area[cslots], sums[1][slots], sums[2][slots]]
    scalar_bg: set[str] = set()
    for name in names:
        e = plan[name]
        s1, s2 = sums[e["s1"]], sums[e["s1"] + 1]
        if "bval" in e:
            bval = e["bval"]
            sc = sums[e["sc"]] if "sc" in e else s1 - bval * area
            scalar_bg.add(name)
            bg_rows = [xp.full(n, bval, dtype=np.float64), xp.zeros(n, dtype=np.float64)]
        else:
            sb = sums[first_sep + e["sep"]] if "sep" in e else sums[e["sb"]]
            sc = sums[e["sc"]] if "sc" in e else s1 - sb
            bg_rows = [sb[slots], sb[cslots]]
        rows += [s1[slots], s1[cslots], s2[slots], xp.full(n, e["shift"], dtype=np.float64)]
        rows += [sc[slots], sc[cslots]] + bg_rows

    # host sync: the only device->host transfer of results, (4 + 8*C) x n floats
    block = stack_to_host(xp, rows)
    label_ids = to_numpy(slots if ids is None else ids[slots - 1]).astype(np.int64)

    a_nuc, a_cyt = block[0], block[1]
    a_cell = a_nuc + a_cyt
    data: dict[str, Any] = {
        "label": label_ids,
        "nucleus_area_px": a_nuc.astype(np.int64),
        "cell_area_px": a_cell.astype(np.int64),
        "cyto_area_px": a_cyt.astype(np.int64),
        "centroid_y": _safe_div(block[2], a_nuc),
        "centroid_x": _safe_div(block[3], a_nuc),
    }
    for i, name in enumerate(names):
        s1n, s1c, s2n, shift, scn, scc, sbn, sbc = block[4 + 8 * i : 12 + 8 * i]
        mean_n = _safe_div(s1n, a_nuc)
        var_n = _safe_div(s2n, a_nuc) - (mean_n - shift) ** 2
        bgc_n = _safe_div(scn, a_nuc)
        bgc_c = _safe_div(scc, a_cyt)
        if name in scalar_bg:
            bg = sbn  # the scalar, broadcast
        else:
            bg = _safe_div(sbn + sbc, a_cell)
        ratio = np.full(n, np.nan)
        ok = (a_cyt > 0) & (bgc_c > 0)
        np.divide(bgc_n, bgc_c, out=ratio, where=ok)
        data.update(
            {
                f"nucleus_{name}_mean": mean_n,
                f"nucleus_{name}_std": np.sqrt(np.maximum(var_n, 0.0)),
                f"nucleus_{name}_integrated": s1n,
                f"cyto_{name}_mean": _safe_div(s1c, a_cyt),
                f"cyto_{name}_integrated": s1c,
                f"cell_{name}_mean": _safe_div(s1n + s1c, a_cell),
                f"cell_{name}_integrated": s1n + s1c,
                f"{name}_background": np.asarray(bg, dtype=np.float64),
                f"nucleus_{name}_mean_bgcorr": bgc_n,
                f"cyto_{name}_mean_bgcorr": bgc_c,
                f"cell_{name}_mean_bgcorr": _safe_div(scn + scc, a_cell),
                f"{name}_nc_ratio": ratio,
            }
        )
    # slots ascend with label id in both indexing modes, so rows are sorted by label
    return pd.DataFrame(data, columns=measurement_columns(names))
