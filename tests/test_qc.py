"""Tests for erquant.qc: focus, saturation, background, flags and image validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from erquant.backend import cupy_available, get_backend
from erquant.qc import (
    field_qc,
    flatten_qc,
    focus_score,
    is_constant,
    saturated_fraction,
    validate_image,
)


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def bk(request):
    if request.param == "cupy" and not cupy_available():
        pytest.skip("CuPy / CUDA not available")
    return get_backend(request.param)


def _disk_field(seed=0, shape=(192, 192), n=20, radius=9, noise=5.0, bg=100.0):
    """Random disks with known intensities on a flat background + Gaussian noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, bg)
    lab = np.zeros(shape, np.int32)
    for k in range(1, n + 1):
        cy, cx = rng.integers(radius, shape[0] - radius, size=2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        img[disk] = bg + rng.uniform(300, 1500)
        lab[disk] = k
    return img + rng.normal(0, noise, shape), lab


@pytest.mark.parametrize("radius", [5, 12])
def test_focus_score_lower_for_blurred_copy_regardless_of_brightness(radius):
    img, _ = _disk_field(radius=radius)
    sharp = focus_score(img)
    for sigma in (1.5, 3.0):
        blurred = ndi.gaussian_filter(img, sigma)
        assert focus_score(blurred) < 0.75 * sharp
        # a brighter (gain x10, offset +1000) blurred copy is still lower
        assert focus_score(10 * blurred + 1000) < 0.75 * sharp
    assert focus_score(3 * img + 50) == pytest.approx(sharp, rel=1e-4)
    assert focus_score(np.full((32, 32), 5.0)) == 0.0


def test_field_qc_focus_flag(bk):
    img, lab = _disk_field()
    sharp = field_qc({"nuclei": bk.asarray(img)}, nuclei=bk.asarray(lab))
    assert "out_of_focus" not in sharp["flags"]
    blur = ndi.gaussian_filter(img, 3.0)
    qc = field_qc({"nuclei": bk.asarray(blur)}, nuclei=bk.asarray(lab))
    assert qc["focus_score"]["nuclei"] < sharp["focus_score"]["nuclei"]
    assert "out_of_focus" in qc["flags"]


def test_saturated_fraction_exact(bk):
    img = np.full((50, 40), 1000, np.uint16)
    img[:3, :10] = 65535  # 30 px of 2000
    assert saturated_fraction(bk.asarray(img)) == pytest.approx(30 / 2000)
    assert saturated_fraction(bk.asarray(img), saturation_value=1000) == 1.0
    assert math.isnan(saturated_fraction(img.astype(np.float32)))
    assert saturated_fraction(img.astype(np.float32), 60000) == pytest.approx(30 / 2000)
    img12 = np.full((10, 10), 10, np.uint16)
    img12[0, :5] = 4095
    qc = field_qc({"er": img, "nuclei": img12}, saturation_value={"nuclei": 4095, "er": None})
    assert qc["saturated_fraction"] == pytest.approx({"er": 30 / 2000, "nuclei": 0.05})
    assert "saturated" in qc["flags"]  # 5 % > 1 %
    qc = field_qc({"er": img}, saturation_limit=0.02)
    assert "saturated" not in qc["flags"]  # 1.5 % < 2 %


def test_background_level_and_counts(bk):
    img, lab = _disk_field(noise=0.0, bg=123.0)
    lab2 = lab.copy()
    lab2[lab2 > 0] += 1000  # non-contiguous ids
    qc = field_qc({"nuclei": bk.asarray(img), "er": bk.asarray(img * 2)}, nuclei=bk.asarray(lab2))
    assert qc["n_nuclei"] == len(np.unique(lab)) - 1
    assert qc["background_level"] == pytest.approx({"nuclei": 123.0, "er": 246.0})
    assert qc["contrast"]["nuclei"] == math.inf  # noiseless background, bright disks
    assert qc["flags"] == []


def test_empty_and_low_contrast_flags():
    rng = np.random.default_rng(2)
    noise = rng.normal(100, 5, (128, 128))
    qc = field_qc({"nuclei": noise}, nuclei=np.zeros((128, 128), np.int32))
    assert qc["n_nuclei"] == 0
    assert "empty" in qc["flags"] and "low_contrast" in qc["flags"]
    assert "out_of_focus" not in qc["flags"]  # pure noise is "sharp"
    qc = field_qc({"nuclei": np.full((32, 32), 7.0)})
    assert "empty" in qc["flags"] and "out_of_focus" not in qc["flags"]
    img, lab = _disk_field()
    qc = field_qc({"dapi": img}, nuclei=lab)
    assert qc["focus_channel"] == "dapi" and qc["flags"] == []
    assert qc["contrast"]["dapi"] > 20


def test_field_qc_errors():
    img, lab = _disk_field()
    with pytest.raises(ValueError, match="non-empty mapping"):
        field_qc({})
    with pytest.raises(ValueError, match="focus_channel 'er'"):
        field_qc({"nuclei": img}, focus_channel="er")
    with pytest.raises(ValueError, match=r"channel 'er' has shape \(5, 5\)"):
        field_qc({"nuclei": img, "er": np.zeros((5, 5))}, nuclei=lab)


def test_validate_image_messages(bk):
    validate_image(bk.asarray(np.eye(4)), "nuclei")
    with pytest.raises(ValueError, match=r"nuclei image is constant \(all pixels = 0\)"):
        validate_image(bk.asarray(np.zeros((4, 4), np.uint16)), "nuclei")
    with pytest.raises(ValueError, match=r"er image is saturated \(all pixels = 65535\)"):
        validate_image(bk.asarray(np.full((4, 4), 65535, np.uint16)), "er")
    bad = np.eye(4)
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="nuclei image contains NaN"):
        validate_image(bk.asarray(bad), "nuclei")
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="infinite"):
        validate_image(bad, "nuclei")
    with pytest.raises(ValueError, match=r"must be 2-D, got shape \(3, 4, 5, 6\)"):
        validate_image(np.zeros((3, 4, 5, 6)), "nuclei")
    with pytest.raises(ValueError, match="empty"):
        validate_image(np.zeros((0, 5)), "nuclei")
    with pytest.raises(TypeError, match="numeric"):
        validate_image(np.zeros((3, 3), bool), "mask")
    assert is_constant(np.full((3, 3), 2.5)) and not is_constant(np.eye(3))


