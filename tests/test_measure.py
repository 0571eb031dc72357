"""Tests for erquant.measure: exact per-label statistics and background correction."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from erquant.backend import cupy_available, get_backend, to_numpy
from erquant.measure import (
    background_map,
    cytoplasm_mask,
    field_background,
    measure_cells,
    measurement_columns,
    occupied_mask,
)


@pytest.fixture(
    params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)],
)
def bk(request):
    if request.param == "cupy" and not cupy_available():
        pytest.skip("CuPy / CUDA not available")
    return get_backend(request.param)


def _two_cells():
    """Two cells with hand-chosen pixel values.

    label 3: nucleus rows 2-3, cols 2-3 (4 px) values 10, 20, 30, 40;
             cytoplasm cols 4-5 of rows 2-3 (4 px) value 5.
    label 7: nucleus rows 8-9, cols 8-10 (6 px) value 100;
             no cytoplasm.
    """
    nuc = np.zeros((12, 14), np.uint16)
    cel = np.zeros_like(nuc)
    er = np.zeros((12, 14), np.float64)
    nuc[2:4, 2:4] = 3
    cel[2:4, 2:6] = 3
    er[2:4, 2:4] = [[10, 20], [30, 40]]
    er[2:4, 4:6] = 5
    nuc[8:10, 8:11] = 7
    cel[8:10, 8:11] = 7
    er[8:10, 8:11] = 100
    return nuc, cel, er


def test_exact_statistics_two_cells(bk):
    nuc, cel, er = _two_cells()
    t = measure_cells(bk.asarray(nuc), bk.asarray(cel), {"er": bk.asarray(er)}, background=None)
    assert list(t.columns) == measurement_columns(["er"])
    assert t["label"].tolist() == [3, 7]
    assert t["nucleus_area_px"].tolist() == [4, 6]
    assert t["cyto_area_px"].tolist() == [4, 0]
    assert t["cell_area_px"].tolist() == [8, 6]
    np.testing.assert_allclose(t["centroid_y"], [2.5, 8.5])
    np.testing.assert_allclose(t["centroid_x"], [2.5, 9.0])
    np.testing.assert_allclose(t["nucleus_er_mean"], [25.0, 100.0])
    np.testing.assert_allclose(t["nucleus_er_std"], [np.std([10, 20, 30, 40]), 0.0], atol=1e-9)
    np.testing.assert_allclose(t["nucleus_er_integrated"], [100.0, 600.0])
    np.testing.assert_allclose(t["cyto_er_integrated"], [20.0, 0.0])
    assert t["cyto_er_mean"][0] == 5.0 and np.isnan(t["cyto_er_mean"][1])
    np.testing.assert_allclose(t["cell_er_mean"], [120.0 / 8, 100.0])
    np.testing.assert_allclose(t["cell_er_integrated"], [120.0, 600.0])
    # background=None: bgcorr == raw, background column 0
    np.testing.assert_allclose(t["nucleus_er_mean_bgcorr"], t["nucleus_er_mean"])
    np.testing.assert_allclose(t["er_background"], [0.0, 0.0])
    assert t["er_nc_ratio"][0] == pytest.approx(5.0) and np.isnan(t["er_nc_ratio"][1])
    assert t["label"].dtype == np.int64 and t["nucleus_area_px"].dtype == np.int64


def test_std_no_cancellation_on_large_offset():
    nuc, cel, er = _two_cells()
    t = measure_cells(nuc, cel, {"er": er + 1e7}, background=None)
    assert t["nucleus_er_std"][0] == pytest.approx(np.std([10, 20, 30, 40]), rel=1e-6)


def test_cells_none_means_no_cytoplasm():
    nuc, _, er = _two_cells()
    t = measure_cells(nuc, None, {"er": er}, background=None)
    assert t["cyto_area_px"].tolist() == [0, 0]
    assert t["cell_area_px"].tolist() == t["nucleus_area_px"].tolist()
    np.testing.assert_allclose(t["cell_er_mean"], t["nucleus_er_mean"])
    assert t["cyto_er_mean"].isna().all() and t["er_nc_ratio"].isna().all()


def test_fixed_and_field_background():
    nuc, cel, er = _two_cells()
    er = er + 7.0  # flat background of 7 everywhere (cells included)
    t = measure_cells(nuc, cel, {"er": er}, background=7.0)
    np.testing.assert_allclose(t["nucleus_er_mean_bgcorr"], [25.0, 100.0])
    np.testing.assert_allclose(t["cyto_er_mean_bgcorr"][:1], [5.0])
    np.testing.assert_allclose(t["cell_er_mean_bgcorr"], [15.0, 100.0])
    np.testing.assert_allclose(t["er_background"], [7.0, 7.0])
    tf = measure_cells(nuc, cel, {"er": er}, background="field")
    np.testing.assert_allclose(tf["er_background"], [7.0, 7.0])
    np.testing.assert_allclose(tf["nucleus_er_mean_bgcorr"], [25.0, 100.0])
    td = measure_cells(nuc, cel, {"er": er, "dna": er * 2}, background={"er": 7.0, "dna": None})
    np.testing.assert_allclose(td["nucleus_er_mean_bgcorr"], [25.0, 100.0])
    np.testing.assert_allclose(td["nucleus_dna_mean_bgcorr"], td["nucleus_dna_mean"])


def test_flatfield_applied_pixelwise():
    nuc, cel, signal = _two_cells()
    rng = np.random.default_rng(0)
    gain = rng.uniform(0.5, 1.5, size=signal.shape)
    image = 50.0 + gain * signal
    t = measure_cells(nuc, cel, {"er": image}, background=50.0, flatfield=gain)
    np.testing.assert_allclose(t["nucleus_er_mean_bgcorr"], [25.0, 100.0])
    np.testing.assert_allclose(t["cyto_er_mean_bgcorr"][:1], [5.0])
    td = measure_cells(nuc, cel, {"er": image}, background=50.0, flatfield={"er": gain})
    np.testing.assert_allclose(td["cell_er_mean_bgcorr"], t["cell_er_mean_bgcorr"])


def test_large_noncontiguous_ids_match_small_ids(bk):
    nuc, cel, er = _two_cells()
    small = measure_cells(nuc, cel, {"er": er}, background="field")
    remap = np.zeros(8, np.uint32)
    remap[3], remap[7] = 4_000_000_000, 17
    big = measure_cells(
        bk.asarray(remap[nuc]), bk.asarray(remap[cel]), {"er": bk.asarray(er)}, background="field"
    )
    assert big["label"].tolist() == [17, 4_000_000_000]
    a = small.drop(columns="label").iloc[::-1].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, big.drop(columns="label"))


def test_known_label_bound_gives_the_same_table_and_cells():
    # the pipeline passes the labels' maximum (or any upper bound: a cut mosaic window)
    # instead of measuring it again: the same cells and the same table
    from erquant.segment import segment_cells

    nuc, cel, er = _two_cells()
    nuc = nuc.astype(np.uint32)
    ref = measure_cells(nuc, cel, {"er": er})
    for bound in (7, 8, 200):
        pd.testing.assert_frame_equal(measure_cells(nuc, cel, {"er": er}, _label_max=bound), ref)
        np.testing.assert_array_equal(segment_cells(nuc, max_distance=3, _label_max=bound),
                                      segment_cells(nuc, max_distance=3))


def test_orphan_cell_label_ignored_and_int64_labels():
    nuc, cel, er = _two_cells()
    cel = cel.astype(np.int64)
    cel[0, 0:3] = 2**40  # a cell without nucleus, huge id -> compressed path
    t = measure_cells(nuc.astype(np.int64), cel, {"er": er}, background=None)
    assert t["label"].tolist() == [3, 7]
    assert t["cyto_area_px"].tolist() == [4, 0]


def test_empty_labels_give_empty_table_with_columns():
    z = np.zeros((16, 16), np.int32)
    t = measure_cells(z, z, {"er": np.ones((16, 16)), "nuclei": np.ones((16, 16))})
    assert len(t) == 0
    assert list(t.columns) == measurement_columns(["er", "nuclei"])
    assert t["label"].dtype == np.int64 and t["nucleus_er_mean"].dtype == np.float64
    assert len(measure_cells(z)) == 0


def test_geometry_only_without_channels():
    nuc, cel, _ = _two_cells()
    t = measure_cells(nuc, cel)
    assert list(t.columns) == measurement_columns([])
    assert t["cell_area_px"].tolist() == [8, 6]


def test_validation_errors():
    nuc, cel, er = _two_cells()
    with pytest.raises(ValueError, match=r"channel 'er' has shape \(5, 5\)"):
        measure_cells(nuc, cel, {"er": np.zeros((5, 5))})
    bad = er.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="channel 'er' contains NaN"):
        measure_cells(nuc, cel, {"er": bad})
    with pytest.raises(TypeError, match="integer label image"):
        measure_cells(nuc.astype(float), cel)
    with pytest.raises(ValueError, match="cells has shape"):
        measure_cells(nuc, cel[:5])
    with pytest.raises(ValueError, match="must be 2-D"):
        measure_cells(nuc, cel, {"er": np.zeros((2, 12, 14))})
    with pytest.raises(ValueError, match="negative"):
        measure_cells(nuc.astype(np.int32) - 1)
    with pytest.raises(ValueError, match="flatfield"):
        measure_cells(nuc, cel, {"er": er}, flatfield=np.zeros_like(er))
    with pytest.raises(ValueError, match="background"):
        measure_cells(nuc, cel, {"er": er}, background="median")


def _gradient_field(seed=1):
    """256x256 field: linear background ramp + noise, 16 disks with known signal."""
    rng = np.random.default_rng(seed)
    shape = (256, 256)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    bg = 200.0 + 0.5 * xx + 0.3 * yy
    nuc = np.zeros(shape, np.int32)
    signal = {}
    k = 0
    for cy in range(24, 256, 64):
        for cx in range(24, 256, 64):
            k += 1
            oy, ox = rng.integers(-6, 7, size=2)
            disk = (yy - cy - oy) ** 2 + (xx - cx - ox) ** 2 <= 8**2
            nuc[disk] = k * 5  # non-contiguous ids
            signal[k * 5] = float(rng.uniform(300, 1500))
    cel = ndi.grey_dilation(nuc, size=9)
    cel[nuc > 0] = nuc[nuc > 0]
    sig = np.zeros(shape)
    for lab, s in signal.items():
        sig[nuc == lab] = s
        sig[(cel == lab) & (nuc == 0)] = 0.25 * s
    image = bg + sig + rng.normal(0, 5, size=shape)
    return nuc, cel, image, signal, bg


def test_local_background_gradient_within_1pct(bk):
    nuc, cel, image, signal, bg = _gradient_field()
    t = measure_cells(bk.asarray(nuc), bk.asarray(cel), {"er": bk.asarray(image)}, tile=64)
    truth = np.array([signal[lab] for lab in t["label"]])
    np.testing.assert_allclose(t["nucleus_er_mean_bgcorr"], truth, rtol=0.01)
    np.testing.assert_allclose(t["cyto_er_mean_bgcorr"], 0.25 * truth, rtol=0.04)
    np.testing.assert_allclose(t["er_nc_ratio"], 4.0, rtol=0.05)
    # background column = mean of the map over the cell ~ true ramp over the cell
    true_bg = ndi.mean(bg, cel, index=t["label"].to_numpy())
    np.testing.assert_allclose(t["er_background"], true_bg, atol=4.0)
    # a single field value cannot follow the ramp: clearly worse than local
    tf = measure_cells(nuc, cel, {"er": image}, background="field")
    err_local = np.abs(t["nucleus_er_mean_bgcorr"] - truth).max()
    err_field = np.abs(tf["nucleus_er_mean_bgcorr"] - truth).max()
    assert err_field > 5 * err_local


def test_background_map_linear_ramp_and_missing_tiles(bk):
    yy, xx = np.mgrid[:96, :128]
    ramp = 10.0 + 2.0 * xx + 1.0 * yy
    occ = np.zeros(ramp.shape, bool)
    m = to_numpy(background_map(bk.asarray(ramp), bk.asarray(occ), tile=32))
    # bilinear interpolation (+ linear extrapolation at the borders) of a linear
    # function is exact, and the median of a ramp over a tile is its centre value
    np.testing.assert_allclose(m, ramp, atol=1e-3)
    m1 = to_numpy(background_map(bk.asarray(ramp[:, :100]), bk.asarray(occ[:, :100]), tile=32))
    np.testing.assert_allclose(m1, ramp[:, :100], atol=1e-3)  # partial last tile
    # a fully occupied tile is filled from its neighbours, map stays finite and close
    occ[32:64, 32:64] = True
    m2 = to_numpy(background_map(bk.asarray(ramp), bk.asarray(occ), tile=32))
    assert np.isfinite(m2).all()
    assert np.abs(m2 - ramp).max() < 2.0 * 32 + 32  # at most one tile step off
    # nothing unoccupied: constant fallback (5th percentile of the image)
    m3 = to_numpy(background_map(bk.asarray(ramp), bk.asarray(np.ones_like(occ)), tile=32))
    np.testing.assert_allclose(m3, np.percentile(ramp, 5))


def test_field_background_fallback_when_few_background_pixels():
    img = np.arange(10000, dtype=float).reshape(100, 100)
    mask = np.zeros(img.shape, bool)
    mask[0, :50] = True  # 0.5 % background -> fallback
    assert float(field_background(img, mask)) == pytest.approx(np.percentile(img, 5))
    mask[1, :] = True  # 1.5 %
    assert float(field_background(img, mask)) == pytest.approx(np.median(img[mask]))


def test_masks():
    nuc, cel, _ = _two_cells()
    cm = cytoplasm_mask(nuc, cel)
    assert cm.sum() == 4 and not (cm & (nuc > 0)).any()
    occ = occupied_mask(cel, margin=2)
    assert occ.sum() == (4 + 4) * (2 + 4) + (3 + 4) * (2 + 4)


def test_integer_channel_and_flat_gain_consistency():
    nuc, cel, image, _, _ = _gradient_field(seed=3)
    img16 = np.clip(np.round(image), 0, 65535).astype(np.uint16)
    t16 = measure_cells(nuc, cel, {"er": img16}, tile=64)
    tf = measure_cells(nuc, cel, {"er": img16.astype(float)}, tile=64)
    pd.testing.assert_frame_equal(t16, tf)


def test_label_moments_numba_equals_bincount(monkeypatch):
    """The one-pass Numba kernel and the bincount path (CuPy's) give the same sums."""
    from erquant import kernels as K
    from erquant.backend import get_backend

    bk = get_backend("numpy")
    rng = np.random.default_rng(3)
    nuc = rng.integers(0, 40, (97, 83)).astype(np.uint32)
    nuc[nuc < 20] = 0
    cyt = np.where(nuc > 0, nuc, rng.integers(0, 40, nuc.shape)).astype(np.uint32)
    a = rng.integers(0, 4000, nuc.shape).astype(np.uint16)
    b = rng.random(nuc.shape).astype(np.float32)
    args = (bk, nuc, cyt, 40, [a, b], [True, False], [2000.0, 0.0], 80)
    fast = K.label_moments(*args)
    monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
    ref = K.label_moments(*args)
    assert fast.shape == ref.shape == (6, 80)
    np.testing.assert_allclose(fast, ref, rtol=1e-6, atol=1e-3)
    assert fast[0, 1:20].sum() == 0 and fast[0].sum() == np.count_nonzero(cyt)
    # integer images of one dtype are summed as they are (no float copies): same sums
    a2 = rng.integers(0, 4000, nuc.shape).astype(np.uint16)
    args = (bk, nuc, cyt, 40, [a, a2], [True, True], [2000.0, 10.0], 80)
    ref = K.label_moments(*args)
    monkeypatch.delenv("ERQUANT_NO_NUMBA")
    np.testing.assert_allclose(K.label_moments(*args), ref, rtol=1e-9, atol=1e-6)


def test_label_max_numba_equals_numpy(monkeypatch):
    from erquant import kernels as K
    from erquant.backend import get_backend

    bk = get_backend("numpy")
    rng = np.random.default_rng(4)
    lab = rng.integers(0, 50, (64, 70)).astype(np.int32)
    val = rng.normal(0, 1, lab.shape).astype(np.float32)
    fast = K.label_max(bk, val, lab, 60)
    monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
    ref = K.label_max(bk, val, lab, 60)
    assert np.array_equal(fast, ref) and fast[55] == 0  # absent labels keep 0


def test_range_and_count_numba_equals_numpy(monkeypatch):
    from erquant import kernels as K
    from erquant.backend import get_backend

    bk = get_backend("numpy")
    rng = np.random.default_rng(5)
    for img, level in [(rng.integers(0, 65536, (50, 60)).astype(np.uint16), 65000),
                       (rng.normal(0, 1, (33, 17)).astype(np.float32), 1.5),
                       (rng.normal(0, 1, (8, 9)), None)]:
        fast = K.range_and_count(bk, img, level)
        monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
        ref = K.range_and_count(bk, img, level)
        monkeypatch.delenv("ERQUANT_NO_NUMBA")
        assert fast == pytest.approx(ref)
        assert fast[0] == pytest.approx(float(img.min())) and fast[1] == pytest.approx(float(img.max()))
        assert fast[2] == (0 if level is None else int((img >= level).sum()))


def test_nearest_seed_and_presence_numba_equal_numpy(monkeypatch):
    from erquant import kernels as K
    from erquant.backend import get_backend

    bk = get_backend("numpy")
    rng = np.random.default_rng(6)
    seeds = np.zeros((90, 110), np.int32)
    for k in range(1, 30):
        y, x = rng.integers(0, 85), rng.integers(0, 105)
        seeds[y:y + 3, x:x + 4] = k
    fast, dfast = K.nearest_seed(bk, seeds, return_distance=True)
    pf = K.label_present(bk, seeds.astype(np.uint32))
    monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
    ref, dref = K.nearest_seed(bk, seeds, return_distance=True)
    pr = K.label_present(bk, seeds.astype(np.uint32))
    assert np.array_equal(fast, ref) and np.array_equal(dfast, dref)
    assert np.array_equal(pf, pr) and pf.shape == (int(seeds.max()) + 1,)
    on = seeds > 0
    assert np.array_equal(fast[on], seeds[on])


def test_seed_cores_numba_equals_the_transform(monkeypatch):
    """Painted discs = nearest-seed transform + radius test (exact Euclidean; where two
    seeds are equally near, either id is right)."""
    from scipy import ndimage as ndi

    from erquant import kernels as K
    from erquant.backend import get_backend

    bk = get_backend("numpy")
    rng = np.random.default_rng(8)
    seeds = np.zeros((120, 140), np.int32)
    for k in range(1, 40):
        y, x = rng.integers(0, 117), rng.integers(0, 137)
        seeds[y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = k
    mask = rng.random(seeds.shape) < 0.8
    radius = np.r_[0.0, rng.uniform(1.0, 9.0, 39)].astype(np.float32)
    fast = K.seed_cores(bk, seeds, mask, radius)
    monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
    monkeypatch.setenv("ERQUANT_NO_OPENCV", "1")  # SciPy's exact transform
    ref = K.seed_cores(bk, seeds, mask, radius)
    assert fast.dtype == np.int32 and (fast > 0).sum() > 0.1 * seeds.size
    on = seeds > 0
    assert np.array_equal(fast[on], seeds[on]) and not fast[~mask & ~on].any()
    # each seed's own distance map decides the disagreements: they must be ties
    dist = np.stack([ndi.distance_transform_edt(seeds != k) for k in range(1, 40)])
    diff = np.argwhere(fast != ref)
    assert len(diff) < 0.01 * seeds.size
    dmin = dist.min(axis=0)
    ties = (np.abs(dist - dmin) < 1e-6).sum(axis=0)
    assert (ties[diff[:, 0], diff[:, 1]] >= 2).all()  # only where two seeds are equally near
    # discs too big to paint cheaply: the transform does it, with the same meaning
    monkeypatch.delenv("ERQUANT_NO_NUMBA")
    monkeypatch.delenv("ERQUANT_NO_OPENCV")
    huge = np.r_[0.0, np.full(39, 80.0)].astype(np.float32)
    big = K.seed_cores(bk, seeds, mask, huge)
    assert np.array_equal(big[on], seeds[on]) and np.array_equal(big > 0, mask | on)

def test_seed_cores_paint_only_as_far_as_a_neighbour_needs():
    """Each seed pixel paints as far as the largest radius of the seeds within twice
    that radius of it (kernels.seed_reach), not the field's largest radius: the same
    cores as discs of the largest radius for all, pixel for pixel (ties included), on
    fields of small seeds around a few big ones."""
    from erquant import _numba_kernels as NK
    from erquant import kernels as K
    from erquant.backend import get_backend

    if NK.seed_cores is None:
        pytest.skip("Numba not installed")
    bk = get_backend("numpy")
    rng = np.random.default_rng(31)
    for trial in range(8):
        seeds = np.zeros((160, 190) if trial % 2 else (400, 420), np.int32)
        n = 70
        for k in range(1, n):
            y, x = (rng.integers(0, v - 3) for v in seeds.shape)
            seeds[y:y + rng.integers(1, 4), x:x + rng.integers(1, 4)] = k
        mask = rng.random(seeds.shape) < 0.85
        radius = rng.uniform(0.5, 4.0, n).astype(np.float32)
        radius[0] = 0
        radius[rng.integers(1, n, 3)] = rng.uniform(9, 16, 3)  # a few big nuclei
        idx = np.flatnonzero(seeds.ravel() > 0).astype(np.int64)
        pr = np.empty(idx.size, np.int64)
        NK.seed_reach(seeds, idx, radius, pr)
        reach = int(np.ceil(float(radius.max())))
        assert pr.max() <= reach and np.median(pr) < reach  # (less painted)
        got, ref = np.empty_like(seeds), np.empty_like(seeds)
        NK.seed_cores(seeds, mask, radius, reach, idx, pr, got, NK.strips())
        NK.seed_cores(seeds, mask, radius, reach, idx, np.full(idx.size, reach), ref,
                      NK.strips())
        np.testing.assert_array_equal(got, ref, err_msg=f"trial {trial}")
        if idx.size * (2 * reach + 1) ** 2 <= 4 * seeds.size:  # (else: the transform)
            np.testing.assert_array_equal(K.seed_cores(bk, seeds, mask, radius), got)


def test_separable_background_map_equals_the_map():
    """The factors that measure_cells sums on the fly make the same map."""
    from erquant.measure import background_map

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:300, :260]
    img = (200 + 0.4 * xx + 0.2 * yy + rng.normal(0, 3, yy.shape)).astype(np.float32)
    occ = np.zeros(img.shape, bool)
    occ[100:140, 50:90] = True
    full = background_map(img, occ, tile=64)
    rows, c0, c1, cw = background_map(img, occ, tile=64, separable=True)
    made = rows[:, c0] * (1 - cw)[None, :] + rows[:, c1] * cw[None, :]
    np.testing.assert_allclose(made, full, rtol=1e-5, atol=1e-3)
    # no usable tile: a constant either way
    rows, c0, c1, cw = background_map(img, np.ones(img.shape, bool), tile=64, separable=True)
    made = rows[:, c0] * (1 - cw)[None, :] + rows[:, c1] * cw[None, :]
    assert made.shape == img.shape and np.ptp(made) == 0


def test_relabel_foreground_and_paste_numba_equal_numpy(monkeypatch):
    """relabel_foreground's compiled pass (the window searched for the unlabelled
    foreground, in row chunks) equals the array path, labels and the presence vector; with ``top`` beyond the
    largest id the vector is padded with False; the interior kernel equals the two
    filters; blur_minus equals the blur then sub_scaled, bit for bit."""
    from erquant import kernels as K
    from erquant.backend import get_backend

    bk = get_backend("numpy")
    rng = np.random.default_rng(8)
    labels = np.zeros((70, 90), np.uint32)
    for k in range(1, 12):
        y, x = rng.integers(0, 60), rng.integers(0, 80)
        labels[y:y + 8, x:x + 9] = k
    smooth = rng.random(labels.shape).astype(np.float32)
    peak = np.maximum(smooth, rng.random(labels.shape).astype(np.float32))
    small = rng.integers(0, 12, (36, 45)).astype(np.int32)
    seeds = np.where(rng.random((71, 90)) > 0.9, 7, 0).astype(np.int32)
    keep = rng.random((35, 45)) > 0.5  # interiors on a 2× smaller grid
    big = labels.copy()
    big[big == 5] = 70000  # ids beyond 16 bits
    bg = rng.random(labels.shape).astype(np.float32)

    def run():
        return [*K.relabel_foreground(bk, labels, smooth, peak, 0.2, 0.4, 2),
                *K.relabel_foreground(bk, labels, smooth, None, 0.5, 0.0, 1),
                *K.relabel_foreground(bk, labels, smooth, peak, 0.2, 0.4, 2, keep=keep),
                K.paste_upsampled(bk, seeds, small),
                *K.relabel_foreground(bk, big, smooth, peak, 0.2, 0.4, 2),
                *K.relabel_foreground(bk, labels.astype(np.int32), smooth, peak, 0.2, 0.4, 3),
                *K.relabel_foreground(bk, labels, smooth, peak, 0.9, 0.4, 2, top=20),
                K.interior(bk, labels), K.interior(bk, big),
                K.blur_minus(bk, smooth, 1.3, bg, 0.7, 0.25)]

    fast = run()
    monkeypatch.setenv("ERQUANT_NO_OPENCV", "1")  # (Numba without OpenCV: the same pass)
    searched, pres = K.relabel_foreground(bk, labels, smooth, peak, 0.2, 0.4, 2, keep=keep)
    assert np.array_equal(searched, fast[4]) and np.array_equal(pres, fast[5])
    monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
    ref = run()
    for a, b in zip(fast[:-1], ref[:-1]):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # (OpenCV's blur differs from the compiled one in the last float32 bits)
    np.testing.assert_allclose(fast[-1], ref[-1], rtol=0, atol=1e-6)
    assert fast[0].any() and (fast[0][smooth <= 0.2] == 0).all()
    assert np.array_equal(fast[1], np.bincount(fast[0].ravel(), minlength=12) > 0)
    assert fast[12].shape == (21,) and not fast[12][12:].any()
    kept = np.repeat(np.repeat(keep, 2, 0), 2, 1) & (labels > 0)
    assert np.array_equal(fast[4][kept], labels[kept])  # interiors keep their label
    monkeypatch.delenv("ERQUANT_NO_NUMBA")
    monkeypatch.delenv("ERQUANT_NO_OPENCV")
    blur = K.gaussian(bk, smooth, 1.3)  # the compiled blur, then the compiled subtraction
    K.sub_scaled(bk, blur, bg, 0.7, 0.25)
    assert np.array_equal(fast[-1], blur)


def test_numba_kernels_work_without_a_writable_cache(monkeypatch):
    """Read-only install and home: numba cannot cache; the kernels compile per process."""
    import importlib

    numba = pytest.importorskip("numba")
    from numba.core import caching

    from erquant import _numba_kernels

    impl = getattr(caching, "CacheImpl", None) or caching._CacheImpl  # renamed in numba 0.61
    monkeypatch.setattr(impl, "_locator_classes", [])
    with pytest.raises(RuntimeError, match="no locator"):
        numba.njit(cache=True)(lambda x: x)  # what numba does without a cache folder
    mod = importlib.reload(_numba_kernels)
    try:
        a = np.arange(12, dtype=np.float32)
        assert mod.range_count(a.reshape(3, 4), np.float32(5)) == (0.0, 11.0, 7)
    finally:
        monkeypatch.undo()
        importlib.reload(_numba_kernels)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.float32])
