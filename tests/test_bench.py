"""Throughput benchmark harness: a tiny --quick run and its JSON / Markdown report."""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest

from erquant import bench
from erquant.backend import cupy_available

STAGES = ("load", "nuclei", "cells", "measure")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    rc = bench.main(["--quick", "--size", "192", "--scaling-sizes", "96,192", "--batch", "3",
                     "--batch-size", "96",
                     "--backends", "numpy", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "bench.json").read_text())
    md = (out / "bench.md").read_text()
    return res, md


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_quick_json_has_every_stage_and_finite_rates(quick_run):
    res, _ = quick_run
    r = res["erquant"]["numpy"]
    for stage in STAGES:
        s = r["stages"][stage]
        assert _finite_positive(s["mpx_per_s"]) and _finite_positive(s["fields_per_s"])
    p = r["pipeline"]
    assert _finite_positive(p["mpx_per_s"]) and _finite_positive(p["fields_per_s"])
    # fields/s and MP/s describe the same timing
    mpx = res["fields"]["megapixels_per_field"]
    assert p["mpx_per_s"] == pytest.approx(p["fields_per_s"] * mpx)
    assert res["fields"]["n_nuclei_per_field"] == bench.n_nuclei_for(192)


def test_quick_accuracy_beside_speed(quick_run):
    res, _ = quick_run
    p = res["erquant"]["numpy"]["pipeline"]
    assert 0.0 <= p["f1"] <= 1.0
    # erquant really segments the generated nuclei (not just timing something)
    assert p["f1"] > 0.7
    assert p["n_true"] == res["fields"]["n_nuclei_per_field"]
    for name, ref in res["reference"].items():
        if "skipped" in ref:  # pyclesperanto without an OpenCL device
            assert name == "pyclesperanto" and ref["skipped"]
            continue
        assert 0.0 <= ref["f1"] <= 1.0 and _finite_positive(ref["mpx_per_s"])
    assert "mpx_per_s" in res["reference"]["scikit-image"]


def test_quick_ratios_target_and_machine(quick_run):
    res, _ = quick_run
    ratios = res["ratios"]
    assert "erquant-numpy / scikit-image" in ratios
    assert all(_finite_positive(v) for v in ratios.values())
    t = res["target"]
    assert t["ratio"] == pytest.approx(ratios["erquant-numpy / scikit-image"])
    like = res["erquant"]["numpy"]["recipes_job"]  # like for like: diameter given, ERα only
    assert _finite_positive(like["s_per_field"]) and like["f1"] > 0.8
    assert t["met"] == (t["ratio"] >= 10 and t["f1_erquant"] >= t["f1_skimage"])
    m = res["machine"]
    assert m["cpu_count"] >= 1 and m["versions"]["numpy"] == np.__version__
    assert m["erquant"] and m["backends"] == ["numpy"]


def test_quick_scaling_and_gpu_section(quick_run):
    res, md = quick_run
    sc = res["scaling"]["numpy"]
    assert [p["size"] for p in sc["points"]] == [96, 192]
    assert all(0.0 <= p["f1"] <= 1.0 and _finite_positive(p["s_per_mpx"]) for p in sc["points"])
    assert math.isfinite(sc["exponent"])
    b = res["batched"]["numpy 96²"]  # the quick run's small fields, batched
    assert b["n_fields"] == 3 and b["fields_per_montage"] == 3 and _finite_positive(b["speedup"])
    assert b["batched"]["f1"] >= b["one_at_a_time"]["f1"] - 0.05 and b["batched"]["f1"] > 0.8
    assert "| numpy | 3 × 96² |" in md
    if not cupy_available():
        assert bench.GPU_MISSING in md and bench.GPU_MISSING in res["notes"]


def test_quick_markdown_lists_everything(quick_run):
    res, md = quick_run
    for stage in STAGES + ("pipeline",):
        assert f"| numpy | {stage} |" in md or f"| numpy | **{stage}** |" in md
    assert "| scikit-image |" in md and "pyclesperanto" in md and "Like for like" in md
    assert "time ∝ pixels^" in md and "| numpy | 192² |" in md
    f1 = res["erquant"]["numpy"]["pipeline"]["f1"]
    assert f"{f1:.3f}" in md


