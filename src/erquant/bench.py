"""Throughput benchmark: erquant stages and pipeline vs the recipes people write today.

``erquant bench`` (or ``python benchmarks/bench.py``) times, in one run and on
the same synthetic two-channel fields (:func:`erquant.synthetic.make_field`,
default 2048² uint16 with ~1,500 nuclei):

* every stage of erquant (TIFF load, nuclei, cells, measurement) and the whole
  per-field pipeline, on each available backend (NumPy always, CuPy when a
  CUDA device is usable), as megapixels/s and fields/s;
* the reference recipes side by side: the scikit-image recipe (Gaussian, Otsu,
  distance transform, ``peak_local_max``, ``watershed``, ``expand_labels``,
  ``regionprops_table``) and pyclesperanto's ``voronoi_otsu_labeling`` +
  ``statistics_of_labelled_pixels`` (when an OpenCL device exists), with the
  erquant / reference throughput ratios;
* batched processing (:func:`erquant.pipeline.quantify_batch`: N fields per call,
  segmented as montages) vs one field at a time, on small fields on every backend
  and on the full-size fields on the GPU;
* scaling with the image size (time per megapixel, fitted exponent of time vs pixels);
* a nucleus-size sweep (8-40 px: every magnification) of the whole pipeline vs the
  scikit-image recipe given the true diameter (:mod:`erquant._bench_sweep`); its
  **worst** ratio is the headline.

Every speed is printed beside its accuracy (F1 at IoU 0.5 against the
generator's truth) so a faster-but-worse result cannot pass unseen. Setup
(generation, TIFF writing, imports, one warm-up call) is outside the timed
region; the GPU is synchronised before each clock stop; each timing is the
median of ``--repeats`` runs (the diameter sweep's: the minimum of its ``--repeats``
runs, erquant's and the recipe's interleaved, and the median of each run's own ratio). Results go to ``bench.json`` and ``bench.md`` in
``--out`` (default ``benchmarks/results/``).

Examples
--------
>>> from erquant.bench import main
>>> main(["--quick", "--size", "128", "--no-reference", "--no-scaling",
...       "--out", "/tmp/erq_bench_doc"])  # doctest: +SKIP
0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from erquant._bench_recipes import (
    CELL_DISTANCE,
    NUCLEUS_DIAMETER,
    _pyclesperanto,
    pyclesperanto_recipe,
    skimage_recipe,
)

__all__ = ["BenchConfig", "add_parser", "fit_exponent", "main", "pyclesperanto_recipe",
           "render_markdown", "run_benchmark", "skimage_recipe"]

#: Nuclei per pixel of the default field (1,500 nuclei in 2048²; realistic 10× field).
DENSITY = 1500 / 2048**2
#: Largest field generated directly; bigger scaling fields tile a field of this size.
MAX_GENERATED = 2048
#: Rough peak memory of the CPU pipeline per pixel (bytes), for the 8192² guard.
BYTES_PER_PIXEL = 160
STAGES = ("load", "nuclei", "cells", "measure")
#: nucleus diameter (px) of the fields of the methods section (issue 13's speed bar)
METHODS_DIAMETER = 20.0
GPU_MISSING = "GPU not available: no GPU timings (batched or single)"


@dataclass
class BenchConfig:
    """What one benchmark run does (see ``erquant bench --help``)."""

    size: int = 2048
    fields: int = 2
    repeats: int = 3
    backends: tuple[str, ...] = ("numpy", "cupy")
    reference: bool = True
    scaling: bool = True
    scaling_sizes: tuple[int, ...] = (512, 1024, 2048, 4096, 8192)
    scaling_budget_s: float = 150.0
    time_budget_s: float = 270.0
    batch: int = 16  # fields per quantify_batch call in the batched section (0: skip)
    batch_size: int = 512  # edge of the small fields batched on every backend
    seed: int = 0
    out: str = "benchmarks/results"
    quick: bool = False
    downsample: float = 0  # erquant's SegmentParams.downsample (0 = automatic, 1 = full res)
    ablation: bool = True  # also time the CPU pipeline without OpenCV / Numba kernels
    method: str = "classical"  # segment.method of the stage/pipeline/reference sections
    methods: bool = True  # time both segmenters side by side (METHODS_DIAMETER px nuclei)
    sweep: tuple[int, ...] = (8, 12, 16, 20, 24, 32, 40)  # nucleus diameters (); () skips
    sweep_density: float = 1.0  # the sweep's nuclei per field, × its default (8 % covered)
    sweep_clumps: int = 0  # > 0: the sweep's fields in MCF-7-like clumps of that many


# ------------------------------------------------------------------ helpers
def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def n_nuclei_for(size: int) -> int:
    """Nuclei in a ``size``² field at the default density (≥ 4).

    Examples
    --------
    >>> n_nuclei_for(2048), n_nuclei_for(1024)
    (1500, 375)
    """
    return max(4, round(DENSITY * size * size))


def fit_exponent(pixels: Sequence[float], seconds: Sequence[float]) -> float:
    """Slope of log(time) vs log(pixels): 1.0 means cost linear in pixels.

    Examples
    --------
    >>> round(fit_exponent([1e6, 4e6, 16e6], [1.0, 4.0, 16.0]), 3)
    1.0
    """
    if len(pixels) < 2:
        return float("nan")
    return float(np.polyfit(np.log(pixels), np.log(seconds), 1)[0])


def _rate(seconds: float, megapixels: float, n_fields: int) -> dict:
    """Throughput record of ``n_fields`` fields of ``megapixels`` each done in ``seconds``."""
    s = max(seconds, 1e-9)
    return {"seconds": seconds, "s_per_field": seconds / n_fields,
            "mpx_per_s": megapixels * n_fields / s, "fields_per_s": n_fields / s}


def _median_runs(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls of ``run`` (which syncs itself) and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _f1(truths: Sequence[np.ndarray], preds: Sequence[Any]) -> dict:
    """Pooled F1 at IoU 0.5 (TP/FP/FN summed over fields)."""
    from erquant.backend import to_numpy
    from erquant.metrics import match_labels

    total = None
    for t, p in zip(truths, preds):
        m = match_labels(t, to_numpy(p))
        total = m if total is None else total + m
    return {"f1": total.f1, "precision": total.precision, "recall": total.recall,
            "n_true": total.n_true, "n_pred": total.n_pred}


def _tile(field_image: np.ndarray, truth: np.ndarray, reps: int) -> tuple[np.ndarray, np.ndarray]:
    """Tile a field ``reps`` × ``reps`` times; truth labels stay unique per tile."""
    image = np.tile(field_image, (1, reps, reps))
    n = int(truth.max())
    h, w = truth.shape
    lab = np.zeros((h * reps, w * reps), np.uint32)
    for i in range(reps):
        for j in range(reps):
            k = i * reps + j
            lab[i * h:(i + 1) * h, j * w:(j + 1) * w] = np.where(truth > 0, truth + k * n, 0)
    return image, lab


# ------------------------------------------------------------------ machine facts
def _version(*dists: str) -> str | None:
    for d in dists:
        try:
            return metadata.version(d)
        except metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes(kind: str = "MemAvailable") -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(kind + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def machine_info(gpu_backend: Any = None, cle_device: str | None = None) -> dict:
    """CPU/GPU facts and library versions recorded with every result."""
    import erquant

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        usable = os.cpu_count()
    info = {
        "platform": platform.platform(), "python": platform.python_version(),
        "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(), "cpu_usable": usable,
        "memory_total_gb": round((_memory_bytes("MemTotal") or 0) / 2**30, 1),
        "gpu": None, "opencl_device": cle_device, "erquant": erquant.__version__,
        "versions": {name: _version(*dists) for name, dists in {
            "numpy": ("numpy",), "scipy": ("scipy",), "scikit-image": ("scikit-image",),
            "opencv": ("opencv-python-headless", "opencv-python"), "tifffile": ("tifffile",),
            "pandas": ("pandas",), "pyclesperanto": ("pyclesperanto",),
            "cupy": ("cupy", "cupy-cuda12x", "cupy-cuda13x", "cupy-cuda11x"),
            "cucim": ("cucim", "cucim-cu12", "cucim-cu13"),
        }.items()},
    }
    try:
        import cv2

        info["opencv_threads"] = int(cv2.getNumThreads())
    except ImportError:  # pragma: no cover - OpenCV missing
        info["opencv_threads"] = None
    if gpu_backend is not None:
        cp = gpu_backend.xp
        props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
        name = props.get("name", b"")
        info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        info["gpu_memory_gb"] = round(props.get("totalGlobalMem", 0) / 2**30, 1)
    return info


# ------------------------------------------------------------------ erquant runners
def _pipeline(bk, downsample: float = 0, method: str = "classical"
              ) -> tuple[Callable[[np.ndarray], Any], str]:
    """Per-field pipeline on backend ``bk`` → (fn(field) -> nuclei labels, description)."""
    from erquant.params import Params
    from erquant.pipeline import quantify

    params = Params().replace(**{"segment.downsample": float(downsample),
                                 "segment.method": method})

    def run_quantify(img):
        res = quantify(img, nuclei_channel=0, marker_channels={"er": 1}, backend=bk.name,
                       params=params)
        bk.synchronize()
        return res.nuclei

    return run_quantify, (f"erquant.pipeline.quantify, method {method}" +
                          (f" (downsample {downsample})" if downsample != 0 else ""))


def _erquant_job(bk, arr, downsample: float = 0, diameter: float | None = None,
                 method: str = "classical"):
    """erquant doing the recipes' job on one (2, Y, X) field: nuclei → cells (by distance,
    at the nuclei's working scale, as the pipeline does) → ERα table. A generator that
    yields after each stage, the device synchronised: the nuclei, then the cells, then
    the table."""
    from erquant.measure import measure_cells
    from erquant.segment import segment_cells, segment_nuclei

    nuc, info = segment_nuclei(arr[0], method=method, diameter=diameter,
                               downsample=downsample, return_info=True)
    bk.synchronize()
    yield nuc
    cells = segment_cells(nuc, max_distance=CELL_DISTANCE,
                          downsample=float(info.get("downsample", 1)))
    bk.synchronize()
    yield cells
    table = measure_cells(nuc, cells, {"er": arr[1]})
    bk.synchronize()
    yield table


def _stage_chain(bk, paths: Sequence[str], downsample: float = 0,
                 method: str = "classical") -> tuple[dict, list]:
    """One pass over the fields timing each stage; returns (seconds per stage, nuclei)."""
    import tifffile

    acc = dict.fromkeys(STAGES, 0.0)
    nuclei = []
    for p in paths:
        t0 = time.perf_counter()
        arr = bk.asarray(tifffile.imread(p))
        bk.synchronize()
        times = [t0, time.perf_counter()]
        job = _erquant_job(bk, arr, downsample, method=method)
        nuc = next(job)
        times.append(time.perf_counter())
        for _ in job:  # cells, measurement
            times.append(time.perf_counter())
        for k, a, b in zip(STAGES, times, times[1:]):
            acc[k] += b - a
        nuclei.append(nuc)
    return acc, nuclei


def _bench_backend(bk, fields, paths, cfg: BenchConfig) -> dict:
    mpx = cfg.size * cfg.size / 1e6
    n = len(fields)
    truths = [f.nuclei for f in fields]
    # warm-up (kernel compilation, caches, lazy imports) outside the timed region
    _stage_chain(bk, paths[:1], cfg.downsample, cfg.method)
    runs = [_stage_chain(bk, paths, cfg.downsample, cfg.method) for _ in range(cfg.repeats)]
    stages = {}
    for k in STAGES:
        stages[k] = _rate(statistics.median(r[0][k] for r in runs), mpx, n)
    stage_f1 = _f1(truths, runs[-1][1])
    stages["nuclei"].update(stage_f1)
    total = statistics.median(sum(r[0].values()) for r in runs)
    stages["sum of stages"] = _rate(total, mpx, n)

    run_field, impl = _pipeline(bk, cfg.downsample, cfg.method)
    images = [f.image for f in fields]
    run_field(images[0])  # warm-up
    t, preds = _median_runs(lambda: [run_field(im) for im in images], cfg.repeats)
    pipeline = _rate(t, mpx, n)
    pipeline.update(_f1(truths, preds))

    # like for like: the recipes' job with the recipes' knowledge (nucleus size given,
    # cells by distance, an ERα table; no nuclear-channel table, QC or classes)
    dev = [bk.asarray(im) for im in images]

    def recipes_job(arr):
        nuc, *_ = _erquant_job(bk, arr, cfg.downsample, NUCLEUS_DIAMETER, cfg.method)
        return nuc

    recipes_job(dev[0])  # warm-up
    t, preds = _median_runs(lambda: [recipes_job(a) for a in dev], cfg.repeats)
    same = _rate(t, mpx, n) | _f1(truths, preds)
    return {"stages": stages, "pipeline": pipeline, "pipeline_impl": impl,
            "recipes_job": same}


def _bench_reference(fields, cfg: BenchConfig, notes: list) -> tuple[dict, str | None]:
    mpx = cfg.size * cfg.size / 1e6
    n = len(fields)
    truths = [f.nuclei for f in fields]
    out: dict = {}

    def sk_run():
        return [skimage_recipe(f.image[0], f.image[1])[0] for f in fields]

    skimage_recipe(fields[0].image[0], fields[0].image[1])  # warm-up
    t, preds = _median_runs(sk_run, cfg.repeats)
    out["scikit-image"] = _rate(t, mpx, n) | _f1(truths, preds) | {
        "recipe": "gaussian(σ=2) → otsu → EDT → peak_local_max(min_distance=r) → watershed "
                  "→ expand_labels → regionprops_table(ER)"}

    cle, dev = _pyclesperanto()
    if cle is None:
        msg = f"pyclesperanto skipped: {dev}"
        _log(msg)
        notes.append(msg)
        out["pyclesperanto"] = {"skipped": dev}
        return out, None
    _log(f"pyclesperanto on OpenCL device: {dev}")

    def cle_run():
        return [pyclesperanto_recipe(cle, f.image[0], f.image[1])[0] for f in fields]

    pyclesperanto_recipe(cle, fields[0].image[0], fields[0].image[1])  # warm-up: kernel build
    t, preds = _median_runs(cle_run, cfg.repeats)
    out["pyclesperanto"] = _rate(t, mpx, n) | _f1(truths, preds) | {
        "recipe": "voronoi_otsu_labeling(spot_sigma=d/6, outline_sigma=1) → "
                  "statistics_of_labelled_pixels(ER)", "device": dev}
    return out, dev


#: CPU kernel variants timed by the ablation: environment switches read by erquant.kernels
ABLATION = {
    "OpenCV + Numba kernels (default)": {},
    "without Numba (bincount / np.maximum.at)": {"ERQUANT_NO_NUMBA": "1"},
    "SciPy ndimage + bincount only (the GPU's code path)": {"ERQUANT_NO_OPENCV": "1",
                                                            "ERQUANT_NO_NUMBA": "1"},
}


def _bench_ablation(fields, cfg: BenchConfig) -> dict:
    """The NumPy pipeline with each CPU kernel variant (what OpenCV and Numba buy)."""
    from erquant.backend import get_backend

    bk = get_backend("numpy")
    mpx = cfg.size * cfg.size / 1e6
    truths = [f.nuclei for f in fields]
    images = [f.image for f in fields]
    run_field, _ = _pipeline(bk, cfg.downsample, cfg.method)
    out = {}
    for name, env in ABLATION.items():
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            run_field(images[0])  # warm-up (compilation, caches)
            t, preds = _median_runs(lambda: [run_field(im) for im in images], cfg.repeats)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        out[name] = _rate(t, mpx, len(images)) | _f1(truths, preds) | {"env": env}
    base = next(iter(out.values()))["s_per_field"]
    for r in out.values():
        r["slowdown"] = r["s_per_field"] / base
    return out


def _bench_batched(bk, fields, n: int, cfg: BenchConfig) -> dict:
    """``n`` fields in one :func:`erquant.pipeline.quantify_batch` call (montages: many
    fields per launch) vs :func:`erquant.pipeline.quantify` one field at a time, on
    backend ``bk``; F1 of both beside the speeds."""
    from erquant.params import Params
    from erquant.pipeline import quantify_batch

    sel = [fields[i % len(fields)] for i in range(n)]
    stack = np.stack([f.image for f in sel])  # (N, 2, Y, X)
    truths = [f.nuclei for f in sel]
    run_field, _ = _pipeline(bk, cfg.downsample, cfg.method)
    params = Params().replace(**{"segment.downsample": float(cfg.downsample),
                                 "segment.method": cfg.method})
    size = int(stack.shape[-1])
    mpx = stack.shape[-2] * size / 1e6

    def one_by_one():
        return [run_field(im) for im in stack]  # each: transfer, compute, results back

    def batched():
        res = quantify_batch(stack, nuclei_channel=0, marker_channels={"er": 1},
                             backend=bk.name, params=params)
        bk.synchronize()
        return [r.nuclei for r in res], res[0].info.get("montage_fields", 1)

    batched()
    one_by_one()  # warm-up both
    t1, p1 = _median_runs(one_by_one, cfg.repeats)
    tb, (pb, per) = _median_runs(batched, cfg.repeats)
    return {"backend": bk.name, "size": size, "n_fields": n, "fields_per_montage": per,
            "one_at_a_time": _rate(t1, mpx, n) | _f1(truths, p1),
            "batched": _rate(tb, mpx, n) | _f1(truths, pb),
            "speedup": t1 / max(tb, 1e-9),
            "method": "erquant.pipeline.quantify_batch on the (N, C, Y, X) stack vs "
                      "erquant.pipeline.quantify per field"}


def _bench_scaling(bk, base_field, cfg: BenchConfig, s_per_mpx: float, notes: list,
                   deadline: float) -> dict:
    from erquant.synthetic import make_field

    run_field, _ = _pipeline(bk, cfg.downsample, cfg.method)
    points, skipped = [], []
    deadline = min(deadline, time.perf_counter() + cfg.scaling_budget_s)
    avail = _memory_bytes() or 0
    for size in cfg.scaling_sizes:
        mpx = size * size / 1e6
        if points:  # extrapolate from the largest size measured, never better than linear
            last = points[-1]
            exp = max(1.0, fit_exponent([q["megapixels"] for q in points],
                                        [q["seconds"] for q in points]) if len(points) > 1 else 1.0)
            est = last["seconds"] * (mpx / last["megapixels"]) ** exp
        else:
            est = s_per_mpx * mpx
        remaining = deadline - time.perf_counter()
        if not bk.is_gpu:
            if avail and size * size * BYTES_PER_PIXEL > 0.6 * avail:
                skipped.append({"size": size, "reason": "not enough free memory on this machine"})
                continue
            if est * 1.3 > remaining:
                skipped.append({"size": size, "reason": (
                    f"capped on CPU: predicted {est:.0f} s > {max(remaining, 0):.0f} s left of "
                    f"the time budget (--time-budget {cfg.time_budget_s:.0f} s, "
                    f"--scaling-budget {cfg.scaling_budget_s:.0f} s)")})
                continue
        # on the CPU, sizes above the main field size are timed once (their cost dominates)
        fits = est * cfg.repeats * 1.5 <= remaining and size <= cfg.size
        repeats = cfg.repeats if fits or bk.is_gpu else 1
        tiled = size > MAX_GENERATED
        if not tiled:
            if base_field is not None and base_field.image.shape[-1] == size:
                f = base_field
            else:
                f = make_field(shape=(size, size), n_nuclei=n_nuclei_for(size), seed=cfg.seed)
            image, truth = f.image, f.nuclei
        else:
            if base_field is None or base_field.image.shape[-1] != MAX_GENERATED:
                base_field = make_field(shape=(MAX_GENERATED,) * 2,
                                        n_nuclei=n_nuclei_for(MAX_GENERATED), seed=cfg.seed)
            reps = math.ceil(size / MAX_GENERATED)
            image, truth = _tile(base_field.image, base_field.nuclei, reps)
            image, truth = image[:, :size, :size], truth[:size, :size]
        # warm-up at the first size, and before a single timed run where time allows:
        # the first pass over a new size pays the page faults of its fresh buffers
        # (~1.5× the time at 4096²), which a plate run pays once, not per field
        warmed = not points or (repeats == 1 and est * 2.6 <= remaining)
        if warmed:
            run_field(image)
        t, pred = _median_runs(lambda im=image: run_field(im), repeats)
        if tiled:  # F1 on one generated tile (match_labels on 67 MP is slow, same content)
            b = MAX_GENERATED
            acc = _f1([truth[:b, :b]], [np.asarray(_to_host(pred))[:b, :b]])
        else:
            acc = _f1([truth], [pred])
        points.append({"size": size, "megapixels": mpx, "seconds": t, "s_per_mpx": t / mpx,
                       "mpx_per_s": mpx / t, "repeats": repeats, "tiled": tiled, "f1": acc["f1"],
                       "warmed_up": bool(warmed or repeats > 1)})
        _log(f"  scaling {bk.name} {size}²: {t:.3f} s, {mpx / t:.2f} MP/s, F1 {acc['f1']:.3f}"
             + (" (tiled)" if tiled else ""))
    for s in skipped:
        notes.append(f"scaling {bk.name} {s['size']}² skipped: {s['reason']}")
        _log(notes[-1])
    exp = fit_exponent([p["megapixels"] for p in points], [p["seconds"] for p in points])
    return {"points": points, "skipped": skipped, "exponent": exp}


def _to_host(a):
    from erquant.backend import to_numpy

    return to_numpy(a)


# ------------------------------------------------------------------ driver
def _bench_methods(backends, cfg: BenchConfig) -> dict:
    """Both segmenters on the same fields of METHODS_DIAMETER px nuclei: s/field, F1."""
    from erquant.segment import segment_nuclei
    from erquant.synthetic import make_field

    d = METHODS_DIAMETER
    n = int(n_nuclei_for(cfg.size) * (24.0 / d) ** 2 * 0.8)
    fields = [make_field(shape=(cfg.size, cfg.size), n_nuclei=n, nucleus_diameter=d,
                         seed=cfg.seed + 50 + i) for i in range(cfg.fields)]
    out = {"nucleus_diameter": d, "n_nuclei": n, "size": cfg.size, "results": {}}
    for bk in backends:
        for method in ("classical", "learned"):
            arrs = [bk.asarray(f.image[0]) for f in fields]
            segment_nuclei(arrs[0], method=method)  # warm-up: compilation, model load
            bk.synchronize()

            def run(arrs=arrs, method=method, bk=bk):
                labs = [segment_nuclei(a, method=method) for a in arrs]
                bk.synchronize()
                return labs

            secs, labs = _median_runs(run, cfg.repeats)
            f1 = _f1([f.nuclei for f in fields], labs)
            out["results"][f"{bk.name} {method}"] = {
                "backend": bk.name, "method": method, "s_per_field": secs / len(fields),
                "mpx_per_s": len(fields) * cfg.size ** 2 / 1e6 / secs, **f1}
    return out


def run_benchmark(cfg: BenchConfig) -> dict:
    """Run the whole benchmark; returns the result dict written to ``bench.json``.

    Examples
    --------
    >>> res = run_benchmark(BenchConfig(size=128, fields=1, repeats=1, reference=False,
    ...                                 scaling=False, out="/tmp/erq"))  # doctest: +SKIP
    >>> sorted(res["erquant"])  # doctest: +SKIP
    ['numpy']
    """
    import tifffile

    from erquant.backend import cupy_available, get_backend
    from erquant.synthetic import make_field

    t_start = time.perf_counter()
    notes: list[str] = []
    backends = []
    for name in cfg.backends:
        if name == "numpy":
            backends.append(get_backend("numpy"))
        elif name == "cupy":
            if cupy_available():
                backends.append(get_backend("cupy"))
            else:
                notes.append("CuPy backend not available (no CuPy or no CUDA device): "
                             "GPU timings not run")
                _log(notes[-1])
        else:
            raise ValueError(f"unknown backend {name!r}")
    gpu = next((b for b in backends if b.is_gpu), None)

    n_nuc = n_nuclei_for(cfg.size)
    _log(f"generating {cfg.fields} field(s) of {cfg.size}² with {n_nuc} nuclei each (setup)")
    fields = [make_field(shape=(cfg.size, cfg.size), n_nuclei=n_nuc, seed=cfg.seed + i)
              for i in range(cfg.fields)]
    result: dict = {"config": asdict(cfg), "fields": {
        "size": cfg.size, "n_fields": cfg.fields, "n_nuclei_per_field": n_nuc,
        "megapixels_per_field": cfg.size**2 / 1e6, "dtype": "uint16", "channels": 2,
        "generator": "erquant.synthetic.make_field"}, "erquant": {}, "notes": notes}

    with tempfile.TemporaryDirectory(prefix="erquant-bench-") as tmp:
        paths = []
        for i, f in enumerate(fields):
            p = os.path.join(tmp, f"field_{i}.tif")
            tifffile.imwrite(p, f.image)
            paths.append(p)
        for bk in backends:
            _log(f"erquant [{bk.name}]: stages and pipeline, {cfg.repeats} repeat(s)")
            r = _bench_backend(bk, fields, paths, cfg)
            result["erquant"][bk.name] = r
            p = r["pipeline"]
            _log(f"  pipeline {p['mpx_per_s']:.2f} MP/s, {p['fields_per_s']:.3f} fields/s, "
                 f"F1 {p['f1']:.3f}")

    cle_dev = None
    if cfg.reference:
        _log(f"reference recipes, {cfg.repeats} repeat(s)")
        result["reference"], cle_dev = _bench_reference(fields, cfg, notes)
        ratios = {}
        for bname, r in result["erquant"].items():
            for ref, rr in result["reference"].items():
                if "mpx_per_s" in rr:
                    ratios[f"erquant-{bname} / {ref}"] = (r["pipeline"]["mpx_per_s"]
                                                          / rr["mpx_per_s"])
        result["ratios"] = ratios
        for k, v in ratios.items():
            _log(f"  {k}: {v:.2f}×")
        np_r, sk = result["erquant"].get("numpy"), result["reference"].get("scikit-image")
        if np_r and sk:
            ratio = np_r["pipeline"]["mpx_per_s"] / sk["mpx_per_s"]
            met = ratio >= 10 and np_r["pipeline"]["f1"] >= sk["f1"]
            result["target"] = {
                "goal": "erquant NumPy >= 10x scikit-image recipe throughput at >= F1",
                "ratio": ratio, "f1_erquant": np_r["pipeline"]["f1"], "f1_skimage": sk["f1"],
                "met": bool(met)}
    else:
        notes.append("reference recipes not run (--no-reference)")

    if cfg.ablation and any(b.name == "numpy" for b in backends):
        _log("kernel ablation: the NumPy pipeline without OpenCV / Numba")
        result["ablation"] = _bench_ablation(fields, cfg)
        for k, r in result["ablation"].items():
            _log(f"  {k}: {r['s_per_field']:.3f} s/field ({r['slowdown']:.2f}×), F1 {r['f1']:.3f}")

    result["batched"] = {}
    if cfg.batch >= 2:
        small = max(64, min(cfg.batch_size, cfg.size))
        _log(f"batched: {cfg.batch} fields of {small}² per call vs one at a time (setup: "
             "generating them)")
        few = [make_field(shape=(small, small), n_nuclei=n_nuclei_for(small),
                          seed=cfg.seed + 100 + i) for i in range(min(cfg.batch, 8))]
        for bk in backends:
            r = _bench_batched(bk, few, cfg.batch, cfg)
            result["batched"][f"{bk.name} {small}²"] = r
            _log(f"  {bk.name} {small}²: {r['speedup']:.2f}× ({r['fields_per_montage']} "
                 "fields per montage)")
        if gpu is not None:  # the GPU's own case: full-size fields, N per launch
            r = _bench_batched(gpu, fields, cfg.batch, cfg)
            result["batched"][f"{gpu.name} {cfg.size}²"] = r
            _log(f"  {gpu.name} {cfg.size}²: {r['speedup']:.2f}×")
    if cfg.methods:
        _log(f"segmenters side by side: classical vs learned, {cfg.size}² fields with "
             f"{METHODS_DIAMETER:g} px nuclei")
        result["methods"] = _bench_methods(backends, cfg)
        for k, r in result["methods"]["results"].items():
            _log(f"  {k}: {r['s_per_field']:.3f} s/field, F1 {r['f1']:.3f}")
    if cfg.sweep:
        from erquant._bench_sweep import run_sweep

        _log(f"speed at every magnification: nucleus diameters "
             f"{', '.join(f'{d:g}' for d in cfg.sweep)} px, {cfg.size}² fields")
        result["sweep"] = run_sweep(backends, size=cfg.size, diameters=cfg.sweep,
                                    repeats=cfg.repeats, seed=cfg.seed,
                                    density=cfg.sweep_density, clumps=cfg.sweep_clumps,
                                    log=_log)
        for b, w in result["sweep"]["worst"].items():
            _log(f"  worst speed-up [{b}]: {w['ratio']:.2f}× at {w['at_diameter']:g} px")
    else:
        notes.append("nucleus-size sweep not run (--diameters '')")
    if gpu is None:
        print(GPU_MISSING, flush=True)
        notes.append(GPU_MISSING)

    if cfg.scaling:
        result["scaling"] = {}
        base = fields[0]
        for bk in backends:
            _log(f"scaling {bk.name}: sizes {', '.join(f'{s}²' for s in cfg.scaling_sizes)}")
            spm = result["erquant"][bk.name]["pipeline"]["s_per_field"] / (cfg.size**2 / 1e6)
            result["scaling"][bk.name] = _bench_scaling(bk, base, cfg, spm, notes,
                                                        t_start + cfg.time_budget_s)
    else:
        notes.append("scaling not run (--no-scaling)")

    result["machine"] = machine_info(gpu, cle_dev)
    result["machine"]["backends"] = [b.name for b in backends]
    result["elapsed_s"] = time.perf_counter() - t_start
    return result


# ------------------------------------------------------------------ report
def _fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        return f"{x:.{nd}f}"
    return str(x)


def render_markdown(res: dict) -> str:
    """Markdown report of a :func:`run_benchmark` result.

    Examples
    --------
    >>> "erquant" in render_markdown({"fields": {}, "erquant": {}, "notes": [],
    ...                               "machine": {}, "batched": {}})
    True
    """
    m, fd = res.get("machine", {}), res.get("fields", {})
    gpu = m.get("gpu") or "none"
    lines = ["# erquant throughput benchmark", "",
             (f"- machine: {m.get('cpu_model', '?')}, {m.get('cpu_usable', '?')} usable CPU "
              f"core(s), {m.get('memory_total_gb', '?')} GB RAM; GPU: {gpu}; OpenCL: "
              f"{m.get('opencl_device') or 'none'}"),
             (f"- erquant {m.get('erquant', '?')}, backends: {', '.join(m.get('backends', []))}; "
              + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items() if v)),
             (f"- fields: {fd.get('n_fields')} × {fd.get('size')}² two-channel uint16, "
              f"{fd.get('n_nuclei_per_field')} nuclei each; median of "
              f"{res.get('config', {}).get('repeats')} repeat(s); F1 at IoU 0.5 vs generator "
              "truth"),
             ""]
    lines += ["## erquant stages and pipeline", "",
              "| backend | stage | s/field | MP/s | fields/s | F1 |", "|---|---|---:|---:|---:|---:|"]
    for b, r in res.get("erquant", {}).items():
        for k, s in list(r["stages"].items()) + [("pipeline", r["pipeline"])]:
            name = f"**{k}**" if k == "pipeline" else k
            lines.append(f"| {b} | {name} | {_fmt(s['s_per_field'], 3)} | {_fmt(s['mpx_per_s'])} "
                         f"| {_fmt(s['fields_per_s'], 3)} | {_fmt(s.get('f1'), 3)} |")
    for b, r in res.get("erquant", {}).items():
        lines.append(f"\npipeline [{b}]: {r['pipeline_impl']}")
    if res.get("methods"):
        mm = res["methods"]
        lines += ["", f"## Segmenters side by side ({mm['size']}² fields, "
                      f"{mm['nucleus_diameter']:g} px nuclei, {mm['n_nuclei']} per field)", "",
                  "| backend | method | s/field | MP/s | F1 | precision | recall |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in mm["results"].values():
            lines.append(f"| {r['backend']} | {r['method']} | {_fmt(r['s_per_field'], 3)} | "
                         f"{_fmt(r['mpx_per_s'])} | {_fmt(r['f1'], 3)} | "
                         f"{_fmt(r['precision'], 3)} | {_fmt(r['recall'], 3)} |")
    if "reference" in res:
        lines += ["", "## erquant vs reference recipes (field in memory → nuclei, cells, ER table)", "",
                  ("| method | s/field | MP/s | fields/s | fields/hour | F1 | precision | recall | "
                   "erquant-numpy speed-up |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        rows = [(f"erquant ({b})", r["pipeline"]) for b, r in res["erquant"].items()]
        rows += list(res["reference"].items())
        npx = res["erquant"].get("numpy", {}).get("pipeline", {}).get("mpx_per_s")
        for name, r in rows:
            if "skipped" in r:
                lines.append(f"| {name} | skipped: {r['skipped']} | | | | | | | |")
                continue
            sp = npx / r["mpx_per_s"] if npx else None
            lines.append(f"| {name} | {_fmt(r['s_per_field'], 3)} | {_fmt(r['mpx_per_s'])} | "
                         f"{_fmt(r['fields_per_s'], 3)} | {3600 * r['fields_per_s']:,.0f} | "
                         f"{_fmt(r['f1'], 3)} | "
                         f"{_fmt(r['precision'], 3)} | {_fmt(r['recall'], 3)} | {_fmt(sp)}× |")
        lines.append("\nfields/hour: one process on this machine, fields already in memory "
                     "(an overnight plate run adds reading the files).")
        for name, r in res["reference"].items():
            if "recipe" in r:
                lines.append(f"\n{name}: {r['recipe']}")
        like = [(b, r["recipes_job"]) for b, r in res["erquant"].items() if "recipes_job" in r]
        sk = res["reference"].get("scikit-image", {})
        cl = res["reference"].get("pyclesperanto", {})
        if like:
            lines += ["", "Like for like — erquant doing only the recipes' job with their "
                      f"knowledge (nucleus diameter given, {NUCLEUS_DIAMETER:g} px; cells by "
                      "distance; an ERα table; no nuclear-channel table, QC or classes):", "",
                      "| erquant backend | s/field | MP/s | F1 | vs scikit-image | "
                      "vs pyclesperanto |", "|---|---:|---:|---:|---:|---:|"]
            for b, r in like:
                vs = [f"{_fmt(r['mpx_per_s'] / ref['mpx_per_s'])}×" if "mpx_per_s" in ref
                      else "–" for ref in (sk, cl)]
                lines.append(f"| {b} | {_fmt(r['s_per_field'], 3)} | {_fmt(r['mpx_per_s'])} | "
                             f"{_fmt(r['f1'], 3)} | {vs[0]} | {vs[1]} |")
        if "target" in res:
            t = res["target"]
            lines.append(f"\nAt {NUCLEUS_DIAMETER:g} px only ({t['goal']}): {_fmt(t['ratio'])}× at F1 "
                         f"{_fmt(t['f1_erquant'], 3)} vs {_fmt(t['f1_skimage'], 3)} → "
                         f"{'MET' if t['met'] else 'NOT met'}")
    if res.get("sweep"):
        from erquant._bench_sweep import render

        lines += render(res["sweep"])
    lines += ["", "## Batched: N fields per call (montages) vs one at a time", ""]
    batched = res.get("batched", {})
    if batched:
        lines += ["| backend | fields | one at a time s/field | batched s/field | "
                  "fields per montage | speed-up | F1 one / batched |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for r in batched.values():
            one, bat = r["one_at_a_time"], r["batched"]
            lines.append(f"| {r['backend']} | {r['n_fields']} × {r['size']}² | "
                         f"{_fmt(one['s_per_field'], 4)} | {_fmt(bat['s_per_field'], 4)} | "
                         f"{r['fields_per_montage']} | {_fmt(r['speedup'])}× | "
                         f"{_fmt(one['f1'], 3)} / {_fmt(bat['f1'], 3)} |")
        lines.append(f"\n{next(iter(batched.values()))['method']}")
    else:
        lines.append("not run (--batch 0)")
    if not any(b.startswith("cupy") for b in batched):
        lines.append(f"\n{GPU_MISSING}")
    if "ablation" in res:
        lines += ["", "## CPU kernels: what OpenCV and Numba buy (erquant NumPy pipeline)", "",
                  "| kernels | s/field | MP/s | F1 | slower by |", "|---|---:|---:|---:|---:|"]
        for k, r in res["ablation"].items():
            lines.append(f"| {k} | {_fmt(r['s_per_field'], 3)} | {_fmt(r['mpx_per_s'])} | "
                         f"{_fmt(r['f1'], 3)} | {_fmt(r['slowdown'])}× |")
        lines.append("\nThe last row runs the same array code as the CuPy backend "
                     "(cupyx.scipy.ndimage ≙ scipy.ndimage), on the CPU.")
    if "scaling" in res:
        lines += ["", "## Scaling with image size (erquant pipeline)", "",
                  "| backend | size | MP | s | s/MP | MP/s | F1 | repeats |",
                  "|---|---|---:|---:|---:|---:|---:|---:|"]
        for b, sc in res["scaling"].items():
            for p in sc["points"]:
                lines.append(f"| {b} | {p['size']}²{' (tiled)' if p['tiled'] else ''} | "
                             f"{_fmt(p['megapixels'])} | {_fmt(p['seconds'], 3)} | "
                             f"{_fmt(p['s_per_mpx'], 4)} | {_fmt(p['mpx_per_s'])} | "
                             f"{_fmt(p['f1'], 3)} | {p['repeats']}"
                             f"{'' if p.get('warmed_up', True) else ' (cold)'} |")
            for s in sc["skipped"]:
                lines.append(f"| {b} | {s['size']}² | | | | | | skipped |")
        for b, sc in res["scaling"].items():
            lines.append(f"\n{b}: time ∝ pixels^{_fmt(sc['exponent'])} (1.00 = linear)")
        lines.append("\nSizes above 2048² tile a generated 2048² field (nuclei count scales with "
                     "area); their F1 is measured on one 2048² tile. Each size is timed after a "
                     "warm-up run at that size unless marked (cold): a first pass pays the page "
                     "faults of its fresh buffers.")
    if res.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    if "elapsed_s" in res:
        lines.append(f"\nTotal benchmark wall time (incl. setup): {res['elapsed_s']:.0f} s")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ CLI
def _int_list(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true",
                   help="CI-sized run: 1024² field, 1 repeat, scaling 256²…2048²")
    p.add_argument("--size", type=int, help="field edge in pixels (default 2048; quick 1024)")
    p.add_argument("--fields", type=int, help="fields per timing (default 2; quick 1)")
    p.add_argument("--repeats", type=int, help="repeats per timing, median reported; the "
                                               "diameter sweep reports the minimum of its "
                                               "interleaved runs and the median of their "
                                               "ratios (default 3; quick 1)")
    p.add_argument("--backends", default="numpy,cupy",
                   help="comma-separated backends; cupy is skipped without a CUDA device")
    p.add_argument("--no-reference", action="store_true",
                   help="skip the scikit-image and pyclesperanto recipes")
    p.add_argument("--no-scaling", action="store_true", help="skip the image-size scaling")
    p.add_argument("--no-ablation", action="store_true",
                   help="skip timing the CPU pipeline without OpenCV / Numba (default: run it, "
                        "except with --quick)")
    p.add_argument("--scaling-sizes", type=_int_list,
                   help="comma-separated edges (default 512,…,8192; quick 256,…,2048)")
    p.add_argument("--scaling-budget", type=float,
                   help="seconds the CPU scaling may take; larger sizes are capped "
                        "(default 150; quick 30)")
    p.add_argument("--time-budget", type=float,
                   help="seconds the whole run should stay under; scaling sizes that would "
                        "overrun are capped on the CPU (default 270; quick 50)")
    p.add_argument("--batch", type=int,
                   help="fields per quantify_batch call in the batched section (default 16; "
                        "quick 8; 0 skips it)")
    p.add_argument("--batch-size", type=int,
                   help="edge of the small fields batched on every backend (default 512; "
                        "quick 256); on a GPU the main fields are batched too")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated fields")
    p.add_argument("--downsample", type=float, default=0,
                   help="erquant's segment.downsample: 0 = automatic (the default: ~10 px "
                        "per nucleus diameter), 1 = full resolution, N = an N× smaller copy")
    p.add_argument("--method", default="classical", choices=["auto", "learned", "classical"],
                   help="segmenter of the stage, pipeline and reference sections (default "
                        "classical: the fast path these sections measure)")
    p.add_argument("--no-methods", action="store_true",
                   help="skip the classical-vs-learned section")
    p.add_argument("--diameters", type=lambda v: _int_list(v) if v.strip() else (),
                   help="nucleus diameters (px) of the speed-at-every-magnification sweep "
                        "(default 8,12,16,20,24,32,40; quick 12,24; '' skips it)")
    p.add_argument("--density", type=float, default=1.0,
                   help="the sweep's nuclei per field relative to its default (8 %% of "
                        "the field covered): 0.25 sparse, 3 confluent")
    p.add_argument("--clumps", type=int, default=0, metavar="N",
                   help="the sweep's fields as MCF-7-like clumps of N nuclei (default 0: "
                        "scattered nuclei)")
    p.add_argument("--out", default="benchmarks/results",
                   help="output folder for bench.json and bench.md")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Build a :class:`BenchConfig` from parsed arguments (quick defaults applied)."""
    q = bool(args.quick)
    cfg = BenchConfig(
        size=args.size or (1024 if q else 2048),
        fields=args.fields or (1 if q else 2),
        repeats=args.repeats or (1 if q else 3),
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
        reference=not args.no_reference, scaling=not args.no_scaling,
        ablation=not (q or getattr(args, "no_ablation", False)),
        scaling_sizes=args.scaling_sizes or ((256, 512, 1024, 2048) if q
                                             else (512, 1024, 2048, 4096, 8192)),
        scaling_budget_s=args.scaling_budget or (30.0 if q else 150.0),
        time_budget_s=args.time_budget or (50.0 if q else 270.0),
        batch=args.batch if args.batch is not None else (8 if q else 16),
        batch_size=args.batch_size or (256 if q else 512),
        seed=args.seed, out=args.out, quick=q,
        downsample=max(0.0, float(getattr(args, "downsample", 0) or 0)),
        method=getattr(args, "method", None) or "classical",
        methods=not getattr(args, "no_methods", False),
        sweep=(args.diameters if getattr(args, "diameters", None) is not None
               else ((12, 24) if q else (8, 12, 16, 20, 24, 32, 40))),
        sweep_density=float(getattr(args, "density", 1.0)),
        sweep_clumps=int(getattr(args, "clumps", 0) or 0))
    if cfg.size < 32 or cfg.fields < 1 or cfg.repeats < 1:
        raise ValueError("--size must be >= 32, --fields and --repeats >= 1")
    if not (cfg.sweep_density > 0) or cfg.sweep_clumps < 0:
        raise ValueError("--density must be > 0 and --clumps >= 0")
    unknown = [b for b in cfg.backends if b not in ("numpy", "cupy")]
    if unknown or not cfg.backends:
        raise ValueError(f"--backends: unknown backend(s) {', '.join(map(repr, unknown))}; "
                         "use numpy and/or cupy" if unknown else "--backends: none given")
    return cfg