def test_compiled_area_resize_equals_opencv_inter_area(dtype):
    """Non-integer factors on the CPU: the compiled taps of the area weights (read in
    the image's own type) give OpenCV's INTER_AREA of the float32 copy to float32
    rounding, and the area matrix (the GPU's weights, laid out from the taps) holds
    each output pixel's overlap with each input pixel over the scale, entry by entry."""
    import cv2

    from erquant import _numba_kernels as NK
    from erquant import kernels as K
    from erquant.backend import get_backend

    if NK.area_resize is None:
        pytest.skip("Numba not installed")
    bk = get_backend("numpy")
    rng = np.random.default_rng(3)
    top = 255 if dtype == np.uint8 else 4095
    for shape, small in (((512, 384), (249, 187)), ((300, 301), (143, 97)), ((64, 9), (31, 4))):
        img = (rng.random(shape) * top).astype(dtype)
        got = K.area_resize(bk, img, small)
        ref = cv2.resize(img.astype(np.float32), small[::-1], interpolation=cv2.INTER_AREA)
        assert got.dtype == np.float32 and got.shape == small
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6 * top)
        for n, m in zip(shape, small):
            sc = n / m  # output i covers input [i sc, (i + 1) sc): overlap with [j, j + 1)
            ref = np.array([[max(0.0, min((i + 1) * sc, j + 1) - max(i * sc, j)) / sc
                             for j in range(n)] for i in range(m)], np.float32)
            np.testing.assert_array_equal(K._area_matrix(n, m), ref)


