"""Learned nuclei segmentation: a small U-Net shipped inside erquant, no download.

The network (trained by :mod:`erquant.models.train` on CC0 data only; see
``MODEL_CARD.md`` beside the weights) sees the nuclear stain rescaled so that
nuclei are :data:`WORK_DIAMETER` px across and percentile-normalised, and
predicts per pixel: background, nucleus interior, and a 2-px band inside each
nucleus' boundary. Instances: connected interiors are the seeds (with the faint
interiors of small nuclei beside big ones, :func:`_seeds`), and the
foreground is partitioned by nearest seed (``erquant.kernels``), small objects
dropped — one code path for NumPy and CuPy.

Runtimes (same weights, same algorithm):

* NumPy input: ONNX Runtime runs the ONNX graph (12-20 % faster than OpenCV's DNN
  module on this model, 2048² fields, 2 threads); OpenCV's DNN module (``cv2.dnn``)
  where ONNX Runtime is not installed. Softmax: one compiled pass (Numba).
* CuPy input: the network is evaluated on the device by :func:`forward_xp` —
  each 3×3 convolution is 9 matrix products (cuBLAS) of shifted views, pooling
  and upsampling are reshapes; nothing leaves the GPU. The same function on NumPy
  arrays is the reference the tests compare with OpenCV.

Scale: the working scale comes from the classical diameter estimate; a check on
a central crop measures the nuclei the network finds at that scale and, when
their median diameter is off by more than :data:`SCALE_TOLERANCE` (or nothing is
found), retries at the scale they imply (the classical estimate can lock onto
clumps, 5× too large).
"""

from __future__ import annotations

import os
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np

from erquant import kernels as K
from erquant.backend import Backend, backend_for

#: network shape (the training module builds the same): channels per level, the last
#: the middle block's. Narrower deep levels than the doubling 8-16-32-64-128 (453 k
#: parameters): 168 k parameters, the network 19 % faster on ONNX Runtime (1536²:
#: 0.45 vs 0.55 s), real set pooled F1 0.893 vs 0.890 (seed 0)
ARCH = {"channels": [8, 16, 24, 40, 64], "levels": 4}
#: nuclei are about this many pixels across in the training crops (± the 0.75-1.33×
#: scale jitter of the augmentation)
TRAIN_DIAMETER = 16.0
#: ... and rescaled to this many before the network at inference: 15 scores as 16 on
#: the real set (pooled F1 0.903 vs 0.905; leave-one-source-out picks 15 for 4 of 5
#: sources) on 12 % fewer pixels; 14: 0.896, 13: 0.882, 12: 0.847
WORK_DIAMETER = 15.0
#: seeds: interior probability above this
SEED_PROBABILITY = 0.4
#: ... and regions above this holding no seed pixel (faint interiors of small nuclei)
WEAK_SEED_PROBABILITY = 0.2
#: a seed region holding two or more cores (interior probability above
#: CORE_PROBABILITY) of at least CORE_AREA_FRACTION of a working-size nucleus' area
#: is that many pressed nuclei bridged by their interiors: its cores are the seeds
CORE_PROBABILITY = 0.8
CORE_AREA_FRACTION = 0.04
#: foreground: 1 - background probability above this
FOREGROUND_PROBABILITY = 0.7
#: objects must be this many pixel-noise sigmas above the background on average
MIN_SNR = 2.0
#: ... with a mean this many standard errors (sigma / sqrt(area)) above it
MIN_Z = 10.0
#: retry the scale when the predicted median diameter is off by more than this factor
SCALE_TOLERANCE = 1.3
#: scale check: a probe chain stops when the scale it implies is within this factor
#: of one already probed that agreed — the agreement tolerance itself (1.15 took a
#: third probe on most large fields with the narrower network, whose nuclei probed at
#: half the diameter come out 1.6× the working size, not 2×; real set pooled F1
#: 0.8944 at 1.15, 0.8942 at 1.3)
SAME_SCALE = 1.3
#: scale check: probes run on a central crop of this many working px per side
PROBE_CROP = 384
#: largest working tile (px per side) run at once; larger images go in tiles
TILE = 2048
#: tile overlap on each side, ≥ the network's receptive radius (~107 px: 3×3
#: convolutions and 2× poolings over 4 levels and back)
HALO = 112

