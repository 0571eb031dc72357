"""``erquant run`` / :func:`run_batch`: plan → map on dask.distributed → reduce.

- **plan**: a reader (:func:`erquant.io.items.open_input`) turns the input into work
  items; the plate map, channels, ROI file, parameters and output folder are checked
  here, before any work (:class:`RunUsageError` → exit 2).
- **resume**: ``run.json`` holds a fingerprint of everything that decides a field's
  result (parameters, channels, ROIs, input files with size and mtime, erquant
  version). Same fingerprint: fields whose ``parts/<id>.json`` says ``ok`` are skipped.
  Different: refused unless ``overwrite``.
- **map**: :func:`erquant.batch.worker.process_items` on a ``LocalCluster`` (processes,
  one thread each), an existing scheduler (``scheduler=``), dask-cuda GPUs (``gpus=``),
  or in this process (``workers=0``). At most ``2 × workers`` tasks are in flight; each
  returns only a summary row (workers write their own parts).
- **reduce**: :func:`erquant.batch.reduce.reduce_run`, then the dose-response analysis
  when a plate map is known.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from erquant.io.items import ChannelMap, InputError, WorkItem, open_input, parse_channel_map
from erquant.params import Params

__all__ = ["RunResult", "RunUsageError", "plan_run", "run_batch"]

log = logging.getLogger("erquant.run")


class RunUsageError(ValueError):
    """A problem found before any work (bad input, plate map, options): exit status 2."""


@dataclass
class RunResult:
    """What a run did: counts, failures (id, error), output paths and the exit status."""

    outdir: Path
    n_fields: int
    n_ok: int
    n_failed: int
    n_skipped: int
    failures: list[tuple[str, str]] = field(default_factory=list)
    outputs: dict = field(default_factory=dict)
    interrupted: bool = False
    analysis: dict | None = None

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.n_failed else 0


@dataclass
class Plan:
    items: list[WorkItem]
    channels: ChannelMap
    plate_map: pd.DataFrame | None
    plate_map_path: Path | None
    rois: list
    roi_path: Path | None
    warnings: list[str]
    z: str = "max"
    layout: str = "auto"
    mosaic: Any = None  #: the MosaicLayout of a mosaic input (tiles), else None


# --------------------------------------------------------------------------- plan
def plan_run(input_path, *, pattern: str | None = None, channels=None, plate_map=None,
             roi=None, layout: str = "auto", z: str = "max", tile: int | None = None,
             params: Params | None = None, isolate: bool = False) -> Plan:
    """Validate the input, channels, plate map and ROIs; list the work items (one per
    field, or per field and Z plane with ``z="all"``: :mod:`erquant.io.zstack`; for a
    mosaic, decide its image-level parameters on a sample first:
    :meth:`erquant.io.mosaic.MosaicReader.prepare`, with ``isolate`` in a short-lived
    process, so this one never holds the sample's pixels or the segmenters' buffers)."""
    from erquant.io.zstack import apply_z_mode

    warnings: list[str] = []
    mosaic = None
    try:
        reader = open_input(input_path, pattern=pattern, channels=channels, layout=layout,
                            tile=tile)
        from erquant.io.mosaic import MosaicReader

        if isinstance(reader, MosaicReader):
            if roi is not None:
                raise InputError(f"{input_path}: --roi is not supported on mosaics (tiles)")
            if z != "max":
                raise InputError(f"{input_path}: --z applies to Z stacks, not to a mosaic")
            try:
                mosaic = _prepare_mosaic(reader, params, isolate)
            except (OSError, ValueError) as exc:
                if isinstance(exc, InputError):
                    raise
                raise InputError(f"{input_path}: cannot sample the mosaic: {exc}") from exc
        items = apply_z_mode(reader.items(), z)
    except InputError as exc:
        raise RunUsageError(str(exc)) from exc
    if not items:
        raise RunUsageError(f"{input_path}: no field found")
    cmap = reader.channels
    pm_path = Path(plate_map) if plate_map else None
    if pm_path is None:
        base = Path(input_path) if Path(input_path).is_dir() else Path(input_path).parent
        if (base / "plate_map.csv").exists():
            pm_path = base / "plate_map.csv"
            warnings.append(f"using the plate map {pm_path}")
    pmap = None
    if pm_path is not None:
        from erquant.analysis.platemap import PlateMapError, match_wells, read_plate_map

        try:
            pmap = read_plate_map(pm_path)
            keys = pd.DataFrame([{"plate": it.plate, "time_h": it.time_h, "well": it.well}
                                 for it in items]).drop_duplicates()
            _, w = match_wells(pmap, keys)
            warnings += w
        except PlateMapError as exc:
            raise RunUsageError(str(exc)) from exc
    rois, roi_path = [], None
    if roi is not None:
        from erquant.io.roi import read_roi_geojson

        roi_path = Path(roi)
        try:
            rois = read_roi_geojson(roi_path)
        except ValueError as exc:
            raise RunUsageError(str(exc)) from exc
        if not rois:
            raise RunUsageError(f"{roi_path}: holds no ROI polygon")
    return Plan(items, cmap, pmap, pm_path, rois, roi_path, warnings, z=z, layout=layout,
                mosaic=mosaic)


def _prepare_mosaic(reader, params, isolate: bool):
    """``reader.prepare(params)``, in a spawned process with ``isolate``."""
    if not isolate:
        return reader.prepare(params)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from erquant.io.mosaic import prepare_layout

    try:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as ex:
            layout = ex.submit(prepare_layout, reader.path, reader.channels, reader.tile,
                               params).result()
    except BrokenProcessPool as exc:
        raise RunUsageError(f"{reader.path}: the process sampling the mosaic died ({exc}); "
                            "out of memory?") from exc
    except RuntimeError as exc:  # typically: a script without a __main__ guard
        raise RunUsageError(
            f"could not start a process to sample the mosaic: {exc}. Processes re-import "
            "the calling script: put run_batch under `if __name__ == '__main__':`, or pass "
            "workers=0 to run in this process") from exc
    reader.layout = layout
    return layout


def _fingerprint(plan: Plan, params: Params) -> tuple[str, dict]:
    from erquant import __version__

    files: dict[str, list] = {}
    for it in plan.items:
        for f in it.files:
            if f not in files:
                try:
                    st = os.stat(f)
                    files[f] = [st.st_size, st.st_mtime_ns]
                except OSError:
                    files[f] = [None, None]
    roi_hash = hashlib.sha256(plan.roi_path.read_bytes()).hexdigest() if plan.roi_path else None
    what = {"erquant": __version__, "params": params.to_dict(),
            "channels": plan.channels.as_dict(), "rois": roi_hash, "z": plan.z,
            "items": sorted(it.id for it in plan.items), "files": files}
    if plan.mosaic is not None:
        what["mosaic"] = plan.mosaic.to_dict()
    blob = json.dumps(what, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32], what


def _versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for mod in ("erquant", "numpy", "scipy", "skimage", "cv2", "numba", "tifffile", "dask",
                "distributed", "pandas", "pyarrow", "cupy", "cucim", "dask_cuda"):
        m = sys.modules.get(mod)
        if m is None and mod not in ("cupy", "cucim", "dask_cuda"):  # never init CUDA here
            with contextlib.suppress(Exception):
                m = __import__(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    return out


def _check_outdir(outdir: Path) -> None:
    from erquant._cli_errors import UsageError, check_output_dir

    try:
        check_output_dir(outdir)
    except UsageError as exc:
        raise RunUsageError(str(exc)) from exc


# --------------------------------------------------------------------------- clusters
@contextlib.contextmanager
def _client(workers: int | None, scheduler: str | None, gpus: int | None,
            threads_per_worker: int, n_items: int):
    """A dask.distributed Client (or None for in-process), closed on exit."""
    if scheduler is None and gpus is None and workers == 0:
        yield None
        return
    for name in ("distributed", "dask_cuda", "bokeh", "tornado"):  # no cluster chatter
        logging.getLogger(name).setLevel(logging.ERROR)
    from distributed import Client

    if scheduler is not None:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise RunUsageError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from exc
        try:
            yield client
        finally:
            client.close()
        return
    if gpus is not None:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise RunUsageError("--gpus needs dask-cuda (pip install dask-cuda, with the "
                                "erquant gpu extra for CuPy)") from exc
        # one worker per GPU; CUDA is initialised only inside the workers
        cluster = LocalCUDACluster(n_workers=gpus, CUDA_VISIBLE_DEVICES=list(range(gpus)),
                                   threads_per_worker=1, rmm_pool_size=None,
                                   dashboard_address=":0")
    else:
        from distributed import LocalCluster

        n = workers or min(os.cpu_count() or 1, max(n_items, 1))
        try:
            cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker,
                                   processes=True, dashboard_address=":0",
                                   silence_logs=logging.ERROR)
        except RuntimeError as exc:  # typically: a script without a __main__ guard
            raise RunUsageError(
                f"could not start {n} local dask worker process(es): {exc}. Worker "
                "processes re-import the calling script: put run_batch under "
                "`if __name__ == '__main__':`, or pass workers=0 to run in this process"
            ) from exc
    client = Client(cluster)
    with contextlib.suppress(Exception):  # Ctrl-C reaches the workers too: the client stops
        client.run(_ignore_sigint)        # them cleanly, without their own tracebacks
    try:
        yield client
    finally:
        client.close()
        cluster.close()


@contextlib.contextmanager
def _sigint_as_flag():
    """Ctrl-C sets an event instead of raising inside distributed's ``sync``.

    A KeyboardInterrupt raised while the client waits in ``distributed.utils.sync``
    can reach its cancel callback before the future exists: tornado then logs a
    ``NameError`` traceback (distributed 2025.x). The map loop polls this event and
    stops at a point of its own choosing. A second Ctrl-C raises at once. Off the main
    thread (napari's batch widget) or under an ignored / foreign SIGINT handler nothing
    is installed and the event is never set.
    """
    import signal
    import threading

    stop = threading.Event()
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield stop
        return

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _ignore_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _gpu_worker_setup(pool_fraction: float = 0.8) -> str:
    """On each GPU worker: a bounded RMM pool that CuPy allocates from."""
    import cupy

    try:
        import rmm
        from rmm.allocators.cupy import rmm_cupy_allocator

        free, _ = cupy.cuda.runtime.memGetInfo()
        size = int(free * pool_fraction) // 256 * 256
        rmm.reinitialize(pool_allocator=True, initial_pool_size=size, maximum_pool_size=size)
        cupy.cuda.set_allocator(rmm_cupy_allocator)
        return f"rmm pool {size / 2**30:.1f} GiB"
    except ImportError:
        return "cupy default pool"


# --------------------------------------------------------------------------- run
def run_batch(input_path, outdir, *, plate_map=None, params: Params | str | None = None,
              backend: str = "auto", workers: int | None = None, scheduler: str | None = None,
              gpus: int | None = None, resume: bool = False, overwrite: bool = False,
              roi=None, save_labels: bool = False, channels=None, pattern: str | None = None,
              layout: str = "auto", z: str = "max", fields_per_task: int | None = None,
              flatfield: bool = True, analysis: bool = True, progress: bool = True,
              on_result: Callable[[dict], None] | None = None,
              tile: int | None = None) -> RunResult:
    """Quantify every field of a plate / stack into tables in ``outdir`` (see module doc).

    Parameters
    ----------
    input_path : path
        MetaXpress plate folder, a folder matched by ``pattern``, or an OME-TIFF stack.
    outdir : path
        Output folder (created). Rerunning into it resumes.
    plate_map : path, optional
        Plate map CSV (default: ``plate_map.csv`` in the input folder when present).
    params : Params or path of a TOML file, optional
    backend : {"auto", "numpy", "cupy"}
    workers : int, optional
        Local worker processes (default: one per core, at most one per field);
        0 = in this process, no cluster.
    scheduler : str, optional
        Address of a running dask scheduler (``tcp://host:8786``); its workers must see
        the input and output folders at the same paths.
    gpus : int, optional
        One dask-cuda worker per GPU with the CuPy backend.
    resume, overwrite : bool
        A rerun with the same inputs/parameters always resumes; ``overwrite`` discards
        an earlier run with different ones (refused otherwise).
    roi : path, optional
        GeoJSON ROIs (:mod:`erquant.io.roi`).
    save_labels : bool
        Write nuclei / cell label TIFFs to ``outdir/labels``.
    channels : str or mapping, optional
        ``"w1=nuclei,w2=er"`` (default).
    pattern : str, optional
        Regular expression for other file names (:class:`erquant.io.items.PatternReader`).
    layout : str
        Force a reader (:data:`erquant.io.items.LAYOUTS`: ``metaxpress``, ``pattern``,
        ``ome-tiff``, ``ome-zarr``, ``cellvoyager``, ``operetta``); ``auto`` (default)
        recognises the input.
    z : {"max", "best", "all"}
        Z stacks: maximum projection (default), the sharpest plane of each field, or
        every plane as its own work item (:mod:`erquant.io.zstack`).
    fields_per_task : int, optional
        Fields per task, segmented together with :func:`erquant.quantify_batch`
        (default 1; 8 with GPUs).
    flatfield : bool
        Fit and divide a per-plate vignetting gain in the reduce step.
    analysis : bool
        Fit dose-response curves and write the report when a plate map is known.
    progress : bool
        Show a progress bar (fields done / total, rate, ETA, failures).
    tile : int, optional
        Quantify a single huge image (TIFF / OME-TIFF / OME-Zarr) in tiles of this
        many px, one task per tile (:mod:`erquant.io.mosaic`); images over 8192² px
        are tiled by 2048 without it; 0 = never tile.

    Returns
    -------
    RunResult
    """
    t_start = time.time()
    outdir = Path(outdir)
    if resume and overwrite:
        raise RunUsageError("give --resume or --overwrite, not both")
    if isinstance(params, (str, os.PathLike)):
        try:
            params = Params.from_toml(params)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            msg = str(exc) if str(params) in str(exc) else f"{params}: {exc}"
            raise RunUsageError(f"invalid --params file: {msg}") from exc
    params = params or Params()
    if backend not in ("auto", "numpy", "cupy"):
        raise RunUsageError(f"--backend must be auto, numpy or cupy, not {backend!r}")
    if gpus is not None:
        if gpus < 1:
            raise RunUsageError(f"--gpus must be ≥ 1, got {gpus}")
        backend = "cupy"
    if workers is not None and workers < 0:
        raise RunUsageError(f"--workers must be ≥ 0, got {workers}")
    try:
        channels = parse_channel_map(channels) if not isinstance(channels, ChannelMap) \
            else channels
    except InputError as exc:
        raise RunUsageError(str(exc)) from exc
    plan = plan_run(input_path, pattern=pattern, channels=channels, plate_map=plate_map, roi=roi,
                    layout=layout, z=z, tile=tile, params=params,
                    isolate=bool(workers != 0 or scheduler is not None or gpus is not None))
    _check_outdir(outdir)
    fingerprint, what = _fingerprint(plan, params)
    run_json = outdir / "run.json"
    parts = outdir / "parts"
    previous = None
    if run_json.exists():
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads(run_json.read_text())
    elif parts.exists() and any(parts.glob("*.json")):
        previous = {"fingerprint": None}
    ours = ("cells.parquet", "fields.csv", "wells.csv", "dose_response.csv", "report.html",
            "plate_qc.csv", "normalised_wells.csv")
    foreign = [n for n in ours if (outdir / n).exists()]
    if previous is None and foreign and not overwrite:
        raise RunUsageError(
            f"{outdir} holds {', '.join(foreign)} but no erquant run (no run.json): not "
            "overwriting them; choose another output folder or pass --overwrite")
    if previous is not None and previous.get("fingerprint") != fingerprint:
        if not overwrite:
            why = _what_changed(previous.get("fingerprint_inputs") or {}, what)
            raise RunUsageError(
                f"{outdir} holds a run with different {why}; use --overwrite to replace it, "
                "or another output folder")
    if overwrite:
        for sub in ("parts", "labels"):
            shutil.rmtree(outdir / sub, ignore_errors=True)
        for name in ("cells.parquet", "fields.csv", "wells.csv", "run.json"):
            with contextlib.suppress(FileNotFoundError):
                (outdir / name).unlink()
        previous = None
    parts.mkdir(exist_ok=True)
    if save_labels:
        (outdir / "labels").mkdir(exist_ok=True)
    for tmp in list(parts.glob(".tmp-*")) + list((outdir / "labels").glob(".tmp-*")):
        tmp.unlink(missing_ok=True)  # leftovers of a killed run

    handler = logging.FileHandler(outdir / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    propagate, log.propagate = log.propagate, False  # the terminal gets the progress bar
    try:
        return _run(plan, outdir, params, fingerprint, what, backend=backend, workers=workers,
                    scheduler=scheduler, gpus=gpus, save_labels=save_labels,
                    fields_per_task=fields_per_task, flatfield=flatfield, analysis=analysis,
                    progress=progress, on_result=on_result, t_start=t_start,
                    resumed=previous is not None, input_path=input_path)
    finally:
        log.removeHandler(handler)
        log.propagate = propagate
        handler.close()


def _what_changed(old: dict, new: dict) -> str:
    if not old:
        return "inputs or parameters (no fingerprint details recorded)"
    diffs = [name for key, name in (("params", "parameters"), ("channels", "channels"),
                                    ("rois", "ROIs"), ("z", "Z mode (--z)"),
                                    ("items", "fields"),
                                    ("files", "input files (size or modification time)"),
                                    ("mosaic", "mosaic tiles or sample decisions"),
                                    ("erquant", "erquant version"))
             if old.get(key) != new.get(key)]
    return ", ".join(diffs) or "inputs or parameters"


def _write_run_json(outdir: Path, info: dict) -> None:
    from erquant.batch.worker import atomic_write_bytes

    atomic_write_bytes(outdir / "run.json", json.dumps(info, indent=1, default=str).encode())


def _finished_parts(outdir: Path, items: Sequence[WorkItem], fingerprint: str) -> dict:
    """id → summary of every field whose part is complete for this fingerprint."""
    from erquant.batch.worker import read_summary

    done = {}
    for it in items:
        s = read_summary(outdir / "parts" / f"{it.id}.json")
        if s and s.get("status") == "ok" and s.get("fingerprint") == fingerprint and \
                (outdir / "parts" / f"{it.id}.parquet").exists():
            done[it.id] = s
    return done


def _chunks(items: Sequence[WorkItem], size: int) -> list[list[WorkItem]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def _run(plan: Plan, outdir: Path, params: Params, fingerprint: str, what: dict, *, backend,
         workers, scheduler, gpus, save_labels, fields_per_task, flatfield, analysis, progress,
         on_result, t_start, resumed, input_path) -> RunResult:

    items = plan.items
    done = _finished_parts(outdir, items, fingerprint)
    todo = [it for it in items if it.id not in done]
    for w in plan.warnings:
        log.warning(w)
        if progress:
            print(f"note: {w}", file=sys.stderr)
    info: dict[str, Any] = {
        "status": "running", "fingerprint": fingerprint, "fingerprint_inputs": what,
        "input": str(Path(input_path).resolve()), "outdir": str(outdir.resolve()),
        "plate_map": str(plan.plate_map_path) if plan.plate_map_path else None,
        "roi": str(plan.roi_path) if plan.roi_path else None,
        "params": params.to_dict(), "channels": plan.channels.as_dict(),
        "layout": plan.layout, "z": plan.z,
        "backend_requested": backend, "workers": workers, "scheduler": scheduler, "gpus": gpus,
        "versions": _versions(), "n_fields": len(items), "n_resumed": len(done),
        "started": _dt.datetime.fromtimestamp(t_start).isoformat(timespec="seconds"),
        "argv": sys.argv, "warnings": plan.warnings,
        "input_files": {f: {"size": s, "mtime_ns": m} for f, (s, m) in what["files"].items()},
    }
    if plan.mosaic is not None:  # every tile runs with the mosaic's decisions
        info["mosaic"] = plan.mosaic.to_dict()
        params = plan.mosaic.params(params)
        info["params_tiles"] = params.to_dict()
        flatfield = False  # tiles of one image: no camera vignetting to fit per field
    _write_run_json(outdir, info)
    log.info("run %s: %d fields, %d already done", fingerprint, len(items), len(done))
    config = {"outdir": str(outdir.resolve()), "params": params.to_dict(), "backend": backend,
              "save_labels": save_labels, "rois": plan.rois, "fingerprint": fingerprint,
              "mosaic": info.get("mosaic")}
    size = fields_per_task or (8 if gpus else 1)
    if plan.mosaic is not None:
        size = 1  # one window per task: a worker's memory stays one tile's
    tasks = _chunks(todo, max(1, size))
    results: list[dict] = []
    interrupted = False
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), initial=len(done), unit="field", desc="erquant run",
                   dynamic_ncols=True, smoothing=0.1)
    n_failed = 0

    def collect(rows):
        nonlocal n_failed
        for r in rows:
            results.append(r)
            if r.get("status") != "ok":
                n_failed += 1
                log.warning("failed: %s — %s", r.get("id"), r.get("error"))
                if bar is not None:
                    bar.write(f"error: {r.get('error')}", file=sys.stderr)
            else:
                log.info("ok: %s (%s nuclei, %.2f s)", r.get("id"), r.get("n_nuclei"),
                         r.get("seconds") or 0)
            if on_result is not None:
                on_result(r)
        if bar is not None:
            bar.update(len(rows))
            bar.set_postfix(failed=n_failed, refresh=False)

    try:
        if tasks:
            with _client(workers, scheduler, gpus, 1, len(tasks)) as client:
                if client is None:
                    info["scheduler_address"] = "in-process"
                    for chunk in tasks:
                        from erquant.batch.worker import process_items

                        collect(process_items(chunk, config))
                else:
                    _map_distributed(client, tasks, config, collect, bar, info, gpus)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    if interrupted:
        # what is on disk: a field a worker finished after the client stopped listening
        # is kept too (the client's own count would miss it)
        info.update(status="interrupted", ended=_dt.datetime.now().isoformat(timespec="seconds"),
                    n_ok=len(_finished_parts(outdir, items, fingerprint)))
        _write_run_json(outdir, info)
        print(f"interrupted: {info['n_ok']} of {len(items)} fields are kept in {outdir}; "
              "run the same command again to resume", file=sys.stderr)
        return RunResult(outdir, len(items), info["n_ok"], n_failed, len(done),
                         interrupted=True)

    summaries = list(done.values()) + results
    # reduce: always over every field of the plan (resumed ones included)
    from erquant.batch.reduce import reduce_run

    red = reduce_run(outdir, summaries, params=params, markers=plan.channels.markers,
                     plate_map=plan.plate_map, flatfield=flatfield, log=log.info,
                     per_plane=plan.z == "all", mosaic=info.get("mosaic"),
                     save_labels=save_labels)
    failures = [(r["id"], r.get("error", "")) for r in summaries if r.get("status") != "ok"]
    n_ok = sum(r.get("status") == "ok" for r in summaries)
    info.update(status="done", ended=_dt.datetime.now().isoformat(timespec="seconds"),
                seconds=round(time.time() - t_start, 2), n_ok=n_ok, n_failed=len(failures),
                n_cells=red["n_cells"], failures=[{"id": i, "error": e} for i, e in failures],
                reduce=red["notes"],
                backends_used=sorted({str(r.get("backend")) for r in summaries
                                      if r.get("backend")}))
    result = RunResult(outdir, len(items), n_ok, len(failures), len(done), failures,
                       {k: red[k] for k in ("cells", "fields", "wells")})
    if analysis and plan.z == "all" and plan.plate_map is not None:
        msg = ("--z all: the dose-response analysis is skipped (wells.csv has a row per "
               "Z plane); fit one plane's wells from the tables or run --z max / best")
        info.setdefault("warnings", []).append(msg)
        log.warning(msg)
        if progress:
            print(f"note: {msg}", file=sys.stderr)
    elif analysis and plan.plate_map is not None and n_ok:
        try:
            from erquant.analysis import analyse_run
            from erquant.batch.thumbnails import field_loader

            result.analysis = analyse_run(outdir, normalise="vehicle", report=True,
                                          load_field=field_loader(outdir))
            info["analysis"] = {k: str(v) for k, v in result.analysis.items() if k != "fits"}
        except Exception as exc:  # the tables are written; a failed fit must not hide them
            log.exception("dose-response analysis failed")
            info["analysis"] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"warning: dose-response analysis failed: {exc} (tables are complete; "
                  f"rerun with `erquant report {outdir}`)", file=sys.stderr)
    _write_run_json(outdir, info)
    return result


def _worker_facts() -> dict:
    import erquant

    return {"erquant": erquant.__version__}


def _check_workers(client) -> list[str]:
    """Warnings about the workers of a cluster erquant did not start itself."""
    from erquant import __version__

    try:
        facts = client.run(_worker_facts)
    except Exception as exc:  # e.g. erquant not importable on a worker
        return [f"could not query the dask workers ({exc}); is erquant installed there?"]
    out = []
    other = {w: f["erquant"] for w, f in facts.items() if f["erquant"] != __version__}
    if other:
        out.append(f"workers run another erquant version than this client ({__version__}): "
                   f"{other}")
    return out


def _map_distributed(client, tasks, config, collect, bar, info, gpus) -> None:
    """Submit ``tasks`` with a bounded number in flight; collect summaries as they end."""
    from distributed import as_completed

    from erquant.batch.worker import process_items

    info["scheduler_address"] = client.scheduler.address
    link = getattr(client, "dashboard_link", None)
    with contextlib.suppress(Exception):
        info["dashboard"] = link
        if bar is not None and link:
            bar.write(f"dask dashboard: {link}", file=sys.stderr)
    if gpus:
        info["gpu_setup"] = client.run(_gpu_worker_setup)
    for msg in _check_workers(client):
        info.setdefault("warnings", []).append(msg)
        log.warning(msg)
        if bar is not None:
            bar.write(f"warning: {msg}", file=sys.stderr)
    nworkers = max(1, len(client.scheduler_info().get("workers", {})) or 1)
    info["n_workers"] = nworkers
    limit = 2 * nworkers
    pending = iter(tasks)
    ac = as_completed()
    futures = {}

    def submit_next() -> bool:
        chunk = next(pending, None)
        if chunk is None:
            return False
        fut = client.submit(process_items, chunk, config, pure=False,
                            key=f"erquant-{chunk[0].id}-{len(chunk)}")
        futures[fut.key] = chunk
        ac.add(fut)
        return True

    for _ in range(limit):
        if not submit_next():
            break
    try:
        with _sigint_as_flag() as stop:
            while not ac.is_empty():
                if stop.is_set():
                    raise KeyboardInterrupt
                batch = ac.next_batch(block=False)
                if not batch:
                    stop.wait(0.05)
                    continue
                for fut in batch:
                    chunk = futures.pop(fut.key)
                    try:
                        rows = fut.result()
                    except Exception as exc:  # the worker died or the task could not run
                        from erquant.batch.worker import _failed

                        outdir = Path(config["outdir"])
                        rows = [_failed(it, exc, 0.0, outdir, config) for it in chunk]
                    collect(rows)
                    submit_next()
    except KeyboardInterrupt:
        for f in list(ac.futures):
            f.cancel()
        raise
