"""``erquant.pipeline.quantify_batch``: N fields segmented together as one montage.

The montage is the classical segmenter's batching (``segment.method = "classical"``
here); with the learned segmenter (the default) each field is sized, normalised and
segmented on its own, as ``quantify`` does.
"""

from __future__ import annotations

import numpy as np
import pytest

from erquant.metrics import match_labels, matched_pairs
from erquant.params import Params
from erquant.pipeline import Progress, quantify, quantify_batch, quantify_batch_iter
from erquant.synthetic import make_field


CLASSICAL = Params().replace(**{"segment.method": "classical"})


@pytest.fixture(scope="module")
def fields():
    return [make_field(shape=(320, 320), n_nuclei=32, seed=s) for s in range(6)]


@pytest.fixture(scope="module")
def batch(fields):
    return quantify_batch(np.stack([f.image for f in fields]), backend="numpy",
                          flatfield=fields[0].illumination, params=CLASSICAL)


def _pooled(fields, results):
    ms = [match_labels(f.nuclei, r.nuclei) for f, r in zip(fields, results)]
    tp, fp, fn = (sum(getattr(m, k) for m in ms) for k in ("tp", "fp", "fn"))
    return 2 * tp / (2 * tp + fp + fn)


def _er_within(fields, results, tol=0.05):
    hits = []
    for f, r in zip(fields, results):
        tl, pl = matched_pairs(f.nuclei, r.nuclei)
        true = f.truth.set_index("label").loc[tl, "true_er"].to_numpy()
        meas = r.table.set_index("label").loc[pl, "nucleus_er_mean_bgcorr"].to_numpy()
        hits.append(np.abs(meas / true - 1) <= tol)
    return float(np.concatenate(hits).mean())


def test_batch_matches_truth_as_well_as_field_by_field(fields, batch):
    single = [quantify(f.image, backend="numpy", flatfield=f.illumination, params=CLASSICAL)
              for f in fields]
    assert len(batch) == len(fields)
    n_true = sum(int(f.nuclei.max()) for f in fields)
    assert abs(sum(r.n_nuclei for r in batch) - n_true) <= 0.03 * n_true
    for f, r in zip(fields, batch):
        assert abs(r.n_nuclei - int(f.nuclei.max())) <= 3  # of 32
        assert r.info["montage_fields"] == len(fields)
        assert r.nuclei.shape == f.nuclei.shape and r.nuclei.dtype == np.uint32
    f1_batch, f1_single = _pooled(fields, batch), _pooled(fields, single)
    assert f1_batch >= 0.97 and f1_batch >= f1_single - 0.01, (f1_batch, f1_single)
    er_b, er_s = _er_within(fields, batch), _er_within(fields, single)
    assert er_b >= 0.9 and er_b >= er_s - 0.02, (er_b, er_s)


def test_learned_batch_is_field_by_field(fields):
    """The default (learned) segmenter in a batch: each field alone, as quantify does."""
    res = quantify_batch([f.image for f in fields[:3]], backend="numpy")
    for f, r in zip(fields, res):
        single = quantify(f.image, backend="numpy")
        assert r.info["method"] == single.info["method"] == "learned"
        assert r.info["montage_fields"] == 1
        np.testing.assert_array_equal(r.nuclei, single.nuclei)
        assert abs(r.n_nuclei - int(f.nuclei.max())) <= 2  # of 32


def test_batch_labels_are_renumbered_per_field(batch):
    for r in batch:
        n = r.n_nuclei
        assert np.array_equal(np.unique(r.nuclei), np.arange(n + 1))
        assert np.array_equal(np.unique(r.cells), np.arange(n + 1))  # cell k ↔ nucleus k
        on = r.nuclei > 0
        assert np.array_equal(r.cells[on], r.nuclei[on])
        assert r.table["label"].tolist() == list(range(1, n + 1))


def test_objects_cut_by_the_field_edge_count_once():
    """Background frames: a nucleus cut by the field edge is one object, as alone."""
    yy, xx = np.mgrid[:160, :160]
    imgs = []
    for k in range(4):
        img = np.full((160, 160), 100.0, np.float32)
        centres = [(0, 40 + 10 * k), (80, 0), (159, 100), (80, 80), (40 + 5 * k, 159)]
        for cy, cx in centres:
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < 14 ** 2] = 1100
        imgs.append(img)
    res = quantify_batch(imgs, backend="numpy", marker_channels={})
    for img, r in zip(imgs, res):
        alone = quantify(img, backend="numpy", marker_channels={})
        assert r.n_nuclei == alone.n_nuclei == 5
        assert match_labels(alone.nuclei, r.nuclei).f1 == 1.0


