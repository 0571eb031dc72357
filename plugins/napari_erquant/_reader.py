"""Lazy reader for TIFF / OME-TIFF / (OME-)Zarr images, PNG / JPEG, and plates.

Every array is returned as a :mod:`dask` array backed by a zarr view of the file
(``tifffile.imread(..., aszarr=True)`` for TIFF), so even a huge stack opens
instantly and only the planes napari displays are read. When a channel axis is
obvious (``C`` in the TIFF/OME axes, a small leading axis of a 3-D image, or a small
last axis: channel-last), the channels are split into separate image layers named
``<file> <channel>`` (OME channel names when given, else ``nuclei``, ``er``, ``ch2`` …).

Plates — MetaXpress folders, the other layouts ``erquant run`` reads, and multi-series
OME-TIFF stacks — are planned with :func:`erquant.io.items.open_input` (the batch
engine's readers) and open as one lazy stack per channel with a field axis: plane ``i``
is field ``i`` (``metadata["fields"]`` names it, e.g. ``A01 s2``), read only when shown.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da

LayerData = tuple[Any, dict[str, Any], str]

_EXTENSIONS = (".tif", ".tiff", ".zarr", ".png", ".jpg", ".jpeg")
_PIL_EXTENSIONS = (".png", ".jpg", ".jpeg")
#: layer names and colormaps for channels 0, 1, 2, ... (nuclei first, then the marker)
CHANNEL_NAMES = ("nuclei", "er")
CHANNEL_COLORMAPS = ("blue", "green", "magenta", "yellow", "red", "cyan")
#: a leading axis of unknown meaning this short in a 3-D image is taken as channels
MAX_IMPLICIT_CHANNELS = 4
#: a named channel axis longer than this is left alone (probably not channels)
MAX_CHANNELS = 16


def get_reader(path: str | Sequence[str]) -> Callable[[str | Sequence[str]], list[LayerData]] | None:
    """Return :func:`read_layers` if erquant can open *path*, else ``None``.

    Parameters
    ----------
    path : str or sequence of str
        File (``.tif``, ``.tiff``, ``.ome.tif``, ``.png``, ``.jpg``), ``.zarr`` directory,
        plate folder, or a list of them.

    Returns
    -------
    callable or None
        The reader function (npe2 ``reader`` contribution protocol).

    Examples
    --------
    >>> get_reader("image.gif") is None
    True
    >>> get_reader("plate.ome.tif") is read_layers
    True
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths:
        return None
    for p in paths:
        p = os.fspath(p).rstrip("/")
        if p.lower().endswith(_EXTENSIONS):
            continue
        if os.path.isdir(p) and (is_run_output(p) or _plate_reader(p) is not None):
            continue
        return None
    return read_layers


def is_run_output(path: str) -> bool:
    """True for a folder written by ``erquant run`` (``run.json`` and ``parts/``)."""
    return os.path.isfile(os.path.join(path, "run.json")) and \
        os.path.isdir(os.path.join(path, "parts"))


def _plate_reader(path: str, channels: Any = None, layout: str = "auto") -> Any:
    """The :func:`erquant.io.items.open_input` reader of a plate folder / stack, or None."""
    from erquant.io.items import InputError, open_input

    try:
        reader = open_input(path, channels=channels, layout=layout or "auto")
        return reader if reader.items() else None
    except (InputError, OSError, ValueError):
        return None


def _is_hcs(path: str) -> bool:
    """True for an OME-Zarr HCS plate (a ``plate`` attribute at the top)."""
    try:
        import zarr

        attrs = dict(zarr.open(path, mode="r").attrs)
    except Exception:  # noqa: BLE001
        return False
    return "plate" in attrs or "plate" in (attrs.get("ome") or {})


def _is_multiseries(path: str) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            return len(tf.series) > 1
    except Exception:  # noqa: BLE001 - let the normal reader report the problem
        return False


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read images, stacks or plates into napari layer-data tuples of dask arrays.

    Parameters
    ----------
    path : str or sequence of str
        TIFF / OME-TIFF file(s), PNG / JPEG, (OME-)Zarr directories or plate folders.

    Returns
    -------
    list of (data, meta, "image")
        One tuple per channel when a channel axis is found, else one per file.
        ``data`` is a dask array (or a list of them for a multiscale pyramid).

    Examples
    --------
    >>> import numpy as np, tifffile
    >>> tifffile.imwrite("/tmp/x.ome.tif", np.zeros((2, 32, 32), "uint16"),
    ...                  metadata={"axes": "CYX"})
    >>> [(m["name"], type(d).__name__) for d, m, _ in read_layers("/tmp/x.ome.tif")]
    [('x nuclei', 'Array'), ('x er', 'Array')]
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    out: list[LayerData] = []
    for p in paths:
        p = os.fspath(p).rstrip("/")
        low = p.lower()
        if os.path.isdir(p) and is_run_output(p):
            out.extend(read_run_output(p))
            continue
        if low.endswith(".zarr") and not _is_hcs(p):
            levels, axes = _open_zarr(p)
            names: list[str] = []
        elif os.path.isdir(p) or (low.endswith((".ome.tif", ".ome.tiff"))
                                  and _is_multiseries(p)):
            out.extend(read_plate(p))
            continue
        elif low.endswith(_PIL_EXTENSIONS):
            levels, axes, names = _open_pil(p)
        else:
            levels, axes, names = _open_tiff(p)
        out.extend(_split_channels(levels, axes, _stem(p), path=p, names=names))
    return out