def test_flatten_qc():
    img, lab = _disk_field()
    row = flatten_qc(field_qc({"nuclei": img, "er": img}, nuclei=lab))
    assert row["qc_n_nuclei"] == len(np.unique(lab)) - 1
    assert {"qc_focus_score_nuclei", "qc_focus_score_er", "qc_flags"} <= set(row)
    assert row["qc_flags"] == ""


def test_fused_focus_terms_equal_the_array_path(monkeypatch):
    """qc._focus_terms on the CPU sums the band energies in one compiled pass: the same
    energies as the array path (ERQUANT_NO_NUMBA=1, the GPU's code) to rounding, so
    focus scores and flags do not move."""
    pytest.importorskip("numba")
    from erquant import qc as Q
    from erquant.backend import get_backend
    from erquant.synthetic import make_field

    from erquant import _numba_kernels as NK

    from erquant.kernels import gaussian

    calls = []
    compiled = NK.focus_energies
    monkeypatch.setattr(NK, "focus_energies", lambda *a: calls.append(1) or compiled(*a))
    bk = get_backend("numpy")
    img = make_field(shape=(512, 512), n_nuclei=150, nucleus_diameter=14.0,
                     seed=3).image[0].astype(np.float32)
    for arr in (img, img[::2, ::2] * 3 + 50):
        fused = [float(v) for v in Q._focus_terms(bk, arr, (1.0, 2.0, 4.0))]
        assert calls, "the compiled pass was not taken"
        calls.clear()
        # the one-pass blurs and sums: bit for bit the three compiled blurs and the
        # compiled sum of their band energies
        f = arr - arr.mean()
        g = [np.ascontiguousarray(gaussian(bk, f, s)) for s in (1.0, 2.0, 4.0)]
        assert [v / f.size for v in NK.band_energies(*g)] == fused
        monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
        plain = [float(v) for v in Q._focus_terms(bk, arr, (1.0, 2.0, 4.0))]
        monkeypatch.delenv("ERQUANT_NO_NUMBA")
        assert not calls
        # the blurs differ in their last float32 bits (the compiled Gaussian against
        # OpenCV's): energies equal to 1e-6
        np.testing.assert_allclose(fused, plain, rtol=1e-6)
        assert plain[0] > 0 and plain[1] > 0


