"""Nuclei segmentation on real annotated images (default parameters).

(1) The three committed ``sample_data/real`` images: F1 at IoU 0.5 ≥ 0.75 each.
(2) The full real set in ``../shared/data/real`` (skipped when absent), evaluated
    by ``benchmarks/real_accuracy.py``: issue 14's bars — overall F1 ≥ 0.84 (measured
    0.859; the test asks 0.85), every source ≥ 0.75 (lowest: NIH3T3 0.792),
    mean per-image F1 ≥ 0.80 (0.834; asked 0.83), no image below 0.5 (worst 0.526)
    and the diameter estimate within 1.3× of the truth on ≥ 90 % of images (91 %).
"""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO, SAMPLE_REAL

from erquant.backend import to_numpy
from erquant.io import read_image
from erquant.metrics import match_labels
from erquant.segment import segment_nuclei

pytestmark = pytest.mark.realdata

SAMPLES = sorted(p.name.rsplit("_image", 1)[0] for p in SAMPLE_REAL.glob("*_image.*"))


def test_three_samples_are_committed():
    assert SAMPLES == ["dsb2018_b24ea5c2", "dsb2018_ed8c31b0", "stardist_dsb2018"]


@pytest.mark.parametrize("name", SAMPLES)
def test_sample_image_f1(backend, name):
    img = read_image(next(SAMPLE_REAL.glob(f"{name}_image.*")))
    gt = read_image(SAMPLE_REAL / f"{name}_labels.tif")
    pred = to_numpy(segment_nuclei(backend.asarray(img), method="classical"))
    m = match_labels(gt, pred)
    assert m.f1 >= 0.75, (f"{name}: F1 {m.f1:.3f} (tp {m.tp}, fp {m.fp}, fn {m.fn}; "
                          f"true {m.n_true}, pred {m.n_pred})")


def _load_benchmark():
    path = REPO / "benchmarks" / "real_accuracy.py"
    spec = importlib.util.spec_from_file_location("erquant_bench_real_accuracy", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_real_set_classical(real_data):
    bench = _load_benchmark()
    per_source, total, rows, _secs = bench.evaluate(real_data, backend="numpy",
                                                    method="classical")
    assert len(rows) >= 5 and len(per_source) >= 3
    report = ", ".join(f"{s}: F1 {m.f1:.3f} (tp {m.tp} fp {m.fp} fn {m.fn})"
                       for s, m in sorted(per_source.items()))
    assert total.f1 >= 0.85, f"overall F1 {total.f1:.3f} < 0.85; {report}"
    weak = {s: round(m.f1, 3) for s, m in per_source.items() if m.f1 < 0.75}
    assert not weak, f"sources below F1 0.75: {weak}; {report}"
    # issue 14: pooling must not hide failed images (mean per-image F1 0.834, no image
    # below 0.5, diameter within 1.3× on 91 %)
    s = bench.summary(per_source, total, rows)["overall"]
    worst = ", ".join(f"{r['image']}: {r['f1']:.3f}" for r in sorted(rows, key=lambda r: r["f1"])[:5])
    assert s["f1_mean_image"] >= 0.83, f"mean per-image F1 {s['f1_mean_image']:.3f}; {worst}"
    assert s["below_05"] == 0, f"{s['below_05']} images below F1 0.5; {worst}"
    assert s["diameter_within_1_3"] >= 0.90, f"diameter within 1.3× on {s['diameter_within_1_3']:.0%}"


def test_real_set_learned(real_data):
    """Issue 13's bars for the shipped learned model (none of these images is in its
    training data): pooled F1 ≥ 0.88, every source ≥ 0.80, mean per-image F1 ≥ 0.85,
    no image below 0.5 (measured: 0.892, ≥ 0.833, 0.878, worst 0.649)."""
    bench = _load_benchmark()
    per_source, total, rows, _secs = bench.evaluate(real_data, backend="numpy",
                                                    method="learned")
    s = bench.summary(per_source, total, rows)
    report = ", ".join(f"{k}: {v['f1_pooled']:.3f}" for k, v in s.items())
    worst = ", ".join(f"{r['image']}: {r['f1']:.3f}" for r in sorted(rows, key=lambda r: r["f1"])[:5])
    assert total.f1 >= 0.88, report
    assert all(m.f1 >= 0.80 for m in per_source.values()), report
    assert s["overall"]["f1_mean_image"] >= 0.85, worst
    assert s["overall"]["below_05"] == 0, worst
