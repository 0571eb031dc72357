"""The learned nuclei segmenter (issue 13): shipped weights, both runtimes, scale
check, tiling, accuracy on real and synthetic images, and the training code."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SAMPLE_REAL

from erquant.backend import get_backend, to_numpy
from erquant.io import read_image
from erquant.metrics import match_labels
from erquant.models import learned
from erquant.segment import segment_nuclei
from erquant.synthetic import make_clumped_field, make_field

NP = get_backend("numpy")


def test_weights_ship_with_the_package():
    assert learned.available()
    w = learned.weights()
    n = sum(v.size for v in w.values())
    assert 100_000 < n < 2_000_000, n
    card = json.loads(learned.WEIGHTS.with_suffix(".json").read_text())
    assert card["arch"] == learned.ARCH and card["train_diameter"] == learned.TRAIN_DIAMETER
    assert (learned.WEIGHTS.parent / "MODEL_CARD.md").is_file()


def test_array_module_forward_matches_opencv():
    """The network as the GPU evaluates it (matrix products of shifted views), run on
    NumPy, gives OpenCV DNN's logits."""
    rng = np.random.default_rng(0)
    x = rng.random((96, 160), dtype=np.float32)
    a = learned.forward_xp(x, learned.weights(), np)
    b = learned.forward_cv2(x)
    assert a.shape == b.shape == (3, 96, 160)
    assert np.abs(a - b).max() < 1e-3 * max(1.0, np.abs(b).max())


def test_onnx_runtime_matches_opencv_and_the_array_module():
    """ONNX Runtime (the default CPU runtime) gives the same logits as OpenCV's DNN
    module and the array-module forward; the fused softmax equals NumPy's."""
    pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(2)
    x = rng.random((112, 144), dtype=np.float32)
    a = learned.forward_ort(x)
    b = learned.forward_cv2(x)
    c = learned.forward_xp(x, learned.weights(), np)
    tol = 1e-3 * max(1.0, np.abs(b).max())
    assert a.shape == (3, 112, 144)
    assert np.abs(a - b).max() < tol and np.abs(a - c).max() < tol
    p = {rt: learned.probabilities(NP, x, runtime=rt) for rt in ("ort", "cv2", "xp")}
    ref = learned._softmax(np, c)
    for rt, v in p.items():
        assert v.dtype == np.float32 and v.shape == (3, 112, 144), rt
        assert np.abs(v - ref).max() < 1e-4, rt
        assert np.abs(v.sum(axis=0) - 1).max() < 1e-5, rt
    # extreme logits: no overflow, no NaN
    z = np.zeros((3, 4, 5), np.float32)
    z[1, 0, 0], z[2, 1, 1], z[0, 2, 2] = 500.0, -500.0, 300.0
    out = np.empty_like(z)
    from erquant import _numba_kernels

    _numba_kernels.softmax3(z, 0, 0, out)
    assert np.isfinite(out).all() and np.abs(out - learned._softmax(np, z)).max() < 1e-6
    with pytest.raises(ValueError, match="unknown runtime"):
        learned.probabilities(NP, x, runtime="torch")


def test_working_scale_partition_matches_full_resolution():
    """Below full resolution the seeds partition the working-scale grid (fewer pixels);
    the objects are the same as partitioning the full-resolution grid."""
    f = make_field(shape=(768, 768), n_nuclei=200, nucleus_diameter=22, seed=4)
    img = f.image[0].astype(np.float32)
    fac = learned.WORK_DIAMETER / 22.0
    prob = learned.probabilities(NP, learned._working(NP, img, fac))
    kw = dict(min_area=0.12 * np.pi * 11 ** 2, reach=0.45 * 22, image=img, min_snr=2.0)
    a = learned.instances(NP, prob, img.shape, **kw)
    # the reference: probabilities brought to full size first (partition at full res)
    import cv2

    full = np.stack([cv2.resize(p, img.shape[::-1], interpolation=cv2.INTER_LINEAR)
                     for p in prob])
    seeds_ref = learned.instances(NP, full, img.shape, **kw)
    m = match_labels(seeds_ref, a)
    assert m.f1 >= 0.98, m
    assert match_labels(f.nuclei, a).f1 >= 0.95
    assert abs(int(a.max()) - int(f.nuclei.max())) <= 0.03 * int(f.nuclei.max())


