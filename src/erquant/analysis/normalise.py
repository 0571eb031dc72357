"""Per-well normalisation to the plate's controls, and which wells are used.

Within each plate × time point × cell line:

* ERα readouts (``er_mean``, ``er_median``, ``pct_er_positive``) become
  ``<readout>_pct`` = 100 × value / vehicle mean ("% of vehicle");
  with ``mode="reference"`` they are instead scaled so the vehicle mean reads
  100 and the reference wells' mean reads 0 (``% remaining`` relative to the
  reference degrader's full effect);
* ``n_nuclei`` always becomes % of the vehicle mean.

Wells are left out (``use`` False, ``excluded`` says why) when their role is
``exclude`` or ``blank``, when all their fields failed (``n_fields_ok == 0``)
or when they are not in the plate map (role missing).  Vehicle and reference
means are taken over used wells only.

Examples
--------
>>> wells = pd.DataFrame({"plate": "P", "time_h": 24.0, "well": ["A01", "A02", "A03"],
...     "role": ["vehicle", "vehicle", "sample"], "n_fields_ok": [2, 2, 2],
...     "er_mean": [90.0, 110.0, 50.0], "n_nuclei": [100, 100, 80]})
>>> normalise_wells(wells)[["well", "er_mean_pct", "n_nuclei_pct", "use"]]
  well  er_mean_pct  n_nuclei_pct   use
0  A01         90.0         100.0  True
1  A02        110.0         100.0  True
2  A03         50.0          80.0  True
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["COUNT_READOUT", "ER_READOUTS", "GROUP_KEYS", "AnalysisError", "group_keys",
           "normalise_wells", "readouts_of"]

ER_READOUTS = ("er_mean", "er_median", "pct_er_positive")
COUNT_READOUT = "n_nuclei"
GROUP_KEYS = ("plate", "time_h", "cell_line")


class AnalysisError(ValueError):
    """Input tables that cannot be analysed; the message starts with the file path."""


def readouts_of(df: pd.DataFrame) -> list[str]:
    """The readouts present in ``df`` with any value (ERα readouts first, then
    ``n_nuclei``; a run without an ERα channel has only the count)."""
    return [r for r in (*ER_READOUTS, COUNT_READOUT)
            if r in df.columns and pd.to_numeric(df[r], errors="coerce").notna().any()]


def group_keys(df: pd.DataFrame) -> list[str]:
    """The plate / time point / cell line columns present in ``df``."""
    return [k for k in GROUP_KEYS if k in df.columns]


def _usable(wells: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    role = wells["role"] if "role" in wells.columns else pd.Series(np.nan, index=wells.index)
    excluded = pd.Series("", index=wells.index, dtype=object)
    excluded[role.isna()] = "not in plate map"
    excluded[role.isin(["exclude", "blank"])] = "role " + role.astype(str)
    if "n_fields_ok" in wells.columns:
        failed = pd.to_numeric(wells["n_fields_ok"], errors="coerce").fillna(0) <= 0
        excluded[failed & (excluded == "")] = "all fields failed"
    return (excluded == "").astype(bool), excluded


def normalise_wells(wells: pd.DataFrame, mode: str = "vehicle") -> pd.DataFrame:
    """Add ``<readout>_pct`` columns, ``use`` and ``excluded`` to a wells table.

    Parameters
    ----------
    wells : DataFrame
        ``wells.csv`` joined with the plate map (``role`` required).
    mode : {"vehicle", "reference"}

    Returns
    -------
    DataFrame
        A copy with the new columns.  Groups without usable vehicle wells get
        NaN; ``attrs["notes"]`` lists them.

    Raises
    ------
    AnalysisError
        ``mode="reference"`` and a group has no usable reference wells.
    """
    if mode not in ("vehicle", "reference"):
        raise ValueError(f"normalise must be 'vehicle' or 'reference', got {mode!r}")
    out = wells.copy()
    out["use"], out["excluded"] = _usable(out)
    keys = group_keys(out)
    readouts = readouts_of(out)
    notes: list[str] = []
    for r in readouts:
        out[f"{r}_pct"] = np.nan
    groups = out.groupby(keys, dropna=False, sort=True) if keys else [((), out)]
    for g, sub in groups:
        idx = sub.index
        if sub["role"].isna().all():
            continue  # only wells that are not in the plate map (e.g. cell line unknown)
        veh = sub[(sub["role"] == "vehicle") & sub["use"]]
        ref = sub[(sub["role"] == "reference") & sub["use"]]
        gdesc = ", ".join(f"{k} {v}" for k, v in zip(keys, g if isinstance(g, tuple) else (g,)))
        if veh.empty:
            notes.append(f"no usable vehicle wells for {gdesc or 'the plate'}: not normalised")
            continue
        if mode == "reference" and ref.empty:
            raise AnalysisError(
                f"normalise=reference needs reference wells; none usable for {gdesc or 'the plate'}")
        for r in readouts:
            v = pd.to_numeric(sub[r], errors="coerce")
            vm = float(pd.to_numeric(veh[r], errors="coerce").mean())
            if mode == "reference" and r in ER_READOUTS:
                rm = float(pd.to_numeric(ref[r], errors="coerce").mean())
                out.loc[idx, f"{r}_pct"] = 100.0 * (v - rm) / (vm - rm)
            else:
                out.loc[idx, f"{r}_pct"] = 100.0 * v / vm if vm else np.nan
    out.attrs["notes"] = notes
    out.attrs["normalise"] = mode
    return out
