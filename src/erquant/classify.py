"""Positive / negative calls, intensity classes (0, 1+, 2+, 3+), H-score and Allred.

Works on the per-cell table of :func:`erquant.measure.measure_cells` (host
pandas data: no array backend is involved here).

Which value is classified
-------------------------
``{compartment}_{channel}_mean_bgcorr`` — by default the background-corrected
mean nuclear ER intensity (``nucleus_er_mean_bgcorr``), as in pathology ER
scoring, which counts nuclear staining.

Positivity threshold ``t1`` (first rule that applies)
-----------------------------------------------------
1. ``class_bounds=(t1, t2, t3)`` given: ``t1`` is the threshold.
2. ``threshold`` given: that absolute value.
3. ``reference`` given (vehicle / DMSO cells): ``t1 = positive_fraction ×
   median(reference)``; with the default 0.5 a cell is positive when it keeps
   at least half the median vehicle ER level.
4. Otherwise an automatic threshold: Otsu's threshold on the log10 of the
   positive values (a bimodal split of dim and bright cells in log space).
   This is only meaningful when the field holds both populations; in a
   dose-response screen pass the vehicle ``reference`` instead, so that every
   well is judged against the same scale.

Intensity classes
-----------------
A cell is 0 below ``t1``, 1+ in ``[t1, t2)``, 2+ in ``[t2, t3)``, 3+ at or
above ``t3``. Unless ``class_bounds`` are given, ``t2`` and ``t3`` follow a
doubling ladder: with a reference, ``t2 = 1 × median(reference)`` and
``t3 = 2 × median(reference)`` (a 1+ cell is below the typical vehicle level,
2+ is at vehicle level, 3+ twice above it); without one, ``t2 = 2·t1`` and
``t3 = 4·t1`` (the same ladder as the reference rule with the default
``positive_fraction`` 0.5). Bounds are clipped to be non-decreasing. NaN
values (e.g. cells without cytoplasm when ``compartment="cyto"``) are
negative, class 0.

The thresholds used are stored in ``table.attrs["{channel}_class_bounds"]``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["allred_proportion_score", "classify_cells", "field_scores", "otsu_threshold"]

_COMPARTMENTS = ("nucleus", "cyto", "cell")


def otsu_threshold(values: Any, nbins: int = 256) -> float:
    """Otsu's threshold of 1-D ``values`` (histogram with ``nbins`` bins).

    Examples
    --------
    >>> import numpy as np
    >>> v = np.r_[np.full(50, 1.0), np.full(50, 3.0)]
    >>> 1.0 < otsu_threshold(v) < 3.0
    True
    """
    from erquant.segment import compute_threshold  # one Otsu implementation

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan
    return compute_threshold(v, "otsu", nbins=nbins)


def _value_column(channel: str, compartment: str) -> str:
    if compartment not in _COMPARTMENTS:
        raise ValueError(f"compartment must be one of {_COMPARTMENTS}, got {compartment!r}")
    return f"{compartment}_{channel}_mean_bgcorr"


def _reference_values(reference: Any, column: str) -> np.ndarray:
    if isinstance(reference, pd.DataFrame):
        if column not in reference.columns:
            raise KeyError(f"reference table has no column {column!r}")
        ref = reference[column].to_numpy(dtype=np.float64)
    else:
        ref = np.asarray(reference, dtype=np.float64).ravel()
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        raise ValueError("reference has no finite values")
    return ref


def classify_cells(
    table: pd.DataFrame,
    *,
    channel: str = "er",
    compartment: str = "nucleus",
    threshold: float | None = None,
    reference: Any = None,
    positive_fraction: float = 0.5,
    class_bounds: tuple[float, float, float] | None = None,
) -> pd.DataFrame:
    """Add ``{channel}_positive`` (bool) and ``{channel}_class`` (0..3) columns.

    Parameters
    ----------
    table : pandas.DataFrame
        Per-cell table with a ``{compartment}_{channel}_mean_bgcorr`` column.
    channel : str
        Channel name (default ``"er"``).
    compartment : {"nucleus", "cyto", "cell"}
        Which mean is classified.
    threshold : float, optional
        Absolute positivity threshold.
    reference : DataFrame or array-like, optional
        Vehicle per-cell values (a table: its value column is used).
    positive_fraction : float
        Positive when value ≥ ``positive_fraction × median(reference)``.
    class_bounds : (t1, t2, t3), optional
        Absolute class bounds; ``t1`` is then the positivity threshold.

    Returns
    -------
    pandas.DataFrame
        A copy of ``table`` with the two new columns; the bounds used are in
        ``attrs[f"{channel}_class_bounds"]``.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"nucleus_er_mean_bgcorr": [5.0, 15.0, 25.0, 45.0]})
    >>> out = classify_cells(t, threshold=10)
    >>> out["er_class"].tolist(), out["er_positive"].tolist()
    ([0, 1, 2, 3], [False, True, True, True])
    """
    col = _value_column(channel, compartment)
    if col not in table.columns:
        raise KeyError(f"table has no column {col!r}; run measure_cells with channel {channel!r}")
    values = table[col].to_numpy(dtype=np.float64)

    if class_bounds is not None:
        bounds = tuple(float(b) for b in class_bounds)
        if len(bounds) != 3 or not all(math.isfinite(b) for b in bounds):
            raise ValueError(f"class_bounds must be 3 finite numbers, got {class_bounds!r}")
        if not bounds[0] <= bounds[1] <= bounds[2]:
            raise ValueError(f"class_bounds must be non-decreasing, got {bounds}")
        if threshold is not None and float(threshold) != bounds[0]:
            raise ValueError(
                f"threshold={threshold} contradicts class_bounds[0]={bounds[0]}; give one of them"
            )
        t1, t2, t3 = bounds
    else:
        if threshold is not None:
            t1 = float(threshold)
            t2, t3 = 2.0 * t1, 4.0 * t1
        elif reference is not None:
            if not positive_fraction > 0:
                raise ValueError(f"positive_fraction must be > 0, got {positive_fraction}")
            med = float(np.median(_reference_values(reference, col)))
            t1, t2, t3 = positive_fraction * med, med, 2.0 * med
        else:
            pos = values[np.isfinite(values) & (values > 0)]
            t1 = 10.0 ** otsu_threshold(np.log10(pos)) if pos.size >= 2 else math.inf
            t2, t3 = 2.0 * t1, 4.0 * t1
        if not math.isnan(t1) and math.isfinite(t1) and t1 <= 0 and threshold is None:
            raise ValueError(f"derived threshold {t1} is not positive; check the reference")
        t2 = max(t2, t1)
        t3 = max(t3, t2)

    with np.errstate(invalid="ignore"):
        cls = (values >= t1).astype(np.int8) + (values >= t2) + (values >= t3)
    out = table.copy()
    out[f"{channel}_positive"] = cls >= 1
    out[f"{channel}_class"] = cls.astype(np.int64)
    out.attrs[f"{channel}_class_bounds"] = (t1, t2, t3)
    return out


def allred_proportion_score(pct_positive: float) -> int:
    """Allred proportion score from the percentage of positive cells.

    0: none, 1: < 1 %, 2: 1–10 %, 3: > 10–33 %, 4: > 33–66 %, 5: > 66 %.

    Examples
    --------
    >>> [allred_proportion_score(p) for p in (0, 0.5, 1, 10, 20, 50, 70)]
    [0, 1, 2, 2, 3, 4, 5]
    """
    p = float(pct_positive)
    if p <= 0:
        return 0
    if p < 1:
        return 1
    if p <= 10:
        return 2
    if p <= 33:
        return 3
    if p <= 66:
        return 4
    return 5


def field_scores(
    table: pd.DataFrame,
    *,
    channel: str = "er",
    compartment: str = "nucleus",
    prefix: bool = False,
) -> dict[str, float]:
    """Summary scores of one field (or any group of cells) after :func:`classify_cells`.

    Parameters
    ----------
    table : pandas.DataFrame
        Needs ``{channel}_class`` and ``{compartment}_{channel}_mean_bgcorr``.
    channel, compartment : str
        As in :func:`classify_cells`.
    prefix : bool
        Prefix every key except ``n_cells`` with ``{channel}_`` (for tables
        holding several channels).

    Returns
    -------
    dict
        ``n_cells``, ``n_positive``, ``pct_positive``, ``pct_0``,
        ``pct_1plus``, ``pct_2plus``, ``pct_3plus``, ``h_score`` (1·%1+ +
        2·%2+ + 3·%3+, 0–300), ``allred`` (proportion + intensity score, 0–8),
        ``allred_proportion``, ``allred_intensity`` (mean class of the positive
        cells, rounded half up; 0 without positive cells), ``mean_intensity``
        and ``median_intensity`` (of the classified value over all cells).
        Without cells the counts are 0 and every score is NaN.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"nucleus_er_mean_bgcorr": [1.0, 2, 3, 4],
    ...                   "er_class": [0, 1, 2, 3]})
    >>> s = field_scores(t)
    >>> s["h_score"], s["allred"]
    (150.0, 7)
    """
    ccol = f"{channel}_class"
    vcol = _value_column(channel, compartment)
    for c in (ccol, vcol):
        if c not in table.columns:
            raise KeyError(f"table has no column {c!r}; run classify_cells first")
    cls = table[ccol].to_numpy(dtype=np.int64)
    values = table[vcol].to_numpy(dtype=np.float64)
    n = int(cls.size)
    counts = np.bincount(np.clip(cls, 0, 3), minlength=4)[:4]
    n_pos = int(counts[1:].sum())
    nan = math.nan
    if n == 0:
        pct = [nan] * 4
        pct_pos = h = allred = ps = is_ = mean = median = nan
    else:
        pct = [100.0 * int(c) / n for c in counts]
        pct_pos = 100.0 * n_pos / n
        h = pct[1] + 2.0 * pct[2] + 3.0 * pct[3]
        ps = allred_proportion_score(pct_pos)
        is_ = math.floor(float(np.mean(cls[cls >= 1])) + 0.5) if n_pos else 0
        allred = ps + is_
        finite = values[np.isfinite(values)]
        mean = float(finite.mean()) if finite.size else nan
        median = float(np.median(finite)) if finite.size else nan
    scores = {
        "n_cells": n,
        "n_positive": n_pos,
        "pct_positive": pct_pos,
        "pct_0": pct[0],
        "pct_1plus": pct[1],
        "pct_2plus": pct[2],
        "pct_3plus": pct[3],
        "h_score": h,
        "allred": allred,
        "allred_proportion": ps,
        "allred_intensity": is_,
        "mean_intensity": mean,
        "median_intensity": median,
    }
    if prefix:
        scores = {k if k == "n_cells" else f"{channel}_{k}": v for k, v in scores.items()}
    return scores
