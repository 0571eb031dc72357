"""``erquant.demo.run_demo`` end to end on a tiny synthetic plate with ground truth."""

from __future__ import annotations

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
    rc = run_demo(plate, out, backend="numpy")
    return rc, plate, out


def test_demo_returns_0_and_writes_outputs(demo_run):
    rc, _plate, out = demo_run
    assert rc == 0
    for name in ("cells.parquet", "fields.csv", "wells.csv", "params.toml", "dose_response.png"):
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
    wells = pd.read_csv(out / "wells.csv").set_index("well")
    assert sorted(wells.index) == sorted(WELLS)
    rel = (wells["n_cells"] / wells["true_count"] - 1).abs()
    assert (rel <= 0.15).all(), wells[["n_cells", "true_count"]].assign(rel_err=rel).to_string()


def test_demo_er_positivity_and_degradation(demo_run):
    _, _, out = demo_run
    wells = pd.read_csv(out / "wells.csv").set_index("well")
    veh = wells[wells["role"] == "vehicle"]
    assert sorted(veh.index) == ["A11", "B11"]
    assert (veh["er_pct_positive"] >= 80).all(), veh["er_pct_positive"].to_dict()
    # 1 µM of the degrader removes most ERα: far below vehicle, as in the truth
    er0, t0 = veh["er_mean"].mean(), veh["mean_true_er"].mean()
    hi = wells.loc["A08"]
    assert hi["er_mean"] / er0 < 0.5
    assert abs(hi["er_mean"] / er0 - hi["mean_true_er"] / t0) <= 0.1
    assert hi["er_pct_positive"] < veh["er_pct_positive"].min()


def test_well_table_takes_er_from_in_focus_fields_only():
    import pandas as pd

    from erquant.demo import _well_table

    cells = pd.DataFrame({
        "well": ["A01"] * 4 + ["A02"] * 2, "field": [1, 1, 2, 2, 1, 1],
        "timepoint": 1, "time_h": 24.0, "label": [1, 2, 1, 2, 1, 2],
        "nucleus_er_mean_bgcorr": [100.0, 110.0, 50.0, 50.0, 70.0, 90.0],
        "er_positive": [True, True, False, False, True, False]})
    fields = pd.DataFrame({"well": ["A01", "A01", "A02"], "field": [1, 2, 1], "timepoint": 1,
                           "time_h": 24.0, "qc_flags": [None, "out_of_focus", "out_of_focus"]})
    wells, used = _well_table(cells, fields)
    a1 = wells.set_index("well").loc["A01"]
    assert a1["n_cells"] == 4 and a1["n_fields"] == 2  # counts: all fields
    assert a1["er_mean"] == 105.0 and a1["er_fields_used"] == 1  # ERα: the in-focus field
    a2 = wells.set_index("well").loc["A02"]
    assert a2["er_mean"] == 80.0 and a2["er_fields_used"] == 1  # none in focus: all fields
    assert sorted(map(tuple, used[["well", "field"]].to_numpy())) == [("A01", 1), ("A02", 1)]