def _stem(path: str) -> str:
    name = os.path.basename(path.rstrip("/"))
    for ext in (".ome.tiff", ".ome.tif", *_EXTENSIONS):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def read_plate(path: str, channels: Any = None, *, layout: str = "auto",
               z: str = "max") -> list[LayerData]:
    """A plate folder or multi-series stack as one lazy (field, Y, X) stack per channel.

    Planned by :func:`erquant.io.items.open_input` (default channels ``w1=nuclei,w2=er``)
    and :func:`erquant.io.zstack.apply_z_mode`, so exactly the work items ``erquant run
    --layout LAYOUT --z Z`` would quantify, in its order (``z="all"``: one plane per field
    and Z plane; ``"best"``: each field's sharpest plane); each plane is read by the
    batch engine's loader when napari shows it.
    """
    import dask
    import numpy as np

    from erquant.io.items import _read_plane, load_item
    from erquant.io.zstack import apply_z_mode

    reader = _plate_reader(path, channels, layout)
    if reader is None:
        raise ValueError(f"{path}: no plate, stack or image files that erquant can read")
    items = apply_z_mode(reader.items(), z or "max")
    first, names = load_item(items[0])  # one field to learn shape, dtype and contrast
    shape, dtype = first.shape[1:], first.dtype
    multi_t = len({it.timepoint for it in items}) > 1
    multi_p = len({it.plate for it in items}) > 1
    fields = [" ".join(filter(None, [it.plate if multi_p else "",
                                     f"T{it.timepoint}" if multi_t else "",
                                     f"{it.well} s{it.field}",
                                     f"z{it.z}" if it.z is not None else ""]))
              for it in items]
    plate = str(items[0].plate) if not multi_p else _stem(path)
    out: list[LayerData] = []
    for c, name in enumerate(names):
        planes = []
        for it in items:
            src = dict(it.channels).get(name)
            if src is None:
                planes.append(da.zeros(shape, dtype=dtype))
                continue
            read = dask.delayed(_item_channel)(it, c) if src.z_mode == "best" else \
                dask.delayed(_read_plane)(src)  # best: the plane of the field, all channels
            planes.append(da.from_delayed(read, shape, dtype=dtype))
        lo, hi = np.percentile(first[c], [0.5, 99.8])
        meta = {
            "name": f"{plate} {name}",
            "colormap": _colormap(name, c),
            "blending": "additive",
            "contrast_limits": (float(lo), float(max(hi, lo + 1))),
            "metadata": {"source": plate, "fields": fields, "channel": name, "path": path,
                         "items": [it.id for it in items]},
            "axis_labels": ("field", "y", "x"),
        }
        out.append((da.stack(planes), meta, "image"))
    return out


def _item_channel(item: Any, c: int) -> Any:
    from erquant.io.items import load_item

    return load_item(item)[0][c]


def run_tables(outdir: str, item_ids: Sequence[str]) -> dict[int, Any]:
    """Per-cell tables of a run's fields, keyed by plane (position of the id in
    *item_ids*): the field's rows of ``cells.parquet`` (after the run's plate-level steps:
    flat field, plate ER reference, plate-map columns — what the tables say), or the
    field's own ``parts/<id>.parquet`` while the run has not been merged yet."""
    import json

    import pandas as pd

    out = {}
    cells = os.path.join(os.fspath(outdir), "cells.parquet")
    merged = os.path.exists(cells)
    for k, i in enumerate(item_ids):
        t = None
        if merged:
            try:
                with open(os.path.join(os.fspath(outdir), "parts", f"{i}.json")) as fh:
                    key = json.load(fh)
                filters = [("plate", "==", str(key["plate"])),
                           ("timepoint", "==", int(key["timepoint"])),
                           ("well", "==", str(key["well"])), ("field", "==", int(key["field"]))]
                if key.get("z") is not None:  # --z all / best: the plane quantified
                    filters.append(("z", "==", int(key["z"])))
                t = pd.read_parquet(cells, filters=filters)
            except (OSError, ValueError, KeyError):
                t = None
        if t is None:
            p = os.path.join(os.fspath(outdir), "parts", f"{i}.parquet")
            if os.path.exists(p):
                t = pd.read_parquet(p)
        if t is not None and "label" in t.columns:
            out[k] = t.reset_index(drop=True)
    return out


