"""Field quality control: focus, saturation, background, contrast, sanity checks.

All image work runs on the input's backend (NumPy or CuPy); each channel ends
with ONE device→host transfer of a handful of scalars.

Measures
--------
focus_score
    Band-pass energy ratio ``E(G₁ − G₂) / E(G₂ − G₄)``, where ``Gσ`` is the
    image smoothed by a Gaussian of σ px and ``E`` the mean square. Fine
    detail (object edges at 1–2 px) is compared with coarse structure
    (2–4 px), so the score is independent of gain and offset (brightness)
    and, unlike the variance of the Laplacian, nearly independent of object
    size and of pixel noise (which σ₁ = 1 already suppresses). Sharp
    synthetic nuclei score about 0.4–0.55, a copy blurred with σ = 2 px about
    0.2, σ = 3 px about 0.13. Pure noise scores high (≈ 4): an empty noisy
    field is caught by the ``empty`` / ``low_contrast`` flags, not by focus.
    The default ``focus_threshold`` of 0.2 should be checked on a plate (real
    optics already blur by ~1 px): compare fields with the plate median.
    :func:`field_qc` scores the focus channel on its central ≤ 1024² crop and
    the other channels on ≤ 512² (speed; the score is a ratio of means).
saturated_fraction
    Fraction of pixels ≥ ``saturation_value`` (default: the dtype maximum of
    integer images; NaN for float images without a ``saturation_value`` —
    pass the raw camera images).
background_level
    Median of the pixels outside the nuclei (of the whole image when no
    ``nuclei`` labels are given).
contrast
    ``(p99.9 − background) / noise`` with ``noise = 1.4826 × MAD`` of the
    background pixels (a robust signal-to-noise ratio; ∞ when the background
    is noiseless and something is brighter, 0 for a constant image).

Flags
-----
``"out_of_focus"`` focus channel's score < ``focus_threshold``;
``"saturated"`` any channel with saturated fraction > ``saturation_limit``;
``"empty"`` ``nuclei`` given without any nucleus, or the focus channel is
constant; ``"low_contrast"`` focus channel's contrast < ``contrast_threshold``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from erquant.backend import backend_for, stack_to_host, to_numpy
from erquant.kernels import median, percentile, range_and_count

__all__ = [
    "FLAGS",
    "field_qc",
    "flatten_qc",
    "focus_score",
    "is_constant",
    "saturated_fraction",
    "validate_image",
]

FLAGS = ("out_of_focus", "saturated", "empty", "low_contrast")
_MAD_TO_SIGMA = 1.4826


def _check_numeric(image: Any, name: str):
    bk = backend_for(image)
    arr = image if hasattr(image, "dtype") and hasattr(image, "ndim") else np.asarray(image)
    arr = bk.asarray(arr)
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(f"{name} image must be numeric, got dtype {arr.dtype}")
    return bk, arr


def validate_image(image: Any, name: str = "image", *, ndim: int = 2,
                   saturation: float | None = None) -> tuple[float, float, int]:
    """Raise a clear ``ValueError`` for images no pipeline step can use.

    Checks, in order: numeric dtype (TypeError), number of dimensions, empty,
    NaN, infinite values, all pixels saturated (integer images at their dtype
    maximum), constant.

    Parameters
    ----------
    image : array
        NumPy or CuPy array.
    name : str
        Used in the messages (``"nuclei image is constant (all pixels = 0)"``).
    ndim : int
        Required number of dimensions.
    saturation : float, optional
        Also count the pixels at or above this level (in the same pass).

    Returns
    -------
    (min, max, count) : the image's range and its number of pixels ≥ ``saturation``
    (0 without one), for :func:`field_qc`'s ``ranges``.

    Examples
    --------
    >>> import numpy as np
    >>> validate_image(np.arange(4).reshape(2, 2), "nuclei")  # (min, max, count)
    (0.0, 3.0, 0)
    >>> validate_image(np.zeros((4, 4)), "nuclei")
    Traceback (most recent call last):
    ...
    ValueError: nuclei image is constant (all pixels = 0)
    """
    bk, arr = _check_numeric(image, name)
    xp = bk.xp
    if arr.ndim != ndim:
        raise ValueError(f"{name} image must be {ndim}-D, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} image is empty (shape {tuple(arr.shape)})")
    if np.issubdtype(arr.dtype, np.floating):
        # host sync: two booleans
        has_nan, has_inf = (
            bool(b) for b in to_numpy(xp.stack([xp.isnan(arr).any(), xp.isinf(arr).any()]))
        )
        if has_nan:
            raise ValueError(f"{name} image contains NaN")
        if has_inf:
            raise ValueError(f"{name} image contains infinite values")
    lo, hi, n = range_and_count(bk, arr, saturation)  # host sync: 3 scalars (one pass)
    if lo == hi:
        if np.issubdtype(arr.dtype, np.integer) and hi == np.iinfo(arr.dtype).max and hi > 1:
            raise ValueError(f"{name} image is saturated (all pixels = {_fmt(hi)})")
        raise ValueError(f"{name} image is constant (all pixels = {_fmt(hi)})")
    return lo, hi, n


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def is_constant(image: Any) -> bool:
    """True when every pixel has the same value (NaN-free input).

    Examples
    --------
    >>> import numpy as np
    >>> is_constant(np.full((3, 3), 7)), is_constant(np.eye(3))
    (True, False)
    """
    bk = backend_for(image)
    arr = bk.asarray(image)
    if arr.size == 0:
        return True
    return bool(arr.min() == arr.max())  # host sync: one boolean


def _focus_terms(bk, f, sigmas):
    """Band energies E(G₁ − G₂)² and E(G₂ − G₄)² of a float32 image (0-d float64 on its
    backend). On the CPU with Numba they are summed in one compiled parallel pass over
    the three blurs (the same float32 differences and squares, float64 sums in another
    order: equal to ~1e-15); otherwise by whole-array operations."""
    from erquant.kernels import _numba_ok, gaussian  # OpenCV on the CPU, cupyx on the GPU

    xp = bk.xp
    s1, s2, s4 = sigmas
    f = f - f.mean()  # offset-free: float32 band-passes keep their precision
    if _numba_ok(bk) and f.dtype == np.float32 and f.ndim == 2 and f.size > 0:
        from erquant import _numba_kernels
        from erquant.kernels import _gauss_weights

        radii = [int(round(4 * s)) for s in (s1, s2, s4)]
        if all(0 < r <= min(f.shape) for r in radii) and min(s1, s2, s4) > 0:
            # each row of the three blurs made and summed at once (K.gaussian's
            # arithmetic): the same sums without three blurred images
            w1, w2, w4 = (_gauss_weights(s, r) for s, r in zip((s1, s2, s4), radii))
            fine, coarse = _numba_kernels.focus_energies(np.ascontiguousarray(f), w1, w2, w4)
        else:
            g1, g2, g4 = (np.ascontiguousarray(gaussian(bk, f, s), dtype=np.float32)
                          for s in (s1, s2, s4))
            fine, coarse = _numba_kernels.band_energies(g1, g2, g4)
        return np.float64(fine / f.size), np.float64(coarse / f.size)
    g1 = gaussian(bk, f, s1)
    g2 = gaussian(bk, f, s2)
    fine = g1 - g2
    del g1
    g4 = gaussian(bk, f, s4)
    coarse = g2 - g4
    return xp.mean(fine * fine, dtype=np.float64), xp.mean(coarse * coarse, dtype=np.float64)


def _default_focus_channel(channels: Mapping[str, Any], focus_channel: str | None):
    """``focus_channel``, or by default ``"nuclei"`` where present, else the first (None
    for no channels)."""
    if focus_channel is not None:
        return focus_channel
    return "nuclei" if "nuclei" in channels else next(iter(channels), None)


def _channel_focus_terms(bk, arr, drives_flags: bool, sigmas):
    """:func:`_focus_terms` of a channel's central crop: ≤ 1024² for the channel whose
    focus drives the flags (band-pass energies need whole pixels; a quarter of a 2048²
    field holds hundreds of nuclei), ≤ 512² for the others (reported only)."""
    w = 1024 if drives_flags else 512
    cy, cx = (max(0, (n - w) // 2) for n in arr.shape)
    return _focus_terms(bk, arr[cy:cy + w, cx:cx + w].astype(np.float32), sigmas)


def focus_terms(channels: Mapping[str, Any], *, focus_channel: str | None = None,
                sigmas: tuple[float, float, float] = (1.0, 2.0, 4.0)
                ) -> dict[str, tuple[float, float]]:
    """The band energies ``(fine, coarse)`` behind each channel's focus score in
    :func:`field_qc` (the same crops and values), by channel name: they need the raw
    images only, so a caller can take them before the nuclei are segmented and pass
    them to :func:`field_qc` (``focus_terms``)."""
    focus_channel = _default_focus_channel(channels, focus_channel)
    out = {}
    for name, image in channels.items():
        bk, arr = _check_numeric(image, f"channel {name!r}")
        if arr.ndim != 2:
            raise ValueError(f"channel {name!r} must be 2-D, got shape {tuple(arr.shape)}")
        fine, coarse = to_numpy(bk.xp.stack(  # host sync: 2 scalars
            _channel_focus_terms(bk, arr, name == focus_channel, sigmas)))
        out[name] = (float(fine), float(coarse))
    return out


def _ratio(fine: float, coarse: float) -> float:
    if coarse > 0:
        return fine / coarse
    return math.inf if fine > 0 else 0.0


def focus_score(image: Any, *, sigmas: tuple[float, float, float] = (1.0, 2.0, 4.0)) -> float:
    """Gain- and offset-invariant sharpness: ``E(G₁ − G₂) / E(G₂ − G₄)``.

    Lower for blurred images; 0.0 for a constant image. See the module
    docstring for typical values.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy.ndimage import gaussian_filter
    >>> img = np.zeros((64, 64)); img[20:40, 20:40] = 1.0
    >>> focus_score(img) > focus_score(gaussian_filter(img, 3))
    True
    >>> bool(np.isclose(focus_score(img), focus_score(5 * img + 100)))
    True
    """
    bk, arr = _check_numeric(image, "image")
    if is_constant(arr):  # host sync: one boolean
        return 0.0
    fine, coarse = to_numpy(  # host sync: 2 scalars
        bk.xp.stack(_focus_terms(bk, arr.astype(np.float32), sigmas))
    ).tolist()
    return _ratio(fine, coarse)


def channel_saturation(arr, saturation_value: Any, name: str) -> float | None:
    """The saturation level :func:`field_qc` counts channel ``name`` of ``arr`` at:
    ``saturation_value`` (a number, or a {channel: number} mapping), else the dtype
    maximum of integer images, else None."""
    sv = (saturation_value.get(name) if isinstance(saturation_value, Mapping)
          else saturation_value)
    return _saturation_level(arr, sv)


def _saturation_level(arr, value: Any) -> float | None:
    if value is not None:
        return float(value)
    if np.issubdtype(arr.dtype, np.integer):
        return float(np.iinfo(arr.dtype).max)
    return None


def saturated_fraction(image: Any, saturation_value: float | None = None) -> float:
    """Fraction of pixels ≥ ``saturation_value`` (dtype max for integer images).

    Returns NaN for a float image without ``saturation_value``.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((10, 10), np.uint8); img[0, :3] = 255
    >>> saturated_fraction(img)
    0.03
    """
    bk, arr = _check_numeric(image, "image")
    level = _saturation_level(arr, saturation_value)
    if level is None:
        return math.nan
    return float(bk.xp.mean(arr >= level, dtype=np.float64))  # host sync: 1 scalar


def field_qc(
    channels: Mapping[str, Any],
    *,
    nuclei: Any = None,
    saturation_value: float | Mapping[str, float] | None = None,
    focus_channel: str | None = None,
    saturation_limit: float = 0.01,
    focus_threshold: float = 0.2,
    contrast_threshold: float = 5.0,
    focus_sigmas: tuple[float, float, float] = (1.0, 2.0, 4.0),
    n_nuclei: int | None = None,
    ranges: Mapping[str, tuple[float, float, int]] | None = None,
    focus_terms: Mapping[str, tuple[float, float]] | None = None,
) -> dict[str, Any]:
    """Quality measures and flags of one field.

    Parameters
    ----------
    channels : mapping of str to (Y, X) array
        Raw images by channel name (NumPy or CuPy).
    nuclei : (Y, X) integer array, optional
        Nucleus labels; gives ``n_nuclei`` and restricts the background to
        pixels outside nuclei.
    saturation_value : float or dict, optional
        Saturation level (per channel with a dict); default: integer dtype max.
    focus_channel : str, optional
        Channel whose focus / contrast drive the flags; default ``"nuclei"``
        when present, else the first channel.
    saturation_limit : float
        ``"saturated"`` when a channel's saturated fraction exceeds it (0.01).
    focus_threshold : float
        ``"out_of_focus"`` below this focus score (0.2).
    contrast_threshold : float
        ``"low_contrast"`` below this contrast (5.0).
    focus_sigmas : (float, float, float)
        Gaussian σ of the two bands of :func:`focus_score`.
    n_nuclei : int, optional
        Number of nuclei in ``nuclei`` when the caller knows it (skips counting).
    ranges : mapping of str to (min, max, count), optional
        Each channel's range and number of pixels at or above its saturation level
        (:func:`channel_saturation`) where the caller has them already
        (:func:`validate_image` with ``saturation``): skips that pass over the image.
    focus_terms : mapping of str to (fine, coarse), optional
        Each channel's band energies from :func:`focus_terms` (the same
        ``focus_channel`` and ``focus_sigmas``) where the caller has them already:
        :func:`erquant.pipeline.quantify` takes them while the nuclei are segmented.

    Returns
    -------
    dict
        ``focus_score``, ``saturated_fraction``, ``background_level``,
        ``contrast`` (each ``{channel: float}``), ``focus_channel`` (str),
        ``n_nuclei`` (int or None) and ``flags`` (list of str from
        :data:`FLAGS`).

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((64, 64), 100, np.uint16); img[20:40, 20:40] = 4000
    >>> lab = (img > 1000).astype(np.int32)
    >>> qc = field_qc({"nuclei": img}, nuclei=lab)
    >>> qc["n_nuclei"], qc["background_level"]["nuclei"], qc["flags"]
    (1, 100.0, [])
    """
    if not isinstance(channels, Mapping) or len(channels) == 0:
        raise ValueError("channels must be a non-empty mapping {name: 2-D image}")
    names = list(channels)
    focus_channel = _default_focus_channel(channels, focus_channel)
    if focus_channel not in channels:
        raise ValueError(f"focus_channel {focus_channel!r} is not one of {names}")

    bk = backend_for(nuclei, *channels.values())
    xp = bk.xp
    shape = None
    labels_img = None
    known = n_nuclei
    n_nuclei = None
    if nuclei is not None:
        lab = bk.asarray(nuclei)
        if not np.issubdtype(lab.dtype, np.integer) or lab.ndim != 2:
            raise ValueError(
                f"nuclei must be a 2-D integer label image, got {lab.dtype} {tuple(lab.shape)}"
            )
        shape = tuple(lab.shape)
        labels_img = lab  # compared with 0 on the strided sample below
        if known is not None:
            n_nuclei = int(known)
        else:
            # host sync: number of distinct non-zero labels (bincount: O(N), no sort)
            n_nuclei = int((xp.bincount(lab.ravel())[1:] > 0).sum()) if lab.size else 0

    out: dict[str, Any] = {
        "focus_score": {},
        "saturated_fraction": {},
        "background_level": {},
        "contrast": {},
        "focus_channel": focus_channel,
        "n_nuclei": n_nuclei,
        "flags": [],
    }
    constant = {}
    for name, image in channels.items():
        _, arr = _check_numeric(bk.asarray(image), f"channel {name!r}")
        if arr.ndim != 2:
            raise ValueError(f"channel {name!r} must be 2-D, got shape {tuple(arr.shape)}")
        if shape is not None and tuple(arr.shape) != shape:
            raise ValueError(
                f"channel {name!r} has shape {tuple(arr.shape)} but nuclei has shape {shape}"
            )
        level = channel_saturation(arr, saturation_value, name)
        if ranges is not None and name in ranges:  # (measured when the image was read)
            lo, hi, n_sat = ranges[name]
        else:  # host sync: min, max and saturated count from one pass (Numba on the CPU)
            lo, hi, n_sat = range_and_count(bk, arr, level)
        sat = n_sat / arr.size if level is not None else math.nan
        # robust statistics (background median and MAD, 99.9th percentile) on a strided
        # sample of ≤ 256² pixels: the same values within noise, 64× less work at 2048²
        step = max(1, -(-max(arr.shape) // 256))
        fs = arr[::step, ::step].astype(np.float32)
        bgpix = fs[labels_img[::step, ::step] == 0] if labels_img is not None else fs.ravel()
        if bgpix.size == 0:  # host sync on CuPy (size)
            bgpix = fs.ravel()
        bg = median(bk, bgpix)
        mad = median(bk, xp.abs(bgpix - bg))
        if focus_terms is not None and name in focus_terms:
            fine, coarse = (np.float64(v) for v in focus_terms[name])
        else:
            fine, coarse = _channel_focus_terms(bk, arr, name == focus_channel, focus_sigmas)
        terms = [fine, coarse, bg, mad, percentile(bk, fs, 99.9)]
        # host sync: 5 scalars per channel
        fine, coarse, bg, mad, p999 = stack_to_host(xp, terms).tolist()
        noise = _MAD_TO_SIGMA * mad
        signal = p999 - bg
        if noise > 0:
            contrast = max(signal, 0.0) / noise
        else:
            contrast = math.inf if signal > 0 else 0.0
        out["focus_score"][name] = _ratio(fine, coarse)
        out["saturated_fraction"][name] = sat
        out["background_level"][name] = bg
        out["contrast"][name] = contrast
        constant[name] = lo == hi

    flags = out["flags"]
    if out["focus_score"][focus_channel] < focus_threshold and not constant[focus_channel]:
        flags.append("out_of_focus")
    if any(s > saturation_limit for s in out["saturated_fraction"].values() if not math.isnan(s)):
        flags.append("saturated")
    if (n_nuclei is not None and n_nuclei == 0) or constant[focus_channel]:
        flags.append("empty")
    if out["contrast"][focus_channel] < contrast_threshold:
        flags.append("low_contrast")
    return out


def flatten_qc(qc: Mapping[str, Any], prefix: str = "qc_") -> dict[str, Any]:
    """One flat row (for a per-field table) from a :func:`field_qc` result.

    Examples
    --------
    >>> flatten_qc({"focus_score": {"nuclei": 0.4}, "n_nuclei": 3, "flags": ["saturated"]})
    {'qc_focus_score_nuclei': 0.4, 'qc_n_nuclei': 3, 'qc_flags': 'saturated'}
    """
    row: dict[str, Any] = {}
    for key, value in qc.items():
        if isinstance(value, Mapping):
            for ch, v in value.items():
                row[f"{prefix}{key}_{ch}"] = v
        elif key == "flags":
            row[f"{prefix}flags"] = ";".join(value)
        else:
            row[f"{prefix}{key}"] = value
    return row