def test_compiled_passes_match_the_array_path(monkeypatch):
    """The Numba passes of the learned path (softmax, area and intensity sums, the
    relabelling gather) give the labels the array-module path gives, which is the path
    CuPy runs: the same objects, pixel for pixel."""
    f = make_field(shape=(512, 640), n_nuclei=120, nucleus_diameter=20, seed=6)
    fast, info = segment_nuclei(f.image[0], method="learned", return_info=True)
    monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
    slow = segment_nuclei(f.image[0], method="learned", diameter=info["diameter"])
    assert fast.dtype == slow.dtype == np.uint32 and fast.max() > 100
    np.testing.assert_array_equal(fast, slow)
    # the pressed-nucleus seed split on a field where it splits (in-focus, crowded)
    g = make_field(shape=(1024, 1024), n_nuclei=300, seed=28, in_focus=True)
    x = learned._working(NP, g.image[0].astype(np.float32), learned.WORK_DIAMETER / 24)
    p = learned.probabilities(NP, x)[1]
    monkeypatch.setenv("ERQUANT_NO_NUMBA", "1")
    s_arr, n_arr = learned._seeds(NP, p, learned.SEED_PROBABILITY, learned.WEAK_SEED_PROBABILITY)
    monkeypatch.delenv("ERQUANT_NO_NUMBA")
    s_jit, n_jit = learned._seeds(NP, p, learned.SEED_PROBABILITY, learned.WEAK_SEED_PROBABILITY)
    monkeypatch.setattr(learned, "CORE_AREA_FRACTION", 0.0)
    _, n_plain = learned._seeds(NP, p, learned.SEED_PROBABILITY, learned.WEAK_SEED_PROBABILITY)
    assert n_jit == n_arr > n_plain  # it splits here, the same way on both paths
    np.testing.assert_array_equal(s_jit, s_arr)


def test_tiles_match_one_pass(monkeypatch):
    f = make_field(shape=(640, 704), n_nuclei=220, nucleus_diameter=16, seed=3)
    x = learned.normalise_percentile(f.image[0].astype(np.float32))
    whole = learned.probabilities(NP, x)
    monkeypatch.setattr(learned, "TILE", 288)
    tiled = learned.probabilities(NP, x)
    assert tiled.shape == whole.shape
    # the halo covers the effective receptive field: the same labels either way
    la = learned.instances(NP, whole, x.shape, min_area=20)
    lb = learned.instances(NP, tiled, x.shape, min_area=20)
    assert match_labels(la, lb).f1 >= 0.99
    assert np.abs(tiled - whole).max() < 0.05


@pytest.mark.parametrize("name", ["dsb2018_b24ea5c2", "dsb2018_ed8c31b0", "stardist_dsb2018"])
def test_sample_images(backend, name):
    img = read_image(next(SAMPLE_REAL.glob(f"{name}_image.*")))
    gt = read_image(SAMPLE_REAL / f"{name}_labels.tif")
    pred = to_numpy(segment_nuclei(backend.asarray(img), method="learned"))
    m = match_labels(gt, pred)
    assert m.f1 >= 0.80, f"{name}: F1 {m.f1:.3f} (tp {m.tp}, fp {m.fp}, fn {m.fn})"


def test_auto_is_learned():
    f = make_field(shape=(256, 256), n_nuclei=30, seed=1)
    a, ia = segment_nuclei(f.image[0], return_info=True)
    b, ib = segment_nuclei(f.image[0], method="learned", return_info=True)
    assert ia["method"] == ib["method"] == "learned"
    np.testing.assert_array_equal(a, b)
    _, ic = segment_nuclei(f.image[0], method="classical", return_info=True)
    assert ic.get("method", "classical") == "classical"
    with pytest.raises(ValueError, match="method must be one of"):
        segment_nuclei(f.image[0], method="unet")


@pytest.mark.parametrize("seed", range(6))
def test_synthetic_counts(seed):
    """16-bit camera fields: counts within 3 % of the generator's truth."""
    f = make_field(shape=(768, 768), n_nuclei=160, seed=100 + seed)
    lab = segment_nuclei(f.image[0], method="learned")
    n = int(lab.max())
    assert abs(n - f.n_nuclei) <= 0.03 * f.n_nuclei, (n, f.n_nuclei)


