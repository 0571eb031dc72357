"""analyse_run / `erquant report` on batch tables generated from known curves."""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from erquant.analysis import analyse_run
from erquant.analysis.cli import add_parser
from erquant.analysis.report import DOSE_RESPONSE_COLUMNS
from erquant.io.plate import well_name

PLATE = "SYN01"
DOSES = np.geomspace(0.1, 1000.0, 9)
TIMES = (6.0, 24.0)
VEH_ER, VEH_N = 800.0, 600.0
# name → dc50, hill, Dmax at 6 h / 24 h, ic50, Imax at 6 h / 24 h
TRUTH = {
    "imlunestrant-like": dict(dc50=1.0, hill=1.2, dmax={6.0: 0.60, 24.0: 0.92}, ic50=3.0,
                              imax={6.0: 0.2, 24.0: 0.5}),
    "fulvestrant-like": dict(dc50=5.0, hill=1.0, dmax={6.0: 0.55, 24.0: 0.85}, ic50=15.0,
                             imax={6.0: 0.15, 24.0: 0.4}),
}
REF = ("fulvestrant-like", 1000.0)


def _frac(c, ec50, hill, emax):
    c = np.asarray(c, float)
    return 1.0 - emax * c**hill / (c**hill + ec50**hill)


def er_fraction(compound, conc, time_h) -> float:
    t = TRUTH.get(compound)
    return 1.0 if t is None or not conc else float(_frac(conc, t["dc50"], t["hill"],
                                                         t["dmax"][time_h]))


def plate_layout() -> pd.DataFrame:
    """Rows A–C compound 1, D–F compound 2 (3 replicates × 9 doses); controls in cols 11–12."""
    rows = []
    for i, cpd in enumerate(TRUTH):
        for rep in range(3):
            for j, d in enumerate(DOSES):
                rows.append((well_name(3 * i + rep + 1, j + 1), cpd, d, "sample"))
    for r in range(1, 9):
        rows.append((well_name(r, 11), "DMSO", 0.0, "vehicle"))
    for r in range(1, 5):
        rows.append((well_name(r, 12), REF[0], REF[1], "reference"))
    rows.append(("E12", "DMSO", 0.0, "exclude"))
    rows.append(("F12", "imlunestrant-like", 1000.0, "sample"))  # all its fields fail
    return pd.DataFrame(rows, columns=["well", "compound", "concentration_nM", "role"])


def make_tables(outdir: Path, seed: int = 0) -> Path:
    """Write wells.csv / fields.csv (erquant run's schema) from the TRUTH curves with noise.

    G12 is imaged but not in the plate map; F12's fields all failed; E12 is
    ``exclude``; a few wells carry field QC flags.
    """
    rng = np.random.default_rng(seed)
    layout = plate_layout()
    wells, fields = [], []
    for ti, t in enumerate(TIMES, start=1):
        for m in [*layout.to_dict("records"), {"well": "G12", "compound": np.nan,
                                               "concentration_nM": np.nan, "role": np.nan}]:
            cpd, conc = m["compound"], m["concentration_nM"]
            tr = TRUTH.get(cpd)
            ef = er_fraction(cpd, conc, t)
            cf = 1.0 if tr is None or not conc or conc != conc else float(
                _frac(conc, tr["ic50"], 1.0, tr["imax"][t]))
            er = VEH_ER * ef * rng.lognormal(0.0, 0.05)
            n = int(rng.poisson(VEH_N * cf * (0.5 + t / 48)))
            failed = m["well"] == "F12"
            flags = "out_of_focus" if rng.random() < 0.08 else ""
            r, c = int(m["well"][1:]), m["well"][0]
            mapcols = {"compound": cpd, "concentration_nM": conc, "role": m["role"],
                       "cell_line": "MCF7" if m["role"] == m["role"] else np.nan}
            wells.append({
                "plate": PLATE, "timepoint": ti, "time_h": t, "well": m["well"],
                "row": ord(c) - 64, "col": r, "n_nuclei": 0 if failed else n, "n_fields": 2,
                "n_fields_ok": 0 if failed else 2, "n_fields_failed": 2 if failed else 0,
                "n_fields_flagged": int(bool(flags)), "qc_flags": flags,
                "er_mean": np.nan if failed else er,
                "er_median": np.nan if failed else 0.97 * er,
                "pct_er_positive": np.nan if failed else 96.0 * ef**1.5 * rng.lognormal(0, 0.03),
                "h_score": np.nan if failed else 250.0 * ef, **mapcols,
            })
            for f in (1, 2):
                fields.append({
                    "plate": PLATE, "timepoint": ti, "time_h": t, "well": m["well"], "field": f,
                    "status": "failed" if failed else "ok",
                    "error": "segmentation failed" if failed else "", "seconds": 0.4,
                    "n_nuclei": n // 2, "diameter_px": 24.0, "qc_flags": flags if f == 1 else "",
                    "qc_focus": 1.0, "er_pct_positive": 90.0 * ef, "er_h_score": 250.0 * ef,
                    **mapcols,
                })
    outdir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(wells).to_csv(outdir / "wells.csv", index=False)
    pd.DataFrame(fields).to_csv(outdir / "fields.csv", index=False)
    return outdir


