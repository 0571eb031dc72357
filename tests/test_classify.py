"""Tests for erquant.classify: thresholds, classes, H-score and Allred by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from erquant.classify import (
    allred_proportion_score,
    classify_cells,
    field_scores,
    otsu_threshold,
)


def _table(values, channel="er", compartment="nucleus"):
    return pd.DataFrame({f"{compartment}_{channel}_mean_bgcorr": np.asarray(values, float)})


def test_absolute_threshold_and_doubling_ladder():
    t = classify_cells(_table([0, 9.9, 10, 19.9, 20, 39.9, 40, 1000, np.nan]), threshold=10)
    assert t["er_class"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 0]
    assert t["er_positive"].tolist() == [False, False, True, True, True, True, True, True, False]
    assert t["er_positive"].dtype == bool and t["er_class"].dtype == np.int64
    assert t.attrs["er_class_bounds"] == (10.0, 20.0, 40.0)


def test_reference_rule():
    ref = _table([90, 100, 110])  # median 100
    vals = [49, 50, 99, 100, 199, 200]
    t = classify_cells(_table(vals), reference=ref)
    # t1 = 0.5*100, t2 = 100, t3 = 200
    assert t["er_class"].tolist() == [0, 1, 1, 2, 2, 3]
    t2 = classify_cells(_table(vals), reference=np.array([90, 100, 110]), positive_fraction=0.995)
    # t1 = 99.5 > 99, so the 1+ band [99.5, 100) is empty here
    assert t2["er_positive"].tolist() == [False, False, False, True, True, True]
    assert t2["er_class"].tolist() == [0, 0, 0, 2, 2, 3]


def test_class_bounds_and_conflicts():
    t = classify_cells(_table([1, 2, 3, 4]), class_bounds=(2, 3, 3.5))
    assert t["er_class"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="contradicts"):
        classify_cells(_table([1]), class_bounds=(2, 3, 4), threshold=1)
    with pytest.raises(ValueError, match="non-decreasing"):
        classify_cells(_table([1]), class_bounds=(3, 2, 4))
    with pytest.raises(KeyError, match="cyto_er_mean_bgcorr"):
        classify_cells(_table([1]), compartment="cyto", threshold=1)
    with pytest.raises(ValueError, match="compartment"):
        classify_cells(_table([1]), compartment="membrane", threshold=1)


def test_other_channel_and_compartment():
    t = classify_cells(
        _table([1, 5], channel="pr", compartment="cell"),
        channel="pr",
        compartment="cell",
        threshold=3,
    )
    assert t["pr_class"].tolist() == [0, 1]
    assert "er_class" not in t


def test_automatic_threshold_separates_two_populations():
    rng = np.random.default_rng(0)
    dim = rng.lognormal(np.log(20), 0.2, 300)
    bright = rng.lognormal(np.log(400), 0.2, 200)
    t = classify_cells(_table(np.r_[dim, bright]))
    t1 = t.attrs["er_class_bounds"][0]
    assert dim.max() < t1 < bright.min()
    assert t["er_positive"].sum() == 200


def test_otsu_threshold_two_levels():
    v = np.r_[np.full(10, 1.0), np.full(30, 5.0)]
    assert 1.0 < otsu_threshold(v) < 5.0
    assert math.isnan(otsu_threshold([]))


def test_h_score_and_allred_hand_computed():
    # 20 cells: 8 x 0, 6 x 1+, 4 x 2+, 2 x 3+
    cls = [0] * 8 + [1] * 6 + [2] * 4 + [3] * 2
    t = pd.DataFrame({"nucleus_er_mean_bgcorr": np.arange(20.0), "er_class": cls})
    s = field_scores(t)
    assert s["n_cells"] == 20 and s["n_positive"] == 12
    assert s["pct_positive"] == pytest.approx(60.0)
    assert (s["pct_0"], s["pct_1plus"], s["pct_2plus"], s["pct_3plus"]) == pytest.approx(
        (40.0, 30.0, 20.0, 10.0)
    )
    assert s["h_score"] == pytest.approx(30 + 40 + 30)  # 100
    # proportion 60 % -> 4; mean class of positives = (6 + 8 + 6) / 12 = 1.67 -> 2
    assert (s["allred_proportion"], s["allred_intensity"], s["allred"]) == (4, 2, 6)
    assert s["mean_intensity"] == pytest.approx(9.5)
    assert s["median_intensity"] == pytest.approx(9.5)


def test_allred_extremes_and_rounding():
    # 1 positive 3+ among 200 cells: 0.5 % -> PS 1, IS 3
    t = pd.DataFrame({"nucleus_er_mean_bgcorr": np.zeros(200), "er_class": [3] + [0] * 199})
    s = field_scores(t)
    assert (s["allred"], s["h_score"]) == (4, pytest.approx(1.5))
    # all 3+ -> H 300, Allred 8
    t = pd.DataFrame({"nucleus_er_mean_bgcorr": np.ones(5), "er_class": [3] * 5})
    s = field_scores(t)
    assert (s["h_score"], s["allred"]) == (pytest.approx(300.0), 8)
    # no positives -> H 0, Allred 0
    t = pd.DataFrame({"nucleus_er_mean_bgcorr": np.ones(5), "er_class": [0] * 5})
    assert (field_scores(t)["h_score"], field_scores(t)["allred"]) == (0.0, 0)
    # mean class 1.5 rounds half up to 2
    t = pd.DataFrame({"nucleus_er_mean_bgcorr": np.ones(2), "er_class": [1, 2]})
    assert field_scores(t)["allred_intensity"] == 2


def test_allred_proportion_bins():
    assert [allred_proportion_score(p) for p in (0, 0.99, 1, 10, 10.5, 33, 34, 66, 66.5, 100)] == [
        0,
        1,
        2,
        2,
        3,
        3,
        4,
        4,
        5,
        5,
    ]


def test_empty_table():
    t = classify_cells(_table([]), threshold=1)
    assert len(t) == 0 and t["er_class"].dtype == np.int64
    s = field_scores(t)
    assert s["n_cells"] == 0 and s["n_positive"] == 0
    assert all(math.isnan(s[k]) for k in ("h_score", "allred", "pct_positive", "mean_intensity"))
    s2 = field_scores(classify_cells(_table([]), reference=[1.0, 2.0]), prefix=True)
    assert "er_h_score" in s2 and s2["n_cells"] == 0


def test_end_to_end_with_measure():
    from erquant.measure import measure_cells

    nuc = np.zeros((20, 40), np.int32)
    er = np.full(nuc.shape, 10.0)
    levels = [0.0, 60.0, 120.0, 250.0]  # bgcorr means -> classes 0, 1+, 2+, 3+ with t1=50
    for i, lev in enumerate(levels):
        nuc[5:10, 2 + 10 * i : 7 + 10 * i] = i + 1
        er[5:10, 2 + 10 * i : 7 + 10 * i] = 10.0 + lev
    t = classify_cells(measure_cells(nuc, None, {"er": er}, background="field"), threshold=50)
    assert t["er_class"].tolist() == [0, 1, 2, 3]
    s = field_scores(t)
    assert s["h_score"] == pytest.approx(150.0) and s["allred"] == 5 + 2
