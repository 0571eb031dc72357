"""The reduce step: plate-level work over the per-field parts, then the merged tables.

Runs after the fields finish (and again, identically, after every resume), reading
only tables — never pixels — in two streaming passes over ``parts/*.parquet``, so
memory holds a few columns of the plate, not the whole cell table:

1. a few columns of every cell → per plate a flat field (vignetting gain fitted from
   the nuclear stain of all its cells, :func:`erquant.illumination.fit_illumination`)
   and per plate × time point × cell line the ER-positivity reference: the vehicle
   cells (after flat-field correction) when the plate map names vehicle wells, else
   one Otsu threshold over all the group's cells — the same scale for every field,
   vehicle fields included;
2. each part again → corrected, classified, plate-map columns added, appended to
   ``cells.parquet`` (one file, one row group per field); field scores recomputed;
   per-well aggregation.

Outputs: ``cells.parquet``, ``fields.csv``, ``wells.csv`` (columns in the README).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from erquant.params import Params

__all__ = ["KEYS", "marker_fields", "reduce_run", "well_table"]

KEYS = ["plate", "timepoint", "time_h", "well", "row", "col", "field"]
WELL_KEYS = ["plate", "timepoint", "time_h", "well", "row", "col"]
MAP_COLUMNS = ["compound", "concentration_nM", "role", "cell_line"]
_BAD_QC = ("out_of_focus", "empty")


def _join_map(keys: pd.DataFrame, plate_map: pd.DataFrame | None) -> pd.DataFrame:
    """Unique (plate, timepoint, time_h, well) rows with the plate-map columns."""
    wells = keys[["plate", "timepoint", "time_h", "well"]].drop_duplicates()
    if plate_map is None:
        for c in MAP_COLUMNS:
            wells[c] = np.nan
        return wells.reset_index(drop=True)
    from erquant.analysis.platemap import match_wells

    merged, _ = match_wells(plate_map, wells)
    for c in MAP_COLUMNS:
        if c not in merged:
            merged[c] = np.nan
    drop = [c for c in ("row", "col") if c in merged]
    return merged.drop(columns=drop).drop_duplicates(
        ["plate", "timepoint", "time_h", "well"]).reset_index(drop=True)


def _read_columns(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    import pyarrow.parquet as pq

    have = pq.read_schema(path).names
    return pq.read_table(path, columns=[c for c in columns if c in have]).to_pandas()


def _group_key(plate, timepoint, cell_line, *plane) -> tuple:
    return (str(plate), int(timepoint), "" if pd.isna(cell_line) else str(cell_line),
            *(int(z) for z in plane))


def _thresholds(light: pd.DataFrame, markers: Sequence[str], params: Params,
                split: Sequence[str] = ()) -> dict:
    """(plate, timepoint, cell_line[, z]) → {marker: classify_cells keyword dict}."""
    from erquant.classify import otsu_threshold

    cp = params.classify
    out: dict[tuple, dict] = {}
    if light.empty:
        return out
    for key, g in light.groupby(["plate", "timepoint", "_cell_line", *split], sort=True,
                                dropna=False):
        per = {}
        for m in markers:
            col = f"{cp.compartment}_{m}_mean_bgcorr"
            kw = {"channel": m, "compartment": cp.compartment,
                  "positive_fraction": cp.positive_fraction, "class_bounds": cp.class_bounds,
                  "threshold": cp.threshold, "reference": None, "basis": "parameters"}
            if cp.threshold is None and cp.class_bounds is None and col in g:
                veh = g.loc[g["role"].astype(str).str.lower() == "vehicle", col].to_numpy(float)
                veh = veh[np.isfinite(veh)]
                if veh.size:
                    kw.update(reference=veh, basis=f"vehicle cells ({veh.size})")
                else:
                    v = g[col].to_numpy(float)
                    pos = v[np.isfinite(v) & (v > 0)]
                    t = 10.0 ** otsu_threshold(np.log10(pos)) if pos.size >= 2 else math.inf
                    kw.update(threshold=t, basis="plate Otsu (no vehicle wells)")
            per[m] = kw
        out[_group_key(*key)] = per
    return out


def _flags(fields: pd.DataFrame) -> pd.Series:
    qc = fields["qc_flags"] if "qc_flags" in fields else pd.Series("", index=fields.index)
    return qc.astype(object).fillna("").astype(str)


def marker_fields(fields: pd.DataFrame, per_plane: bool = False) -> pd.Series:
    """The fields whose cells give a well's marker statistics: ok fields that pass focus
    QC, or every ok field of a well (plate × time point [× Z plane]) where none does."""
    ok = fields["status"] == "ok"
    qc_ok = ok & ~_flags(fields).str.contains("|".join(_BAD_QC))
    keys = [fields[k] for k in ("plate", "timepoint", "well", *(("z",) if per_plane else ()))
            if k in fields]
    any_qc = qc_ok.groupby(keys, dropna=False).transform("any")
    return qc_ok | (ok & ~any_qc)


def well_table(cells: pd.DataFrame, fields: pd.DataFrame, marker: str = "er",
               compartment: str = "nucleus", per_plane: bool = False) -> pd.DataFrame:
    """Per plate × time point × well (× Z plane with ``per_plane``, ``--z all``): counts
    from every ok field, marker statistics from the cells of fields that pass focus QC
    (all ok fields when none does)."""
    value = f"{compartment}_{marker}_mean_bgcorr"
    wkeys = WELL_KEYS + (["z"] if per_plane else [])
    ckeys = ["plate", "timepoint", "well"] + (["z"] if per_plane else [])
    f = fields.copy()
    f["_ok"] = f["status"] == "ok"
    f["_use"] = marker_fields(f, per_plane)
    f["_flagged"] = f["_ok"] & (_flags(f) != "")
    rows = []
    cells_by = dict(tuple(cells.groupby(ckeys, sort=False))) if len(cells) else {}
    for key, g in f.groupby(wkeys, sort=True, dropna=False):
        ok = g[g["_ok"]]
        use = g[g["_use"]]
        c = cells_by.get((key[0], key[1], key[3], *key[6:]))
        c = c[c["field"].isin(use["field"])] if c is not None else None
        n = 0 if c is None else len(c)
        vals = c[value].to_numpy(float) if n and value in c else np.zeros(0)
        cls = c[f"{marker}_class"].to_numpy(int) if n and f"{marker}_class" in c else None
        flags_w = sorted({fl for s in g.loc[g["_ok"], "qc_flags"].fillna("").astype(str)
                          for fl in s.split(";") if fl})
        row = dict(zip(wkeys, key))
        row.update({
            "n_nuclei": int(ok["n_nuclei"].sum()) if len(ok) else 0,
            "n_fields": len(g), "n_fields_ok": int(g["_ok"].sum()),
            "n_fields_failed": int((~g["_ok"]).sum()),
            "n_fields_flagged": int(g["_flagged"].sum()), "qc_flags": ";".join(flags_w),
            f"{marker}_fields_used": len(use), f"{marker}_n_cells": n,
            f"{marker}_mean": float(np.nanmean(vals)) if vals.size else np.nan,
            f"{marker}_median": float(np.nanmedian(vals)) if vals.size else np.nan,
            f"pct_{marker}_positive": 100.0 * float((cls >= 1).mean()) if n and cls is not None
            else np.nan,
            "h_score": float(np.bincount(cls.clip(0, 3), minlength=4)[1:] @ [1, 2, 3]) * 100 / n
            if n and cls is not None else np.nan,
        })
        if marker != "er":
            row[f"{marker}_h_score"] = row.pop("h_score")
        rows.append(row)
    return pd.DataFrame(rows)


def reduce_run(outdir: Path, summaries: list[dict], *, params: Params, markers: Sequence[str],
               plate_map: pd.DataFrame | None = None, flatfield: bool = True,
               log=None, per_plane: bool = False, mosaic: dict | None = None,
               save_labels: bool = False) -> dict:
    """Merge the parts in ``outdir`` into cells.parquet, fields.csv and wells.csv.

    ``per_plane`` (``--z all``): the parts are Z planes of fields (a ``z`` key): each
    plane is reduced as a plate of its own (flat field and ER reference per plate × plane,
    so a plane's rows equal a run of that plane alone) and ``wells.csv`` has one row per
    well and plane.

    ``mosaic`` (the run's :class:`erquant.io.mosaic.MosaicLayout` as a dict): the parts
    are tiles of one image; their cells are numbered 1..N across the mosaic (tile by
    tile) and, with ``save_labels``, the tiles' labels are stitched into
    ``labels/<plate>_nuclei.zarr`` / ``_cells.zarr``.
    """
    keys = KEYS + (["z"] if per_plane else [])
    split = keys[len(KEYS):]  # --z all: flat field and ER reference per Z plane
    import pyarrow as pa
    import pyarrow.parquet as pq

    from erquant.classify import classify_cells, field_scores

    log = log or (lambda msg: None)
    outdir = Path(outdir)
    fields = pd.DataFrame(summaries)
    for c, default in [*((k, np.nan) for k in keys), ("status", "failed"), ("error", ""),
                       ("n_nuclei", 0), ("qc_flags", ""), ("id", "")]:
        if c not in fields:
            fields[c] = default
    fields["time_h"] = pd.to_numeric(fields["time_h"], errors="coerce").astype(float)
    for c in ("timepoint", "row", "col", "field", *(("z",) if per_plane else ())):
        fields[c] = fields[c].astype(int)
    fields = fields.sort_values(keys, kind="stable").reset_index(drop=True)
    wellmap = _join_map(fields, plate_map)
    fields = fields.drop(columns=[c for c in MAP_COLUMNS if c in fields]).merge(
        wellmap, on=["plate", "timepoint", "time_h", "well"], how="left")
    ok = fields[fields["status"] == "ok"]
    parts = [outdir / "parts" / f"{i}.parquet" for i in ok["id"]]
    cp = params.classify
    # ---- pass 1: light columns of every cell
    cols = keys + ["centroid_y", "centroid_x", f"nucleus_{params.nuclei_name}_mean_bgcorr"] + \
        [f"{cp.compartment}_{m}_mean_bgcorr" for m in markers]
    light = pd.concat([_read_columns(p, cols) for p in parts], ignore_index=True) \
        if parts else pd.DataFrame(columns=cols)
    light = light.merge(wellmap, on=["plate", "timepoint", "time_h", "well"], how="left")
    light["_cell_line"] = light["cell_line"].astype(object).fillna("").astype(str)
    notes: dict = {"flatfield": {}, "reference": {}}
    if mosaic is not None:
        notes["flatfield"] = "not fitted: tiles of one mosaic"
    gains = {}
    if flatfield and len(light):
        from erquant.illumination import fit_illumination

        for pkey, g in light.groupby(["plate", *split]):  # per plate (and Z plane)
            plate = pkey[0]
            name = " ".join([str(plate), *(f"z{int(z)}" for z in pkey[1:])])
            shapes = ok.loc[ok["plate"] == plate, ["height", "width"]].drop_duplicates()
            if len(shapes) != 1:
                notes["flatfield"][name] = "not fitted: fields of different shapes"
                continue
            shape = tuple(int(v) for v in shapes.iloc[0])
            try:
                ill = fit_illumination([t for _, t in g.groupby(["timepoint", "well", "field",
                                                                 *keys[len(KEYS):]])],
                                       shape, column=f"nucleus_{params.nuclei_name}_mean_bgcorr")
            except ValueError as exc:
                notes["flatfield"][name] = f"not fitted: {exc}"
                continue
            gains[tuple(pkey)] = ill
            corrected = ill.correct_table(g, list(markers))
            for m in markers:
                col = f"{cp.compartment}_{m}_mean_bgcorr"
                if col in corrected:
                    light.loc[g.index, col] = corrected[col].to_numpy()
            notes["flatfield"][name] = {"coef": list(ill.coef), "n_cells": ill.n_cells,
                                        "min_gain": float(ill.gain_map().min())}
    thresholds = _thresholds(light, markers, params, split)
    for k, per in thresholds.items():
        notes["reference"]["/".join(map(str, k))] = {m: kw["basis"] for m, kw in per.items()}
    del light
    # ---- pass 2: every part → corrected, classified, keyed rows in one Parquet file
    dest = outdir / "cells.parquet"
    tmp = dest.with_name(f".tmp-{os.getpid()}-cells.parquet")
    writer, schema, score_rows, well_cells = None, None, {}, []
    offsets: dict = {}  # mosaic: tile id → the global label of its cell 0
    next_label = 0
    map_cols = [c for c in wellmap.columns if c not in ("plate", "timepoint", "time_h", "well")]
    try:
        for pid, path in zip(ok["id"], parts):
            t = pd.read_parquet(path)
            if mosaic is not None:  # global, compact cell numbers, tile by tile
                offsets[pid] = next_label
                t["label"] = t["label"].astype(np.int64) + next_label
                next_label += len(t)
            if not len(t):
                continue
            t = t.merge(wellmap, on=["plate", "timepoint", "time_h", "well"], how="left")
            plate = t["plate"].iloc[0]
            plane = [t[c].iloc[0] for c in split]
            if (plate, *plane) in gains:
                t = gains[(plate, *plane)].correct_table(t, [params.nuclei_name, *markers])
            else:
                t["flatfield_gain"] = 1.0
            per = thresholds.get(_group_key(plate, t["timepoint"].iloc[0],
                                            t["cell_line"].iloc[0], *plane), {})
            scores = {}
            for m in markers:
                kw = {k: v for k, v in per.get(m, {}).items() if k != "basis"}
                if kw:
                    t = classify_cells(t, **kw)
                    scores.update(field_scores(t, channel=m, compartment=cp.compartment,
                                               prefix=True))
            score_rows[pid] = scores
            if schema is None:
                schema = pa.Schema.from_pandas(t, preserve_index=False)
                writer = pq.ParquetWriter(tmp, schema)
            tab = pa.Table.from_pandas(t[schema.names], schema=schema, preserve_index=False)
            writer.write_table(tab)
            keep = ["plate", "timepoint", "well", "field", *keys[len(KEYS):]] + [
                c for m in markers for c in (f"{cp.compartment}_{m}_mean_bgcorr", f"{m}_class")]
            well_cells.append(t[[c for c in keep if c in t]])
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no cell at all: an empty, readable table with the keys
        pd.DataFrame({c: pd.Series(dtype=float if c == "time_h" else object)
                      for c in KEYS + ["label"]}).to_parquet(tmp, index=False)
    os.replace(tmp, dest)
    if mosaic is not None and save_labels:
        from erquant.io.mosaic import stitch_labels

        notes["labels"] = stitch_labels(outdir, ok, offsets, mosaic)
    # ---- fields.csv: summaries with the plate-wide scores
    for pid, sc in score_rows.items():
        for k, v in sc.items():
            col = k if k != "n_cells" else None
            if col:
                fields.loc[fields["id"] == pid, col] = v
    front = keys + (["z"] if "z" in fields and not per_plane else []) + [
        "status", "error", "seconds", "n_nuclei", "diameter_px", "threshold", "downsample",
        "qc_flags"] + map_cols
    internal = ("traceback", "sources", "fingerprint", "worker_pid", "files")
    rest = [c for c in fields.columns if c not in front and c not in internal]
    fields_out = fields[[c for c in front if c in fields] + rest].copy()
    fields_out["files"] = [";".join(str(f[0]) for f in fs) if isinstance(fs, list) else ""
                           for fs in fields.get("files", [None] * len(fields))]
    fields_out.to_csv(outdir / "fields.csv", index=False)
    # ---- wells.csv
    cells_small = pd.concat(well_cells, ignore_index=True) if well_cells else pd.DataFrame(
        columns=["plate", "timepoint", "well", "field"])
    wells = None
    for m in markers or ["er"]:
        w = well_table(cells_small, fields, marker=m, compartment=cp.compartment,
                       per_plane=per_plane)
        wk = WELL_KEYS + keys[len(KEYS):]
        wells = w if wells is None else wells.merge(
            w[[c for c in w.columns if c not in wells.columns or c in wk]], on=wk, how="left")
    if wells is not None and len(wells):
        wells = wells.merge(wellmap, on=["plate", "timepoint", "time_h", "well"], how="left")
    else:
        wells = pd.DataFrame(columns=WELL_KEYS + ["n_nuclei"])
    wells.to_csv(outdir / "wells.csv", index=False)
    return {"cells": dest, "fields": outdir / "fields.csv", "wells": outdir / "wells.csv",
            "n_cells": int(sum(len(c) for c in well_cells)), "notes": notes,
            "n_wells": len(wells)}
