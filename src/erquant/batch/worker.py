"""The map step: quantify work items inside a worker and write their results at once.

:func:`process_items` runs on a dask worker (or in-process). For each field it loads
the pixels (:func:`erquant.io.items.load_item`), quantifies them, and writes

- ``parts/<id>.parquet`` — the field's per-cell table (keys + every measured column),
- ``labels/<id>_nuclei.tif`` / ``_cells.tif`` — with ``save_labels``,
- ``parts/<id>.json`` — the field's summary row (status ``ok`` / ``failed``, error,
  seconds, counts, QC, diameter) — written last, so its presence with status ``ok``
  means the field is complete.

Every file is written under a temporary name and renamed (atomic on POSIX), so a
crash or ``kill -9`` leaves whole files or none. Only the small summary rows go back
to the client.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from erquant.io.items import WorkItem, load_item

__all__ = ["atomic_write_bytes", "process_items", "read_summary"]

PARTS = "parts"
LABELS = "labels"


def _tmp_name(dest: Path) -> Path:
    return dest.with_name(f".tmp-{os.getpid()}-{dest.name}")


def atomic_write_bytes(dest: Path, data: bytes) -> None:
    """Write ``data`` to ``dest`` via a temporary file + fsync + rename."""
    tmp = _tmp_name(dest)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)


def _write_parquet(dest: Path, table) -> None:
    tmp = _tmp_name(dest)
    table.to_parquet(tmp, index=False)
    os.replace(tmp, dest)


def _write_tiff(dest: Path, arr: np.ndarray) -> None:
    import tifffile

    tmp = _tmp_name(dest)
    tifffile.imwrite(tmp, arr, compression="zlib")
    os.replace(tmp, dest)


def _jsonable(v: Any):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def read_summary(path: Path) -> dict | None:
    """A part's summary row, or None when absent or unreadable (then it is redone)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _file_stats(files: Sequence[str]) -> list[list]:
    out = []
    for f in files:
        try:
            st = os.stat(f)
            out.append([f, st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([f, None, None])
    return out


def _roi_for(item: WorkItem, rois) -> tuple[list | None, list[str]]:
    from erquant.io.roi import rois_for

    if not rois:
        return None, []
    keys = {**item.keys, "image": item.files[0] if item.files else None}
    mine = rois_for(rois, keys)
    if not mine:
        return None, []
    return [r.yx for r in mine], [r.name for r in mine]


def _finish_row(item: WorkItem, res, names: list[str], roi_names: list[str], shape,
                seconds: float, zinfo: dict | None = None) -> tuple[dict, Any]:
    """Keyed cell table and summary row of one quantified field (``zinfo``: the plane
    :func:`load_item` chose, ``--z best``)."""
    table = res.table
    keys = item.keys
    if zinfo and "z" in zinfo and "z" not in keys:  # --z best: the plane quantified
        keys["z"] = int(zinfo["z"])
    for i, (k, v) in enumerate(keys.items()):
        table.insert(i, k, v)
    ps = item.pixel_size_um
    for comp in ("nucleus", "cell", "cyto"):  # areas in µm² beside px where the size is known
        if f"{comp}_area_px" in table:
            table[f"{comp}_area_um2"] = table[f"{comp}_area_px"] * (ps * ps if ps else np.nan)
    if roi_names:
        lut = np.asarray(roi_names, dtype=object)
        table["roi_name"] = lut[table["roi"].to_numpy().clip(0)] if len(table) else []
    else:
        table["roi_name"] = ""
    summary = {**keys, "status": "ok", "error": "", "seconds": round(seconds, 4),
               **res.summary(), "threshold": res.info.get("threshold"),
               "downsample": res.info.get("downsample"), "backend": res.info.get("backend"),
               "height": int(shape[0]), "width": int(shape[1]),
               "rois": ";".join(roi_names), "channels": ";".join(names),
               "pixel_size_um": item.pixel_size_um}
    if zinfo and "z_focus" in zinfo:
        summary["z_focus"] = zinfo["z_focus"]
    return summary, table


def tune_malloc(mmap_threshold: int = 256 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Let glibc reuse freed image buffers instead of mapping fresh, page-faulting ones.

    dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also turns off glibc's
    adaptive mmap threshold: every image-sized temporary then becomes a new ``mmap`` whose
    pages fault in, and a 2048² field took 0.39 s in a worker instead of 0.20 s. Fixed
    thresholds set here (once per process, glibc only; :func:`erquant._malloc.tune` with
    ``force``) keep buffers below 256 MiB on the heap, whatever the worker's environment.
    Returns True when applied.
    """
    from erquant import _malloc

    return _malloc.tune(force=True, mmap_threshold=mmap_threshold,
                        trim_threshold=trim_threshold)


def process_items(items: Sequence[WorkItem], config: dict) -> list[dict]:
    """Quantify ``items`` and write their parts into ``config["outdir"]``.

    ``config``: ``outdir``, ``params`` (a dict for :meth:`Params.from_dict`),
    ``backend``, ``save_labels``, ``rois`` (list of :class:`erquant.io.roi.Roi`),
    ``fingerprint``. Several items of one shape on one call are segmented together
    with :func:`erquant.quantify_batch` (a failure there retries them one by one, so one
    bad field never takes others down). Returns one summary row per item.
    """
    from erquant.params import Params

    outdir = Path(config["outdir"])
    params = Params.from_dict(config["params"])
    if config.get("tune_malloc", True):
        tune_malloc()
    loaded, rows = [], []
    for item in items:
        t0 = time.perf_counter()
        try:
            zinfo: dict = {}
            img, names = load_item(item, info=zinfo)
            loaded.append((item, img, names, time.perf_counter() - t0, zinfo))
        except Exception as exc:  # a bad file fails this field only
            rows.append(_failed(item, exc, time.perf_counter() - t0, outdir, config))
    if len(loaded) > 1 and len({x[1].shape for x in loaded}) == 1 and not config.get("rois") \
            and not config.get("mosaic"):
        try:
            rows += _batched(loaded, params, config, outdir)
            loaded = []
        except Exception:  # isolate the failing field: one at a time below
            pass
    for item, img, names, t_load, zinfo in loaded:
        t0 = time.perf_counter()
        try:
            rows.append(_one(item, img, names, params, config, outdir, t_load, t0, zinfo))
        except Exception as exc:
            rows.append(_failed(item, exc, t_load + time.perf_counter() - t0, outdir, config))
    return rows


def _quantify_kwargs(names: list[str]) -> dict:
    return {"nuclei_channel": names.index("nuclei"),
            "marker_channels": {n: i for i, n in enumerate(names) if n != "nuclei"}}


def _one(item, img, names, params, config, outdir, t_load, t0, zinfo=None) -> dict:
    from erquant.pipeline import quantify

    if item.core is not None:
        return _one_tile(item, img, names, params, config, outdir, t_load, t0)
    roi, roi_names = _roi_for(item, config.get("rois"))
    res = quantify(img, **_quantify_kwargs(names), params=params, backend=config["backend"],
                   roi=roi)
    secs = t_load + time.perf_counter() - t0
    return _write(item, res, names, roi_names, img.shape[-2:], secs, outdir, config, zinfo)


def _one_tile(item, img, names, params, config, outdir, t_load, t0) -> dict:
    """A mosaic tile: its window (padded to whole periods at the image border) with the
    mosaic's levels, then the objects it owns, in global coordinates."""
    from erquant.io.mosaic import MosaicLayout, own_tile, pad_window
    from erquant.pipeline import quantify

    if config.get("rois"):
        raise ValueError("ROIs are not supported on mosaic tiles")
    layout = MosaicLayout.from_dict(config["mosaic"])
    shape = img.shape[-2:]
    img = pad_window(img, names, layout)
    res = quantify(img, **_quantify_kwargs(names), params=params, backend=config["backend"],
                   segment_levels=layout.levels, valid_shape=shape)
    del img
    res, extra = own_tile(item, res, layout, params)
    secs = t_load + time.perf_counter() - t0
    core = item.core
    return _write(item, res, names, [], (core[1] - core[0], core[3] - core[2]), secs, outdir,
                  config, extra=extra)


def _batched(loaded, params, config, outdir) -> list[dict]:
    from erquant.pipeline import quantify_batch

    t0 = time.perf_counter()
    names = loaded[0][2]
    if any(x[2] != names for x in loaded):
        raise ValueError("channels differ between fields of one batch")
    stack = np.stack([x[1] for x in loaded])
    results = quantify_batch(stack, **_quantify_kwargs(names), params=params,
                             backend=config["backend"])
    share = (time.perf_counter() - t0) / len(loaded)
    return [_write(item, res, names, [], img.shape[-2:], t_load + share, outdir, config, zinfo)
            for (item, img, names, t_load, zinfo), res in zip(loaded, results)]


def _write(item, res, names, roi_names, shape, secs, outdir, config, zinfo=None,
           extra=None) -> dict:
    summary, table = _finish_row(item, res, names, roi_names, shape, secs, zinfo)
    summary.update(extra or {})
    if config.get("save_labels"):
        _write_tiff(outdir / LABELS / f"{item.id}_nuclei.tif", res.nuclei)
        _write_tiff(outdir / LABELS / f"{item.id}_cells.tif", res.cells)
        if item.image_group:  # OME-Zarr input: NGFF labels beside the field's image too
            from erquant.io.omezarr import write_field_labels

            write_field_labels(item.image_group, {"nuclei": res.nuclei, "cells": res.cells})
    _write_parquet(outdir / PARTS / f"{item.id}.parquet", table)
    return _commit(item, summary, outdir, config)


def _commit(item, summary, outdir, config) -> dict:
    summary = {k: _jsonable(v) for k, v in summary.items()}
    summary.update(id=item.id, fingerprint=config["fingerprint"],
                   files=_file_stats(item.files), worker_pid=os.getpid(),
                   sources=[[n, None if s is None else dataclasses.asdict(s)]
                            for n, s in item.channels],
                   image_group=item.image_group)
    atomic_write_bytes(outdir / PARTS / f"{item.id}.json",
                       json.dumps(summary, default=str).encode())
    return summary


def _failed(item, exc, seconds, outdir, config) -> dict:
    msg = str(exc) or type(exc).__name__
    if not isinstance(exc, (ValueError, OSError, KeyError)):
        msg = f"{type(exc).__name__}: {msg}"  # unexpected: keep the type for the report
    if not any(f in msg for f in item.files):  # name the file(s)
        msg = f"{', '.join(item.files) or item.describe()}: {msg}"
    summary = {**item.keys, "status": "failed", "error": msg, "seconds": round(seconds, 4),
               "traceback": traceback.format_exc(limit=6)}
    stale = outdir / PARTS / f"{item.id}.parquet"
    if stale.exists():  # an earlier run's table must not outlive this failure
        stale.unlink()
    return _commit(item, summary, outdir, config)