def synthetic_loader(row: dict) -> dict:
    """load_field for the tests: a small synthetic field at the well's ERα level."""
    from erquant.synthetic import make_field

    ef = er_fraction(row.get("compound"), row.get("concentration_nM"), float(row["time_h"]))
    r, c = ord(row["well"][0]) - 64, int(row["well"][1:])
    f = make_field(shape=(128, 128), n_nuclei=12, er_scale=ef,
                   seed=[int(row["time_h"]), r, c, int(row["field"])])
    return {"image_nuclei": f.image[0], "image_er": f.image[1], "labels": f.nuclei}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = make_tables(tmp_path_factory.mktemp("run"))
    res = analyse_run(out, load_field=synthetic_loader)
    return out, res


def test_dose_response_csv_recovers_known_potency(run):
    out, res = run
    dr = pd.read_csv(out / "dose_response.csv")
    assert list(dr.columns) == DOSE_RESPONSE_COLUMNS
    # 2 compounds × 4 readouts × 2 time points, one row each
    assert len(dr) == 16 and not dr.duplicated(["compound", "readout", "time_h"]).any()
    for cpd, t in TRUTH.items():
        for time_h in TIMES:
            er = dr[(dr.compound == cpd) & (dr.readout == "er_mean") & (dr.time_h == time_h)].iloc[0]
            assert er.flag == "ok"
            assert 1 / 1.3 < er.dc50_nM / t["dc50"] < 1.3, (cpd, time_h, er.dc50_nM)
            assert er.dmax_pct == pytest.approx(100 * t["dmax"][time_h], abs=5.0)
            assert er.ci_low_nM < t["dc50"] < er.ci_high_nM
            assert math.isnan(er.ic50_nM)
            nn = dr[(dr.compound == cpd) & (dr.readout == "n_nuclei") & (dr.time_h == time_h)]
            nn = nn.iloc[0]
            assert math.isnan(nn.dc50_nM)
            if time_h == 24.0:
                assert 1 / 1.5 < nn.ic50_nM / t["ic50"] < 1.5, (cpd, nn.ic50_nM)
                assert nn.dmax_pct == pytest.approx(100 * t["imax"][24.0], abs=8.0)
    # the absolute 50 % concentration: where 100 (1 - Dmax c/(c+EC50)) crosses 50
    im = dr[(dr.compound == "imlunestrant-like") & (dr.readout == "er_mean") & (dr.time_h == 24)]
    t = TRUTH["imlunestrant-like"]
    true_abs50 = t["dc50"] * (0.5 / (t["dmax"][24.0] - 0.5)) ** (1 / t["hill"])
    assert im.abs50_nM.iloc[0] == pytest.approx(true_abs50, rel=0.3)