@pytest.mark.slow
def test_synthetic_count_bar_all_33_seeds():
    """Issue 13's bar as `benchmarks/synthetic_counts.py` measures it: in-focus 1024²
    fields with 300 nuclei (about two thirds touching a neighbour), seeds 0-32, every
    count within 3 % (seed 19 was at -3.3 % before the weak seeds: small nuclei beside
    big ones got no seed of their own)."""
    errors = {}
    for seed in range(33):
        f = make_field(shape=(1024, 1024), n_nuclei=300, seed=seed, in_focus=True)
        errors[seed] = int(segment_nuclei(f.image[0], method="learned").max()) / f.n_nuclei - 1
    bad = {s: round(e, 4) for s, e in errors.items() if abs(e) > 0.03}
    assert not bad, bad
    assert abs(float(np.median(list(errors.values())))) <= 0.01, errors


def test_weak_seeds_give_small_nuclei_their_own_seed():
    """A faint interior region with no strong pixel becomes a seed; one touching a
    strong region stays part of it (no new split)."""
    p = np.zeros((40, 60), np.float32)
    p[5:15, 5:15] = 0.9  # a strong interior
    p[15:18, 5:15] = 0.3  # ... with a faint rim attached: stays one seed
    p[25:30, 40:45] = 0.3  # a faint isolated interior: its own seed
    p[32:34, 50:52] = 0.1  # below the weak level: nothing
    seeds, n = learned._seeds(NP, p, 0.4, 0.2)
    assert n == 2
    assert seeds[10, 10] > 0 and seeds[16, 10] == 0 and seeds[27, 42] > 0
    assert seeds[10, 10] != seeds[27, 42] and seeds[33, 51] == 0
    _, n_strong = learned._seeds(NP, p, 0.4, 0.4)
    assert n_strong == 1


def test_pressed_nuclei_bridged_by_their_interiors_get_a_seed_each():
    """Two cores (p > CORE_PROBABILITY, each at least CORE_AREA_FRACTION of a
    working-size nucleus) in one seed region are two pressed nuclei: two seeds. A
    region with one core, or with a second core too small to be a nucleus' (a speck),
    stays one seed."""
    min_core = learned.CORE_AREA_FRACTION * np.pi * (learned.WORK_DIAMETER / 2) ** 2
    side = int(np.ceil(np.sqrt(min_core))) + 1  # a square core just over the minimum
    p = np.zeros((40, 80), np.float32)
    p[5:20, 5:35] = 0.5  # one region above SEED_PROBABILITY ...
    p[8:8 + side, 8:8 + side] = 0.95  # ... holding two cores: pressed pair
    p[8:8 + side, 30 - side:30] = 0.95
    p[5:20, 45:75] = 0.5  # a region with one core and a one-pixel speck
    p[8:8 + side, 48:48 + side] = 0.95
    p[15, 70] = 0.95
    seeds, n = learned._seeds(NP, p, learned.SEED_PROBABILITY, learned.WEAK_SEED_PROBABILITY)
    assert n == 3, n
    assert seeds[9, 9] != seeds[9, 28] and seeds[9, 9] > 0 and seeds[9, 28] > 0
    assert seeds[12, 18] == 0  # the bridge goes to the partition, not to a seed
    assert seeds[9, 49] == seeds[15, 70] == seeds[12, 60] > 0


def test_clumped_preset_counts():
    f = make_clumped_field(shape=(768, 768), n_nuclei=220, clump_size=20, seed=7)
    n = int(segment_nuclei(f.image[0], method="learned").max())
    assert abs(n - f.n_nuclei) <= 0.05 * f.n_nuclei, (n, f.n_nuclei)


@pytest.mark.parametrize("factor", [0.25, 4.0])
def test_scale_check_recovers_a_wrong_estimate(factor):
    """A diameter estimate 4× off (the clump lock-in) is corrected by the network."""
    f = make_field(shape=(768, 768), n_nuclei=200, nucleus_diameter=24, seed=5)
    img = f.image[0].astype(np.float32)
    d, hist = learned.check_scale(NP, img, 24 * factor)
    assert 24 / 1.3 <= d <= 24 * 1.3, (d, hist)