def test_ranges_from_the_validation_pass_give_the_same_qc():
    """field_qc(ranges=...) with the (min, max, saturated count) of validate_image's
    pass (as quantify passes them: no second pass over each channel) equals field_qc
    measuring them itself, with default, global and per-channel saturation levels."""
    from erquant.pipeline import quantify
    from erquant.params import Params
    from erquant.qc import channel_saturation, field_qc, validate_image
    from erquant.synthetic import make_field

    f = make_field(shape=(128, 128), n_nuclei=12, seed=4)
    img = f.image.copy()
    img[0, 20:40] = np.iinfo(img.dtype).max  # some saturated nuclei-channel pixels
    img[1, 50:52] = 3000
    chans = {"nuclei": img[0], "er": img[1]}
    for sv in (None, 2500.0, {"er": 2900.0}):
        ranges = {k: validate_image(v, k, saturation=channel_saturation(v, sv, k))
                  for k, v in chans.items()}
        a = field_qc(chans, nuclei=f.nuclei, saturation_value=sv)
        b = field_qc(chans, nuclei=f.nuclei, saturation_value=sv, ranges=ranges)
        assert a == b
    r = quantify(img, backend="numpy",
                 params=Params().replace(**{"qc.saturation_value": 2500.0}))
    ref = field_qc(chans, nuclei=r.nuclei, saturation_value=2500.0)
    assert r.qc["saturated_fraction"] == ref["saturated_fraction"]
    assert r.qc["saturated_fraction"]["er"] > 0


def test_focus_terms_taken_beside_the_segmentation_give_the_same_qc(monkeypatch):
    """quantify takes QC's focus band energies on a thread beside the segmentation
    (qc.focus_terms, passed to field_qc): the same QC as field_qc taking them itself,
    for the channel that drives the flags (≤ 1024² crop) and a reported one (≤ 512²);
    a bad channel still fails with its message."""
    from erquant import pipeline
    from erquant.qc import field_qc, focus_terms
    from erquant.synthetic import make_field

    f = make_field(shape=(1200, 1100), n_nuclei=150, seed=9)
    chans = {"nuclei": f.image[0], "er": f.image[1]}
    terms = focus_terms(chans)
    assert set(terms) == {"nuclei", "er"}
    assert field_qc(chans, nuclei=f.nuclei, focus_terms=terms) == field_qc(chans,
                                                                          nuclei=f.nuclei)
    with pytest.raises(TypeError, match="channel 'er'"):
        focus_terms({"nuclei": f.image[0], "er": f.image[1].astype(bool)})
    beside = pipeline.quantify(f.image, backend="numpy")
    # one thread asked for: no thread beside (QC takes the focus itself)
    import numba

    from erquant.backend import get_backend
    from erquant.params import Params

    bk = get_backend("numpy")
    assert pipeline._focus_beside(bk, chans, Params()) is not None or numba.get_num_threads() < 2
    monkeypatch.setenv("ERQUANT_NO_PARALLEL", "1")
    assert pipeline._focus_beside(bk, chans, Params()) is None
    monkeypatch.delenv("ERQUANT_NO_PARALLEL")
    n = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert pipeline._focus_beside(bk, chans, Params()) is None
    finally:
        numba.set_num_threads(n)
    monkeypatch.setattr(pipeline, "_focus_beside", lambda *a, **k: None)
    alone = pipeline.quantify(f.image, backend="numpy")
    assert beside.qc == alone.qc
    np.testing.assert_array_equal(beside.nuclei, alone.nuclei)