WEIGHTS = Path(__file__).with_name("nuclei_unet")


def available(path: Path | str | None = None) -> bool:
    """Whether the (shipped or given) weights are installed."""
    p = Path(path) if path is not None else WEIGHTS
    return p.with_suffix(".npz").is_file() and p.with_suffix(".onnx").is_file()


def normalise_percentile(img, lo: float = 1.0, hi: float = 99.8, xp=np, levels=None):
    """``(img - p_lo) / (p_hi - p_lo)`` (percentiles of a ≤ 1 Mpx subsample), float32.

    ``levels``: a dict whose ``percentiles`` (p_lo, p_hi) are used when present (the
    tiles of a mosaic share them), else the measured ones are stored into it.
    """
    from erquant.segment import _level

    def measure():
        flat = img.ravel()
        step = max(1, flat.size // 1_000_000)
        return tuple(float(v) for v in xp.percentile(flat[::step], [lo, hi]))

    p0, p1 = (float(v) for v in _level(levels, "percentiles", measure))
    scale = np.float32(1.0 / (p1 - p0)) if p1 > p0 else np.float32(1.0)
    return ((img.astype(xp.float32) - np.float32(p0)) * scale).astype(xp.float32, copy=False)


# ------------------------------------------------------------------ weights
@lru_cache(maxsize=4)
def _npz(path: str) -> dict:
    with np.load(path) as z:
        return {k: z[k].astype(np.float32) for k in z.files}


def weights(path: Path | str | None = None) -> dict[str, np.ndarray]:
    """The folded float32 weights (name → array) of the shipped (or given) model."""
    p = Path(path) if path is not None else WEIGHTS
    p = p.with_suffix(".npz")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: learned-segmenter weights not found "
                                "(reinstall erquant, or train them: python -m erquant.models.train)")
    return _npz(str(p))


_cv2_nets: dict = {}
_runtime_lock = threading.Lock()
_ort_sessions: dict = {}


def ort_available() -> bool:
    """Whether ONNX Runtime (the fastest CPU runtime of the network) is importable."""
    try:
        import onnxruntime  # noqa: F401
    except Exception:
        return False
    return True


def _ort_session(path: Path):
    """The ONNX Runtime session of the network (one per process, any input size).

    Not specialised to the input shape: with the size fixed ORT fuses the decoder's
    sum and ReLU into the convolution, but each new size then pays a first run
    (+0.35 s at 1536²) and keeps its own arena (+670 MB), and the fields of a plate
    reach the network at slightly different sizes (their diameter estimates differ);
    the fused graph was not measurably faster in alternating runs (0.52-0.66 s dynamic
    vs 0.59-0.77 s fixed at 1536²)."""
    import onnxruntime as ort

    key = str(path)
    with _runtime_lock:
        if key not in _ort_sessions:
            onnx = path.with_suffix(".onnx")
            if not onnx.is_file():
                raise FileNotFoundError(f"{onnx}: learned-segmenter network not found")
            so = ort.SessionOptions()
            # as many threads as OpenCV's kernels use (erquant.kernels sets them)
            so.intra_op_num_threads = max(1, os.cpu_count() or 1)
            so.inter_op_num_threads = 1
            so.log_severity_level = 3
            # no busy-waiting threads: batch workers share the cores (same speed alone:
            # 0.61 vs 0.60 s on a 1424² working image)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            _ort_sessions[key] = ort.InferenceSession(str(onnx), so,
                                                      providers=["CPUExecutionProvider"])
        return _ort_sessions[key]