@pytest.mark.parametrize("shape,small", [((101, 87), (42, 36)), ((96, 64), (48, 32)),
                                         ((50, 70), (50, 70))])
def test_area_resize_and_upsample_labels_cpu_and_generic_agree(monkeypatch, shape, small):
    """OpenCV INTER_AREA = the area-weight matrices the GPU uses; the Numba nearest
    gather = fancy indexing; integer factors are exact block means / repeats."""
    from erquant import kernels as K
    from erquant.backend import get_backend

    bk = get_backend("numpy")
    rng = np.random.default_rng(9)
    img = rng.normal(100, 20, shape).astype(np.float32)
    lab = rng.integers(0, 30, small).astype(np.uint32)
    fast = K.area_resize(bk, img, small), K.nearest_resize(bk, lab, shape)
    monkeypatch.setenv("ERQUANT_NO_OPENCV", "1")
    monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
    ref = K.area_resize(bk, img, small), K.nearest_resize(bk, lab, shape)
    np.testing.assert_allclose(fast[0], ref[0], rtol=1e-5, atol=1e-3)
    assert fast[1].dtype == ref[1].dtype and np.array_equal(fast[1], ref[1])
    assert fast[0].shape == small and fast[1].shape == shape
    # the mean is preserved by area averaging
    assert abs(float(fast[0].mean()) - float(img.mean())) < 0.05
    if shape == (96, 64):  # integer factor 2: block means and 2×2 repeats
        np.testing.assert_allclose(fast[0], img.reshape(48, 2, 32, 2).mean(axis=(1, 3)),
                                   rtol=1e-6)
        assert np.array_equal(fast[1], np.repeat(np.repeat(lab, 2, 0), 2, 1))


