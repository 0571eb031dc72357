"""Low-level image kernels with one meaning and per-backend fast implementations.

The segmentation algorithm (``erquant.segment``) is written once against these
functions. Each function takes and returns arrays of the input's backend:
NumPy inputs use OpenCV where it is much faster than SciPy for the same result
(Gaussian blur, Euclidean distance transform, connected components, nearest
seed, block means), and Numba-compiled single passes (``erquant._numba_kernels``)
for per-label reductions and fused full-resolution steps; CuPy inputs use
``cupyx.scipy.ndimage`` and whole-image array operations. ``ERQUANT_NO_OPENCV=1``
and ``ERQUANT_NO_NUMBA=1`` force the SciPy / array-operation implementations — the
code the GPU runs — on the CPU (the tests compare both paths; ``erquant bench``
times them).
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

from erquant.backend import Backend, stack_to_host, to_numpy

try:  # OpenCV is a core dependency, but keep the SciPy path importable without it
    import cv2

    cv2.setNumThreads(max(1, os.cpu_count() or 1))
except Exception:  # pragma: no cover
    cv2 = None


def _use_cv2(bk: Backend) -> bool:
    return (not bk.is_gpu) and cv2 is not None and os.environ.get("ERQUANT_NO_OPENCV") != "1"


def gaussian(bk: Backend, img, sigma: float, *, offset: float | None = None,
             scale: float | None = None):
    """Gaussian blur of a float32 2-D image (truncate = 4 sigma, reflect borders); with
    ``offset`` and ``scale``, of ``(img - offset) · scale`` (float32 arithmetic as
    :func:`affine`), normalised as the blur reads it: the same values as
    ``gaussian(affine(img, offset, scale))`` without the normalised copy.

    On the CPU one compiled separable pass (Numba, rows in parallel; the kernel's
    symmetry halves the products): 25-35 % less time than OpenCV's ``GaussianBlur``
    on 2048² float32 at sigma 0.7-3.2, equal to it within 4e-7 (a few float32 steps:
    the sums' order differs). OpenCV's (or SciPy's) blur elsewhere: other dtypes,
    images smaller than the kernel's radius, ``ERQUANT_NO_NUMBA=1``."""
    fused = offset is not None
    if sigma <= 0:
        return affine(bk, img, offset, scale) if fused else img
    out = _compiled_blur(bk, img, sigma, 1 if fused else 0, offset if fused else 0,
                         scale if fused else 0, 0, None, 0)
    if out is not None:
        return out
    if fused:
        img = affine(bk, img, offset, scale)
    if _use_cv2(bk):
        k = int(2 * round(4 * sigma) + 1)
        return cv2.GaussianBlur(img, (k, k), sigmaX=sigma, sigmaY=sigma,
                                borderType=cv2.BORDER_REFLECT)
    return bk.ndi.gaussian_filter(img, sigma, mode="reflect", truncate=4.0)


_F0 = np.float32(0.0)
_NO_IMAGE = np.zeros((1, 1), np.float32)
_NO_MASK = np.zeros((1, 1), np.bool_)


def _compiled_blur(bk: Backend, img, sigma: float, pre: int, c0: float, c1: float,
                   post: int, sd, p: float):
    """The compiled Gaussian (``_numba_kernels._gaussian_impl``: input transform ``pre``
    with c0, c1; output step ``post`` with the image ``sd`` and p) of a float32 2-D
    image whose kernel radius fits it (``sd`` of its shape where ``post`` reads it);
    None where it does not apply (CuPy, ``ERQUANT_NO_NUMBA=1``, other dtypes, images
    smaller than the radius): the caller takes the array path."""
    r = int(round(4 * sigma))
    if not (_numba_ok(bk) and isinstance(img, np.ndarray) and img.ndim == 2
            and img.dtype == np.float32 and 0 < r <= min(img.shape)):
        return None
    if post and not (_f32_2d(sd) and sd.shape == img.shape):
        return None
    from erquant import _numba_kernels

    out = np.empty(img.shape, np.float32)
    _numba_kernels.gaussian(np.ascontiguousarray(img), _gauss_weights(sigma, r), pre,
                            np.float32(c0), np.float32(c1), post,
                            _NO_IMAGE if sd is None else np.ascontiguousarray(sd),
                            np.float32(p), out)
    return out


def seed_score(bk: Backend, smooth, t: float, sigma: float, sdist, p: float):
    """The seed map ``sdist · (gaussian(max(smooth - t, 0), sigma) + 1e-6) ** p`` (float32
    images; ``p > 0``). On the CPU one compiled pass: the excess is taken as the blur
    reads its rows and the power only where ``sdist > 0`` (elsewhere the product is 0),
    so neither the excess, the blur nor the power is a whole image of its own. The
    array path (CuPy, ``ERQUANT_NO_NUMBA=1``) writes the same expression out."""
    out = _compiled_blur(bk, smooth, sigma, 2, t, 0, 1, sdist, p)
    if out is not None:
        return out
    inten = gaussian(bk, excess(bk, smooth, t), sigma)
    return multiply(bk, sdist, power(bk, add_scalar(bk, inten, 1e-6), p))


@functools.lru_cache(maxsize=64)
def _gauss_weights(sigma: float, r: int) -> np.ndarray:
    """The normalised Gaussian kernel of radius ``r`` (float32, 2r + 1 taps), computed in
    float64 as OpenCV's ``getGaussianKernel``."""
    x = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-(x * x) / (2.0 * sigma * sigma))
    out = (w / w.sum()).astype(np.float32)
    out.flags.writeable = False
    return out


def as_float32(bk: Backend, image):
    """``image`` as a float32 array on ``bk`` (itself when it is one already); host
    integer or float64 images are converted in one compiled pass over parallel rows
    (the same values as NumPy's cast)."""
    if (_numba_ok(bk) and isinstance(image, np.ndarray) and image.ndim == 2
            and image.dtype != np.float32 and image.dtype.kind in "uif" and image.size >= 1 << 16):
        from erquant import _numba_kernels

        out = np.empty(image.shape, np.float32)
        _numba_kernels.to_float32(image, out)
        return out
    return bk.xp.asarray(image, dtype=bk.xp.float32)


def positive(bk: Backend, img):
    """``img > 0`` (bool): one compiled pass over parallel rows for host 2-D images
    (NumPy's comparison runs on one core: 2.2 against ~0.5 ms at 2048² uint32)."""
    if (_numba_ok(bk) and isinstance(img, np.ndarray) and img.ndim == 2
            and img.dtype.kind in "uif" and img.size >= 1 << 16):
        from erquant import _numba_kernels

        out = np.empty(img.shape, np.bool_)
        _numba_kernels.positive(img, out)
        return out
    return img > 0


_MASK_OPS = {"and_not": 0, "or_and": 1}


def mask_op(bk: Backend, op: str, a, b, c=None):
    """Boolean images combined: ``a & ~b`` ("and_not") or ``a | (b & c)`` ("or_and").
    One compiled pass over parallel rows for host 2-D images (NumPy's runs on one core
    with a temporary: 0.7 against 0.3-0.4 ms at 2048²)."""
    if (_numba_ok(bk) and isinstance(a, np.ndarray) and a.ndim == 2 and a.size >= 1 << 16
            and all(isinstance(v, np.ndarray) and v.shape == a.shape and v.dtype == np.bool_
                    for v in (a, b) + ((c,) if c is not None else ()))):
        from erquant import _numba_kernels

        out = np.empty(a.shape, np.bool_)
        u8 = [np.ascontiguousarray(v).view(np.uint8) for v in (a, b, b if c is None else c)]
        _numba_kernels.mask_op(*u8, _MASK_OPS[op], out.view(np.uint8))
        return out
    if op == "and_not":
        return a & ~b
    return a | (b & c)


def sub_scaled(bk: Backend, img, bg, scale: float, offset: float) -> None:
    """In place: ``img = (img - scale · bg) - offset`` (float32 2-D images; one compiled
    parallel pass on the CPU, the same float32 arithmetic as the array expression)."""
    if _numba_ok(bk) and _f32_2d(img, bg):
        from erquant import _numba_kernels

        _numba_kernels.sub_scaled(img, bg, np.float32(scale), np.float32(offset))
        return
    img -= np.float32(scale) * bg
    img -= np.float32(offset)


def subtract_inplace(bk: Backend, img, other) -> None:
    """In place: ``img -= other`` (float32 2-D images of one shape: one compiled parallel
    pass on the CPU, the same float32 values)."""
    if _numba_ok(bk) and _f32_2d(img, other) and img.shape == other.shape:
        from erquant import _numba_kernels

        # (x - 1 · b) - 0 is x - b exactly in float32
        _numba_kernels.sub_scaled(img, other, np.float32(1.0), np.float32(0.0))
        return
    bk.xp.subtract(img, other, out=img)


def _f32_2d(*arrays) -> bool:
    return all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.ndim == 2
               and a.flags.c_contiguous for a in arrays)


