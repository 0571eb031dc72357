"""``erquant demo``: generate the synthetic demo plate (if missing), quantify every
field, correct vignetting, and compare per-well results with the ground truth.

Outputs (in ``outdir``): ``cells.parquet`` (one row per cell), ``fields.csv``
(one row per field: counts, scores, QC), ``wells.csv`` (per well, with truth; ERα
from the fields that pass focus QC, counts from all fields),
``dose_response.png`` (ERα and cell count vs concentration, measured vs truth)
and ``params.toml``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from erquant.params import Params


def _ensure_plate(plate: Path, regenerate: bool) -> None:
    from erquant.synthetic import PlateSpec, write_plate

    if regenerate or not (plate / "plate_map.csv").exists():
        print(f"generating the synthetic demo plate in {plate} ...")
        write_plate(PlateSpec(), plate, formats=("metaxpress",), progress=True)


def quantify_plate_folder(plate: Path, *, backend: str = "auto", params: Params | None = None,
                          progress: bool = True):
    """Quantify every field of a MetaXpress-style plate folder, vehicle wells first.

    Returns (cells, fields, failures): per-cell and per-field DataFrames and a list of
    (field description, error message) for fields that failed (the others go on).
    """
    from tqdm import tqdm

    from erquant.io import load_field, scan_plate_folder
    from erquant.pipeline import quantify

    params = params or Params()
    index = scan_plate_folder(plate)
    pmap_path = plate / "plate_map.csv"
    if pmap_path.exists():
        pmap = pd.read_csv(pmap_path)
        keep = [c for c in ("well", "compound", "concentration_nM", "role", "cell_line")
                if c in pmap]
        index = index.merge(pmap[keep].drop_duplicates("well"), on="well", how="left")
    else:
        index["role"] = "sample"
    index["_order"] = np.where(index["role"] == "vehicle", 0, 1)
    index = index.sort_values(["_order", "timepoint", "well", "field"]).drop(columns="_order")

    cells, fields, failures, reference = [], [], [], None
    for _, row in tqdm(index.iterrows(), total=len(index), desc="quantify", unit="field",
                       disable=not progress):
        key = {k: row[k] for k in ("well", "field", "timepoint", "time_h")}
        try:
            img = load_field(row, channels=("w1", "w2"))
            if reference is None and row.get("role") != "vehicle" and cells:
                veh = [c for c in cells if (c["role"] == "vehicle").all()]
                if veh:
                    reference = pd.concat(veh)["nucleus_er_mean_bgcorr"].to_numpy()
            res = quantify(img, nuclei_channel=0, marker_channels={"er": 1}, params=params,
                           backend=backend, reference=reference)
        except Exception as exc:  # record, carry on with the rest
            failures.append((f"{row['path_w1']}", f"{type(exc).__name__}: {exc}"))
            continue
        t = res.table
        for k, v in key.items():
            t.insert(0, k, v)
        t.insert(0, "role", row.get("role"))
        cells.append(t)
        fields.append({**key, "role": row.get("role"), "compound": row.get("compound"),
                       "concentration_nM": row.get("concentration_nM"), **res.summary()})
    cells_df = pd.concat(cells, ignore_index=True) if cells else pd.DataFrame()
    return cells_df, pd.DataFrame(fields), failures


def run_demo(plate: Path, outdir: Path, *, regenerate: bool = False, backend: str = "auto") -> int:
    from erquant.illumination import fit_illumination

    t0 = time.perf_counter()
    _ensure_plate(plate, regenerate)
    outdir.mkdir(parents=True, exist_ok=True)
    params = Params()
    params.to_toml(outdir / "params.toml")
    cells, fields, failures = quantify_plate_folder(plate, backend=backend, params=params)
    for what, msg in failures:
        print(f"error: {what}: {msg}", file=sys.stderr)
    if cells.empty:
        print("no field could be quantified", file=sys.stderr)
        return 1

    # vignetting: fit the gain from the nuclear stain of all cells, correct the tables
    shape = _field_shape(plate)
    ill = fit_illumination([g for _, g in cells.groupby(["well", "field", "timepoint"])], shape)
    cells = ill.correct_table(cells, ["nuclei", "er"])
    # classify all cells against the (corrected) vehicle cells of the plate
    from erquant.classify import classify_cells

    veh = cells[cells["role"] == "vehicle"]
    if len(veh):
        cells = classify_cells(cells, channel="er", reference=veh)
    cells.to_parquet(outdir / "cells.parquet", index=False)
    fields.to_csv(outdir / "fields.csv", index=False)

    wells, er_fields = _well_table(cells, fields)
    wells["cells_per_field"] = wells["n_cells"] / wells["n_fields"]
    truth_path = plate / "truth" / "wells.csv"
    if truth_path.exists():
        truth = pd.read_csv(truth_path)
        truth = truth[["well", "time_h", "compound", "concentration_nM", "role", "true_count",
                       "mean_true_er"]]
        tf_path = plate / "truth" / "fields.csv"
        if tf_path.exists():  # true ERα over the same fields the ERα mean used
            tf = pd.read_csv(tf_path).merge(er_fields, on=["well", "field", "timepoint"])
            tf["w"] = tf["true_count"] * tf["mean_true_er"]
            g = tf.groupby(["well", "time_h"])[["w", "true_count"]].sum()
            er_truth = (g["w"] / g["true_count"]).rename("mean_true_er").reset_index()
            truth = truth.drop(columns="mean_true_er").merge(er_truth, on=["well", "time_h"],
                                                             how="left")
        wells = wells.merge(truth, on=["well", "time_h"], how="left")
    wells.to_csv(outdir / "wells.csv", index=False)
    _print_summary(wells)
    png = _plot(wells, outdir / "dose_response.png")
    secs = time.perf_counter() - t0
    print(f"\n{len(fields)} fields, {len(cells)} cells quantified in {secs:.1f} s "
          f"({len(failures)} failed)")
    print(f"outputs in {outdir.resolve()}:")
    for name in ("cells.parquet", "fields.csv", "wells.csv", "params.toml"):
        print(f"  {outdir / name}")
    if png:
        print(f"  {png}")
    return 0 if not failures else 1


def _well_table(cells: pd.DataFrame, fields: pd.DataFrame) -> pd.DataFrame:
    """Per-well counts (all fields) and ERα (fields that pass focus QC, all if none do)."""
    keys = ["well", "field", "timepoint"]
    flags = fields["qc_flags"].fillna("").astype(str)
    fields = fields.assign(qc_ok=~flags.str.contains("out_of_focus|empty"))
    ok = cells.merge(fields[keys + ["qc_ok"]], on=keys, how="left")["qc_ok"].fillna(True)
    well_has_ok = ok.groupby([cells["well"], cells["time_h"]]).transform("any")
    use = ok.to_numpy() | ~well_has_ok.to_numpy()
    counts = cells.groupby(["well", "time_h"]).size().rename("n_cells")
    er = (cells[use].groupby(["well", "time_h"])
          .agg(er_mean=("nucleus_er_mean_bgcorr", "mean"),
               er_pct_positive=("er_positive", "mean"),
               er_fields_used=("field", "nunique")))
    er["er_pct_positive"] *= 100
    nf = fields.groupby(["well", "time_h"]).size().rename("n_fields")
    used = cells.loc[use, keys].drop_duplicates()
    return pd.concat([counts, er, nf], axis=1).reset_index(), used


def _field_shape(plate: Path) -> tuple[int, int]:
    import tifffile

    first = next(plate.rglob("*_w1.tif"))
    return tuple(tifffile.imread(first).shape[-2:])


def _print_summary(wells: pd.DataFrame) -> None:
    if "compound" not in wells:
        print(wells.to_string(index=False))
        return
    veh = wells[wells["role"] == "vehicle"]
    er0, n0 = veh["er_mean"].mean(), veh["cells_per_field"].mean()
    t_er0 = veh["mean_true_er"].mean()
    t_n0 = (veh["true_count"] / veh["n_fields"]).mean()
    w = wells.copy()
    w["count_%veh"] = 100 * w["cells_per_field"] / n0
    w["true_count_%veh"] = 100 * w["true_count"] / w["n_fields"] / t_n0
    w["ER_%veh"] = 100 * w["er_mean"] / er0
    w["true_ER_%veh"] = 100 * w["mean_true_er"] / t_er0
    w["compound"] = w["compound"].fillna("DMSO")
    cols = ["compound", "concentration_nM", "well", "n_cells", "true_count", "count_%veh",
            "true_count_%veh", "ER_%veh", "true_ER_%veh", "er_pct_positive", "er_fields_used"]
    summ = w.sort_values(["compound", "concentration_nM"])[cols]
    with pd.option_context("display.float_format", "{:.1f}".format, "display.width", 140):
        print("\nper-well results (measured vs ground truth; % of vehicle):")
        print(summ.to_string(index=False))
    cnt_err = (w["n_cells"] / w["true_count"] - 1).abs()
    print(f"\ncount error per well: median {100 * cnt_err.median():.1f} %, "
          f"max {100 * cnt_err.max():.1f} %")
    print("ERα per well comes from the fields that pass focus QC (er_fields_used of "
          "n_fields); a well with none uses all its fields")
    er_err = (w["ER_%veh"] - w["true_ER_%veh"]).abs()
    print(f"ERα (% of vehicle) error per well: median {er_err.median():.1f} points, "
          f"max {er_err.max():.1f} points")


def _plot(wells: pd.DataFrame, path: Path):
    if "compound" not in wells:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    veh = wells[wells["role"] == "vehicle"]
    er0, n0 = veh["er_mean"].mean(), veh["cells_per_field"].mean()
    t_er0 = veh["mean_true_er"].mean()
    t_n0 = (veh["true_count"] / veh["n_fields"]).mean()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, g in wells[wells["role"] == "sample"].groupby("compound"):
        g = g.sort_values("concentration_nM")
        c = g["concentration_nM"]
        line, = axes[0].plot(c, 100 * g["er_mean"] / er0, "o", label=f"{name} measured")
        axes[0].plot(c, 100 * g["mean_true_er"] / t_er0, "-", color=line.get_color(),
                     alpha=0.6, label=f"{name} truth")
        axes[1].plot(c, 100 * g["cells_per_field"] / n0, "o", color=line.get_color())
        axes[1].plot(c, 100 * g["true_count"] / g["n_fields"] / t_n0, "-",
                     color=line.get_color(), alpha=0.6)
    for ax, title in zip(axes, ("nuclear ERα (% of vehicle)", "cells per field (% of vehicle)")):
        ax.set_xscale("log")
        ax.set_xlabel("concentration (nM)")
        ax.set_title(title)
        ax.set_ylim(0, 130)
        ax.axhline(100, color="grey", lw=0.5)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
