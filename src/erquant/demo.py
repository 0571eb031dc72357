"""``erquant demo``: generate the synthetic demo plate, quantify it with the batch engine
(``erquant run``: dask workers, plate map, flat field, plate-level ER scoring,
dose-response fits and report), and compare per-well results and fitted potencies
with the ground truth.

The plate lives under the output folder (``<outdir>/demo_plate``) unless ``plate`` names
another folder; the generator refuses to write into a folder that holds anything but a
plate it generated, so the demo never touches user data.

Outputs (in ``outdir``): everything ``erquant run`` writes (``cells.parquet``,
``fields.csv``, ``wells.csv``, ``run.json``, ``dose_response.csv``, ``report.html``, …),
plus ``params.toml``, ``truth_vs_measured.png`` and ``wells_vs_truth.csv``.
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


def run_demo(plate: Path | None, outdir: Path, *, regenerate: bool = False,
             backend: str = "auto", workers: int | None = None,
             method: str = "auto") -> int:
    """Generate (if needed) and quantify the demo plate; print measured vs true results."""
    from erquant.batch import run_batch

    t0 = time.perf_counter()
    outdir = Path(outdir)
    plate = Path(plate) if plate is not None else outdir / "demo_plate"
    _ensure_plate(plate, regenerate)
    outdir.mkdir(parents=True, exist_ok=True)
    params = Params().replace(**{"segment.method": method})
    params.to_toml(outdir / "params.toml")
    res = run_batch(plate, outdir, params=params, backend=backend, workers=workers,
                    plate_map=plate / "plate_map.csv", overwrite=regenerate)
    for what, msg in res.failures:
        print(f"error: {what}: {msg}", file=sys.stderr)
    if res.n_ok == 0:
        print("no field could be quantified", file=sys.stderr)
        return 1
    wells = pd.read_csv(outdir / "wells.csv")
    fields = pd.read_csv(outdir / "fields.csv", dtype={"qc_flags": str, "error": str})
    wells["cells_per_field"] = wells["n_nuclei"] / wells["n_fields_ok"].clip(lower=1)
    truth_path = plate / "truth" / "wells.csv"
    if truth_path.exists():
        wells = _with_truth(wells, fields, plate)
        wells.to_csv(outdir / "wells_vs_truth.csv", index=False)
        _print_summary(wells)
        _plot(wells, outdir / "truth_vs_measured.png")
        _print_fits(outdir, plate)
    secs = time.perf_counter() - t0
    print(f"\n{res.n_fields} fields quantified in {secs:.1f} s ({res.n_failed} failed)")
    print(f"outputs in {outdir.resolve()}:")
    for name in ("cells.parquet", "fields.csv", "wells.csv", "dose_response.csv",
                 "report.html", "truth_vs_measured.png", "params.toml", "run.json"):
        if (outdir / name).exists():
            print(f"  {outdir / name}")
    return res.exit_code


def _with_truth(wells: pd.DataFrame, fields: pd.DataFrame, plate: Path) -> pd.DataFrame:
    """Add true counts and the true ERα over the same fields the measured ERα used."""
    truth = pd.read_csv(plate / "truth" / "wells.csv")
    truth = truth[["well", "time_h", "true_count", "mean_true_er"]]
    from erquant.batch.reduce import marker_fields

    used = fields.loc[marker_fields(fields), ["well", "field", "timepoint"]]
    tf = pd.read_csv(plate / "truth" / "fields.csv").merge(used, on=["well", "field",
                                                                     "timepoint"])
    tf["w"] = tf["true_count"] * tf["mean_true_er"]
    g = tf.groupby(["well", "time_h"])[["w", "true_count"]].sum()
    er_truth = (g["w"] / g["true_count"]).rename("mean_true_er").reset_index()
    truth = truth.drop(columns="mean_true_er").merge(er_truth, on=["well", "time_h"], how="left")
    return wells.merge(truth, on=["well", "time_h"], how="left")


def _print_fits(outdir: Path, plate: Path) -> None:
    """Fitted DC50 / IC50 / Dmax next to the generator's truth."""
    dr_path, tc_path = outdir / "dose_response.csv", plate / "truth" / "compounds.csv"
    if not dr_path.exists() or not tc_path.exists():
        return
    dr = pd.read_csv(dr_path)
    truth = pd.read_csv(tc_path)
    rows = []
    for _, fit in dr[dr["readout"].isin(["er_mean", "n_nuclei"])].iterrows():
        t = truth[(truth["compound"] == fit["compound"]) & (truth["time_h"] == fit["time_h"])]
        if t.empty:
            continue
        t = t.iloc[0]
        er = fit["readout"] == "er_mean"
        est = fit["dc50_nM"] if er else fit["ic50_nM"]
        true = t["dc50_nM"] if er else t["ic50_nM"]
        rows.append({"compound": fit["compound"], "time_h": fit["time_h"],
                     "readout": "DC50 (ERα)" if er else "IC50 (count)",
                     "fitted_nM": est, "ci_low_nM": fit["ci_low_nM"],
                     "ci_high_nM": fit["ci_high_nM"], "true_nM": true,
                     "ratio": est / true if true else np.nan,
                     "fitted_max_effect_%": fit["dmax_pct"],
                     "true_max_effect_%": 100 * (t["dmax"] if er else t["imax"]),
                     "flag": fit["flag"]})
    if not rows:
        return
    tab = pd.DataFrame(rows)
    with pd.option_context("display.float_format", "{:.3g}".format, "display.width", 160):
        print("\nfitted potency vs ground truth (4-parameter log-logistic, dose_response.csv):")
        print(tab.to_string(index=False))


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
    cols = ["compound", "concentration_nM", "well", "n_nuclei", "true_count", "count_%veh",
            "true_count_%veh", "ER_%veh", "true_ER_%veh", "pct_er_positive", "er_fields_used"]
    summ = w.sort_values(["compound", "concentration_nM"])[cols]
    with pd.option_context("display.float_format", "{:.1f}".format, "display.width", 140):
        print("\nper-well results (measured vs ground truth; % of vehicle):")
        print(summ.to_string(index=False))
    cnt_err = (w["n_nuclei"] / w["true_count"] - 1).abs()
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