def test_montage_size_limit_groups_fields(fields):
    imgs = [f.image for f in fields[:4]]
    res = quantify_batch(imgs, backend="numpy", max_pixels=2 * 400 * 400, params=CLASSICAL)
    assert [r.info["montage_fields"] for r in res] == [2, 2, 2, 2]
    n_true = sum(int(f.nuclei.max()) for f in fields[:4])
    assert abs(sum(r.n_nuclei for r in res) - n_true) <= 0.03 * n_true
    for f, r in zip(fields, res):  # 32 nuclei per field: one nucleus is 3 %
        assert abs(r.n_nuclei - int(f.nuclei.max())) <= 3


def test_batch_progress_is_a_generator(fields):
    gen = quantify_batch_iter([f.image for f in fields[:3]], backend="numpy")
    seen = []
    try:
        while True:
            seen.append(next(gen))
    except StopIteration as stop:
        results = stop.value
    assert len(results) == 3 and all(isinstance(p, Progress) for p in seen)
    fr = [p.fraction for p in seen]
    assert fr == sorted(fr) and fr[0] == 0.0 and fr[-1] == 1.0
    assert {"load", "nuclei", "classify", "qc", "done"} <= {p.stage for p in seen}
    assert any("field 3 of 3" in p.message for p in seen)


def test_batch_rois_and_blank_fields(fields):
    rng = np.random.default_rng(3)
    blank = rng.normal(120, 3, fields[0].image.shape).astype(np.uint16)  # no nuclei
    roi = np.zeros(fields[1].image.shape[1:], bool)
    roi[:, :160] = True
    res = quantify_batch([fields[0].image, blank, fields[1].image], rois=[None, None, roi],
                         backend="numpy")
    assert res[1].n_nuclei == 0 and not res[1].nuclei.any()
    assert abs(res[0].n_nuclei - int(fields[0].nuclei.max())) <= 2
    t = res[2].table
    assert len(t) and (t["centroid_x"] < 160.5).all() and (t["roi"] == 0).all()
    assert not res[2].nuclei[:, 170:].any()
    # only empty fields: still one result each, no nuclei
    res = quantify_batch([blank, blank], backend="numpy")
    assert [r.n_nuclei for r in res] == [0, 0]
    with pytest.raises(ValueError, match="field 1 of the batch: nuclei image is constant"):
        quantify_batch([fields[0].image, np.full_like(blank, 120)], backend="numpy")


def test_batch_bad_input_names_the_field(fields):
    a = fields[0].image
    with pytest.raises(ValueError, match="field 1 of the batch has shape"):
        quantify_batch([a, a[:, :200, :200]], backend="numpy")
    bad = a.astype(np.float32)
    bad[0, 5, 5] = np.nan
    with pytest.raises(ValueError, match="field 2 of the batch.*NaN"):
        quantify_batch([a, a, bad], backend="numpy")
    with pytest.raises(ValueError, match="rois: 1 given for 2 fields"):
        quantify_batch([a, a], rois=[None], backend="numpy")
    with pytest.raises(ValueError, match="stack"):
        quantify_batch(np.zeros((4, 4)), backend="numpy")
    assert quantify_batch([], backend="numpy") == []


def test_batch_on_the_generic_array_path(fields, batch, monkeypatch):
    """OpenCV and Numba off: the montage (frame, place, crop, renumber) runs the array code
    the CuPy backend runs, with the same result."""
    monkeypatch.setenv("ERQUANT_NO_OPENCV", "1")
    monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
    res = quantify_batch([f.image for f in fields[:2]], backend="numpy",
                         flatfield=fields[0].illumination, max_pixels=2**22, params=CLASSICAL)
    for fast, generic in zip(batch[:2], res):
        assert abs(fast.n_nuclei - generic.n_nuclei) <= 1
        # at most one object differs: one nucleus split in two on one side (OpenCV's
        # approximate distances against scipy's exact ones) leaves its two halves and
        # the whole unmatched (field 0: 33 vs 32 nuclei, F1 0.954), nothing else
        m = match_labels(fast.nuclei, generic.nuclei)
        assert m.fp + m.fn <= 3, m


def test_fields_alone_equal_quantify(fields):
    """A montage limit below one field: each field is segmented alone, exactly as
    quantify does with the same diameter."""
    from erquant.params import Params

    p = Params().replace(**{"segment.diameter": 24.0})
    imgs = [f.image for f in fields[:2]]
    res = quantify_batch(imgs, backend="numpy", params=p, max_pixels=1)
    for img, r in zip(imgs, res):
        alone = quantify(img, backend="numpy", params=p)
        assert r.info["montage_fields"] == 1
        assert np.array_equal(r.nuclei, alone.nuclei) and np.array_equal(r.cells, alone.cells)
        assert r.table.equals(alone.table)