def test_first_probe_read_from_the_whole_run_agrees_with_its_own_run():
    """The scale check's first probe can read its crop from the whole image's run at
    the estimate (segment_learned does, saving a network run): it finds the same
    nuclei size as running the crop alone, and the same scale is picked."""
    f = make_field(shape=(1280, 1280), n_nuclei=500, nucleus_diameter=20, seed=9)
    img = f.image[0].astype(np.float32)
    d0 = 21.0
    x, small = learned._working(NP, img, learned.WORK_DIAMETER / d0, raw=True)
    whole = (x, small, learned.probabilities(NP, x))
    d_own, h_own = learned.check_scale(NP, img, d0)
    d_whole, h_whole = learned.check_scale(NP, img, d0, whole=whole)
    assert d_own == d_whole == d0, (h_own, h_whole)
    (_, m_own, _, n_own), (_, m_whole, _, n_whole) = h_own[0], h_whole[0]
    assert abs(m_whole / m_own - 1) < 0.03 and abs(n_whole - n_own) <= 0.05 * n_own
    # and the labels segment_learned returns are those of a run at the picked scale
    lab, info = learned.segment_learned(img, return_info=True)
    ref = learned.segment_learned(img, diameter=info["diameter"])
    assert (lab == ref).all()


def test_constant_and_empty_images():
    lab, info = segment_nuclei(np.full((64, 64), 7, np.uint16), method="learned",
                               return_info=True)
    assert lab.max() == 0 and lab.dtype == np.uint32
    lab = segment_nuclei(np.random.default_rng(0).normal(100, 2, (200, 200)).astype(np.float32),
                         method="learned", diameter=12)
    assert lab.max() <= 2  # noise: (almost) nothing


def test_training_code_runs_and_exports(tmp_path):
    """A tiny training run on a few crops: loss falls, the export loads, both runtimes agree."""
    torch = pytest.importorskip("torch")
    from erquant.models import train as T

    torch.set_num_threads(1)
    ex = T.make_synthetic(2, seed=0, size=128)
    lines = []
    # channels other than the shipped ones: inference reads the widths from the weights
    ch = [8, 12, 16, 24, 32]
    model = T.train(ex, minutes=10, seed=0, out=tmp_path / "run", max_steps=200, batch=4,
                    log=lines.append, channels=ch)
    first = float(lines[0].split("loss=")[1].split()[0])
    last = float(lines[-1].split("loss=")[1].split()[0])
    assert last < first, lines
    dest = tmp_path / "w" / "nuclei_unet"
    dest.parent.mkdir()
    T.export(model, dest, {"arch": {"channels": ch, "levels": 4}})
    w = learned.weights(dest)
    assert [w[f"enc{k}.1.w"].shape[0] for k in range(4)] + [w["mid.1.w"].shape[0]] == ch
    x = np.random.default_rng(1).random((64, 80), dtype=np.float32)
    a = learned.forward_xp(x, w, np)
    b = learned.forward_cv2(x, dest)
    with torch.no_grad():
        c = model(torch.from_numpy(x)[None, None])[0].numpy()
    assert np.abs(a - b).max() < 1e-4 * max(1.0, np.abs(b).max())
    assert np.abs(a - c).max() < 0.02 * max(1.0, np.abs(c).max())  # float16 weights


def test_targets_band():
    from erquant.models.train import targets

    lab = np.zeros((20, 20), np.int32)
    lab[2:12, 2:12] = 1
    lab[2:12, 12:18] = 2
    t = targets(lab)
    assert (t[lab == 0] == 0).all()
    assert t[7, 7] == 1 and t[2, 5] == 2 and t[7, 11] == 2 and t[7, 12] == 2 and t[7, 3] == 2
    assert t[7, 4] == 1


@pytest.mark.gpu
def test_gpu_labels_match_cpu():
    from erquant.backend import cupy_available

    if not cupy_available():
        pytest.skip("CuPy / CUDA not available")
    import cupy as cp

    f = make_field(shape=(1024, 1024), n_nuclei=300, seed=9)
    cpu = segment_nuclei(f.image[0], method="learned")
    gpu = segment_nuclei(cp.asarray(f.image[0]), method="learned")
    assert isinstance(gpu, cp.ndarray)
    assert match_labels(cpu, to_numpy(gpu)).f1 >= 0.99