def _cv2_net(path: Path):
    import cv2

    key = str(path)
    if key not in _cv2_nets:
        onnx = path.with_suffix(".onnx")
        if not onnx.is_file():
            raise FileNotFoundError(f"{onnx}: learned-segmenter network not found")
        _cv2_nets[key] = cv2.dnn.readNetFromONNX(str(onnx))
    return _cv2_nets[key]


# ------------------------------------------------------------------ forward passes
def _conv(xp, x, w, b, relu: bool):
    """2-D convolution (zero padding 'same') of x (C, H, W) with w (O, C, k, k)."""
    n_out, C, k, _ = w.shape
    H, W = x.shape[1:]
    if k == 1:
        y = w.reshape(n_out, C) @ x.reshape(C, H * W)
    else:
        r = k // 2
        xpad = xp.pad(x, ((0, 0), (r, r), (r, r)))
        y = xp.zeros((n_out, H * W), xp.float32)
        for dy in range(k):
            for dx in range(k):
                y += w[:, :, dy, dx] @ xpad[:, dy:dy + H, dx:dx + W].reshape(C, H * W)
    y += b[:, None]
    if relu:
        xp.maximum(y, 0, out=y)
    return y.reshape(n_out, H, W)


_device_weights: dict = {}


def _on_device(xp, w: dict) -> dict:
    """The weights as arrays of ``xp`` (CuPy), uploaded once per process and device."""
    key = (id(w), xp.cuda.Device().id if hasattr(xp, "cuda") else 0)
    if key not in _device_weights:
        _device_weights[key] = {k: xp.asarray(v) for k, v in w.items()}
    return _device_weights[key]