def excess(bk: Backend, img, t: float):
    """``max(img - t, 0)`` of a float32 image, in float32 (one compiled parallel pass on
    the CPU; the same values as the array expression)."""
    if _numba_ok(bk) and _f32_2d(img):
        from erquant import _numba_kernels

        out = np.empty(img.shape, np.float32)
        _numba_kernels.excess(img, np.float32(t), out)
        return out
    out = img - np.float32(t)
    bk.xp.maximum(out, 0, out=out)
    return out


def add_scalar(bk: Backend, img, c: float):
    """``img + c`` (float32), in place where the CPU's compiled pass runs (a new array
    otherwise); returns the result."""
    if _numba_ok(bk) and _f32_2d(img):
        from erquant import _numba_kernels

        _numba_kernels.add_scalar(img, np.float32(c))
        return img
    return img + np.float32(c)


def multiply(bk: Backend, a, b):
    """``a * b`` of float32 images (one compiled parallel pass on the CPU)."""
    if _numba_ok(bk) and _f32_2d(a, b) and a.shape == b.shape:
        from erquant import _numba_kernels

        out = np.empty(a.shape, np.float32)
        _numba_kernels.multiply(a, b, out)
        return out
    return a * b


def affine(bk: Backend, img, offset: float, scale: float):
    """``(img - offset) * scale`` of a float32 2-D image in float32 (one compiled pass on
    the CPU, parallel rows, no temporary; the same float32 arithmetic on the array
    path)."""
    if _numba_ok(bk) and img.dtype == np.float32:
        from erquant import _numba_kernels

        out = np.empty(img.shape, np.float32)
        _numba_kernels.affine(img, np.float32(offset), np.float32(scale), out)
        return out
    return (img - offset) * scale


def mask_above(bk: Backend, mask, a, frac: float, b):
    """``mask & (a > frac · b)`` for float32 2-D images (one compiled pass on the CPU,
    parallel rows; the same expression in float32 on the array path)."""
    if _numba_ok(bk) and a.dtype == b.dtype == np.float32:
        from erquant import _numba_kernels

        out = np.empty(mask.shape, np.bool_)
        _numba_kernels.mask_above(np.ascontiguousarray(mask, dtype=np.bool_),
                                  np.ascontiguousarray(a), np.float32(frac),
                                  np.ascontiguousarray(b), out)
        return out
    return mask & (a > bk.xp.float32(frac) * b)


#: the compiled maximum filter (and local-contrast rule) is used up to this half-width:
#: 2048² float32, alone, 3.6 vs OpenCV's 5.4 ms at 7 px, 5.3 vs 6.1 at 13, 9.2 vs 8.5 at 25
#: (OpenCV's running maxima win on wide windows)
COMPILED_MAX_RADIUS = 6