def run_labels(outdir: str, item_ids: Sequence[str], shape: Sequence[int],
               source: str, fields: Sequence[str] | None = None) -> list[LayerData]:
    """Label stacks (nuclei, cells) saved by ``erquant run --save-labels`` in *outdir*,
    aligned with a plate stack whose planes are the work items *item_ids* (lazy; empty
    planes where a field has no labels), with the run's per-cell table as ``features``.

    Labels of plane ``k`` are shifted by ``k * stride`` (``stack_label`` in the table, see
    :func:`._layers.offset_labels`) so each cell of the stack has its own row; the
    ``label`` column is the saved label.
    """
    import dask
    import numpy as np
    import tifffile

    from ._layers import (
        class_colormap,
        labels_features,
        offset_labels,
        stack_dtype,
        stack_stride,
        stack_table,
    )

    out: list[LayerData] = []
    folder = os.path.join(os.fspath(outdir), "labels")
    tables = run_tables(outdir, item_ids)
    max_label = max((int(t["label"].max()) for t in tables.values() if len(t)), default=0)
    stride = stack_stride(max_label)
    dtype = stack_dtype(len(item_ids), stride)
    table = stack_table(tables, stride, fields=fields)
    feats = labels_features(table, key="stack_label") if len(table) else None
    for kind in ("nuclei", "cells"):
        paths = [os.path.join(folder, f"{i}_{kind}.tif") for i in item_ids]
        if not any(os.path.exists(p) for p in paths):
            continue
        planes = [offset_labels(da.from_delayed(dask.delayed(tifffile.imread)(p), tuple(shape),
                                                dtype=np.uint32), k, stride, dtype)
                  if os.path.exists(p) else da.zeros(tuple(shape), dtype=dtype)
                  for k, p in enumerate(paths)]
        meta: dict[str, Any] = {
            "name": f"{source} {kind} (run)", "opacity": 0.5 if kind == "nuclei" else 0.3,
            "metadata": {"source": source, "outdir": os.fspath(outdir), "kind": kind,
                         "label_stride": stride, "erquant_stack": True}}
        if feats is not None:
            if kind == "cells":
                from ._layers import SHORT_COLUMNS

                meta["features"] = feats[[c for c in ("plane", "field_name", *SHORT_COLUMNS,
                                                      "index") if c in feats.columns]]
                meta["colormap"] = class_colormap(table, key="stack_label")
            else:
                meta["features"] = feats
        out.append((da.stack(planes), meta, "labels"))
    return out


def read_run_output(path: str) -> list[LayerData]:
    """A folder written by ``erquant run``: the plate's images (the input recorded in
    ``run.json``, opened as per-channel field stacks by :func:`read_plate`) and, when the
    run saved them (``--save-labels``), its nuclei / cells label stacks with the per-cell
    table as ``features``; a notification says so when labels were not saved."""
    import json

    from napari.utils.notifications import show_warning

    path = os.fspath(path).rstrip("/")
    try:
        with open(os.path.join(path, "run.json"), encoding="utf-8") as fh:
            info = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: unreadable run.json ({exc})") from exc
    src = info.get("input")
    if not src or not os.path.exists(src):
        raise ValueError(f"{path}: the run's input {src!r} (run.json) is not here any more; "
                         "open the plate where it is now")
    images = read_plate(src, channels=info.get("channels") or None,
                        layout=info.get("layout") or "auto", z=info.get("z") or "max")
    md = images[0][1]["metadata"]
    for _, meta, _ in images:
        meta["metadata"]["erquant_run"] = path
    labels = run_labels(path, md["items"], images[0][0].shape[-2:], md["source"],
                        fields=md["fields"])
    if not labels:
        show_warning(f"erquant: {os.path.basename(path)}: the run saved no labels (run "
                     "`erquant run --save-labels` to see the cells); showing the images only")
    return images + labels


def _colormap(name: str, index: int) -> str:
    from ._channels import channel_role

    if name in ("red", "green", "blue"):
        return name
    role = channel_role(name)
    if role == "nuclei":
        return "blue"
    if role == "marker":
        return "green"
    return CHANNEL_COLORMAPS[index % len(CHANNEL_COLORMAPS)]