def test_excluded_failed_and_unmapped_wells_are_left_out(run):
    out, res = run
    dr = res["fits"]
    # imlunestrant: 27 sample wells + 8 vehicle wells; F12 (all fields failed) is left out
    im = dr[(dr.compound == "imlunestrant-like") & (dr.readout == "er_mean")]
    assert im.n_points.tolist() == [35, 35]
    # fulvestrant: 27 + 4 reference wells of the same compound + 8 vehicle
    fu = dr[(dr.compound == "fulvestrant-like") & (dr.readout == "er_mean")]
    assert fu.n_points.tolist() == [39, 39]
    norm = pd.read_csv(out / "normalised_wells.csv")
    why = norm.set_index(["well", "time_h"])["excluded"].xs(24.0, level="time_h")
    assert why["E12"] == "role exclude" and why["F12"] == "all fields failed"
    assert why["G12"] == "not in plate map"
    notes = " | ".join(res["notes"])
    assert "left out of the fits (all fields failed): F12 (6 h), F12 (24 h)" in notes
    assert "left out of the fits (role exclude): E12 (6 h), E12 (24 h)" in notes
    assert "not in the plate map (kept in the tables, left out of the fits): G12 (6 h)," in notes
    veh = norm[(norm.role == "vehicle")]
    assert veh.groupby("time_h")["er_mean_pct"].mean().tolist() == pytest.approx([100.0, 100.0])


def test_plate_qc_csv(run):
    out, _ = run
    qc = pd.read_csv(out / "plate_qc.csv")
    assert len(qc) == 2 * 4  # time points × readouts
    er24 = qc[(qc.time_h == 24.0) & (qc.readout == "er_mean")].iloc[0]
    assert er24.n_vehicle == 8 and er24.n_reference == 4
    # vehicle CV ≈ the 5 % log-normal noise of the generator; controls far apart → Z′ > 0.5
    assert 2.0 < er24.vehicle_cv_pct < 9.0
    assert er24.z_prime > 0.5 and er24.signal_window > 2.0
    assert er24.n_wells == 68 and er24.n_wells_used == 66
    assert er24.n_wells_failed == 1 and er24.n_wells_excluded == 1 and er24.n_wells_unmapped == 1
    wells = pd.read_csv(out / "wells.csv").fillna({"qc_flags": ""})
    n_flag = int((wells[wells.time_h == 24.0].qc_flags != "").sum())
    assert er24.n_wells_flagged == n_flag and (er24.well_flags == f"out_of_focus:{n_flag}"
                                               or n_flag == 0)


def test_plots_written_as_png_and_svg(run):
    out, res = run
    for r in ("er_mean", "er_median", "pct_er_positive", "n_nuclei"):
        for ext in ("png", "svg"):
            assert (out / "plots" / f"dose_response_{r}.{ext}").stat().st_size > 5000
    assert (out / "plots" / "heatmap_SYN01_24h.svg").is_file()
    assert len(list((out / "plots").glob("thumbnails_*.png"))) == 4  # 2 compounds × 2 times


def test_report_is_self_contained_with_thumbnails(run):
    out, res = run
    text = (out / "report.html").read_text(encoding="utf-8")
    assert res["report"] == out / "report.html"
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    imgs = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', text)
    # 4 dose-response figures, 2 heatmaps, 4 thumbnail strips
    assert len(imgs) == 10
    assert "imlunestrant-like" in text and "Z′" in text and "DC50" in text
    assert "left out of the fits" in text


def test_reference_normalisation_rescales_but_keeps_relative_dc50(run, tmp_path):
    out, res = run
    out2 = shutil.copytree(out, tmp_path / "ref", ignore=shutil.ignore_patterns("plots", "*.html"))
    res2 = analyse_run(out2, normalise="reference", report=False)
    norm = pd.read_csv(out2 / "normalised_wells.csv")
    ref = norm[(norm.role == "reference") & norm.use]
    assert ref.groupby("time_h")["er_mean_pct"].mean().tolist() == pytest.approx([0.0, 0.0],
                                                                                  abs=1e-9)
    # nuclei stay % of vehicle
    assert norm.n_nuclei_pct.tolist() == pytest.approx(
        pd.read_csv(out / "normalised_wells.csv").n_nuclei_pct.tolist(), nan_ok=True)
    a = res["fits"].set_index(["compound", "readout", "time_h"])
    b = res2["fits"].set_index(["compound", "readout", "time_h"])
    # LL.4 with free top and bottom is equivariant under an affine rescaling of the response
    for k in a.index:
        if k[1] == "er_mean" and a.loc[k, "flag"] == "ok":
            assert b.loc[k, "dc50_nM"] == pytest.approx(a.loc[k, "dc50_nM"], rel=1e-4)
    fu24 = b.loc[("fulvestrant-like", "er_mean", 24.0)]
    assert fu24.dmax_pct == pytest.approx(100.0, abs=5.0)  # the reference *is* full effect
    assert res2["report"] is None and not (out2 / "report.html").exists()