def _compiled_max(bk: Backend, img, size: int, dtypes=(np.float32,)) -> bool:
    # whether the compiled maximum filter takes ``img`` (a C-contiguous 2-D host array of
    # one of ``dtypes``) at this window. uint8 masks (dilations) go the same way: OpenCV's
    # dilate runs on one thread here (2048², 3 / 7 / 13 px: 0.3 / 0.6 / 0.9 against
    # 0.7 / 0.8 / 0.8 ms)
    return (_numba_ok(bk) and isinstance(img, np.ndarray) and img.dtype in dtypes
            and img.ndim == 2 and img.flags.c_contiguous and size // 2 <= COMPILED_MAX_RADIUS
            and size // 2 <= min(img.shape))


def mask_above_peak(bk: Backend, mask, a, frac: float, size: int, *,
                    above: float | None = None):
    """The local-contrast rule ``mask & (a > frac · maximum_filter(a, size))`` (float32
    ``a``). On the CPU, for windows up to 2 · :data:`COMPILED_MAX_RADIUS` + 1, one compiled
    pass: each row's window maximum is compared as it is made, never written out
    (2048², 7 px: 4.3 against 6.8 ms for the filter and the rule apart). Exactly the
    expression's result (tested). ``above`` (with ``mask`` None): the mask is
    ``a > above``, taken in the same pass."""
    size = max(1, int(size) | 1)
    if mask is None:
        if _compiled_max(bk, a, size):
            from erquant import _numba_kernels

            out = np.empty(a.shape, np.bool_)
            _numba_kernels.max_filter(a, size // 2, 2, _NO_MASK, np.float32(frac), _NO_IMAGE,
                                      out, np.float32(above))
            return out
        mask = a > np.float32(above)
    if _compiled_max(bk, a, size) and tuple(mask.shape) == tuple(a.shape):
        from erquant import _numba_kernels

        out = np.empty(a.shape, np.bool_)
        _numba_kernels.max_filter(a, size // 2, 1, np.ascontiguousarray(mask, dtype=np.bool_),
                                  np.float32(frac), _NO_IMAGE, out, _F0)
        return out
    return mask_above(bk, mask, a, frac, maximum_filter(bk, a, size))


def maximum_filter(bk: Backend, img, size: int):
    """Square maximum filter of odd ``size`` (reflected borders): compiled for float32 and uint8
    images up to a half-width of :data:`COMPILED_MAX_RADIUS`, else OpenCV's (SciPy's)."""
    size = max(1, int(size) | 1)
    if size > 1 and _compiled_max(bk, img, size, (np.float32, np.uint8)):
        from erquant import _numba_kernels

        out = np.empty(img.shape, img.dtype)
        _numba_kernels.max_filter(img, size // 2, 0, _NO_MASK, _F0, out, _NO_MASK, _F0)
        return out
    if _use_cv2(bk):
        return cv2.dilate(img, np.ones((size, size), np.uint8), borderType=cv2.BORDER_REFLECT)
    return bk.ndi.maximum_filter(img, size=size, mode="reflect")


def minimum_filter(bk: Backend, img, size: int):
    """Square minimum filter of odd ``size``."""
    size = max(1, int(size) | 1)
    if _use_cv2(bk):
        return cv2.erode(img, np.ones((size, size), np.uint8), borderType=cv2.BORDER_REFLECT)
    return bk.ndi.minimum_filter(img, size=size, mode="reflect")


def disc_opening(bk: Backend, img, radius: int):
    """Grey-level opening by a disc of ``radius`` px (OpenCV's ellipse element,
    :func:`disc_rows`; borders reflected, edge repeated) with the same values on every
    path: on the CPU one compiled pass per erosion / dilation for float32 images
    (:func:`erquant._numba_kernels.disc_morph`, row by row of the element), else
    OpenCV's ``morphologyEx``; elsewhere (CuPy) ``ndimage.grey_opening`` with that
    footprint (the same values, unless the radius is over twice the image's smaller
    side, where the two libraries' reflections part)."""
    r = max(1, int(radius))
    if (_numba_ok(bk) and isinstance(img, np.ndarray) and img.dtype == np.float32
            and img.ndim == 2 and img.size):
        # OpenCV's values in sweeps per row of the element instead of passes per pixel
        # of it (a 512² float32 image at radius 29: 3.2 against 50 ms; the
        # granulometry's 13 openings of a sparse 40 px field 139 -> 17 ms)
        from erquant import _numba_kernels as NK

        halfw, yi, xi = _disc_tables(r, img.shape)
        img = np.ascontiguousarray(img)
        eroded = np.empty_like(img)
        NK.disc_morph(img, yi, xi, halfw, False, eroded)
        out = np.empty_like(img)
        NK.disc_morph(eroded, yi, xi, halfw, True, out)
        return out
    fp = np.abs(np.arange(-r, r + 1))[None, :] <= disc_rows(r)[:, None]
    if _use_cv2(bk):
        return cv2.morphologyEx(img, cv2.MORPH_OPEN, fp.astype(np.uint8),
                                borderType=cv2.BORDER_REFLECT)
    return bk.ndi.grey_opening(img, footprint=bk.xp.asarray(fp), mode="reflect")


@functools.lru_cache(maxsize=128)
def disc_rows(r: int) -> np.ndarray:
    """Half-widths of the 2r + 1 rows of OpenCV's ``MORPH_ELLIPSE`` element of size
    2r + 1 (``cv::getStructuringElement``'s formula: row ``dy`` spans
    ``±rint(r · sqrt((r² - dy²) / r²))``), without OpenCV: the one disc that
    :func:`disc_opening` uses on every path (tested equal to OpenCV's). Read-only."""
    r = int(r)
    dy = np.arange(-r, r + 1)
    inv = 1.0 / (r * r) if r else 0.0
    out = np.rint(r * np.sqrt((r * r - dy * dy) * inv)).astype(np.int64)
    out.flags.writeable = False
    return out


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """Indices ``i`` folded into [0, n) as OpenCV's BORDER_REFLECT (``cv::borderInterpolate``:
    edge repeated, reflected again where they reach past the far side)."""
    i = np.asarray(i, np.int64).copy()
    if n == 1:
        return np.zeros_like(i)
    while True:
        low, high = i < 0, i >= n
        if not (low.any() or high.any()):
            return i
        i[low] = -i[low] - 1
        i[high] = 2 * n - 1 - i[high]


@functools.lru_cache(maxsize=64)
def _disc_tables(r: int, shape: tuple[int, int]):
    """:func:`disc_rows` and the padded rows' and columns' source indices under
    BORDER_REFLECT: :func:`erquant._numba_kernels.disc_morph`'s tables (read-only)."""
    halfw = disc_rows(r)
    rx = int(halfw.max())
    H, W = shape
    yi = _reflect_index(np.arange(H + 2 * r) - r, H)
    xi = _reflect_index(np.arange(W + 2 * rx) - rx, W)
    yi.flags.writeable = False
    xi.flags.writeable = False
    return halfw, yi, xi


def erode_within(bk: Backend, mask, radius: float):
    """Pixels of ``mask`` with no pixel outside it closer than ``radius`` (Euclidean):
    ``edt(mask) >= radius`` as one erosion by the disc {d² < radius²} (outside the
    image counts as inside the mask, as for the distance transform)."""
    r = int(math.ceil(radius)) - 1
    if r < 1:
        return mask
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    fp = (yy * yy + xx * xx) < radius * radius
    if _use_cv2(bk):
        out = cv2.erode(mask.view(np.uint8), fp.view(np.uint8),
                        borderType=cv2.BORDER_CONSTANT, borderValue=1)
        return out.view(bool)
    return bk.ndi.binary_erosion(mask, structure=bk.xp.asarray(fp), border_value=1)


def uniform_filter(bk: Backend, img, size: int):
    size = max(1, int(size) | 1)
    if _use_cv2(bk):
        return cv2.blur(img, (size, size), borderType=cv2.BORDER_REFLECT)
    return bk.ndi.uniform_filter(img, size=size, mode="reflect")


def edt(bk: Backend, mask):
    """Euclidean distance of each foreground pixel to the nearest background pixel
    (float32; exact on every path: a compiled pass where Numba is installed, ~3× faster
    than OpenCV's on small objects and equal to it, else OpenCV / SciPy / cupyx)."""
    if _numba_ok(bk):
        from erquant import _numba_kernels

        out = np.empty(mask.shape, np.float32)
        # vertical distances up to Y + X + 1: int16 where that fits (half the traffic)
        g = np.empty(mask.shape, np.int16 if sum(mask.shape) + 1 < 2**15 else np.int32)
        _numba_kernels.edt(np.ascontiguousarray(mask, dtype=np.bool_), out, g)
        return out
    if _use_cv2(bk):
        return cv2.distanceTransform(mask.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return bk.ndi.distance_transform_edt(mask).astype(bk.xp.float32, copy=False)


def label(bk: Backend, mask, *, ordered: bool = True):
    """8-connected components of a boolean mask → (int32 labels, count).

    Components are numbered in the raster order of their first pixel on every backend
    (as ``scipy.ndimage.label``; OpenCV's block-based labelling numbers them in
    another order, which depends on the image's origin): the ids, and every "largest
    id wins" tie that follows, are the same in an image and in any crop holding the
    components whole (mosaic tiles). ``count`` is a Python int: a host sync on the
    GPU (needed to size what follows). ``ordered=False``: any numbering (for labels
    that only group pixels; saves two passes on the CPU).
    """
    if _use_cv2(bk):
        if ordered and _numba_ok(bk):
            lab, n, _, _ = _raster_components(mask)
            return lab, n
        n, lab = cv2.connectedComponents(mask.view(np.uint8), connectivity=8, ltype=cv2.CV_32S)
        n = int(n) - 1
        if n > 1 and ordered:
            ids, first = np.unique(lab.ravel(), return_index=True)
            order = np.argsort(first[ids > 0], kind="stable")
            lut = np.zeros(n + 1, np.int32)
            lut[ids[ids > 0][order]] = np.arange(1, n + 1, dtype=np.int32)
            if not bool((lut == np.arange(n + 1)).all()):
                lab = lut[lab]
        return lab, n
    # structure as a host array: cupyx (like scipy) reads it with numpy
    lab, n = bk.ndi.label(mask, structure=np.ones((3, 3), dtype=bool))
    return lab.astype(bk.xp.int32, copy=False), int(n)


def _raster_components(mask):
    """CPU (Numba): the 8-connected components of a 2-D bool mask numbered in the
    raster order of their first pixels → ``(labels, n, area, bb)``: int32 labels, their
    count, each one's pixel count (int64, n + 1) and bounding box (int64 (n + 1, 4):
    y0, x0, y1, x1 inclusive). From the mask's runs (``_numba_kernels.run_components``:
    cost ~ the runs, past the background eight pixels at a time), the sizes and boxes
    with them; 2048², 8 % foreground: ~2 ms against ~5 for OpenCV's SAUF labelling and
    a pass for the boxes."""
    from erquant import _numba_kernels

    m = np.ascontiguousarray(mask, dtype=np.bool_)
    lab = np.empty(m.shape, np.int32)
    n, area, bb = _numba_kernels.run_components(m, _words(m.reshape(-1).view(np.uint8), 8),
                                                _numba_kernels.strips(), lab)
    n = int(n)
    return lab, n, area[:n + 1].copy(), bb[:n + 1].copy()


def nearest_seed(bk: Backend, seeds, *, return_distance: bool = False):
    """Label every pixel with the id of the nearest non-zero pixel of ``seeds``.

    ``seeds`` is an int32 label image of seed regions (0 = no seed). The result
    is the (discrete) Voronoi partition of the plane by the seed regions; with
    ``return_distance`` also the float32 distance to that nearest seed pixel.
    """
    if _use_cv2(bk):
        zero = (seeds == 0).view(np.uint8)
        dist, cc = cv2.distanceTransformWithLabels(zero, cv2.DIST_L2, 5,
                                                   labelType=cv2.DIST_LABEL_PIXEL)
        # cc numbers the seed pixels in scan order; map them to seed ids
        if _numba_ok(bk):  # one compiled pass instead of a mask, a gather and a take
            from erquant import _numba_kernels

            owner = np.empty(cc.shape, np.int32)
            _numba_kernels.scan_order_map(np.ascontiguousarray(seeds, dtype=np.int32).ravel(),
                                          cc.ravel(), owner.ravel())
        else:
            lut = np.zeros(int(np.count_nonzero(seeds)) + 1, np.int32)
            lut[1:] = seeds[seeds > 0]
            owner = lut[cc]
        return (owner, dist) if return_distance else owner
    out = bk.ndi.distance_transform_edt(seeds == 0, return_distances=return_distance,
                                        return_indices=True)
    if return_distance:
        dist, idx = out
        return seeds[idx[0], idx[1]], dist.astype(bk.xp.float32, copy=False)
    return seeds[out[0], out[1]]


@functools.lru_cache(maxsize=16)
def _ring_offsets(reach: int):
    """Offsets (dy, dx) of length ≤ ``reach``, sorted by squared length, then dy, dx."""
    r = np.arange(-reach, reach + 1)
    dy, dx = (a.ravel() for a in np.meshgrid(r, r, indexing="ij"))
    d2 = dy * dy + dx * dx
    keep = (d2 > 0) & (d2 <= reach * reach)
    dy, dx, d2 = dy[keep], dx[keep], d2[keep]
    order = np.lexsort((dx, dy, d2))
    return (np.ascontiguousarray(dy[order], np.int64),
            np.ascontiguousarray(dx[order], np.int64))


def nearest_seed_in(bk: Backend, seeds, roi, reach: float):
    """:func:`nearest_seed` where only the pixels of ``roi`` (bool) are wanted: the id
    of the nearest non-zero pixel of ``seeds`` (exact Euclidean) for ``roi`` pixels,
    0 elsewhere (int32).

    With Numba each ``roi`` pixel walks the offsets of length ≤ ``reach`` px in order
    of distance until it meets a seed pixel (cost ~ roi pixels × their distance²;
    most of a partition's pixels are seeds or a pixel or two from one); the few
    farther away take the nearest seed pixel of their neighbours', in raster sweeps
    inside ``roi``, so they only reach seeds connected to them within ``roi`` (0 if
    none). Otherwise (CuPy) the exact transform of the whole image, masked."""
    xp = bk.xp
    if _numba_ok(bk):
        from erquant import _numba_kernels

        seeds = np.ascontiguousarray(seeds, dtype=np.int32)
        roi = np.ascontiguousarray(roi, dtype=np.bool_)
        reach = max(1, int(math.ceil(float(reach))))
        oy, ox = _ring_offsets(reach)
        out = np.empty(seeds.shape, np.int32)  # (every pixel written)
        idx = np.empty(seeds.shape, np.int32)  # (written and read on roi only)
        unres = np.empty(seeds.size, np.int32)  # lazily paged: only what is written
        nun = _numba_kernels.nearest_in(seeds, roi, _words(roi.ravel(), 8), oy, ox, out, idx,
                                        unres)
        if nun:
            _numba_kernels.propagate_in(seeds, roi, out, idx, unres[:nun], 64)
        return out
    owner = nearest_seed(bk, seeds)
    return xp.where(roi, owner, 0).astype(xp.int32)


#: nearest_seed_within paints discs up to this radius (px); beyond, the transform
PAINT_RADIUS = 12.0


def nearest_seed_within(bk: Backend, seeds, radius: float):
    """:func:`nearest_seed` up to ``radius`` px: the id of the nearest seed pixel where
    it is at most ``radius`` away (seed pixels keep theirs), else 0 (int32).

    With Numba and ``radius`` ≤ :data:`PAINT_RADIUS` each seed-boundary pixel paints its
    disc (exact Euclidean distances, ties to the first in scan order; cost ~ boundary
    pixels × (2·radius + 1)²); otherwise the transform and a comparison (CuPy; OpenCV's
    5×5 L2 mask on the CPU). The choice depends on ``radius`` only, never on the image,
    so that the tiles of a mosaic and the whole image take the same path."""
    xp = bk.xp
    r = float(radius)
    if _numba_ok(bk) and 0 <= r <= PAINT_RADIUS and seeds.size:
        from erquant import _numba_kernels

        seeds = np.ascontiguousarray(seeds, dtype=np.int32)
        flat = seeds.ravel()
        edges = np.empty(flat.size, np.int64)  # (pages touched only as filled)
        nstrips = _numba_kernels.strips()
        counts = np.zeros(nstrips, np.int64)
        _numba_kernels.seed_edges(seeds, edges, counts, nstrips)
        h = -(-seeds.shape[0] // nstrips) * seeds.shape[1]  # strip k's indices from k * h
        edges = np.concatenate([edges[k * h:k * h + c] for k, c in enumerate(counts.tolist())])
        out = np.empty(seeds.shape, np.int32)
        _numba_kernels.nearest_within(seeds, np.float32(r), edges, out, nstrips)
        return out
    owner, dist = nearest_seed(bk, seeds, return_distance=True)
    return xp.where((dist <= r) | (seeds > 0), owner, 0).astype(xp.int32)


def label_sparse(bk: Backend, mask):
    """:func:`label` of a sparse boolean mask (seed peaks: a few pixels in a thousand)
    → ``(labels, count, idx)``, ``idx`` the flat indices of the mask's pixels in raster
    order (None on the array path). With Numba the pixels are listed (eight at a time
    past the zeros) and joined by union-find, nothing else of the image visited but
    the zeroed output: the same labels as :func:`label` (tested)."""
    if _numba_ok(bk):
        from erquant import _numba_kernels

        mask = np.ascontiguousarray(mask, dtype=np.bool_)
        flat = mask.ravel()
        idx = np.empty(flat.size, np.int64)  # (pages touched only as filled)
        n_px = _numba_kernels.nonzero(flat.view(np.uint8), _words(flat.view(np.uint8), 8),
                                      8, idx)
        idx = idx[:n_px].copy()
        out = host_zeros(mask.shape, np.int32)
        n = _numba_kernels.label_sparse(idx, n_px, mask.shape[1], out.ravel())
        return out, int(n), idx
    lab, n = label(bk, mask)
    return lab, n, None


def seed_cores(bk: Backend, seeds, mask, radius, idx=None):
    """Cores around seeds: each ``mask`` pixel takes the id of its nearest seed pixel
    where that distance is ≤ ``radius[id]``; seed pixels keep their id; other pixels
    0 (int32).

    ``seeds`` is an int32 label image (0 = none), ``radius`` a float array indexed by
    seed id; ``idx``: the flat indices of the seed pixels in raster order, where known
    (:func:`label_sparse`). With Numba each seed pixel paints its disc (exact Euclidean distances;
    cost ∝ seed pixels × largest radius², a few times less than a nearest-seed
    transform); otherwise :func:`nearest_seed` and a comparison (CuPy).
    """
    xp = bk.xp
    reach = int(np.ceil(float(radius.max()))) if radius.size else 0  # host sync (CuPy)
    if _numba_ok(bk):
        from erquant import _numba_kernels

        seeds = np.ascontiguousarray(seeds, dtype=np.int32)
        if idx is None:
            flat = seeds.ravel()
            idx = np.empty(flat.size, np.int64)  # (pages touched only as filled)
            nseed_px = _numba_kernels.nonzero(flat, _words(flat, 2), 2, idx)
        else:
            nseed_px = idx.size
        if nseed_px * (2 * reach + 1) ** 2 <= 4 * seeds.size:  # else the transform is cheaper
            out = np.empty(seeds.shape, np.int32)
            rad = np.ascontiguousarray(radius, dtype=np.float32)
            idx = idx[:nseed_px]
            # each seed pixel paints as far as a neighbour's radius needs it to (not
            # the field's largest radius: one big nucleus made every disc its size)
            pr = np.empty(nseed_px, np.int64)
            _numba_kernels.seed_reach(seeds, idx, rad, pr)
            _numba_kernels.seed_cores(seeds, np.ascontiguousarray(mask, dtype=np.bool_), rad,
                                      reach, idx, pr, out, _numba_kernels.strips())
            return out
    owner, dseed = nearest_seed(bk, seeds, return_distance=True)
    cores = xp.where(mask & (dseed <= radius.astype(xp.float32)[owner]), owner, 0)
    return xp.where(seeds > 0, seeds, cores).astype(xp.int32)


def resize(bk: Backend, img, shape):
    """Bilinear resize of a float32 2-D image to ``shape`` (align corners)."""
    if tuple(img.shape) == tuple(shape):
        return img
    if _use_cv2(bk):
        return cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    zoom = (shape[0] / img.shape[0], shape[1] / img.shape[1])
    out = bk.ndi.zoom(img, zoom, order=1, mode="nearest", grid_mode=True)
    return out[: shape[0], : shape[1]]


def block_mean(bk: Backend, img, f: int):
    """Means of ``f`` × ``f`` blocks of a 2-D image → float32 (Y // f, X // f).

    Rows and columns beyond the last whole block are dropped (callers pad first
    where they matter); :func:`area_resize` of the whole blocks.
    """
    f = int(f)
    ny, nx = int(img.shape[0]) // f, int(img.shape[1]) // f
    return area_resize(bk, img[: ny * f, : nx * f], (ny, nx))


def scaled_shape(shape, f: float) -> tuple[int, int]:
    """Shape of a 2-D image of ``shape`` scaled down by ``f`` (rounded, ≥ 1 px)."""
    return tuple(max(1, int(round(int(n) / float(f)))) for n in shape[:2])


@functools.lru_cache(maxsize=32)
def _area_taps(n: int, m: int):
    """Area weights as taps: output pixel i (of m) is Σ_t w[i, t] · input[start[i] + t]
    over t < count[i], the mean of input [i·n/m, (i+1)·n/m) (float32 weights; read-only
    arrays)."""
    s = n / m
    i = np.arange(m)
    lo, hi = i * s, (i + 1) * s
    start = np.floor(lo).astype(np.int64)
    count = np.minimum(np.ceil(hi).astype(np.int64), n) - start
    w = np.zeros((m, int(count.max())), np.float32)
    for k in range(w.shape[1]):
        j = start + k
        ov = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
        w[:, k] = np.where(k < count, ov / s, 0.0)
    for a in (start, count, w):
        a.flags.writeable = False
    return start, count, w


def _area_matrix(n: int, m: int) -> np.ndarray:
    """(m, n) float32 weights: output pixel i is the mean of input [i·n/m, (i+1)·n/m)
    (:func:`_area_taps` laid out as a matrix, for the GPU's two products)."""
    start, count, taps = _area_taps(n, m)
    w = np.zeros((m, n), np.float32)
    for i in range(m):
        w[i, start[i]:start[i] + count[i]] = taps[i, :count[i]]
    return w


def area_resize(bk: Backend, img, shape):
    """Downscale a 2-D image to ``shape`` by area averaging → float32.

    Each output pixel is the mean of the input area it covers (exact block means
    for integer factors, area-weighted means otherwise). On the CPU whole blocks are
    summed by a compiled pass ((u)int8/16) or OpenCV's INTER_AREA (~10× faster than a
    NumPy reshape-mean), other factors by the compiled taps of the area weights; on
    the GPU a reshape-mean for whole integer blocks, else two matrix products with
    the area weights (``Ry @ img @ Rxᵀ``).
    """
    xp = bk.xp
    Ys, Xs = (int(v) for v in shape)
    Y, X = (int(n) for n in img.shape)
    if (Ys, Xs) == (Y, X):
        return xp.ascontiguousarray(img, dtype=xp.float32)
    fy, fx = Y // Ys, X // Xs
    if (fy == fx and (Ys * fy, Xs * fx) == (Y, X) and _numba_ok(bk)
            and isinstance(img, np.ndarray) and img.dtype.kind in "ui" and img.itemsize <= 2
            and fy * fy * (1 << (8 * img.itemsize)) <= 1 << 24 and img.strides[1] == img.itemsize):
        # whole blocks of a (u)int8/16 image: exact integer sums in one compiled pass,
        # no float32 copy (OpenCV's INTER_AREA of that copy: the same values)
        from erquant import _numba_kernels

        out = np.empty((Ys, Xs), np.float32)
        _numba_kernels.block_mean_int(img, fy, np.float32(1.0 / (fy * fy)), out)
        return out
    whole = fy == fx and (Ys * fy, Xs * fx) == (Y, X)
    if (not whole and _numba_ok(bk) and isinstance(img, np.ndarray) and img.ndim == 2
            and img.dtype.kind in "uif" and img.itemsize <= 4 and Ys <= Y and Xs <= X):
        # other factors: the area weights as taps, rows then columns, in one compiled
        # pass over parallel output rows that reads the image in its own type (no
        # float32 copy): OpenCV's INTER_AREA to float32 rounding (~1e-7; 2048² uint16
        # → 995²: 2.1 against 7.4 ms for the cast and OpenCV's resize)
        from erquant import _numba_kernels

        out = np.empty((Ys, Xs), np.float32)
        _numba_kernels.area_resize(img, *_area_taps(Y, Ys), *_area_taps(X, Xs), out)
        return out
    if _use_cv2(bk):
        if img.dtype != np.float32:  # (integer images: cast in one parallel pass)
            img = as_float32(bk, img)
        if img.ndim != 2 or img.strides[1] != 4 or img.strides[0] < 4 * X:
            img = np.ascontiguousarray(img)  # (OpenCV reads row-strided views as they are)
        return cv2.resize(img, (Xs, Ys), interpolation=cv2.INTER_AREA)
    if whole:  # whole f × f blocks
        out = img.astype(xp.float32, copy=False).reshape(Ys, fy, Xs, fx).mean(axis=(1, 3))
        return xp.ascontiguousarray(out, dtype=xp.float32)
    ry = xp.asarray(_area_matrix(Y, Ys))
    rx = xp.asarray(_area_matrix(X, Xs))
    return xp.ascontiguousarray((ry @ img.astype(xp.float32)) @ rx.T)


def nearest_index(n_out: int, n_in: int):
    """Index of the input pixel whose area holds each output pixel's centre (host array)."""
    idx = np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def nearest_resize(bk: Backend, labels, shape):
    """Labels (or any image) resampled to ``shape`` by nearest neighbour.

    Each output pixel takes the value of the input pixel whose area holds its
    centre (:func:`nearest_index`): going up by an integer factor f with whole
    blocks, every pixel is repeated f × f times; going down, the pixel under each
    output pixel's centre is picked.
    """
    xp = bk.xp
    Y, X = (int(s) for s in shape)
    ri = nearest_index(Y, int(labels.shape[0]))
    ci = nearest_index(X, int(labels.shape[1]))
    if _numba_ok(bk):
        from erquant import _numba_kernels

        out = np.empty((Y, X), labels.dtype)
        _numba_kernels.gather2d(np.ascontiguousarray(labels), ri, ci, out)
        return out
    return xp.ascontiguousarray(labels[xp.asarray(ri)[:, None], xp.asarray(ci)[None, :]])


def seam_resize(bk: Backend, labels, interior, shape, radius: float):
    """:func:`nearest_resize` of ``labels`` up to ``shape``, with the seams re-drawn at
    the new size: pixels whose source pixel is a seam (labelled, with another non-zero
    label among its 8 neighbours; not the background's edge) take the label of
    the nearest output pixel whose source pixel is ``interior`` (exact Euclidean
    distance; ties to the first in scan order), where one is at most ``radius`` px
    away; the other pixels are repeated as by :func:`nearest_resize`. One compiled
    pass with Numba (cost ~ one pass + seam pixels × (2·radius / f + 2)²); else
    :func:`_seam_resize_array` (CuPy), equal where its nearest-seed step is exact."""
    Y, X = (int(s) for s in shape)
    if _numba_ok(bk) and labels.dtype.kind in "ui":
        from erquant import _numba_kernels

        ri = nearest_index(Y, int(labels.shape[0]))
        ci = nearest_index(X, int(labels.shape[1]))
        # each source row's / column's block of output rows / columns
        y0, y1 = (np.searchsorted(ri, np.arange(labels.shape[0]), side=s) for s in ("left", "right"))
        x0, x1 = (np.searchsorted(ci, np.arange(labels.shape[1]), side=s) for s in ("left", "right"))
        out = np.empty((Y, X), labels.dtype)
        _numba_kernels.seam_resize(np.ascontiguousarray(labels),
                                   np.ascontiguousarray(interior, dtype=np.bool_), ri, ci,
                                   y0, y1, x0, x1, np.float32(radius), out)
        return out
    return _seam_resize_array(bk, labels, interior, (Y, X), radius)


def _seam_resize_array(bk: Backend, labels, interior, shape, radius: float):
    """:func:`seam_resize` with whole-image operations: the seam mask by two 3×3
    filters, the resized masks and :func:`nearest_seed_within` of the interior pixels."""
    xp = bk.xp
    labf = labels.astype(xp.float32)  # ids < 2**24 at any realistic size
    other = minimum_filter(bk, xp.where(labels > 0, labf, np.float32(2**24)), 3)
    seams = (labels > 0) & (other != maximum_filter(bk, labf, 3))
    big = nearest_resize(bk, labels, shape)
    inner = xp.where(nearest_resize(bk, interior, shape), big, 0).astype(xp.int32)
    owner = nearest_seed_within(bk, inner, radius)
    band = nearest_resize(bk, seams, shape) & (owner > 0)
    return xp.where(band, owner, big).astype(labels.dtype)


def _words(flat, per: int):
    """The first ``flat.size // per`` groups of ``per`` elements of a contiguous flat
    array viewed as uint64 (for kernels that skip zero runs a word at a time)."""
    return flat[: (flat.size // per) * per].view(np.uint64)


def host_zeros(shape, dtype) -> np.ndarray:
    """``np.zeros(shape, dtype)`` for the compiled (host) path's image-sized arrays,
    cleared on all cores (NumPy clears a recycled buffer on one)."""
    out = np.empty(shape, dtype)
    if out.size >= (1 << 16) and _numba_ok_host():
        from erquant import _numba_kernels

        _numba_kernels.clear(out.reshape(-1))
    else:
        out.fill(0)
    return out


def _numba_ok(bk: Backend) -> bool:
    return not bk.is_gpu and _numba_ok_host()


def _numba_ok_host() -> bool:
    """Whether the compiled (Numba) host kernels are in use (not ``ERQUANT_NO_NUMBA=1``)."""
    if os.environ.get("ERQUANT_NO_NUMBA") == "1":
        return False
    from erquant import _numba_kernels

    return _numba_kernels.numba is not None


def label_moments(bk: Backend, nuc, cyt, K: int, images, squared, shifts, nbins: int,
                  bilinear=()):
    """Per-slot pixel count, Σy, Σx and per image Σv (and Σ(v - shift)² where ``squared``).

    A pixel's slot is ``nuc`` where ``nuc > 0``, else ``K + cyt`` where ``cyt > 0``
    (else none): nucleus and cytoplasm sums in one pass. ``bilinear`` adds, per
    entry ``(rows, c0, c1, cw)`` (a separable map, see
    :func:`erquant.measure.background_map`), the sums of that map without making
    it (all entries share ``c0, c1, cw``). Returns a float64
    ``(3 + len(images) + sum(squared) + len(bilinear), nbins)`` array on the input's
    backend; slot 0 stays zero. Numba on the CPU (one pass over the pixels, ``ERQUANT_NO_NUMBA=1``
    disables it), ``bincount`` otherwise (CuPy; the same sums).
    """
    xp = bk.xp
    squared = [bool(q) for q in squared]
    shifts = [float(v) for v in shifts]
    if _numba_ok(bk):
        from erquant import _numba_kernels

        dtypes = {np.dtype(im.dtype) for im in images}
        if len(dtypes) == 1 and next(iter(dtypes)).kind in "uif":
            ftype = next(iter(dtypes))  # e.g. all uint16: summed as they are, no copies
        else:
            ftype = np.float64 if np.dtype(np.float64) in dtypes else np.float32
        ims = tuple(np.ascontiguousarray(im, dtype=ftype) for im in images)
        dummy = not ims  # Numba cannot type an empty tuple: sum a (lazily zeroed) image
        if dummy:
            ims, squared, shifts = (np.zeros(nuc.shape, np.float32),), [False], [0.0]
        maps, c0, c1, cw = (), None, None, None
        if bilinear:
            maps = tuple(np.ascontiguousarray(b[0], dtype=np.float32) for b in bilinear)
            c0, c1, cw = bilinear[0][1], bilinear[0][2], bilinear[0][3]
        lab_t = np.result_type(nuc.dtype, cyt.dtype)
        out = _numba_kernels.moments(
            np.ascontiguousarray(nuc, dtype=lab_t), np.ascontiguousarray(cyt, dtype=lab_t),
            int(K), ims, np.asarray(squared, dtype=np.bool_),
            np.asarray(shifts, dtype=np.float64), int(nbins), maps, c0, c1, cw)
        if dummy:  # drop the dummy image's row
            return np.concatenate([out[:3], out[4:]])
        return out
    nuc_i = nuc.astype(xp.int64)
    index = xp.where(nuc_i > 0, nuc_i, xp.where(cyt > 0, cyt.astype(xp.int64) + K, 0)).ravel()
    Y, X = (int(n) for n in nuc.shape)
    ys = xp.broadcast_to(xp.arange(Y, dtype=np.float64)[:, None], (Y, X)).ravel()
    xs = xp.broadcast_to(xp.arange(X, dtype=np.float64)[None, :], (Y, X)).ravel()
    rows = [xp.bincount(index, minlength=nbins).astype(np.float64),
            xp.bincount(index, weights=ys, minlength=nbins),
            xp.bincount(index, weights=xs, minlength=nbins)]
    for im, sq, sh in zip(images, squared, shifts):
        v = im.astype(np.float64).ravel()
        rows.append(xp.bincount(index, weights=v, minlength=nbins))
        if sq:
            rows.append(xp.bincount(index, weights=(v - sh) ** 2, minlength=nbins))
    for r, c0, c1, cw in bilinear:  # the map itself, then its sums
        m = r[:, c0] * (1 - cw)[None, :] + r[:, c1] * cw[None, :]
        rows.append(xp.bincount(index, weights=m.astype(np.float64).ravel(), minlength=nbins))
    out = xp.stack(rows)
    out[:, 0] = 0.0
    return out


def range_and_count(bk: Backend, img, level: float | None):
    """``(min, max, number of pixels >= level)`` as Python numbers (count 0 when
    ``level`` is None): one compiled pass with Numba, three reductions otherwise."""
    xp = bk.xp
    if img.size and _numba_ok(bk) and img.dtype.kind in "uif":
        from erquant import _numba_kernels

        a2 = img if img.ndim == 2 else np.ascontiguousarray(img).reshape(1, -1)
        lev = np.inf if level is None else float(level)
        none = level is None
        if a2.dtype.kind == "f":
            lev = a2.dtype.type(lev)
        else:  # integers: v >= lev exactly when v >= ceil(lev), in the array's own type
            info = np.iinfo(a2.dtype)
            none = none or not lev <= info.max  # (NaN, or above every value: none count)
            lev = a2.dtype.type(info.min if none or lev <= info.min else math.ceil(lev))
        lo, hi, n = _numba_kernels.range_count(a2, lev)
        return float(lo), float(hi), 0 if none else int(n)
    terms = [img.min().astype(np.float64), img.max().astype(np.float64)]
    terms.append(xp.count_nonzero(img >= level).astype(np.float64) if level is not None
                 else xp.asarray(0.0))
    lo, hi, n = stack_to_host(xp, terms).tolist()
    return lo, hi, int(n)


def relabel_foreground(bk: Backend, labels, smooth, peak, thr: float, contrast: float,
                       radius: int, keep=None, top: int | None = None):
    """Keep labels on the foreground, give unlabelled foreground the nearby label.

    Foreground: ``smooth > thr`` and (``contrast > 0``) ``smooth > contrast · peak``.
    There, a labelled pixel keeps its label and an unlabelled one takes the largest
    label within ``radius`` px (a square window; 0 if none); elsewhere 0. ``keep``
    (a boolean image, possibly smaller: mapped by :func:`nearest_index`) marks
    pixels whose label is kept whatever the rule says (object interiors). One
    compiled pass with Numba (the window searched for the unlabelled foreground
    only); whole-image operations otherwise (CuPy).

    Returns ``(out, present)``: the new labels and the bool vector of the labels
    0..top present in them (:func:`label_present` padded to top + 1; with Numba taken
    as the rows are written). ``top``: at least the largest label (measured when None).
    """
    xp = bk.xp
    Y, X = (int(n) for n in labels.shape)
    if top is None:
        top = int(labels.max()) if labels.size else 0  # host sync
    if _numba_ok(bk) and labels.dtype.kind in "ui":
        from erquant import _numba_kernels

        labels = np.ascontiguousarray(labels)
        out = np.empty(labels.shape, labels.dtype)
        if labels.dtype.kind == "i":  # unsigned: the kernel's "search here" mark is the max
            unsigned = labels.dtype.str.replace("i", "u")
            labels, out_k = labels.view(unsigned), out.view(unsigned)
        else:
            out_k = out
        pk = peak if peak is not None else smooth
        use_keep = keep is not None
        kp = np.ascontiguousarray(keep, dtype=np.bool_) if use_keep else np.zeros((1, 1), bool)
        ri = nearest_index(Y, kp.shape[0]) if use_keep else np.zeros(Y, np.int64)
        ci = nearest_index(X, kp.shape[1]) if use_keep else np.zeros(X, np.int64)
        pres = np.zeros((_numba_kernels.CHUNKS, top + 1), np.bool_)
        _numba_kernels.relabel_foreground(
            labels, np.ascontiguousarray(smooth, dtype=np.float32),
            np.ascontiguousarray(pk, dtype=np.float32), np.float32(thr),
            np.float32(contrast if peak is not None else 0.0), int(radius), kp, ri, ci,
            use_keep, out_k, pres)
        return out, pres.any(axis=0)
    fg = smooth > np.float32(thr)
    if peak is not None and contrast > 0:
        fg &= smooth > np.float32(contrast) * peak
    if keep is not None:
        big = keep if tuple(keep.shape) == (Y, X) else nearest_resize(bk, keep, (Y, X))
        fg |= big & (labels > 0)
    if top >= 2**24:  # float32 ids would be inexact: only shrink
        out = xp.where(fg, labels, 0).astype(labels.dtype)
    else:
        grown = maximum_filter(bk, labels.astype(xp.float32), 2 * int(radius) + 1)
        out = grown.astype(labels.dtype)
        xp.copyto(out, labels, where=labels > 0)  # a labelled pixel keeps its own id
        out *= fg  # and only foreground pixels
    return out, xp.bincount(out.ravel(), minlength=top + 1)[:top + 1] > 0


def interior(bk: Backend, labels):
    """Labelled pixels whose 3×3 neighbourhood (inside the image) is all their own label
    (bool): ``(labels > 0) & (minimum_filter(labels, 3) == maximum_filter(labels, 3))``,
    one compiled pass with Numba; the two filters (on float32 ids) otherwise."""
    xp = bk.xp
    if _numba_ok(bk) and labels.dtype.kind in "ui" and labels.ndim == 2:
        from erquant import _numba_kernels

        out = np.empty(labels.shape, np.bool_)
        _numba_kernels.interior(np.ascontiguousarray(labels), out)
        return out
    labf = labels.astype(xp.float32)  # ids < 2**24 at any realistic size
    return (labels > 0) & (minimum_filter(bk, labf, 3) == maximum_filter(bk, labf, 3))


def blur_minus(bk: Backend, img, sigma: float, bg, scale: float, offset: float):
    """``gaussian(img, sigma)`` then :func:`sub_scaled` by ``bg`` (float32 2-D images of
    one shape): ``(blur - scale · bg) - offset``. On the CPU the subtraction is taken
    as the blur writes its rows (the same float32 arithmetic, one pass fewer)."""
    sigma = max(0.0, float(sigma))
    out = _compiled_blur(bk, img, sigma, 0, offset, 0, 2, bg, scale)
    if out is not None:
        return out
    out = gaussian(bk, img, sigma)
    if out is img:  # no blur: never modify the caller's image in place
        out = img.copy()
    sub_scaled(bk, out, bg, scale, offset)
    return out


def paste_upsampled(bk: Backend, seeds, small):
    """``seeds`` where > 0, else ``small`` brought to ``seeds``' shape by
    :func:`nearest_resize`; int32. One compiled pass with Numba."""
    xp = bk.xp
    Y, X = (int(s) for s in seeds.shape)
    if _numba_ok(bk):
        from erquant import _numba_kernels

        out = np.empty((Y, X), np.int32)
        _numba_kernels.paste_upsampled(
            np.ascontiguousarray(seeds, dtype=np.int32), np.ascontiguousarray(small, np.int32),
            nearest_index(Y, int(small.shape[0])), nearest_index(X, int(small.shape[1])), out)
        return out
    big = nearest_resize(bk, small.astype(xp.int32), seeds.shape)
    return xp.where(seeds > 0, seeds, big).astype(xp.int32)


def label_present(bk: Backend, labels):
    """Boolean array ``p`` with ``p[k]`` True where label ``k`` occurs (k = 0..max)."""
    xp = bk.xp
    if _numba_ok(bk) and labels.dtype.kind in "ui" and labels.size:
        from erquant import _numba_kernels

        flat = np.ascontiguousarray(labels).ravel()
        return _numba_kernels.present(flat, int(flat.max()))
    return xp.bincount(labels.ravel()) > 0


def median(bk: Backend, values):
    """``xp.median(values)`` of a float array, the same value (of its dtype; NaN where
    any value is NaN). On the CPU one partition around the middle element and the maximum of the
    lower half, instead of NumPy's partition around the two middle elements (65,536
    float32: 0.15 against 0.7 ms); the two middle values averaged as NumPy's
    ``mean`` does."""
    xp = bk.xp
    if bk.is_gpu or values.dtype.kind != "f" or values.size < 2:
        return xp.median(values)
    a = np.array(values, copy=True).ravel()  # (the partition's own copy, as np.median's)
    k = a.size // 2
    a.partition(k)
    if np.isnan(a[k:].max()):  # NaN sorts last: any NaN makes the median NaN, as NumPy's
        return a.dtype.type(np.nan)
    if a.size % 2:
        return np.mean(a[k:k + 1])
    return np.mean(np.array([a[:k].max(), a[k]], a.dtype))


def percentile(bk: Backend, values, q):
    """``xp.percentile(values, q)`` (linear interpolation), the same values: on the CPU
    of a sorted copy (NumPy's vectorised sort, then a selection that finds the sorted
    order at once: 65,536 float32 at two quantiles 0.57 against 1.06 ms; the
    interpolation is NumPy's own)."""
    if bk.is_gpu or values.size < 2:
        return bk.xp.percentile(values, q)
    return np.percentile(np.sort(values, axis=None), q)


def histogram(bk: Backend, values, nbins: int, lo: float, hi: float):
    """``xp.histogram(values, bins=nbins, range=(lo, hi))`` counts (int64) of a float32
    array: on the CPU one compiled pass with NumPy's own equal-bin arithmetic (the same
    counts, tested; 65,536 values: ~0.1 against 0.9 ms)."""
    xp = bk.xp
    if _numba_ok(bk) and values.dtype == np.float32 and values.ndim in (1, 2) and hi > lo:
        from erquant import _numba_kernels

        counts = np.zeros(int(nbins), np.int64)
        edges = np.linspace(lo, hi, int(nbins) + 1, dtype=np.float32)
        v2 = values if values.ndim == 2 else values.reshape(1, -1)
        _numba_kernels.histogram(v2, float(lo), float(hi), edges, counts)
        return counts
    return xp.histogram(values, bins=nbins, range=(lo, hi))[0]


def label_area(bk: Backend, labels, n: int):
    """Pixel count of each label 0..n (int64; one compiled pass on the CPU, else
    ``bincount``)."""
    if _numba_ok(bk):
        from erquant import _numba_kernels

        out = np.zeros(n + 1, np.int64)
        # 2-D views as they are (strided samples: no copy), other shapes as one row
        lab2 = labels if labels.ndim == 2 else np.ascontiguousarray(labels).reshape(1, -1)
        _numba_kernels.label_area(lab2, out)
        return out
    return bk.xp.bincount(labels.ravel(), minlength=n + 1)


def label_max(bk: Backend, values, labels, n: int):
    """Per-label maximum of ``values`` for labels 0..n (scatter-max, no sorting)."""
    xp = bk.xp
    out = xp.zeros(n + 1, dtype=values.dtype)
    if bk.is_gpu:
        import cupyx

        cupyx.scatter_max(out, labels.ravel(), values.ravel())
    elif _numba_ok(bk):  # one compiled pass, ~10× np.maximum.at
        from erquant import _numba_kernels

        _numba_kernels.scatter_max(out, np.ascontiguousarray(labels).ravel(),
                                   np.ascontiguousarray(values).ravel())
    else:
        np.maximum.at(out, labels.ravel(), values.ravel())
    return out


def shape_moments(bk: Backend, labels, n: int) -> np.ndarray:
    """Per-label pixel count and raw moments (host float64 array (n + 1, 6): 1, y, x,
    y², x², xy) of a 2-D label image (labels 0..n; row 0 is the background)."""
    if _numba_ok(bk) and labels.dtype.kind in "ui":
        from erquant import _numba_kernels

        out = np.zeros((n + 1, 6), np.float64)
        _numba_kernels.shape_moments(np.ascontiguousarray(labels), out)
        out[0] = 0
        return out
    xp = bk.xp
    yy, xx = xp.indices(labels.shape, dtype=xp.float64)
    flat = labels.ravel()
    cols = [xp.bincount(flat, weights=w.ravel(), minlength=n + 1)
            for w in (xp.ones_like(yy), yy, xx, yy * yy, xx * xx, yy * xx)]
    out = np.stack([to_numpy(c) for c in cols], axis=1)
    out[0] = 0
    return out


def object_stats(bk: Backend, labels, n: int, dist, smooth):
    """Per label 1..n: ``(dist max, smooth max, moments)`` — :func:`label_max` of
    ``dist`` and of ``smooth`` (host arrays of their dtypes) and the rows of
    :func:`shape_moments` (host float64 (n, 6)). On the CPU one compiled parallel pass
    (the same values: maxima and integer sums do not depend on the order); else the
    three calls."""
    if (_numba_ok(bk) and labels.dtype.kind in "ui" and isinstance(dist, np.ndarray)
            and isinstance(smooth, np.ndarray) and labels.shape == dist.shape == smooth.shape):
        from erquant import _numba_kernels

        out = np.zeros((n + 1, 8), np.float64)
        _numba_kernels.object_stats(np.ascontiguousarray(labels), np.ascontiguousarray(dist),
                                    np.ascontiguousarray(smooth), out)
        return (out[1:, 6].astype(dist.dtype), out[1:, 7].astype(smooth.dtype),
                np.ascontiguousarray(out[1:, :6]))
    return (to_numpy(label_max(bk, dist, labels, n)[1:]),
            to_numpy(label_max(bk, smooth, labels, n)[1:]), shape_moments(bk, labels, n)[1:])


def box_moments(bk: Backend, labels, ids, boxes) -> np.ndarray:
    """:func:`shape_moments` of the labels ``ids`` only, each summed inside its box
    ``boxes[id]`` (:func:`label_bbox`): host float64 (len(ids), 6), equal to the whole
    image's sums (the same pixels in the same order; tested)."""
    ids = np.asarray(ids, np.int64)
    if _numba_ok(bk) and labels.dtype.kind in "ui":
        from erquant import _numba_kernels

        out = np.zeros((ids.size, 6), np.float64)
        _numba_kernels.box_moments(np.ascontiguousarray(labels), ids,
                                   np.ascontiguousarray(boxes, np.int64), out)
        return out
    n = int(ids.max()) if ids.size else 0
    return shape_moments(bk, labels, n)[ids]


def empty_boxes(n: int, shape) -> np.ndarray:
    """n empty bounding boxes of an image of ``shape``: host int64 (n, 4) rows (H, W, 0,
    0), which :func:`label_bbox`'s (min y, min x, max y + 1, max x + 1) grow over."""
    out = np.zeros((n, 4), np.int64)
    out[:, 0], out[:, 1] = shape[0], shape[1]
    return out


def label_bbox(bk: Backend, labels, want) -> np.ndarray:
    """Bounding boxes of the labels ``k`` with ``want[k]`` (a bool vector over 0..n):
    host int64 array (n + 1, 4) of (min y, min x, max y + 1, max x + 1); other rows,
    and labels with no pixel, are (H, W, 0, 0)."""
    want = np.asarray(to_numpy(want), dtype=np.bool_)
    H, W = labels.shape
    out = empty_boxes(want.shape[0], (H, W))
    if _numba_ok(bk) and labels.dtype.kind in "ui":
        from erquant import _numba_kernels

        labels = np.ascontiguousarray(labels)
        per = 8 // labels.dtype.itemsize  # ids per 64-bit word
        _numba_kernels.label_bbox(labels, _words(labels.ravel(), per), per, want, out)
        return out
    xp = bk.xp
    ys, xs = xp.nonzero(xp.asarray(want)[labels])
    ids = labels[ys, xs].astype(xp.int64)
    n = want.shape[0] - 1
    for col, v, size in ((0, ys, H), (1, xs, W)):  # minima as maxima of (size - v)
        out[:, col] = size - to_numpy(label_max(bk, (size - v).astype(xp.int64), ids, n))
        out[:, col + 2] = to_numpy(label_max(bk, (v + 1).astype(xp.int64), ids, n))
    return out


def fill_holes(bk: Backend, mask, max_area: float | None = None, *, within=None):
    """Fill holes: background regions (4-connected) that do not touch the image border
    (and, with ``max_area``, are no larger than that many pixels).

    ``within``: a mask that contains ``mask`` and has no holes of its own (a foreground
    filled by this function): every hole then lies inside it, and on the CPU only its
    pixels are flooded instead of the whole background being labelled (the same
    result, tested; ~2 ms instead of ~20 at 2048²)."""
    xp = bk.xp
    if within is not None and _numba_ok(bk):
        from erquant import _numba_kernels

        mask = np.ascontiguousarray(mask, dtype=np.bool_)
        out = mask.copy()
        within = np.ascontiguousarray(within, dtype=np.bool_)
        _numba_kernels.fill_gaps(mask, within, _words(within.ravel(), 8),
                                 -1.0 if max_area is None else float(max_area), out,
                                 _numba_kernels.strips())
        return out
    if max_area is None and not _use_cv2(bk):
        return bk.ndi.binary_fill_holes(mask)
    if _use_cv2(bk):
        n, lab = cv2.connectedComponents((~mask).view(np.uint8), connectivity=4,
                                         ltype=cv2.CV_32S)
        if _numba_ok(bk) and lab.size:  # one compiled pass for the sizes and the fill
            from erquant import _numba_kernels

            out = np.empty(mask.shape, np.bool_)
            _numba_kernels.fill_holes(lab, int(n), -1.0 if max_area is None else
                                      float(max_area), np.ascontiguousarray(mask), out)
            return out
    else:
        lab, n = bk.ndi.label(~mask)
        n = int(n) + 1  # host sync: number of background regions
    keep = xp.zeros(n, bool)  # True = stays background
    for edge in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
        keep[edge] = True
    if max_area is not None:
        keep |= xp.bincount(lab.ravel(), minlength=n) > max_area
    keep[0] = True  # label 0 = the mask itself
    return mask | ~keep[lab]


def label_filled(bk: Backend, mask):
    """``fill_holes(mask)`` and its components: ``(filled, labels, n, area)`` with
    ``labels, n = label(filled)`` (8-connected, raster order of the first pixel) and
    ``area`` each component's pixel count (int64, n + 1; ``area[0]`` not counted: 0).

    On the CPU the components of ``mask`` are labelled once and each one's holes are
    found by a flood inside its own bounding box (cost ~ the objects' boxes, not the
    background: one labelling instead of two); a hole that held another object (nested
    objects, merged by the fill) makes it label the filled mask again. The same
    result on every path (tested).
    """
    if _numba_ok(bk) and _use_cv2(bk):
        from erquant import _numba_kernels

        mask = np.ascontiguousarray(mask, dtype=np.bool_)
        # raster order, boxes and sizes; then each box's holes
        lab, n, area, bb = _raster_components(mask)
        out = mask.copy()
        if not _numba_kernels.fill_labelled(lab, n, bb, area, mask, out):
            lab, n = label(bk, out)  # nested objects merged by the fill
            area = label_area(bk, lab, n)
        area[0] = 0
        return out, lab, n, area
    filled = fill_holes(bk, mask)
    lab, n = label(bk, filled)
    area = label_area(bk, lab, n)
    area[0] = 0
    return filled, lab, n, area


def power(bk: Backend, img, p: float):
    """Element-wise ``img ** p`` for non-negative float32 images."""
    if _use_cv2(bk):
        return cv2.pow(img, float(p))
    return img ** p


def valleys(bk: Backend, g, cc, is_cluster, sigma: float, strength: float, within=None):
    """Line-like dark valleys of ``g`` inside the clusters — the pixels whose component
    in the int label image ``cc`` has ``is_cluster[component]`` True: pixels where the
    Hessian's larger eigenvalue, relative to brightness (λmax σ² / g), exceeds
    ``strength`` and the smaller one is below 0.3 λmax. One compiled pass over the
    cluster pixels with Numba, reading the per-component table (no whole-image cluster
    mask); the same arithmetic as whole-array operations otherwise (CuPy). ``within``:
    a boolean image holding every cluster pixel (the foreground): the compiled pass
    then visits only its pixels, eight at a time past the rest (the same result)."""
    xp = bk.xp
    if _numba_ok(bk):
        from erquant import _numba_kernels

        sparse = within is not None and not bool(is_cluster[0])
        if sparse:
            within = np.ascontiguousarray(within, dtype=np.bool_)
            out = host_zeros(g.shape, np.bool_)
        else:
            within = np.zeros((1, 1), np.bool_)
            out = np.empty(g.shape, np.bool_)
        _numba_kernels.valleys_cc(np.ascontiguousarray(g, np.float32),
                                  np.ascontiguousarray(cc), np.asarray(is_cluster, np.bool_),
                                  np.float32(sigma * sigma), np.float32(strength), within,
                                  _words(within.ravel(), 8), sparse, out)
        return out
    cluster = is_cluster[cc]
    gyy, gxx, gyx = hessian(bk, g)
    half = (gyy - gxx) / 2
    root = xp.sqrt(half * half + gyx * gyx)
    lmax = (gyy + gxx) / 2 + root
    lmin = (gyy + gxx) / 2 - root
    rel = lmax * np.float32(sigma * sigma) / xp.maximum(g, np.float32(1e-6))
    return cluster & (rel > strength) & (lmin < 0.3 * lmax)


def band_peaks(bk: Backend, sdist, score, mask, bands):
    """Seed peaks with windows that scale with the inscribed radius: ``mask`` pixels
    whose ``score`` is the maximum of the window of their band, ``bands`` a list of
    (window, lowest radius, highest radius) with consecutive radius ranges; a pixel
    belongs to the band holding its ``sdist``. With Numba one compiled pass reads each
    candidate's window (no whole-image maximum filters); otherwise (CuPy) one maximum
    filter per window and whole-array comparisons. The same peaks (tested)."""
    xp = bk.xp
    if _numba_ok(bk) and bands:
        from erquant import _numba_kernels

        edges = np.array([bands[0][1]] + [hi for _, _, hi in bands], np.float32)
        halfs = np.array([int(win) // 2 for win, _, _ in bands], np.int64)
        out = np.empty(score.shape, np.bool_)
        mask = np.ascontiguousarray(mask, np.bool_)
        _numba_kernels.band_peaks(np.ascontiguousarray(sdist, np.float32),
                                  np.ascontiguousarray(score, np.float32), mask,
                                  _words(mask.ravel(), 8), edges, halfs, out)
        return out
    peaks = xp.zeros(mask.shape, bool)
    for win, lo, hi in bands:
        f = maximum_filter(bk, score, win)
        peaks |= (sdist >= lo) & (sdist < hi) & (score >= f)
    return peaks & mask


def hessian(bk: Backend, img):
    """Second derivatives (d²/dy², d²/dx², d²/dydx) of a float32 image by repeated central
    differences (the result of ``numpy.gradient`` applied twice; borders reflected)."""
    if _use_cv2(bk):
        d1 = np.array([-0.5, 0.0, 0.5], np.float32)
        d2 = np.array([0.25, 0.0, -0.5, 0.0, 0.25], np.float32)
        one = np.ones(1, np.float32)
        b = cv2.BORDER_REFLECT
        gyy = cv2.sepFilter2D(img, cv2.CV_32F, one, d2, borderType=b)
        gxx = cv2.sepFilter2D(img, cv2.CV_32F, d2, one, borderType=b)
        gxy = cv2.sepFilter2D(img, cv2.CV_32F, d1, d1, borderType=b)
        return gyy, gxx, gxy
    xp = bk.xp
    gy, gx = xp.gradient(img)
    gyy, gxy = xp.gradient(gy)
    gxx = xp.gradient(gx, axis=1)
    return gyy, gxx, gxy