def test_pyclesperanto_skipped_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "_pyclesperanto", lambda: (None, "no OpenCL device found"))
    rc = bench.main(["--quick", "--size", "96", "--no-scaling", "--backends", "numpy",
                     "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    assert res["reference"]["pyclesperanto"] == {"skipped": "no OpenCL device found"}
    assert set(res["ratios"]) == {"erquant-numpy / scikit-image"}
    assert "pyclesperanto skipped: no OpenCL device found" in capsys.readouterr().out
    assert "scaling" not in res


def test_fit_exponent_and_tiling():
    assert bench.fit_exponent([1, 4, 16], [2, 8, 32]) == pytest.approx(1.0)
    assert bench.fit_exponent([1, 4], [1, 16]) == pytest.approx(2.0)
    truth = np.zeros((8, 8), np.uint32)
    truth[1:3, 1:3], truth[5:7, 5:7] = 1, 2
    img, lab = bench._tile(np.ones((2, 8, 8), np.uint16), truth, 2)
    assert img.shape == (2, 16, 16) and lab.max() == 8 and len(np.unique(lab)) == 9


def test_skimage_recipe_splits_touching_discs():
    yy, xx = np.mgrid[:96, :96]
    img = np.zeros((96, 96))
    for cy, cx in [(30, 30), (30, 52), (70, 70)]:  # two touching, one alone
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 12**2] = 100
    nuc, cells, table = bench.skimage_recipe(img, img, diameter=24)
    assert nuc.max() == 3 and len(table["label"]) == 3
    assert (cells[nuc > 0] == nuc[nuc > 0]).all() and (cells > 0).sum() > (nuc > 0).sum()


def test_add_parser_and_bad_arguments(capsys):
    ap = argparse.ArgumentParser(prog="erquant")
    bench.add_parser(ap.add_subparsers(dest="cmd"))
    args = ap.parse_args(["bench", "--quick", "--scaling-sizes", "64,128"])
    assert args.quick and args.scaling_sizes == (64, 128) and callable(args.func)
    cfg = bench.config_from_args(args)
    assert (cfg.size, cfg.fields, cfg.repeats) == (1024, 1, 1)
    assert bench.main(["--size", "8", "--out", "/nonexistent"]) == 2
    assert "--size" in capsys.readouterr().err


def test_sweep_at_other_densities_and_in_clumps(capsys):
    """The sweep's --density scales the nuclei per field and --clumps makes MCF-7-like
    clumped fields (issue 15: the ratio measured beyond the default density); the
    report says which fields it timed; bad values are usage errors."""
    from erquant._bench_sweep import n_nuclei, render, run_sweep
    from erquant.backend import get_backend
    from erquant.synthetic import make_clumped_field

    bk = get_backend("numpy")
    base = n_nuclei(256, 16)
    sparse = run_sweep([bk], size=256, diameters=(16,), repeats=1, density=0.5,
                       log=lambda *a: None)
    assert sparse["rows"][0]["n_nuclei"] == round(base * 0.5)
    assert sparse["rows"][0]["numpy"]["f1"] > 0.8
    assert "4 % of each field covered" in "\n".join(render(sparse))
    clumped = run_sweep([bk], size=256, diameters=(16,), repeats=1, density=2, clumps=10,
                        log=lambda *a: None)
    f = make_clumped_field(shape=(256, 256), n_nuclei=2 * base, clump_size=10,
                           nucleus_diameter=16.0, seed=216)
    assert clumped["rows"][0]["n_nuclei"] == f.n_nuclei == 2 * base
    assert clumped["clumps"] == 10 and "clumps of 10" in "\n".join(render(clumped))
    assert clumped["rows"][0]["numpy"]["ratio"] > 0
    assert bench.main(["--density", "0", "--out", "/nonexistent"]) == 2
    assert "--density" in capsys.readouterr().err


def test_kernel_ablation_rows(tmp_path, monkeypatch):
    """Without --quick the bench times the CPU pipeline with each kernel variant; the
    switches are restored afterwards and every variant finds the same nuclei."""
    import os

    monkeypatch.delenv("ERQUANT_NO_OPENCV", raising=False)
    monkeypatch.delenv("ERQUANT_NO_NUMBA", raising=False)
    rc = bench.main(["--size", "160", "--fields", "1", "--repeats", "1", "--no-scaling",
                     "--no-reference", "--backends", "numpy", "--out", str(tmp_path)])
    assert rc == 0
    res = json.loads((tmp_path / "bench.json").read_text())
    ab = res["ablation"]
    assert list(ab) == list(bench.ABLATION)
    for r in ab.values():
        assert _finite_positive(r["s_per_field"]) and r["f1"] >= 0.9
    assert next(iter(ab.values()))["slowdown"] == 1.0
    assert "ERQUANT_NO_OPENCV" not in os.environ and "ERQUANT_NO_NUMBA" not in os.environ
    md = (tmp_path / "bench.md").read_text()
    assert "what OpenCV and Numba buy" in md and "the GPU's code path" in md
    # --quick leaves it out
    rc = bench.main(["--quick", "--size", "96", "--no-scaling", "--no-reference",
                     "--backends", "numpy", "--out", str(tmp_path / "q")])
    assert rc == 0 and "ablation" not in json.loads((tmp_path / "q" / "bench.json").read_text())


def test_quick_methods_side_by_side(quick_run):
    """Both segmenters timed on the same fields of 20 px nuclei, with their F1."""
    res, md = quick_run
    mm = res["methods"]
    assert mm["nucleus_diameter"] == 20 and mm["size"] == 192
    r = mm["results"]
    assert set(r) == {"numpy classical", "numpy learned"}
    for v in r.values():
        assert _finite_positive(v["s_per_field"]) and v["f1"] > 0.8
    assert "## Segmenters side by side" in md and "| numpy | learned |" in md
