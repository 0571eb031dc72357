"""Plate quality control: Z′ factor, vehicle CV, signal window, flagged wells.

All statistics use the raw (not normalised) well values of used wells (see
:mod:`erquant.analysis.normalise`), per plate × time point × cell line ×
readout, between the vehicle wells (no effect) and the reference wells (full
effect of the reference degrader):

* Z′ (Zhang, Chung & Oldenburg 1999): ``1 - 3 (σ_v + σ_r) / |μ_v - μ_r|``;
  > 0.5 is an excellent assay, 0–0.5 usable, < 0 the controls overlap.
* signal window (Iversen et al. 2006, Assay Guidance Manual):
  ``(|μ_v - μ_r| - 3 (σ_v + σ_r)) / σ_v``; ≥ 2 is commonly required.
* vehicle CV = 100 σ_v / μ_v; signal / background = μ_v / μ_r.

Examples
--------
>>> round(z_prime([100, 102, 98, 100], [10, 12, 8, 10]), 3)
0.891
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from erquant.analysis.normalise import group_keys, readouts_of

__all__ = ["plate_qc", "signal_window", "z_prime"]


def _ms(values) -> tuple[float, float, int]:
    v = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


def z_prime(vehicle, reference) -> float:
    """Z′ factor between two sets of control values (sample SDs).

    Examples
    --------
    >>> z_prime([1.0, 1.0], [0.0, 0.0])
    1.0
    """
    mv, sv, _ = _ms(vehicle)
    mr, sr, _ = _ms(reference)
    if not np.isfinite([mv, sv, mr, sr]).all() or mv == mr:
        return math.nan
    return 1.0 - 3.0 * (sv + sr) / abs(mv - mr)


def signal_window(vehicle, reference) -> float:
    """Assay signal window ``(|μ_v - μ_r| - 3 (σ_v + σ_r)) / σ_v``.

    Examples
    --------
    >>> round(signal_window([100, 102, 98, 100], [10, 12, 8, 10]), 2)
    49.11
    """
    mv, sv, _ = _ms(vehicle)
    mr, sr, _ = _ms(reference)
    if not np.isfinite([mv, sv, mr, sr]).all() or sv == 0:
        return math.nan
    return (abs(mv - mr) - 3.0 * (sv + sr)) / sv


def _flag_counts(flags: pd.Series) -> str:
    counts: dict[str, int] = {}
    for s in flags.dropna().astype(str):
        for f in {x for x in s.split(";") if x}:
            counts[f] = counts.get(f, 0) + 1
    return ";".join(f"{k}:{v}" for k, v in sorted(counts.items()))


def plate_qc(wells: pd.DataFrame) -> pd.DataFrame:
    """QC table, one row per plate × time point × cell line × readout.

    Parameters
    ----------
    wells : DataFrame
        From :func:`~erquant.analysis.normalise.normalise_wells` (``use``,
        ``excluded``, ``role`` and the readouts).

    Returns
    -------
    DataFrame
        ``plate, time_h, cell_line, readout, n_vehicle, n_reference,
        vehicle_mean, vehicle_sd, vehicle_cv_pct, reference_mean, reference_sd,
        z_prime, signal_window, signal_to_background, n_wells, n_wells_used,
        n_wells_flagged, n_wells_failed, n_wells_excluded, n_wells_unmapped,
        well_flags`` (``n_wells``: wells in the plate map; ``n_wells_unmapped``:
        imaged wells of the plate and time point missing from the map;
        ``well_flags``: wells per QC flag, e.g. ``saturated:2``).

    Examples
    --------
    >>> from erquant.analysis.normalise import normalise_wells
    >>> w = pd.DataFrame({"plate": "P", "role": ["vehicle"] * 3 + ["reference"] * 3,
    ...                   "er_mean": [100, 104, 96, 10, 12, 8], "qc_flags": ["", "saturated", ""] * 2})
    >>> q = plate_qc(normalise_wells(w))
    >>> q[["readout", "z_prime", "vehicle_cv_pct", "n_wells_flagged"]].round(3)
       readout  z_prime  vehicle_cv_pct  n_wells_flagged
    0  er_mean      0.8             4.0                2
    """
    keys = group_keys(wells)
    rows = []
    # wells not in the map (cell line unknown) are counted per plate × time point
    pt = [k for k in ("plate", "time_h") if k in keys]
    unm = wells[wells["role"].isna()]
    unmapped = unm.groupby(pt, dropna=False).size().to_dict() if pt else {(): len(unm)}
    groups = wells.groupby(keys, dropna=False, sort=True) if keys else [((), wells)]
    for g, sub in groups:
        g = g if isinstance(g, tuple) else (g,)
        if sub["role"].isna().all():
            continue
        gpt = tuple(v for k, v in zip(keys, g) if k in pt)
        sub = sub[sub["role"].notna()]
        used = sub[sub["use"]]
        veh = used[used["role"] == "vehicle"]
        ref = used[used["role"] == "reference"]
        flags = sub["qc_flags"] if "qc_flags" in sub.columns else pd.Series([], dtype=object)
        flagged = flags.notna() & (flags.astype(object).astype(str).str.len() > 0)
        counts = {
            "n_wells": len(sub),
            "n_wells_used": int(sub["use"].sum()),
            "n_wells_flagged": int(flagged.sum()),
            "n_wells_failed": int((sub["excluded"] == "all fields failed").sum()),
            "n_wells_excluded": int(sub["excluded"].str.startswith("role").sum()),
            "n_wells_unmapped": int(unmapped.get(gpt if len(gpt) != 1 else gpt[0],
                                                 unmapped.get(gpt, 0))),
            "well_flags": _flag_counts(flags),
        }
        for r in readouts_of(sub):
            mv, sv, nv = _ms(veh[r])
            mr, sr, nr = _ms(ref[r])
            rows.append({
                **dict(zip(keys, g)), "readout": r, "n_vehicle": nv, "n_reference": nr,
                "vehicle_mean": mv, "vehicle_sd": sv,
                "vehicle_cv_pct": 100.0 * sv / mv if mv else math.nan,
                "reference_mean": mr, "reference_sd": sr,
                "z_prime": z_prime(veh[r], ref[r]),
                "signal_window": signal_window(veh[r], ref[r]),
                "signal_to_background": mv / mr if mr else math.nan,
                **counts,
            })
    return pd.DataFrame(rows)