@pytest.mark.parametrize("dtype,f", [(np.uint16, 4), (np.uint16, 3), (np.uint8, 5),
                                     (np.int16, 2), (np.uint16, 17)])
def test_block_mean_of_integer_images_equals_opencv_of_the_float_copy(monkeypatch, dtype, f):
    """Integer images' whole-block means come from a compiled pass with exact sums
    (no float32 copy): bit for bit OpenCV's INTER_AREA of the float32 copy, and the
    array path's mean within float32 rounding. f = 17 on uint16 (sums beyond 2**24)
    takes OpenCV's path."""
    import cv2

    from erquant import kernels as K
    from erquant.backend import get_backend

    bk = get_backend("numpy")
    rng = np.random.default_rng(f)
    hi = int(min(np.iinfo(dtype).max, 60000))
    img = rng.integers(np.iinfo(dtype).min // 2, hi, (7 * f + f - 1, 9 * f + 1)).astype(dtype)
    got = K.block_mean(bk, img, f)
    ref = cv2.resize(img[:7 * f, :9 * f].astype(np.float32), (9, 7),
                     interpolation=cv2.INTER_AREA)
    assert got.dtype == np.float32 and got.shape == (7, 9)
    assert np.array_equal(got, ref)
    exact = img[:7 * f, :9 * f].reshape(7, f, 9, f).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_allclose(got, exact, rtol=2e-7, atol=1e-6)
    monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
    monkeypatch.setenv("ERQUANT_NO_OPENCV", "1")
    np.testing.assert_allclose(K.block_mean(bk, img, f), exact, rtol=2e-7, atol=1e-6)


@pytest.mark.parametrize("shape,tile,dtype", [((300, 257), 40, np.float64),
                                              ((256, 256), 128, np.uint16),
                                              ((100, 90), 7, np.uint8),
                                              ((64, 64), 16, np.float32)])
def test_background_map_compiled_tiles_equal_the_sorted_tiles(monkeypatch, shape, tile, dtype):
    """background_map's per-tile quantiles from the compiled selection (CPU) equal the
    sorted tiled image's (the array path, as on the GPU) bit for bit: any quantile,
    empty tiles (filled from the nearest valid one), quantised images with ties."""
    from erquant.measure import background_map

    rng = np.random.default_rng(tile)
    img = (rng.random(shape) * (3 if dtype == np.uint8 else 1000)).astype(dtype)
    occ = rng.random(shape) < 0.6
    occ[: shape[0] // 3, : shape[1] // 3] = True  # some tiles with no background
    for sep in (False, True):
        for q in (0.5, 0.2, 0.0, 1.0):
            fast = background_map(img, occ, tile=tile, quantile=q, separable=sep)
            monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
            ref = background_map(img, occ, tile=tile, quantile=q, separable=sep)
            monkeypatch.delenv("ERQUANT_NO_NUMBA")
            for a, b in zip(fast if sep else [fast], ref if sep else [ref]):
                assert np.array_equal(a, b), (sep, q)
    # any truthy dtype of ``occupied`` reads as its bool image (not its bytes)
    for dt in (np.uint8, np.int64, np.float32):
        assert np.array_equal(background_map(img, occ.astype(dt), tile=tile),
                              background_map(img, occ, tile=tile)), dt


def test_select_gives_the_order_statistic_and_splits_around_it():
    """The compiled quickselect: the k-th smallest, nothing smaller after it, for random,
    few-valued (ties), constant and reversed inputs."""
    from erquant import _numba_kernels as NK

    rng = np.random.default_rng(0)
    for trial in range(400):
        n = int(rng.integers(1, 300))
        kind = trial % 4
        a = (rng.random(n) * (1000, 3, 1, 1e6)[kind]).astype(np.float32)
        if kind == 2:
            a[:] = 5
        if kind == 3:
            a = np.sort(a)[::-1].copy()
        k = int(rng.integers(0, n))
        ref = np.sort(a)
        b = a.copy()
        v = NK._select(b, n, k)
        assert v == ref[k] and (b[k + 1:] >= v).all() and (b[:k] <= v).all()
        assert np.array_equal(np.sort(b), ref)  # a permutation of the input


def test_label_moments_chunks_give_the_same_sums_on_any_thread_count():
    """kernels.label_moments sums row chunks in parallel (fixed chunks, added in order):
    the table is the same bit for bit on 1 thread and on all, and equals the bincount
    path (the GPU's) to rounding (its background map is evaluated in float32)."""
    numba = pytest.importorskip("numba")
    from erquant.synthetic import make_field

    f = make_field(shape=(512, 512), n_nuclei=300, nucleus_diameter=14.0, seed=9)
    cells = np.where(f.cells > 0, f.cells, 0).astype(np.int32)
    chans = {"nuclei": f.image[0], "er": f.image[1]}
    ref = measure_cells(f.nuclei, cells, chans)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = measure_cells(f.nuclei, cells, chans)
    finally:
        numba.set_num_threads(threads)
    pd.testing.assert_frame_equal(one, ref, check_exact=True)
    os.environ["ERQUANT_NO_NUMBA"] = "1"
    try:
        plain = measure_cells(f.nuclei, cells, chans)
    finally:
        del os.environ["ERQUANT_NO_NUMBA"]
    assert len(ref) > 250
    pd.testing.assert_frame_equal(plain, ref, rtol=1e-6)  # (float32 background maps)


def test_background_map_products_run_on_one_blas_thread(monkeypatch):
    """The background map's interpolation products run inside erquant._blas.one_thread
    (OpenBLAS's woken pool would spin on and take a core from the kernels that follow),
    which limits every BLAS library to one thread, and the map is the same as with
    BLAS's own threads."""
    import contextlib

    threadpoolctl = pytest.importorskip("threadpoolctl")
    from erquant import _blas
    from erquant import measure as M

    if _blas._controller() is None:
        pytest.skip("no BLAS library found by threadpoolctl")
    with _blas.one_thread():
        inside = [i["num_threads"] for i in threadpoolctl.threadpool_info()
                  if i["user_api"] == "blas"]
    assert inside and all(n == 1 for n in inside)
    rng = np.random.default_rng(4)
    img = (100 + rng.normal(0, 3, (300, 420)) + np.linspace(0, 50, 420)).astype(np.float32)
    occ = rng.random(img.shape) < 0.2
    entered = []

    def counted(bk):
        entered.append(1)
        return _blas.one_thread()

    monkeypatch.setattr(M, "_blas_one_thread", counted)
    one = M.background_map(img, occ, tile=32)
    assert len(entered) == 2  # both products
    monkeypatch.setattr(M, "_blas_one_thread", lambda bk: contextlib.nullcontext())
    np.testing.assert_array_equal(M.background_map(img, occ, tile=32), one)