def _open_pil(path: str) -> tuple[list[da.Array], str, list[str]]:
    """PNG / JPEG (small: read at once) as a dask array; colour images channel-last."""
    import numpy as np
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            arr = np.asarray(im.convert("RGB") if im.mode in ("P", "CMYK", "YCbCr") else im)
    except Exception as exc:  # noqa: BLE001 - name the file
        raise ValueError(f"{path}: cannot read image: {exc}") from exc
    axes = "YXS" if arr.ndim == 3 and arr.shape[-1] in (2, 3, 4) else ""
    if axes and arr.shape[-1] == 4:  # drop alpha
        arr = arr[..., :3]
    names = ["red", "green", "blue"] if axes else []
    return [da.from_array(arr)], axes, names


def _open_tiff(path: str) -> tuple[list[da.Array], str, list[str]]:
    """Dask arrays (one per pyramid level) of the first series, its axes string and the
    OME channel names (if any)."""
    import re

    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        axes = series.axes
        names = []
        if tf.ome_metadata:
            names = re.findall(r'<Channel[^>]*Name="([^"]*)"', tf.ome_metadata)
    store = tifffile.imread(path, aszarr=True)
    z = zarr.open(store, mode="r")
    if hasattr(z, "shape"):  # a single array
        levels = [da.from_zarr(z)]
    else:  # a group: multiscale pyramid "0", "1", ...
        keys = sorted((k for k in z.array_keys()), key=_level_key)
        levels = [da.from_zarr(z[k]) for k in keys]
    return levels, axes, names


def _open_zarr(path: str) -> tuple[list[da.Array], str]:
    """Dask arrays of an OME-Zarr image (all levels) or a plain zarr array, with axes."""
    import zarr

    z = zarr.open(path, mode="r")
    if hasattr(z, "shape"):
        return [da.from_zarr(z)], ""
    attrs = dict(z.attrs)
    ms = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if ms:
        meta = ms[0]
        axes = "".join(
            (a["name"] if isinstance(a, dict) else str(a))[0].upper() for a in meta.get("axes", [])
        )
        levels = [da.from_zarr(z[d["path"]]) for d in meta["datasets"]]
        return levels, axes
    keys = sorted(z.array_keys(), key=_level_key)
    if not keys:
        raise ValueError(f"{path}: no arrays found in zarr group")
    return [da.from_zarr(z[keys[0]])], ""


def _level_key(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (1 << 30, key)


def _channel_axis(shape: tuple[int, ...], axes: str) -> int | None:
    """Index of an obvious channel axis, else None."""
    axes = axes.upper()
    if len(axes) == len(shape) and "C" in axes:
        c = axes.index("C")
        return c if 1 < shape[c] <= MAX_CHANNELS else None
    if len(axes) == len(shape) and axes.endswith("S") and 1 < shape[-1] <= 4:
        return len(shape) - 1  # samples per pixel: channel-last (RGB included)
    if len(shape) == 3 and 1 < shape[0] <= MAX_IMPLICIT_CHANNELS and (not axes or axes[0] in "QI"):
        return 0
    if len(shape) == 3 and 1 < shape[-1] <= 4 and shape[0] > 16 and (not axes or axes[-1] in "QIS"):
        return 2
    return None


def _split_channels(levels: list[da.Array], axes: str, stem: str, *, path: str | None = None,
                    names: Sequence[str] = ()) -> list[LayerData]:
    """One layer-data tuple per channel (lazy slices), or a single tuple."""
    from ._channels import strip_channel_words

    base = levels[0]
    multiscale = len(levels) > 1
    caxis = _channel_axis(base.shape, axes)
    md: dict[str, Any] = {"path": path} if path else {}
    if caxis is None:
        data = levels if multiscale else base
        src = strip_channel_words(stem)
        if src:  # e.g. A01_s1 for A01_s1_w1.tif: its other channels share it
            md["source"] = src
        return [(data, {"name": stem, "multiscale": multiscale, "metadata": md}, "image")]
    out: list[LayerData] = []
    n = base.shape[caxis]
    names = list(names)[:n] if len(names) >= n and len(set(list(names)[:n])) == n else []
    for c in range(n):
        index = (slice(None),) * caxis + (c,)
        chans = [lvl[index] for lvl in levels]
        ch = names[c] if names else (CHANNEL_NAMES[c] if c < len(CHANNEL_NAMES) else f"ch{c}")
        meta = {
            "name": f"{stem} {ch}",
            "colormap": _colormap(ch, c) if names else
            CHANNEL_COLORMAPS[c % len(CHANNEL_COLORMAPS)],
            "blending": "additive",
            "multiscale": multiscale,
            "metadata": {**md, "source": stem, "channel": c},
        }
        out.append((chans if multiscale else chans[0], meta, "image"))
    return out
