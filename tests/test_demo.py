"""``erquant.demo.run_demo`` end to end on a tiny synthetic plate with ground truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from erquant.demo import run_demo
from erquant.params import Params
from erquant.synthetic import PlateSpec, write_plate

WELLS = ["A01", "A08", "A11", "B11"]  # lowest / highest imlunestrant-like dose, 2 vehicles


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    plate, out = root / "plate", root / "out"
    spec = PlateSpec(shape=(256, 256), fields_per_well=1, n_nuclei=40,
                     out_of_focus_fraction=0.0, seed=3)
    write_plate(spec, plate, formats=("metaxpress",), progress=False, wells=WELLS)
    rc = run_demo(plate, out, backend="numpy", workers=0)
    return rc, plate, out


def test_demo_returns_0_and_writes_outputs(demo_run):
    rc, _plate, out = demo_run
    assert rc == 0
    for name in ("cells.parquet", "fields.csv", "wells.csv", "params.toml", "run.json",
                 "truth_vs_measured.png", "wells_vs_truth.csv"):
        assert (out / name).exists() and (out / name).stat().st_size > 0, name
    assert Params.from_toml(out / "params.toml") == Params()
    fields = pd.read_csv(out / "fields.csv")
    assert len(fields) == len(WELLS)
    cells = pd.read_parquet(out / "cells.parquet")
    assert {"well", "label", "nucleus_er_mean_bgcorr", "er_positive", "flatfield_gain"} <= set(
        cells.columns)
    assert len(cells) == int(fields["n_nuclei"].sum())


def test_demo_counts_match_truth(demo_run):
    _, _, out = demo_run
    wells = pd.read_csv(out / "wells_vs_truth.csv").set_index("well")
    assert sorted(wells.index) == sorted(WELLS)
    rel = (wells["n_nuclei"] / wells["true_count"] - 1).abs()
    assert (rel <= 0.15).all(), wells[["n_nuclei", "true_count"]].assign(rel_err=rel).to_string()


def test_demo_er_positivity_and_degradation(demo_run):
    _, _, out = demo_run
    wells = pd.read_csv(out / "wells_vs_truth.csv").set_index("well")
    veh = wells[wells["role"] == "vehicle"]
    assert sorted(veh.index) == ["A11", "B11"]
    assert (veh["pct_er_positive"] >= 80).all(), veh["pct_er_positive"].to_dict()
    # 1 µM of the degrader removes most ERα: far below vehicle, as in the truth
    er0, t0 = veh["er_mean"].mean(), veh["mean_true_er"].mean()
    hi = wells.loc["A08"]
    assert hi["er_mean"] / er0 < 0.5
    assert abs(hi["er_mean"] / er0 - hi["mean_true_er"] / t0) <= 0.1
    assert hi["pct_er_positive"] < veh["pct_er_positive"].min()


def test_well_table_takes_er_from_in_focus_fields_only():
    from erquant.batch.reduce import well_table

    cells = pd.DataFrame({
        "plate": "P", "timepoint": 1, "well": ["A01"] * 4 + ["A02"] * 2,
        "field": [1, 1, 2, 2, 1, 1],
        "nucleus_er_mean_bgcorr": [100.0, 110.0, 50.0, 50.0, 70.0, 90.0],
        "er_class": [2, 3, 0, 0, 1, 0]})
    fields = pd.DataFrame({"plate": "P", "timepoint": 1, "time_h": 24.0, "row": 1,
                           "well": ["A01", "A01", "A02", "A03"], "col": [1, 1, 2, 3],
                           "field": [1, 2, 1, 1], "status": ["ok", "ok", "ok", "failed"],
                           "n_nuclei": [2, 2, 2, 0],
                           "qc_flags": [None, "out_of_focus", "out_of_focus", None]})
    wells = well_table(cells, fields).set_index("well")
    a1 = wells.loc["A01"]
    assert a1["n_nuclei"] == 4 and a1["n_fields"] == 2  # counts: all fields
    assert a1["er_mean"] == 105.0 and a1["er_fields_used"] == 1  # ERα: the in-focus field
    assert a1["pct_er_positive"] == 100.0 and a1["h_score"] == 250.0
    assert a1["n_fields_flagged"] == 1 and a1["qc_flags"] == "out_of_focus"
    a2 = wells.loc["A02"]
    assert a2["er_mean"] == 80.0 and a2["er_fields_used"] == 1  # none in focus: all fields
    assert a2["pct_er_positive"] == 50.0 and a2["h_score"] == 50.0
    a3 = wells.loc["A03"]  # every field failed: no counts, no ERα, recorded
    assert a3["n_nuclei"] == 0 and a3["n_fields_failed"] == 1 and np.isnan(a3["er_mean"])