def forward_xp(x, w: dict, xp=None):
    """Class logits (3, H, W) of the U-Net for one normalised image x (H, W), H and W
    multiples of 2**levels, on x's array module (NumPy or CuPy)."""
    xp = xp or backend_for(x).xp
    ww = w if xp is np else _on_device(xp, w)
    levels = ARCH["levels"]

    def block(h, name):
        h = _conv(xp, h, ww[name + ".0.w"], ww[name + ".0.b"], True)
        return _conv(xp, h, ww[name + ".1.w"], ww[name + ".1.b"], True)

    h = x[None].astype(xp.float32)
    skips = []
    for k in range(levels):
        h = block(h, f"enc{k}")
        skips.append(h)
        C, H, W = h.shape
        h = h.reshape(C, H // 2, 2, W // 2, 2).max(axis=(2, 4))
    h = block(h, "mid")
    for k in reversed(range(levels)):
        # 1×1 convolution, then nearest upsampling (the same values as the other order)
        h = _conv(xp, h, ww[f"up{k}.w"], ww[f"up{k}.b"], False)
        h = xp.repeat(xp.repeat(h, 2, axis=1), 2, axis=2)
        h = block(xp.concatenate([h, skips[k]], axis=0), f"dec{k}")
    return _conv(xp, h, ww["out.w"], ww["out.b"], False)


def forward_cv2(x: np.ndarray, path: Path = WEIGHTS) -> np.ndarray:
    """The same logits from OpenCV's DNN module (CPU)."""
    with _runtime_lock:  # one network object per process; its forward is not re-entrant
        net = _cv2_net(Path(path))
        net.setInput(np.ascontiguousarray(x, np.float32)[None, None])
        out = net.forward()
    return out[0]


def forward_ort(x: np.ndarray, path: Path = WEIGHTS) -> np.ndarray:
    """The same logits from ONNX Runtime (CPU; sessions are safe to run concurrently)."""
    sess = _ort_session(Path(path))
    return sess.run(None, {sess.get_inputs()[0].name:
                           np.ascontiguousarray(x, np.float32)[None, None]})[0][0]


def _softmax(xp, z):
    z = z - z.max(axis=0, keepdims=True)
    e = xp.exp(z)
    return e / e.sum(axis=0, keepdims=True)


def probabilities(bk: Backend, x, *, path: Path | None = None, runtime: str = "auto"):
    """(3, H, W) float32 class probabilities of a normalised working-scale image,
    in overlapping tiles when larger than :data:`TILE`; ``runtime``: ``"auto"``
    (ONNX Runtime on NumPy, else OpenCV; the array module on CuPy), ``"ort"``,
    ``"cv2"`` or ``"xp"``."""
    xp = bk.xp
    path = Path(path) if path is not None else WEIGHTS
    if runtime == "auto":
        runtime = "xp" if bk.is_gpu else ("ort" if ort_available() else "cv2")
    if runtime not in ("ort", "cv2", "xp"):
        raise ValueError(f"unknown runtime {runtime!r}; choose auto, ort, cv2 or xp")
    host = runtime != "xp"
    fused = host and K._numba_ok(bk)
    m = 2 ** ARCH["levels"]
    H, W = x.shape
    out = xp.empty((3, H, W), xp.float32)
    step = TILE - 2 * HALO
    ys = [0] if H <= TILE else list(range(0, H, step))
    xs = [0] if W <= TILE else list(range(0, W, step))
    for y0 in ys:
        for x0 in xs:
            # core [y0, y0 + step) (whole image when it fits), read with a halo
            cy1 = H if len(ys) == 1 else min(H, y0 + step)
            cx1 = W if len(xs) == 1 else min(W, x0 + step)
            ry0, rx0 = max(0, y0 - HALO), max(0, x0 - HALO)
            ry1, rx1 = min(H, cy1 + HALO), min(W, cx1 + HALO)
            tile = x[ry0:ry1, rx0:rx1]
            th, tw = tile.shape
            ph, pw = (-th) % m, (-tw) % m
            if ph or pw:
                tile = xp.pad(tile, ((0, ph), (0, pw)), mode="reflect")
            if host:
                fwd = forward_ort if runtime == "ort" else forward_cv2
                logits = fwd(bk.xp.asnumpy(tile) if bk.is_gpu else tile, path)
                if not bk.is_gpu:
                    if fused:  # one compiled pass straight into the output
                        from erquant import _numba_kernels

                        _numba_kernels.softmax3(logits, y0 - ry0, x0 - rx0,
                                                out[:, y0:cy1, x0:cx1])
                    else:
                        out[:, y0:cy1, x0:cx1] = _softmax(
                            xp, logits[:, y0 - ry0:cy1 - ry0, x0 - rx0:cx1 - rx0])
                    continue
                logits = xp.asarray(logits)
            else:
                logits = forward_xp(tile, weights(path), xp)
            p = _softmax(xp, logits[:, :th, :tw])
            out[:, y0:cy1, x0:cx1] = p[:, y0 - ry0:cy1 - ry0, x0 - rx0:cx1 - rx0]
    return out


# ------------------------------------------------------------------ instances
def instances(bk: Backend, prob, shape, *, seed_probability: float | None = None,
              foreground_probability: float | None = None,
              min_area: float = 0.0, reach: float = 0.0, image=None, min_snr: float = 0.0,
              quantum: float = 0.0, levels: dict | None = None):
    """Labels (uint32, ``shape``) from working-scale probabilities: connected interior
    pixels are seeds; foreground pixels within ``reach`` (full-scale px) of a seed
    take its id; objects under ``min_area`` full-scale px are dropped, and with
    ``image`` those whose mean is less than ``min_snr`` noise sigmas above the
    background (:func:`_contrast_ok`)."""
    from erquant.segment import _relabel

    xp = bk.xp
    if seed_probability is None:
        seed_probability = SEED_PROBABILITY
    if foreground_probability is None:
        foreground_probability = FOREGROUND_PROBABILITY
    seeds, n = _seeds(bk, prob[1], seed_probability, WEAK_SEED_PROBABILITY)
    if n == 0:
        return xp.zeros(shape, xp.uint32)
    fg = K.resize(bk, xp.ascontiguousarray(1.0 - prob[0]), shape) > foreground_probability
    wshape = tuple(int(v) for v in prob.shape[1:])
    if wshape[0] * wshape[1] < int(shape[0]) * int(shape[1]):
        # working scale smaller than the image: partition there (the nearest-seed
        # transform on fewer pixels), boundaries still decided at full resolution
        owner, dist = K.nearest_seed(bk, seeds, return_distance=True)
        if reach > 0:
            owner = xp.where(dist <= reach * wshape[0] / int(shape[0]), owner, 0)
        labels = xp.where(fg, K.nearest_resize(bk, owner, shape),
                          K.nearest_resize(bk, seeds, shape))
    else:
        seeds = K.nearest_resize(bk, seeds, shape)
        owner, dist = K.nearest_seed(bk, seeds, return_distance=True)
        keep_px = fg & (dist <= reach) if reach > 0 else fg
        labels = xp.where(keep_px | (seeds > 0), owner, 0)
    sums = None
    if image is not None and min_snr > 0 and K._numba_ok(bk):  # area and sums, one pass
        from erquant import _numba_kernels

        area = np.zeros(n + 1, np.int64)
        sums = np.zeros(n + 1, np.float64)
        _numba_kernels.label_sums(np.ascontiguousarray(labels).ravel(),
                                  np.ascontiguousarray(image).ravel(), area, sums)
    else:
        area = xp.bincount(labels.ravel(), minlength=n + 1)
    keep = area >= min_area
    if image is not None and min_snr > 0:
        keep &= _contrast_ok(bk, image, labels, area, min_snr, quantum, levels, sums=sums)
    return xp.ascontiguousarray(_relabel(xp, labels, keep))


def _seeds(bk: Backend, p_interior, strong: float, weak: float):
    """Seed regions (int32 labels, count): connected pixels with p(interior) >
    ``strong``, split into their cores where they hold two or more (pressed nuclei
    whose interiors touch: :data:`CORE_PROBABILITY`), plus every connected region above
    ``weak`` that holds no strong pixel (a small nucleus beside a big one gets a faint
    interior; without a seed of its own the neighbour's partition takes it)."""
    xp = bk.xp
    hi = p_interior > strong
    if CORE_PROBABILITY > strong and CORE_AREA_FRACTION > 0:
        # (these labels only group pixels: any numbering)
        core_lab, n_core = K.label(bk, xp.ascontiguousarray(p_interior > CORE_PROBABILITY),
                                   ordered=False)
        if n_core >= 2:
            hi_lab, n_hi = K.label(bk, xp.ascontiguousarray(hi), ordered=False)
        area = CORE_AREA_FRACTION * np.pi * (WORK_DIAMETER / 2) ** 2
        if n_core >= 2 and K._numba_ok(bk):  # the array path below, one compiled pass
            from erquant import _numba_kernels

            out = np.empty(hi.size, bool)
            _numba_kernels.core_split(hi_lab.ravel(), core_lab.ravel(), n_hi, n_core,
                                      float(area), out)
            hi = out.reshape(hi.shape)
        elif n_core >= 2:
            big = xp.bincount(core_lab.ravel(), minlength=n_core + 1) >= area
            big[0] = False
            # the seed region of each core (cores lie inside seed regions)
            region = K.label_max(bk, hi_lab.astype(xp.float32), core_lab, n_core)
            n_big = xp.bincount(region.astype(xp.int64)[big], minlength=n_hi + 1)
            split = n_big >= 2
            split[0] = False
            if bool(split.any()):
                in_split = split[hi_lab]
                hi = (hi & ~in_split) | (big[core_lab] & in_split)
    if not weak < strong:
        return K.label(bk, xp.ascontiguousarray(hi))
    lo = p_interior > weak
    lo_lab, n_lo = K.label(bk, xp.ascontiguousarray(lo), ordered=False)
    has_hi = xp.bincount(lo_lab[hi].ravel(), minlength=n_lo + 1) > 0
    has_hi[0] = True
    return K.label(bk, xp.ascontiguousarray(hi | ~has_hi[lo_lab]))


def _contrast_ok(bk: Backend, img, labels, area, min_snr: float, quantum: float,
                 levels: dict | None = None, sums=None):
    """Per label: is its mean at least ``min_snr`` pixel-noise sigmas above the median
    background? The noise sigma comes from differences of horizontally adjacent
    background pixels (insensitive to illumination gradients), at least ``quantum``
    (the input's grey-level step); a pure-noise field's network blobs fail it."""
    xp = bk.xp
    ok = xp.ones(area.shape, bool)
    if levels is not None and "contrast" in levels:  # (sigma, level) given, or None: keep all
        if levels["contrast"] is None:
            return ok
        sigma, level = (float(v) for v in levels["contrast"])
    else:
        step = max(1, int(img.shape[0]) // 256)  # ≤ ~256 rows: plenty of pixel pairs
        rows, lrows = img[::step], labels[::step]
        both_bg = (lrows[:, 1:] == 0) & (lrows[:, :-1] == 0)
        diffs = (rows[:, 1:] - rows[:, :-1])[both_bg]
        bg = rows[lrows == 0]
        if int(diffs.size) < 100 or int(bg.size) < 100:  # (almost) no background: keep all
            if levels is not None:
                levels["contrast"] = None
            return ok
        sigma = max(float(xp.median(xp.abs(diffs))) * 1.4826 / np.sqrt(2), float(quantum),
                    1e-12)
        level = float(xp.median(bg))
        if levels is not None:
            levels["contrast"] = (sigma, level)
    if sums is None:
        sums = xp.bincount(labels.ravel(), weights=img.ravel(), minlength=area.shape[0])
    mean = sums / xp.maximum(area, 1)
    contrast = (mean - level) / sigma
    # ... and the mean significant as a mean of its pixels (a small bright noise blob of
    # an upscaled noise field passes the first test, not this one)
    return (contrast >= min_snr) & (contrast * xp.sqrt(area.astype(xp.float64)) >= MIN_Z)


def _working(bk: Backend, img, f: float, *, raw: bool = False, levels: dict | None = None):
    """img rescaled by f (area-averaged down, bilinear up) and normalised (and, with
    ``raw``, the rescaled image before normalisation)."""
    shape = (max(16, round(img.shape[0] * f)), max(16, round(img.shape[1] * f)))
    small = (K.area_resize(bk, img, shape) if f < 1 else K.resize(bk, img, shape))
    x = normalise_percentile(small, xp=bk.xp, levels=levels)
    return (x, small) if raw else x


def median_diameter(bk: Backend, labels) -> float:
    """Median equivalent diameter (px) of the labelled objects; NaN when there are none."""
    area = bk.xp.bincount(labels.ravel())[1:]
    area = area[area > 0]
    if area.size == 0:
        return float("nan")
    return float(2 * np.sqrt(float(bk.xp.median(area)) / np.pi))


def _crop_box(img_shape, d: float, crop: int):
    """The probe's central square (y0, x0, side) in image px at diameter ``d``."""
    side = int(min(max(img_shape), round(crop / (WORK_DIAMETER / d))))
    cy, cx = (max(0, (n - side) // 2) for n in img_shape)
    return cy, cx, side


def _probe_stats(bk: Backend, x, small, prob):
    """(median predicted diameter in working px, mean confidence on the foreground,
    count) of the network's output ``prob`` on the working image ``x`` (``small``:
    before normalisation)."""
    # sizes measured at the network's own boundary (p(nucleus) > 0.5, as trained);
    # noise blobs (SNR filter) agree with no scale
    lab = instances(bk, prob, x.shape, foreground_probability=0.5,
                    min_area=0.1 * np.pi * (WORK_DIAMETER / 2) ** 2, image=small,
                    min_snr=MIN_SNR)
    fg = prob[0] < 0.5
    conf = float(prob.max(axis=0)[fg].mean()) if bool(fg.any()) else 0.0
    return median_diameter(bk, lab), conf, int(lab.max()) if lab.size else 0


def _probe(bk: Backend, img, d: float, crop: int, path, runtime, whole=None):
    """The network on a central crop (~``crop`` working px) at diameter ``d``:
    (median predicted diameter in working px, mean confidence on the foreground, count).
    ``whole``: (x, small, prob) of the whole image already run at ``d``; the crop is
    then read from it instead of running the network again."""
    f = WORK_DIAMETER / d
    cy, cx, side = _crop_box(img.shape, d, crop)
    if whole is not None:
        x, small, prob = whole
        wy, wx = (min(int(round(c * f)), n - 1) for c, n in zip((cy, cx), x.shape))
        ws = max(1, int(round(side * f)))
        box = (slice(wy, wy + ws), slice(wx, wx + ws))
        return _probe_stats(bk, x[box], small[box], prob[(slice(None),) + box])
    x, small = _working(bk, img[cy:cy + side, cx:cx + side], f, raw=True)
    return _probe_stats(bk, x, small, probabilities(bk, x, path=path, runtime=runtime))


def check_scale(bk: Backend, img, diameter: float, *, path=None, runtime="auto",
                crop: int | None = None, whole=None) -> tuple[float, list]:
    """Check a diameter estimate with the network on a central crop.

    A probe runs the network at a diameter and measures the median diameter of the
    nuclei it finds (working px); it *agrees* when that is within
    :data:`SCALE_TOLERANCE` of :data:`WORK_DIAMETER`. From the estimate, probes
    follow the scale their nuclei imply until one agrees (nothing found: half the
    diameter). Clumps taken for nuclei agree with their own scale too, so the same
    is done from half the agreeing diameter; the smaller scale wins when the
    network is more confident there (mean winning-class probability on the
    foreground) *and* its nuclei are closer to the working size. Returns
    (diameter, [(probed diameter, median working px, confidence, count), ...]);
    the estimate itself when no probe agrees. ``whole``: (x, small, prob) of the
    whole image run at ``diameter``; its probe reads the crop from it (no network run).
    """
    history = []
    lo, hi = 4.0, max(img.shape) / 2
    crop = PROBE_CROP if crop is None else crop

    def probe(d):
        d = float(min(max(d, lo), hi))
        if any(abs(d - h[0]) < 0.05 * d for h in history):
            return None
        m, conf, n = _probe(bk, img, d, crop, path, runtime,
                            whole if whole is not None and d == float(diameter) else None)
        history.append((d, m, conf, n))
        return d, m

    def agrees(m):
        return np.isfinite(m) and 1 / SCALE_TOLERANCE <= m / WORK_DIAMETER <= SCALE_TOLERANCE

    def chain(d):  # follow the scale the found nuclei imply until it agrees
        for _ in range(6):
            r = probe(d)
            if r is None:
                break
            d, m = r
            if agrees(m):
                break
            d = d / 2 if not np.isfinite(m) else d * m / WORK_DIAMETER
            # the scale it implies is (nearly) one already probed that agreed: done
            same = [h for h in history if agrees(h[1]) and abs(np.log(h[0] / d)) <
                    np.log(SAME_SCALE)]
            if same:
                return same[0]
        return next((h for h in history if abs(h[0] - d) < 0.05 * d), None)

    def off(h):  # how far the probe's nuclei are from the working diameter (log ratio)
        return abs(np.log(h[1] / WORK_DIAMETER))

    first = chain(float(diameter))
    # clumps taken for nuclei agree with their own scale too: is half the size better?
    # (the network more confident there and its nuclei closer to the working size)
    half = chain(first[0] / 2) if first is not None else None
    cands = [h for h in (first, half) if h is not None and agrees(h[1])]
    if not cands:
        return float(diameter), history
    if len(cands) == 2 and not (half[2] > first[2] and off(half) < off(first)):
        cands = [first]
    return float(cands[-1][0]), history


def segment_learned(image, *, diameter: float | None = None, check: bool = True,
                    seed_probability: float | None = None,
                    foreground_probability: float | None = None,
                    min_area_fraction: float = 0.12, weights_path=None, runtime: str = "auto",
                    return_info: bool = False, levels: dict | None = None):
    """Segment nuclei with the shipped network (see the module docstring).

    ``diameter``: typical nucleus diameter (px); estimated by the classical path
    and checked by the network (``check``) when None. A given diameter is used as is.
    ``levels``: image-level statistics to use instead of measuring them (the tiles of
    a mosaic share them): ``percentiles`` (the normalisation's, at the working scale)
    and ``contrast`` (noise sigma and background level of the SNR filter, or None);
    ``info["levels"]`` returns those used.
    """
    from erquant.segment import as_2d_float, estimate_diameter

    bk = backend_for(image)
    xp = bk.xp
    img = as_2d_float(image, name="nuclei image", bk=bk)
    info: dict = {"method": "learned"}
    stats = dict(levels or {})
    whole = None
    lo, hi = (float(v) for v in (img.min(), img.max()))
    if not hi > lo:
        labels = xp.zeros(img.shape, xp.uint32)
        info.update(diameter=diameter, threshold=None, levels=stats)
        return (labels, info) if return_info else labels
    if diameter is None:
        # the inscribed-circle estimate: WORK_DIAMETER was calibrated on it (with the
        # equivalent diameter elongated nuclei reach the network smaller: real set
        # pooled F1 0.892 -> 0.884)
        d0 = float(estimate_diameter(image, equivalent=False))
        if not np.isfinite(d0) or d0 <= 0:
            d0 = WORK_DIAMETER
        info["diameter_classical"] = d0
        diameter = d0
        if check and WORK_DIAMETER / d0 > 2:
            # an estimate this small may be wrong (a 4×-upscaled run wasted): probe first
            diameter, hist = check_scale(bk, img, d0, path=weights_path, runtime=runtime)
            info["scale_checks"] = hist
        elif check:
            # the whole image at the estimate first: most estimates hold, and then the
            # scale check's first probe reads its crop from this run (one network run
            # fewer; 20 px nuclei, 2048²: 0.87 -> 0.83 s median of 8, alternating)
            lv0 = dict(stats)
            x0, small0 = _working(bk, img, WORK_DIAMETER / d0, raw=True, levels=lv0)
            prob0 = probabilities(bk, x0, path=weights_path, runtime=runtime)
            diameter, hist = check_scale(bk, img, d0, path=weights_path, runtime=runtime,
                                         whole=(x0, small0, prob0))
            info["scale_checks"] = hist
            if diameter == d0:
                stats.update(lv0)
                whole = (x0, prob0)
            del x0, small0, prob0  # not held through a run at another scale
    diameter = float(diameter)
    if not diameter > 0:
        raise ValueError(f"diameter must be > 0, got {diameter}")
    f = WORK_DIAMETER / diameter
    if whole is not None:
        x, prob = whole
    else:
        x = _working(bk, img, f, levels=stats)
        prob = probabilities(bk, x, path=weights_path, runtime=runtime)
    min_area = min_area_fraction * np.pi * (diameter / 2) ** 2
    from erquant.segment import input_quantum

    labels = instances(bk, prob, img.shape, seed_probability=seed_probability,
                       foreground_probability=foreground_probability, min_area=min_area,
                       reach=0.45 * diameter, image=img, min_snr=MIN_SNR,
                       quantum=input_quantum(image), levels=stats)
    info.update(diameter=diameter, threshold=None, scale=f, levels=stats)
    return (labels, info) if return_info else labels
