"""``erquant run`` / ``run_batch``: inputs, clusters, resume after SIGKILL, failures, fail-fast.

Every run here is real: generated plates on disk, real Parquet parts, a real
``dask.distributed`` LocalCluster, and an explicitly started ``dask scheduler`` with two
``dask worker`` processes on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from erquant.cli import main
from erquant.synthetic import CompoundSpec, PlateSpec, write_plate

BIN = Path(sys.executable).parent
VOLATILE = ["seconds", "worker_pid", "backend"]  # differ between runs by nature

SMALL = PlateSpec(
    name="RUN01", shape=(192, 192), fields_per_well=2, n_nuclei=24,
    compounds=(CompoundSpec("cpdA", dc50_nM=3.0, dmax=0.9, ic50_nM=30.0),),
    doses_nM=(0.3, 3.0, 30.0, 300.0), n_vehicle=2, n_reference=1, time_points_h=(24.0,),
    out_of_focus_fraction=0.0, seed=3)


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Path:
    """7 wells × 2 fields, MetaXpress (TimePoint_1/) + OME-TIFF stack + plate map + truth."""
    return write_plate(SMALL, tmp_path_factory.mktemp("plate") / "RUN01", progress=False)


@pytest.fixture(scope="module")
def reference_run(plate, tmp_path_factory) -> Path:
    """The uninterrupted in-process run that other runs are compared with."""
    out = tmp_path_factory.mktemp("ref") / "out"
    rc = main(["run", str(plate), "-o", str(out), "--workers", "0", "-q", "--no-report"])
    assert rc == 0
    return out


def _tables(out: Path):
    cells = pd.read_parquet(out / "cells.parquet")
    fields = pd.read_csv(out / "fields.csv").drop(columns=VOLATILE, errors="ignore")
    wells = pd.read_csv(out / "wells.csv")
    return cells, fields, wells


def assert_same_tables(a: Path, b: Path, *, ignore=("files",)):
    for x, y in zip(_tables(a), _tables(b)):
        x = x.drop(columns=[c for c in ignore if c in x])
        y = y.drop(columns=[c for c in ignore if c in y])
        pd.testing.assert_frame_equal(x.reset_index(drop=True), y.reset_index(drop=True))


# --------------------------------------------------------------------------- outputs
def test_run_outputs_and_truth(plate, reference_run):
    cells, fields, wells = _tables(reference_run)
    truth = pd.read_csv(plate / "truth" / "fields.csv")
    assert len(fields) == len(truth) == 14
    assert (fields["status"] == "ok").all()
    # per-field counts close to the generator's truth
    m = fields.merge(truth, on=["well", "field"])
    err = (m["n_nuclei"] - m["true_count"]).abs() / m["true_count"].clip(lower=1)
    assert err.median() <= 0.1, m[["well", "field", "n_nuclei", "true_count"]]
    # one row per cell, keyed; counts agree between tables
    keys = ["plate", "timepoint", "well", "field", "label"]
    assert not cells.duplicated(keys).any()
    per_field = cells.groupby(["well", "field"]).size()
    assert per_field.sum() == fields["n_nuclei"].sum() == wells["n_nuclei"].sum()
    assert set(wells.columns) >= {"well", "n_nuclei", "n_fields", "er_mean", "er_median",
                                  "pct_er_positive", "h_score", "compound",
                                  "concentration_nM", "role"}
    # plate-map columns reach every table (plate_map.csv found in the input folder)
    assert set(cells["role"].dropna()) == {"sample", "vehicle", "reference"}
    assert wells["compound"].notna().all()
    run = json.loads((reference_run / "run.json").read_text())
    assert run["status"] == "done" and run["n_ok"] == 14 and run["n_failed"] == 0
    assert run["versions"]["erquant"] and run["input_files"]
    assert (reference_run / "run.log").read_text().count(" ok: ") == 14


def test_plate_level_scoring_is_consistent(reference_run):
    """Vehicle fields are scored against the same plate reference as treated ones."""
    _, fields, wells = _tables(reference_run)
    veh = wells[wells["role"] == "vehicle"]
    top = wells[(wells["role"] == "sample") & (wells["concentration_nM"] == 300.0)]
    # positive = ≥ 50 % of the vehicle median: most vehicle cells are positive ...
    assert (veh["pct_er_positive"] > 80).all(), veh
    # ... the same figure in fields.csv and wells.csv
    vf = fields[fields["role"] == "vehicle"]
    assert (vf["er_pct_positive"] > 80).all()
    # ... and a degraded well (dmax 0.9 × (1-e^-4) at 100× DC50) has few positive cells
    assert (top["pct_er_positive"] < 30).all(), top
    assert top["er_mean"].iloc[0] < 0.35 * veh["er_mean"].mean()


def test_ome_stack_input_gives_the_same_cells(plate, reference_run, tmp_path):
    out = tmp_path / "ome"
    assert main(["run", str(plate / "plate.ome.tif"), "-o", str(out), "--workers", "0", "-q",
                 "--no-report"]) == 0
    a, b = _tables(reference_run), _tables(out)
    assert len(b[1]) == 14
    ca, cb = a[0].drop(columns=["plate"]), b[0].drop(columns=["plate"])
    pd.testing.assert_frame_equal(ca, cb)


def test_pattern_input_with_named_channels(plate, reference_run, tmp_path):
    src = tmp_path / "other_names"
    src.mkdir()
    for p in (plate / "TimePoint_1").glob("*.tif"):  # A01_s2_w1.tif → RUN01-A1-f2-DAPI.tiff
        well, s, w = p.stem.split("_")
        dye = {"w1": "DAPI", "w2": "AF488"}[w]
        shutil.copy(p, src / f"RUN01-{well[0]}{int(well[1:])}-f{s[1:]}-{dye}.tiff")
    shutil.copy(plate / "plate_map.csv", src / "plate_map.csv")
    out = tmp_path / "out"
    rc = main(["run", str(src), "-o", str(out), "--workers", "0", "-q", "--no-report",
               "--pattern", r"(?P<plate>\w+)-(?P<well>[A-P]\d+)-f(?P<field>\d+)-(?P<channel>\w+)",
               "--channels", "DAPI=nuclei,AF488=er"])
    assert rc == 0
    a, b = _tables(reference_run)[0], _tables(out)[0]
    pd.testing.assert_frame_equal(a.drop(columns=["time_h", "plate"]),
                                  b.drop(columns=["time_h", "plate"]))
    assert set(b["plate"]) == {"RUN01"}


def test_local_cluster_equals_in_process(plate, reference_run, tmp_path):
    out = tmp_path / "cluster"
    assert main(["run", str(plate), "-o", str(out), "--workers", "2", "-q",
                 "--no-report"]) == 0
    assert_same_tables(reference_run, out)
    run = json.loads((out / "run.json").read_text())
    assert run["n_workers"] == 2 and run["scheduler_address"].startswith("tcp://127.0.0.1")
    assert run["warnings"] == [f"using the plate map {plate / 'plate_map.csv'}"]


def test_save_labels_and_rois(plate, tmp_path):
    from erquant.io.roi import Roi, write_roi_geojson

    roi = write_roi_geojson(tmp_path / "rois.geojson", [
        Roi("left half", [(0, 0), (0, 96), (191, 96), (191, 0)], well="A01"),
        Roi("everywhere-top", [(0, 0), (0, 191), (60, 191), (60, 0)])])
    out = tmp_path / "out"
    assert main(["run", str(plate), "-o", str(out), "--workers", "0", "-q", "--no-report",
                 "--save-labels", "--roi", str(roi)]) == 0
    cells, fields, _ = _tables(out)
    a01 = cells[cells["well"] == "A01"]
    # A01 has both ROIs (the later wins where they overlap), other wells only the top band
    assert set(a01["roi_name"]) <= {"left half", "everywhere-top"}
    assert (a01.loc[a01["roi_name"] == "left half", "centroid_x"] <= 96.5).all()
    other = cells[cells["well"] != "A01"]
    assert set(other["roi_name"]) == {"everywhere-top"}
    assert (other["centroid_y"] <= 60.5).all()
    # label images: one nucleus label per row of the table, cell k holds nucleus k
    row = fields.iloc[3]
    pid = f"RUN01__T0001__{row['well']}__s{int(row['field']):03d}"
    nuc = tifffile.imread(out / "labels" / f"{pid}_nuclei.tif")
    cel = tifffile.imread(out / "labels" / f"{pid}_cells.tif")
    labs = cells[(cells["well"] == row["well"]) & (cells["field"] == row["field"])]["label"]
    assert sorted(np.unique(nuc[nuc > 0])) == sorted(labs) == sorted(np.unique(cel[cel > 0]))


# --------------------------------------------------------------------------- failures
def test_corrupt_file_and_missing_channel_fail_only_their_fields(plate, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(plate, bad, ignore=shutil.ignore_patterns("truth", "*.ome.tif"))
    tp = bad / "TimePoint_1"
    data = (tp / "A02_s1_w1.tif").read_bytes()
    (tp / "A02_s1_w1.tif").write_bytes(data[: len(data) // 3])  # truncated
    (tp / "A03_s2_w2.tif").unlink()  # missing ERα channel
    out = tmp_path / "out"
    rc = main(["run", str(bad), "-o", str(out), "--workers", "0", "-q", "--no-report"])
    assert rc == 1
    err = capsys.readouterr().err
    _, fields, wells = _tables(out)
    failed = fields[fields["status"] == "failed"].set_index(["well", "field"])
    assert sorted(failed.index) == [("A02", 1), ("A03", 2)]
    assert "A02_s1_w1.tif" in failed.loc[("A02", 1), "error"]
    assert "'er' is missing" in failed.loc[("A03", 2), "error"]
    assert (fields["status"] == "ok").sum() == 12
    assert "A02_s1_w1.tif" in err and "Traceback" not in err
    w = wells.set_index("well")
    assert w.loc["A02", "n_fields_failed"] == 1 and w.loc["A02", "n_fields_ok"] == 1
    run = json.loads((out / "run.json").read_text())
    assert run["n_failed"] == 2 and len(run["failures"]) == 2
    # a rerun retries the failed fields only (finished ones are skipped)
    (tp / "A02_s1_w1.tif").write_bytes(data)
    rc = main(["run", str(bad), "-o", str(out), "--workers", "0", "-q", "--no-report",
               "--overwrite"])
    assert rc == 1  # the ERα file is still missing
    assert (pd.read_csv(out / "fields.csv")["status"] == "failed").sum() == 1


def test_rerun_with_other_parameters_is_refused(plate, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", str(plate), "-o", str(out), "--workers", "0", "-q", "--no-report"]
    assert main(args) == 0
    before = (out / "cells.parquet").read_bytes()
    params = tmp_path / "p.toml"
    params.write_text("[segment]\ndiameter = 20.0\n")
    capsys.readouterr()
    assert main(args + ["--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert "different parameters" in err and "--overwrite" in err
    assert (out / "cells.parquet").read_bytes() == before  # nothing touched
    assert main(args + ["--params", str(params), "--overwrite"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["params"]["segment"]["diameter"] == 20.0 and run["n_resumed"] == 0
    # a plain rerun with the same parameters resumes every field
    assert main(args + ["--params", str(params)]) == 0
    assert json.loads((out / "run.json").read_text())["n_resumed"] == 14


@pytest.mark.parametrize("case", ["empty", "channel", "nuclei", "scheduler", "pattern",
                                  "params", "outfile", "roi", "foreign"])
def test_fail_fast_exit_2(plate, tmp_path, capsys, case):
    out = tmp_path / "out"
    args = ["run", str(plate), "-o", str(out), "--workers", "0", "-q"]
    expect = {
        "empty": "no MetaXpress-style image",
        "channel": "channel 'w3' (for 'er') not found",
        "nuclei": "must be named 'nuclei'",
        "scheduler": "cannot reach the dask scheduler at tcp://127.0.0.1:9",
        "pattern": "matches no file",
        "params": "p.toml",
        "outfile": "not a folder",
        "roi": "rois.geojson",
        "foreign": "holds wells.csv but no erquant run",
    }[case]
    if case == "empty":
        (tmp_path / "empty").mkdir()
        args[1] = str(tmp_path / "empty")
    elif case == "channel":
        args += ["--channels", "w1=nuclei,w3=er"]
    elif case == "nuclei":
        args += ["--channels", "w1=dapi,w2=er"]
    elif case == "scheduler":
        args += ["--scheduler", "tcp://127.0.0.1:9"]
    elif case == "pattern":
        args += ["--pattern", r"(?P<well>[A-P]\d+)_(?P<channel>ch\d)\.png"]
    elif case == "params":
        (tmp_path / "p.toml").write_text("[segment\ndiameter = ")
        args += ["--params", str(tmp_path / "p.toml")]
    elif case == "outfile":
        out.write_text("a file")
    elif case == "foreign":
        out.mkdir()
        (out / "wells.csv").write_text("my own table\n")
    elif case == "roi":
        (tmp_path / "rois.geojson").write_text('{"type": "FeatureCollection", "features": '
                                               '[{"geometry": {"type": "Point"}}]}')
        args += ["--roi", str(tmp_path / "rois.geojson")]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert expect in err, err
    assert "Traceback" not in err
    assert not (out / "parts").exists() or not any((out / "parts").iterdir())
    if case == "foreign":
        assert (out / "wells.csv").read_text() == "my own table\n"


# --------------------------------------------------------------------------- kill -9
def _n_parts(out: Path) -> int:
    """Finished fields' summaries (not a killed run's half-written ``.tmp-*`` files)."""
    parts = out / "parts"
    return sum(not p.name.startswith(".") for p in parts.glob("*.json")) if parts.exists() else 0


def _wait_for_parts(out: Path, n: int, proc, timeout=120.0) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        k = _n_parts(out)
        if k >= n:
            return k
        if proc.poll() is not None:
            raise AssertionError(f"run ended before it could be killed (rc {proc.returncode})")
        time.sleep(0.05)
    raise AssertionError("no progress")


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    spec = PlateSpec(name="KILL", shape=(256, 256), fields_per_well=3, n_nuclei=40,
                     compounds=(CompoundSpec("cpdA"),), doses_nM=(0.1, 1, 10, 100, 1000),
                     n_vehicle=2, n_reference=1, time_points_h=(24.0,), seed=5)
    plate = write_plate(spec, tmp_path / "KILL", progress=False, formats=("metaxpress",))
    n_fields = 24
    full = tmp_path / "full"
    assert main(["run", str(plate), "-o", str(full), "--workers", "0", "-q",
                 "--no-report"]) == 0
    out = tmp_path / "killed"
    cmd = [str(BIN / "erquant"), "run", str(plate), "-o", str(out), "--workers", "1", "-q",
           "--no-report"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        done = _wait_for_parts(out, 6, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the client, its scheduler and its worker
        proc.wait()
    time.sleep(0.5)
    assert done < n_fields
    assert not (out / "cells.parquet").exists()  # it died before the reduce
    kept = _n_parts(out)
    rc = main(["run", str(plate), "-o", str(out), "--workers", "0", "-q", "--no-report"])
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert run["n_resumed"] >= min(kept, done) > 0 and run["n_ok"] == n_fields
    assert_same_tables(full, out)


# --------------------------------------------------------------------------- cluster
@pytest.mark.slow
def test_explicit_scheduler_and_two_workers(plate, reference_run, tmp_path):
    sched_file = tmp_path / "scheduler.json"
    procs = []
    env = dict(os.environ)
    try:
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        t0 = time.time()
        while not sched_file.exists() and time.time() - t0 < 60:
            time.sleep(0.1)
        assert sched_file.exists(), "dask scheduler did not start"
        for _ in range(2):
            procs.append(subprocess.Popen(
                [str(BIN / "dask"), "worker", "--scheduler-file", str(sched_file),
                 "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        address = json.loads(sched_file.read_text())["address"]
        from distributed import Client

        with Client(address, timeout="30s") as c:
            c.wait_for_workers(2, timeout=60)
        out = tmp_path / "out"
        assert main(["run", str(plate), "-o", str(out), "--scheduler", address, "-q",
                     "--no-report"]) == 0
        run = json.loads((out / "run.json").read_text())
        assert run["scheduler_address"] == address and run["n_workers"] == 2
        assert len(run["warnings"]) == 1, run["warnings"]  # the plate map note only
        pids = {json.loads(p.read_text())["worker_pid"] for p in (out / "parts").glob("*.json")}
        assert len(pids) == 2  # both workers quantified fields
        assert_same_tables(reference_run, out)
    finally:
        for p in procs[::-1]:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_report_on_a_run_folder_shows_fits_and_thumbnails(plate, reference_run, tmp_path,
                                                          capsys):
    """`erquant report OUTDIR` on a finished run: fits, and thumbnails read back from the
    images the run recorded (labels segmented again: the run did not save them)."""
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    assert main(["report", str(out)]) == 0
    printed = capsys.readouterr()
    assert "thumbnails omitted" not in printed.out + printed.err
    dr = pd.read_csv(out / "dose_response.csv")
    assert set(dr["compound"]) == {"cpdA"}  # the 1-dose reference is a control, not a curve
    er = dr[dr["readout"] == "er_mean"].iloc[0]
    assert 1.0 < er["dc50_nM"] < 9.0  # true DC50 3 nM, 4 doses × 1 well: a coarse curve
    thumbs = list((out / "plots").glob("thumbnails_*cpdA*.png"))
    assert len(thumbs) == 1
    html = (out / "report.html").read_text()
    assert "fulvestrant-like" in html and "not fitted" in html
    assert html.count("data:image/png;base64,") >= 3


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_keeps_fields_and_resumes(tmp_path):
    """SIGINT to the whole process group (what Ctrl-C in a terminal sends): exit 130, one
    line, no worker tracebacks, finished fields kept; a rerun completes the plate."""
    spec = PlateSpec(name="INT", shape=(512, 512), fields_per_well=4, n_nuclei=80,
                     compounds=(CompoundSpec("cpdA"),), doses_nM=(0.1, 1, 10, 100, 1000, 3000),
                     n_vehicle=2, n_reference=1, time_points_h=(24.0,), seed=7)
    plate = write_plate(spec, tmp_path / "INT", progress=False, formats=("metaxpress",))
    out = tmp_path / "out"
    cmd = [str(BIN / "erquant"), "run", str(plate), "-o", str(out), "--workers", "2", "-q",
           "--no-report"]
    # as from a terminal: SIGINT at its default disposition in the child (an ignored
    # SIGINT is inherited through exec, and Python then never raises KeyboardInterrupt)
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for_parts(out, 4, proc)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = err.decode()
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "run the same command again to resume" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "interrupted" and 4 <= run["n_ok"] < 36
    assert main(["run", str(plate), "-o", str(out), "--workers", "0", "-q", "--no-report"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done" and run["n_ok"] == 36 and run["n_resumed"] >= 4


def test_fields_per_task_segments_fields_together(plate, reference_run, tmp_path):
    """--fields-per-task N: N fields per task through quantify_batch (the GPU path's
    batching, run here on the CPU); a field that cannot be loaded fails alone."""
    bad = tmp_path / "plate"
    shutil.copytree(plate, bad, ignore=shutil.ignore_patterns("truth", "*.ome.tif"))
    (bad / "TimePoint_1" / "A02_s2_w2.tif").unlink()
    out = tmp_path / "out"
    rc = main(["run", str(bad), "-o", str(out), "--workers", "0", "-q", "--no-report",
               "--fields-per-task", "4", "--method", "classical"])
    assert rc == 1
    _, fields, _ = _tables(out)
    assert (fields["status"] == "ok").sum() == 13
    assert fields.loc[fields["status"] != "ok", "well"].tolist() == ["A02"]
    truth = pd.read_csv(plate / "truth" / "fields.csv")
    m = fields[fields["status"] == "ok"].merge(truth, on=["well", "field"])
    # one diameter per montage (the median of three fields' estimates): every count right
    assert (m["n_nuclei"] - m["true_count"]).abs().max() <= 1, m[["n_nuclei", "true_count"]]
    assert m.groupby("well")["diameter_px"].nunique().max() == 1


def test_nuclei_only_run_counts_and_fits_the_count(plate, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["run", str(plate), "-o", str(out), "--workers", "0", "-q",
               "--channels", "w1=nuclei"])
    err = capsys.readouterr().err
    assert rc == 0 and "analysis failed" not in err, err
    cells, fields, wells = _tables(out)
    assert not any(c.startswith("nucleus_er") for c in cells.columns)
    assert wells["n_nuclei"].sum() == len(cells) > 0
    dr = pd.read_csv(out / "dose_response.csv")
    assert set(dr["readout"]) == {"n_nuclei"}