def test_plate_map_rejoin_from_csv(run, tmp_path):
    out, res = run
    run2 = tmp_path / "run2"
    run2.mkdir()
    w = pd.read_csv(out / "wells.csv").drop(columns=["compound", "concentration_nM", "role",
                                                     "cell_line"])
    w.to_csv(run2 / "wells.csv", index=False)
    pm = plate_layout().assign(concentration_uM=lambda d: d.concentration_nM / 1000.0)
    pm.drop(columns="concentration_nM").to_csv(tmp_path / "map.csv", index=False)
    res2 = analyse_run(run2, plate_map=tmp_path / "map.csv", report=False)
    a = res["fits"].sort_values(["compound", "readout", "time_h"]).reset_index(drop=True)
    b = res2["fits"].sort_values(["compound", "readout", "time_h"]).reset_index(drop=True)
    pd.testing.assert_series_equal(a.dc50_nM, b.dc50_nM, rtol=1e-5)
    assert any("G12" in n and "not in the plate map" in n for n in res2["notes"])
    assert "thumbnails omitted: no fields.csv" in " ".join(res2["notes"])


def test_thumbnail_loader_failures_become_notes(run, tmp_path):
    out, _ = run
    out2 = shutil.copytree(out, tmp_path / "t", ignore=shutil.ignore_patterns("plots", "*.html"))

    def flaky(row):
        if row["compound"] == "fulvestrant-like":
            raise OSError(f"{row['well']}_s1_w2.tif: file not found")
        return synthetic_loader(row)

    res = analyse_run(out2, load_field=flaky)
    notes = [n for n in res["notes"] if n.startswith("thumbnails")]
    assert len(notes) == 2 and all("fulvestrant-like omitted: OSError" in n for n in notes)
    text = (out2 / "report.html").read_text(encoding="utf-8")
    assert text.count("data:image/png") == 4 + 2 + 2
    res = analyse_run(out2, report=False)
    assert any(n.startswith("thumbnails omitted: no image loader") for n in res["notes"])


def test_thumbnails_without_labels_still_show_the_image(tmp_path):
    from erquant.analysis.plots import thumbnail_strip

    loaded = synthetic_loader({"well": "A01", "field": 1, "time_h": 24.0, "compound": "DMSO",
                               "concentration_nM": 0.0})
    fig = thumbnail_strip([("vehicle", {**loaded, "labels": None})])
    arr = fig.axes[0].images[0].get_array()
    assert arr.shape[-1] == 3 and float(np.std(arr)) > 0.02


