"""``erquant.pipeline``: quantify / quantify_iter on synthetic fields with ground truth.

Includes the issue's ERα bar: "per-cell background-corrected nuclear ERα mean
within 5 % of the true level for ≥ 95 % of matched cells".
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
from conftest import ACCURACY_SEEDS

from erquant.illumination import fit_illumination
from erquant.metrics import match_labels
from erquant.params import Params
from erquant.pipeline import STAGES, FieldResult, Progress, quantify, quantify_iter

COLUMNS = ["label", "nucleus_area_px", "centroid_y", "centroid_x", "nucleus_er_mean",
           "nucleus_er_mean_bgcorr", "cyto_er_mean", "cell_er_mean", "er_background",
           "er_nc_ratio", "er_positive", "er_class", "roi"]


@pytest.fixture(scope="module")
def small_field(synthetic_field):
    return synthetic_field((384, 384), 45, 7, in_focus=True)


@pytest.fixture(scope="module")
def small_result(small_field):
    return quantify(small_field.image, backend="numpy")


# ---------------------------------------------------------------- basic result
def test_quantify_count_columns_and_labels(small_field, small_result):
    res = small_result
    assert isinstance(res, FieldResult)
    n_true = len(small_field.truth)
    assert abs(res.n_nuclei - n_true) <= max(2, 0.05 * n_true), (res.n_nuclei, n_true)
    missing = [c for c in COLUMNS if c not in res.table.columns]
    assert not missing, f"missing columns: {missing}"
    assert res.nuclei.dtype == np.uint32 and res.cells.dtype == np.uint32
    assert res.nuclei.shape == small_field.image.shape[1:]
    ids = np.unique(res.nuclei)
    assert np.array_equal(np.sort(res.table["label"].to_numpy()), ids[ids > 0])
    assert np.array_equal(np.unique(res.cells), ids)
    on = res.nuclei > 0
    assert np.array_equal(res.cells[on], res.nuclei[on])
    assert (res.table["roi"] == 0).all()
    assert match_labels(small_field.nuclei, res.nuclei).f1 >= 0.85
    assert res.info["backend"] == "numpy" and res.info["diameter"] > 0


def test_summary_has_counts_and_scores(small_result):
    s = small_result.summary()
    assert s["n_nuclei"] == small_result.n_nuclei
    assert "er_h_score" in s and 0 <= s["er_h_score"] <= 300


def test_quantify_on_backend(backend, small_field, small_result):
    res = quantify(backend.asarray(small_field.image), backend=backend)
    assert isinstance(res.nuclei, np.ndarray)  # results come back to the host
    assert res.n_nuclei == small_result.n_nuclei
    assert match_labels(small_result.nuclei, res.nuclei).f1 >= 0.95


# ---------------------------------------------------------------- progress generator
def test_quantify_iter_progress_and_result(small_field, small_result):
    gen = quantify_iter(small_field.image, backend="numpy")
    progress = []
    while True:
        try:
            progress.append(next(gen))
        except StopIteration as stop:
            res = stop.value
            break
    assert all(isinstance(p, Progress) for p in progress)
    stages = [p.stage for p in progress]
    assert stages == [s for s in STAGES if s in stages]  # in pipeline order
    assert stages[0] == "load" and stages[-1] == "done"
    fr = [p.fraction for p in progress]
    assert all(b >= a for a, b in itertools.pairwise(fr))
    assert fr[-1] == 1.0
    assert isinstance(res, FieldResult)
    assert np.array_equal(res.nuclei, small_result.nuclei)
    assert np.array_equal(res.cells, small_result.cells)
    assert res.table.equals(small_result.table)


# ---------------------------------------------------------------- ROI
def test_roi_polygon_left_half(small_field, small_result):
    H, W = small_field.image.shape[1:]
    half = W / 2
    poly = np.array([[0, 0], [0, half], [H, half], [H, 0]], float)  # (y, x)
    res = quantify(small_field.image, backend="numpy", roi=[poly])
    t = res.table
    assert len(t) > 0 and (t["roi"] == 0).all()
    assert (t["centroid_x"] < half + 0.5).all()
    # the full result's cells with centroid well left of the line are all kept
    full = small_result.table
    assert len(t) >= int((full["centroid_x"] < half - 1).sum())
    assert len(t) < len(full)
    # labels outside the ROI are removed from the label images too
    ids = np.unique(res.nuclei)
    assert np.array_equal(np.sort(t["label"].to_numpy()), ids[ids > 0])


def test_roi_bool_mask(small_field):
    H, W = small_field.image.shape[1:]
    mask = np.zeros((H, W), bool)
    mask[: H // 2] = True  # top half
    res = quantify(small_field.image, backend="numpy", roi=mask)
    t = res.table
    assert len(t) > 0 and (t["roi"] == 0).all()
    assert (t["centroid_y"] < H / 2 + 0.5).all()


def test_roi_two_polygons(small_field):
    H, W = small_field.image.shape[1:]
    left = np.array([[0, 0], [0, W / 2], [H, W / 2], [H, 0]], float)
    right = np.array([[0, W / 2], [0, W], [H, W], [H, W / 2]], float)
    res = quantify(small_field.image, backend="numpy", roi=[left, right])
    t = res.table
    assert set(t["roi"].unique()) == {0, 1}
    assert (t.loc[t["roi"] == 0, "centroid_x"] < W / 2 + 0.5).all()
    assert (t.loc[t["roi"] == 1, "centroid_x"] >= W / 2 - 0.5).all()


# ---------------------------------------------------------------- fields and errors
def test_2d_field_without_markers(small_field):
    res = quantify(small_field.image[0], marker_channels={}, backend="numpy")
    assert res.n_nuclei > 0
    assert "nucleus_er_mean" not in res.table.columns
    assert "nucleus_nuclei_mean" in res.table.columns


def test_2d_field_with_markers_raises(small_field):
    with pytest.raises(ValueError, match="2-D"):
        quantify(small_field.image[0], marker_channels={"er": 1}, backend="numpy")


def test_channel_index_out_of_range_raises(small_field):
    with pytest.raises(ValueError, match="nuclei channel index 5"):
        quantify(small_field.image, nuclei_channel=5, backend="numpy")
    with pytest.raises(ValueError, match="'er'.*3"):
        quantify(small_field.image, marker_channels={"er": 3}, backend="numpy")


def test_empty_field_gives_empty_table():
    rng = np.random.default_rng(0)
    img = (100 + rng.normal(0, 2, (2, 256, 256))).astype(np.uint16)
    res = quantify(img, backend="numpy")
    assert isinstance(res.table, pd.DataFrame) and len(res.table) == 0
    assert res.n_nuclei == 0
    assert not res.nuclei.any() and not res.cells.any()
    assert res.summary()["n_nuclei"] == 0


def test_nan_field_raises():
    img = np.full((2, 64, 64), 100.0, np.float32)
    img[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quantify(img, backend="numpy")


# ---------------------------------------------------------------- the ERα bar
def _fraction_within(ratios, tol=0.05):
    r = np.concatenate(list(ratios))
    return float(np.mean(np.abs(r - 1) <= tol)), len(r)


def test_er_within_5_percent_true_flatfield(accuracy_results):
    """The issue's bar: background- and flat-field-corrected nuclear ERα within 5 % of
    the true level for ≥ 95 % of matched cells (pooled over the 4 in-focus fields;
    measured 0.955 pooled). Per field it varies (0.929-0.980): guard at 0.91."""
    ratios = accuracy_results["er_ratio"]
    pooled, n = _fraction_within(ratios.values())
    per_field = {s: _fraction_within([r])[0] for s, r in ratios.items()}
    med = float(np.median(np.abs(np.concatenate(list(ratios.values())) - 1)))
    assert pooled >= 0.95, f"pooled fraction within 5 %: {pooled:.3f} of {n} cells"
    assert min(per_field.values()) >= 0.91, per_field
    assert med <= 0.015, f"median |error| {med:.4f}"


def test_er_within_5_percent_classical(accuracy_fields):
    """Issue 14's bar for the classical fast path: nuclear ERα within 5 % for >= 95 % of
    matched cells on the same 4 fields (measured 0.953 of 1,180 cells with the seams
    re-drawn at full size, 0.949 without: the bar fails if that step is lost)."""
    from erquant.metrics import matched_pairs
    from erquant.params import Params

    params = Params().replace(**{"segment.method": "classical"})
    ratios = []
    for f in accuracy_fields:
        res = quantify(f.image, backend="numpy", flatfield=f.illumination, params=params)
        assert res.info["method"] == "classical"
        tl, pl = matched_pairs(f.nuclei, res.nuclei)
        truth = f.truth.set_index("label").loc[tl]
        tab = res.table.set_index("label").loc[pl]
        ratios.append(tab["nucleus_er_mean_bgcorr"].to_numpy() / truth["true_er"].to_numpy())
    pooled, n = _fraction_within(ratios)
    assert n >= 1150, n
    assert pooled >= 0.95, f"pooled fraction within 5 %: {pooled:.3f} of {n} cells"


def test_er_with_estimated_illumination(accuracy_results):
    """Flat field fitted from the nuclei of 4 fields (no truth): the gain map follows
    the true vignetting and the per-field mean ERα (what dose-response fits use) is
    within 2 % of the true mean. Per-cell accuracy needs a plate's worth of nuclei
    (the 4-field fit has ~2 % median gain error)."""
    tables = accuracy_results["raw_tables"]
    fields = accuracy_results["fields"]
    shape = fields[ACCURACY_SEEDS[0]].image.shape[1:]
    ill = fit_illumination(list(tables.values()), shape)  # no truth used
    rel = np.abs(ill.gain_map() / fields[ACCURACY_SEEDS[0]].illumination - 1)
    assert np.median(rel) <= 0.03, f"median gain error {np.median(rel):.3f}"
    assert np.quantile(rel, 0.9) <= 0.06, f"p90 gain error {np.quantile(rel, 0.9):.3f}"
    for seed, table in tables.items():
        f = fields[seed]
        corr = ill.correct_table(table, ["nuclei", "er"]).set_index("label")
        tl, pl = accuracy_results["pairs"][seed]
        measured = corr.loc[pl, "nucleus_er_mean_bgcorr"].mean()
        true = f.truth.set_index("label").loc[tl, "true_er"].mean()
        assert abs(measured / true - 1) <= 0.02, (seed, measured, true)


@pytest.mark.parametrize("method", ["auto", "classical"])
def test_generic_array_paths_agree_with_the_fast_cpu_path(synthetic_field, monkeypatch,
                                                          method):
    """With OpenCV and Numba switched off every kernel takes the array-API branch that
    the CuPy backend runs (SciPy ndimage ≙ cupyx.scipy.ndimage, bincount, reshape-mean,
    repeat): the whole pipeline must give the same nuclei and per-cell ERα, with the
    default (learned) and the classical segmenter (whose fused compiled kernels, e.g.
    the seed score and the contrast rule, have their array twins here)."""
    from erquant.metrics import match_labels

    f = synthetic_field((768, 768), 170, 7, in_focus=True)
    params = Params().replace(**{"segment.method": method})
    fast = quantify(f.image, backend="numpy", params=params)
    monkeypatch.setenv("ERQUANT_NO_OPENCV", "1")
    monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
    generic = quantify(f.image, backend="numpy", params=params)
    assert fast.info["diameter"] == pytest.approx(generic.info["diameter"], rel=0.05)
    assert abs(fast.n_nuclei - generic.n_nuclei) <= 0.01 * fast.n_nuclei + 1
    assert match_labels(fast.nuclei, generic.nuclei).f1 >= 0.97
    assert match_labels(fast.cells, generic.cells).f1 >= 0.95
    a = fast.table["nucleus_er_mean_bgcorr"].median()
    b = generic.table["nucleus_er_mean_bgcorr"].median()
    assert a == pytest.approx(b, rel=0.01)


# ---------------------------------------------------------------- remeasure and ROI summaries
def test_remeasure_unchanged_labels_equals_quantify(small_field, small_result):
    from erquant import remeasure

    res = remeasure(small_result.nuclei, small_field.image, backend="numpy",
                    downsample=small_result.info["downsample"])  # cells grown the same way
    pd.testing.assert_frame_equal(res.table, small_result.table)
    np.testing.assert_array_equal(res.cells, small_result.cells)
    assert res.scores == small_result.scores
    assert res.qc["flags"] == small_result.qc["flags"]
    assert res.info["remeasured"] and res.info["threshold"] is None
    assert res.info["diameter"] == pytest.approx(small_result.info["diameter"], rel=0.3)


def test_remeasure_after_deleting_a_nucleus(small_field, small_result):
    from erquant.pipeline import remeasure, remeasure_iter

    edited = small_result.nuclei.copy()
    gone = int(small_result.table["label"].iloc[3])
    edited[edited == gone] = 0
    gen = remeasure_iter(edited, small_field.image, backend="numpy")
    stages = []
    while True:
        try:
            stages.append(next(gen).stage)
        except StopIteration as stop:
            res = stop.value
            break
    assert stages[0] == "load" and stages[-1] == "done"
    assert res.n_nuclei == small_result.n_nuclei - 1
    assert gone not in set(res.table["label"]) and not (res.cells == gone).any()
    np.testing.assert_array_equal(res.nuclei, edited)  # the edit is what is measured
    # ROI polygons filter as in quantify
    half = small_field.image.shape[2] / 2
    left = np.array([[0, 0], [0, half], [384, half], [384, 0]])
    roi_res = remeasure(edited, small_field.image, roi=[left], backend="numpy")
    assert 0 < roi_res.n_nuclei < res.n_nuclei


def test_remeasure_refuses_bad_labels(small_field):
    from erquant import remeasure

    with pytest.raises(ValueError, match="differ in shape"):
        remeasure(np.zeros((10, 10), np.uint32), small_field.image)
    with pytest.raises(ValueError, match="integers"):
        remeasure(np.zeros(small_field.image.shape[1:], float), small_field.image)


def test_roi_summary_matches_field_scores_per_roi(small_field, small_result):
    from erquant.classify import field_scores
    from erquant.pipeline import WHOLE_FIELD, assign_rois, roi_summary

    shape = small_field.image.shape[1:]
    left = np.array([[0, 0], [0, 150], [384, 150], [384, 0]])
    right = np.array([[0, 200], [0, 384], [384, 384], [384, 200]])
    table = assign_rois(small_result.table, [left, right], shape)
    assert len(table) == len(small_result.table) and (table["roi"] == -1).any()
    summ = roi_summary(table, ["left", "right"])
    assert summ["roi_name"].tolist() == ["left", "right", WHOLE_FIELD]
    for k, name in enumerate(["left", "right"]):
        sub = table[table["roi"] == k]
        row = summ[summ["roi_name"] == name].iloc[0]
        sc = field_scores(sub)
        assert row["n_cells"] == len(sub) > 0
        assert row["pct_positive"] == pytest.approx(sc["pct_positive"])
        assert row["h_score"] == pytest.approx(sc["h_score"])
        assert row["allred"] == sc["allred"]
        assert row["mean_er"] == pytest.approx(sub["nucleus_er_mean_bgcorr"].mean())
    whole = summ.iloc[-1]
    assert whole["n_cells"] == len(table)
    assert whole["h_score"] == pytest.approx(small_result.scores["er"]["h_score"])
    # the core's ROI filter keeps the same cells
    filtered = quantify(small_field.image, roi=[left, right], backend="numpy")
    assert set(filtered.table["label"]) == set(table.loc[table["roi"] >= 0, "label"])