def _run(args: argparse.Namespace) -> int:
    from erquant._cli_errors import UsageError, check_output_dir

    # usage errors (exit 2) before the benchmark, not after minutes of timing
    try:
        cfg = config_from_args(args)
        out = check_output_dir(cfg.out, option="--out")
    except (ValueError, UsageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    res = run_benchmark(cfg)
    md = render_markdown(res)
    (out / "bench.json").write_text(json.dumps(res, indent=2, default=_json_default))
    (out / "bench.md").write_text(md)
    print(md)
    _log(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return 0


def _json_default(o: Any):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, tuple | set):
        return list(o)
    return str(o)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``bench`` sub-command to an ``argparse`` sub-parser set.

    The sub-parser's ``func`` default is a callable ``func(args) -> int``.

    Examples
    --------
    >>> ap = argparse.ArgumentParser(prog="erquant"); sub = ap.add_subparsers()
    >>> args = add_parser(sub) and ap.parse_args(["bench", "--quick"])
    >>> args.quick, callable(args.func)
    (True, True)
    """
    p = subparsers.add_parser(
        "bench", help="throughput benchmark: erquant vs scikit-image / pyclesperanto",
        description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    p.set_defaults(func=_run)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``erquant bench`` / ``python benchmarks/bench.py``.

    Examples
    --------
    >>> main(["--quick", "--size", "128", "--no-reference", "--no-scaling",
    ...       "--out", "/tmp/erq_bench"])  # doctest: +SKIP
    0
    """
    p = argparse.ArgumentParser(prog="erquant bench", description=__doc__.split("\n\n")[0])
    _add_arguments(p)
    return _run(p.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