def _cli(argv) -> int:
    parser = argparse.ArgumentParser(prog="erquant")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_report_prints_fit_table(run, tmp_path, capsys):
    out, _ = run
    out2 = shutil.copytree(out, tmp_path / "c", ignore=shutil.ignore_patterns("plots", "*.html"))
    assert _cli(["report", str(out2)]) == 0
    cap = capsys.readouterr()
    assert "imlunestrant-like" in cap.out and "DC50" in cap.out and "IC50" in cap.out
    assert f"report: {out2 / 'report.html'}" in cap.out
    line = next(x for x in cap.out.splitlines()
                if x.startswith("imlunestrant-like") and "er_mean " in x and "24 h" in x)
    dc50 = float(re.search(r"DC50 (\S+)", line).group(1))
    assert 1 / 1.3 < dc50 / TRUTH["imlunestrant-like"]["dc50"] < 1.3


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty", "wells.csv: not found"),
        ("no_map_columns", "wells.csv: no plate-map column(s) ['compound', 'concentration_nM', "
                           "'role']; give the plate map (--plate-map CSV)"),
        ("bad_map", "map.csv: unknown role(s) ['positive']"),
        ("no_readouts", "wells.csv: missing column(s) ['er_mean or n_nuclei']"),
    ],
)
def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, setup, message):
    argv = ["report", str(tmp_path)]
    if setup == "no_map_columns":
        pd.DataFrame({"well": ["A01"], "er_mean": [1.0]}).to_csv(tmp_path / "wells.csv")
    if setup == "no_readouts":
        pd.DataFrame({"well": ["A01"], "x": [1.0]}).to_csv(tmp_path / "wells.csv")
    if setup == "bad_map":
        pd.DataFrame({"well": ["A01"], "er_mean": [1.0]}).to_csv(tmp_path / "wells.csv")
        (tmp_path / "map.csv").write_text("well,compound,concentration_nM,role\nA1,x,0,positive\n")
        argv += ["--plate-map", str(tmp_path / "map.csv")]
    assert _cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path}/")
    assert message in err and "Traceback" not in err


# ---------------------------------------------------------------------------- headless browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(html: Path, png: Path, profile: Path, size=(1280, 2400), timeout=120) -> None:
    """Render ``html`` with headless chromium into ``png`` (network-free flags)."""
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
        f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", html.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make sysdeps-report)")
def test_report_renders_in_headless_chromium(run, tmp_path):
    from PIL import Image

    out, _ = run
    html = out / "report.html"
    text = html.read_text(encoding="utf-8")
    # self-contained: nothing the browser could fetch from the network
    assert not re.search(r"""(src|href|url)\s*[=(]\s*["']?\s*(https?:)?//""", text, re.I)
    png = tmp_path / "report.png"
    screenshot(html, png, tmp_path / "profile")
    img = Image.open(png).convert("L")
    assert img.size == (1280, 2400)
    a = np.asarray(img, dtype=np.float64)
    assert a.std() > 20.0  # not a blank page: text, tables and plots
    assert (a < 100).mean() > 0.01 and (a > 230).mean() > 0.3  # dark ink on a light page


def test_flat_and_sparse_compounds_are_flagged_and_reported(tmp_path, capsys):
    rng = np.random.default_rng(5)
    rows = [("DMSO", 0.0, "vehicle")] * 6
    rows += [("inactive", d, "sample") for d in DOSES for _ in range(2)]
    rows += [("two-doses", d, "sample") for d in (10.0, 100.0) for _ in range(2)]
    wells = pd.DataFrame(rows, columns=["compound", "concentration_nM", "role"])
    wells["well"] = [well_name(i // 12 + 1, i % 12 + 1) for i in range(len(wells))]
    frac = np.where(wells.compound == "two-doses", 0.5, 1.0)
    wells = wells.assign(plate="P1", time_h=24.0, n_fields_ok=2,
                         er_mean=VEH_ER * frac * rng.lognormal(0, 0.05, len(wells)),
                         n_nuclei=rng.poisson(500, len(wells)))
    wells.to_csv(tmp_path / "wells.csv", index=False)
    res = analyse_run(tmp_path)
    dr = res["fits"].set_index(["compound", "readout"])
    assert dr.loc[("inactive", "er_mean"), "flag"] == "flat"
    assert math.isnan(dr.loc[("inactive", "er_mean"), "dc50_nM"])
    assert dr.loc[("inactive", "er_mean"), "dmax_pct"] == pytest.approx(0.0, abs=5.0)
    # vehicle (0) + 2 doses = 3 concentrations < 4 parameters
    assert dr.loc[("two-doses", "er_mean"), "flag"] == "too_few_points"
    assert dr.loc[("two-doses", "er_mean"), "n_points"] == 10
    text = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "too_few_points" in text and "flat" in text
    # no reference wells: --normalise reference is a usage error naming the problem
    assert _cli(["report", str(tmp_path), "--normalise", "reference", "--no-html"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: {tmp_path / 'wells.csv'}: normalise=reference needs reference wells; "
                   "none usable for plate P1, time_h 24.0\n")
