"""Plate maps: which compound at which concentration is in which well.

A plate map is a CSV with one row per well (and per plate / time point /
cell line when those columns are present)::

    well,compound,concentration_uM,role
    A01,fulvestrant,1.0,sample
    H12,DMSO,0,vehicle

Columns
-------
well (required)
    ``A1``, ``a01``, ``A001`` … canonicalised to ``A01``; ``row`` and ``col``
    (1-based ints) are added.
compound (required)
    Free text (may be empty for vehicle / blank wells).
concentration_<unit> (required)
    The unit is part of the header: ``concentration_pM``, ``_nM``, ``_uM``
    (also ``_µM``), ``_mM`` or ``_M`` (``conc`` and ``concentration (nM)``
    spellings are accepted too).  Converted to the float column
    ``concentration_nM``.  Empty for ``blank`` / ``exclude`` wells (NaN) and
    ``vehicle`` wells (0).
plate, time_h, cell_line (optional)
    Several plates / time points (hours) / cell lines in one map.
role (optional)
    ``vehicle`` / ``reference`` / ``sample`` / ``blank`` / ``exclude``
    (case-insensitive).  Absent or empty: concentration 0 → ``vehicle``,
    otherwise ``sample``.

Any other column is kept.  Every error is a :class:`PlateMapError` whose
message starts with the file path.

Examples
--------
>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "map.csv")
>>> _ = open(path, "w").write("well,compound,concentration_uM\\na1,fulv,0.5\\nb1,DMSO,0\\n")
>>> read_plate_map(path)[["well", "row", "col", "concentration_nM", "role"]]
  well  row  col  concentration_nM     role
0  A01    1    1             500.0   sample
1  B01    2    1               0.0  vehicle
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from erquant.io.plate import parse_well, well_name

__all__ = ["ROLES", "PlateMapError", "match_wells", "read_plate_map"]

ROLES = ("vehicle", "reference", "sample", "blank", "exclude")
KEYS = ("plate", "time_h", "cell_line")
_UNIT_NM = {"pM": 1e-3, "nM": 1.0, "uM": 1e3, "µM": 1e3, "μM": 1e3, "mM": 1e6, "M": 1e9}
_CONC_RE = re.compile(
    r"^conc(?:entration)?\s*[_\-\s]?\s*[\(\[]?\s*(pM|nM|uM|µM|μM|mM|M)\s*[\)\]]?$", re.IGNORECASE
)


class PlateMapError(ValueError):
    """A plate map that cannot be used; the message starts with the file path."""


def _listing(items, limit: int = 10) -> str:
    items = list(items)
    head = ", ".join(str(i) for i in items[:limit])
    return head + (f" … (+{len(items) - limit} more)" if len(items) > limit else "")


def _conc_column(columns, where: str) -> tuple[str, float]:
    found = []
    for c in columns:
        m = _CONC_RE.match(c)
        if m:
            unit = m.group(1)
            # the unit is case-sensitive only for m (milli) vs M (molar); 'um', 'NM' are fine
            key = unit if unit in _UNIT_NM else {"pm": "pM", "nm": "nM", "um": "uM"}.get(
                unit.lower(), unit)
            if key not in _UNIT_NM:
                raise PlateMapError(
                    f"{where}: ambiguous concentration unit in column {c!r}; "
                    "use concentration_pM, _nM, _uM, _mM or _M")
            found.append((c, _UNIT_NM[key]))
    if not found:
        plain = [c for c in columns if c.lower() in ("concentration", "conc", "dose")]
        if plain:
            raise PlateMapError(
                f"{where}: column {plain[0]!r} has no unit; name it concentration_nM, "
                "concentration_uM or concentration_M")
        raise PlateMapError(
            f"{where}: missing concentration column (expected one of concentration_nM, "
            f"concentration_uM, concentration_M); columns are {list(columns)}")
    if len(found) > 1:
        raise PlateMapError(
            f"{where}: several concentration columns {[c for c, _ in found]}; keep one")
    return found[0]


def read_plate_map(path: str | Path) -> pd.DataFrame:
    """Read and validate a plate map CSV.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    DataFrame
        ``[plate], well, row, col, compound, concentration_nM, role, [time_h],
        [cell_line]`` and any extra columns; ``attrs["path"]`` is the file.

    Raises
    ------
    PlateMapError
        File missing or unreadable, missing column, bad well name, duplicate
        well, non-numeric or negative concentration, unknown role, no vehicle
        wells for a plate / time point / cell line.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "map.csv")
    >>> _ = open(path, "w").write("well,compound,concentration\\nA1,x,1\\n")
    >>> try:
    ...     read_plate_map(path)
    ... except PlateMapError as exc:
    ...     print(str(exc).split(": ", 1)[1])
    column 'concentration' has no unit; name it concentration_nM, concentration_uM or concentration_M
    """
    where = str(path)
    p = Path(path)
    if not p.is_file():
        raise PlateMapError(f"{where}: plate map not found (expected a CSV file)")
    try:
        df = pd.read_csv(p, encoding="utf-8-sig", dtype=str, keep_default_na=False,
                         skipinitialspace=True)
    except Exception as exc:  # noqa: BLE001 - any parser failure is the user's file
        raise PlateMapError(f"{where}: cannot read plate map as CSV ({exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    df = df.apply(lambda s: s.str.strip())
    lower = {c.lower(): c for c in df.columns}
    for req in ("well", "compound"):
        if req not in lower:
            raise PlateMapError(
                f"{where}: missing column {req!r} (required: well, compound, "
                f"concentration_<unit>); columns are {list(df.columns)}")
    conc_col, factor = _conc_column(df.columns, where)
    rename = {lower[k]: k for k in ("well", "compound", "role", *KEYS) if k in lower}
    df = df.rename(columns=rename)
    if df.empty:
        raise PlateMapError(f"{where}: plate map has no rows")

    # wells
    rows, cols = [], []
    for i, w in enumerate(df["well"], start=2):
        try:
            r, c = parse_well(w)
        except ValueError:
            raise PlateMapError(
                f"{where}: line {i}: not a well name: {w!r} (expected e.g. A01)") from None
        rows.append(r)
        cols.append(c)
    df["well"] = [well_name(r, c) for r, c in zip(rows, cols)]
    df["row"], df["col"] = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)

    # roles
    if "role" in df.columns:
        role = df["role"].str.lower()
        bad = sorted(set(role[(role != "") & ~role.isin(ROLES)]))
        if bad:
            raise PlateMapError(
                f"{where}: unknown role(s) {bad}; allowed: {', '.join(ROLES)}")
    else:
        role = pd.Series([""] * len(df), index=df.index)

    # concentration → nM
    raw = df[conc_col]
    num = pd.to_numeric(raw, errors="coerce")
    empty = raw == ""
    nonnum = num.isna() & ~empty
    if nonnum.any():
        i = nonnum.idxmax()
        raise PlateMapError(
            f"{where}: well {df.at[i, 'well']}: concentration {raw[i]!r} in column "
            f"{conc_col!r} is not a number")
    neg = num < 0
    if neg.any():
        i = neg.idxmax()
        raise PlateMapError(
            f"{where}: well {df.at[i, 'well']}: negative concentration {raw[i]} in column "
            f"{conc_col!r}")
    missing = empty & ~role.isin(["vehicle", "blank", "exclude"])
    if missing.any():
        raise PlateMapError(
            f"{where}: no concentration for well(s) {_listing(df.loc[missing, 'well'])} "
            "(only vehicle, blank and exclude wells may leave it empty)")
    conc = num * factor
    conc[empty & (role == "vehicle")] = 0.0
    role = role.where(role != "", np.where(conc == 0, "vehicle", "sample"))
    df["role"] = role
    df = df.drop(columns=[conc_col])
    df["concentration_nM"] = conc.astype(float)

    # key columns
    keys = [k for k in KEYS if k in df.columns]
    if "time_h" in df.columns:
        t = pd.to_numeric(df["time_h"], errors="coerce")
        bad = t.isna() & (df["time_h"] != "")
        if bad.any():
            i = bad.idxmax()
            raise PlateMapError(
                f"{where}: well {df.at[i, 'well']}: time_h {df.at[i, 'time_h']!r} is not a number")
        df["time_h"] = t.astype(float)
    for c in df.columns:  # extra columns: numbers where they are numbers, "" → NaN
        if c in ("well", "role") or pd.api.types.is_numeric_dtype(df[c]):
            continue
        conv = pd.to_numeric(df[c], errors="coerce")
        if c not in ("compound", "plate", "cell_line") and conv.notna().sum() == (df[c] != "").sum():
            df[c] = conv
        else:
            df[c] = df[c].replace("", np.nan)

    dup = df.duplicated(subset=[*keys, "well"], keep=False)
    if dup.any():
        d = df.loc[dup, [*keys, "well"]].drop_duplicates()
        desc = [" ".join(str(v) for v in r) for r in d.itertuples(index=False)]
        raise PlateMapError(
            f"{where}: duplicate well(s) {_listing(desc)} (one row per "
            f"{' × '.join([*keys, 'well'])} expected)")

    groups = df.groupby(keys, dropna=False) if keys else [((), df)]
    no_vehicle = [
        (g if isinstance(g, tuple) else (g,)) for g, sub in groups
        if not (sub["role"] == "vehicle").any()
    ]
    if no_vehicle:
        desc = [", ".join(f"{k}={v}" for k, v in zip(keys, g)) or "the plate" for g in no_vehicle]
        raise PlateMapError(
            f"{where}: no vehicle wells for {_listing(desc)} (mark them role=vehicle or give "
            "them concentration 0)")

    first = [c for c in ("plate", "well", "row", "col", "compound", "concentration_nM", "role",
                         "time_h", "cell_line") if c in df.columns]
    df = df[first + [c for c in df.columns if c not in first]].reset_index(drop=True)
    df.attrs["path"] = where
    return df


def _describe(key: dict) -> str:
    ctx = [f"plate {key['plate']}" if "plate" in key else "",
           f"{key['time_h']:g} h" if "time_h" in key else ""]
    ctx = [c for c in ctx if c]
    return key["well"] + (f" ({', '.join(ctx)})" if ctx else "")


def _time_key(s: pd.Series) -> pd.Series:
    return pd.to_numeric(s, errors="coerce").astype(float).round(6)


def match_wells(pmap: pd.DataFrame, image_wells: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Join image wells with the plate map.

    Parameters
    ----------
    pmap : DataFrame
        From :func:`read_plate_map`.
    image_wells : DataFrame
        ``well`` and optionally ``plate``, ``time_h`` (+ any other columns).

    Returns
    -------
    DataFrame
        ``image_wells`` with the map's columns (``compound``,
        ``concentration_nM``, ``role``, …; the map's values replace same-named
        columns); wells missing from the map are kept with ``role`` NaN.
    list of str
        Warnings, one per plate / time point with wells in the images but not
        in the map.

    Raises
    ------
    PlateMapError
        Map wells without images (first 10 listed, with the count).

    Notes
    -----
    ``plate`` is matched only when both sides have it and the map's plates are
    not all missing — and when the map names a single plate that is not the
    single plate of the images (``P1`` vs the folder ``SYN01``), wells are
    matched without it.  ``time_h`` is matched only when both sides have it (images without times, e.g. a
    ``--pattern`` without a time group, match a single-time map by well).

    Examples
    --------
    >>> pmap = pd.DataFrame({"well": ["A01", "B01"], "compound": ["x", "DMSO"],
    ...                      "concentration_nM": [10.0, 0.0], "role": ["sample", "vehicle"]})
    >>> imgs = pd.DataFrame({"well": ["A01", "B01", "C01"], "n_nuclei": [90, 100, 95]})
    >>> out, warn = match_wells(pmap, imgs)
    >>> out.role.tolist(), warn
    (['sample', 'vehicle', nan], ['1 well in the images is not in the plate map (kept, role unknown): C01'])
    """
    where = pmap.attrs.get("path", "plate map")
    if "well" not in image_wells.columns:
        raise PlateMapError(f"{where}: the image table has no 'well' column")
    imgs = image_wells.copy()
    imgs["well"] = [well_name(*parse_well(str(w))) for w in imgs["well"]]
    pm = pmap.copy()
    warnings: list[str] = []
    keys = ["well"]

    if "plate" in pm.columns and "plate" in imgs.columns and pm["plate"].notna().any():
        mp = set(pm["plate"].dropna().astype(str))
        ip = set(imgs["plate"].dropna().astype(str))
        if mp & ip:
            keys.append("plate")
        elif len(mp) == 1 and len(ip) == 1:
            warnings.append(
                f"plate map plate {next(iter(mp))!r} taken for the images of plate "
                f"{next(iter(ip))!r} (matched by well)")
        else:
            raise PlateMapError(
                f"{where}: none of the map's plates ({_listing(sorted(mp))}) is among the image "
                f"plates ({_listing(sorted(ip))})")
    if "time_h" in pm.columns and pm["time_h"].notna().any():
        if "time_h" in imgs.columns and imgs["time_h"].notna().any():
            keys.append("time_h")
        elif pm["time_h"].nunique() > 1:
            raise PlateMapError(
                f"{where}: the map has several time points but the image table has no time_h")
    k_img = imgs[keys].copy()
    k_map = pm[keys].copy()
    for kk in (k_img, k_map):
        if "plate" in keys:
            kk["plate"] = kk["plate"].astype(str)
        if "time_h" in keys:
            kk["time_h"] = _time_key(kk["time_h"])
    kcols = [f"__k_{k}" for k in keys]
    imgs[kcols] = k_img.to_numpy()
    pm[kcols] = k_map.to_numpy()
    map_cols = [c for c in pm.columns if c not in keys and c not in kcols]
    # a map without plate / time_h columns applies to every image plate / time point
    map_cols = [c for c in map_cols if not (c in ("plate", "time_h") and c not in keys)]
    base = imgs.drop(columns=[c for c in map_cols if c in imgs.columns and c not in ("row", "col")])
    right = pm[kcols + [c for c in map_cols if c not in base.columns]]
    out = base.merge(right, on=kcols, how="left", indicator=True)

    unmapped = out[out["_merge"] == "left_only"]
    if len(unmapped):
        gcols = [k for k in ("plate", "time_h") if k in unmapped.columns]
        groups = unmapped.groupby(gcols, dropna=False) if gcols else [((), unmapped)]
        for g, sub in groups:
            g = g if isinstance(g, tuple) else (g,)
            ctx = ", ".join(f"{k} {v}" for k, v in zip(gcols, g))
            wells = sorted(set(sub["well"]))
            n = len(wells)
            warnings.append(
                f"{n} well{'s' if n > 1 else ''} in the images {'are' if n > 1 else 'is'} not in "
                f"the plate map{' (' + ctx + ')' if ctx else ''} (kept, role unknown): "
                f"{_listing(wells)}")
    found = set(map(tuple, out.loc[out["_merge"] == "both", kcols].to_numpy().tolist()))
    missing = [r for r in map(tuple, pm[kcols].to_numpy().tolist()) if r not in found]
    if missing:
        desc = [_describe(dict(zip(keys, r))) for r in missing]
        raise PlateMapError(
            f"{where}: {len(missing)} plate-map well(s) have no images: {_listing(desc)}")
    out = out.drop(columns=[*kcols, "_merge"])
    return out.reset_index(drop=True), warnings
