"""Lazy reader for TIFF / OME-TIFF / (OME-)Zarr images.

Every array is returned as a :mod:`dask` array backed by a zarr view of the file
(``tifffile.imread(..., aszarr=True)`` for TIFF), so even a huge stack opens
instantly and only the planes napari displays are read. When a channel axis is
obvious (``C`` in the TIFF/OME axes, or a small leading axis of a 3-D image), the
channels are split into separate image layers named ``nuclei``, ``er``, ``ch2`` ...
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import dask.array as da

LayerData = tuple[Any, dict[str, Any], str]

_EXTENSIONS = (".tif", ".tiff", ".zarr")
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
        File (``.tif``, ``.tiff``, ``.ome.tif``) or ``.zarr`` directory, or a list of them.

    Returns
    -------
    callable or None
        The reader function (npe2 ``reader`` contribution protocol).

    Examples
    --------
    >>> get_reader("image.png") is None
    True
    >>> get_reader("plate.ome.tif") is read_layers
    True
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths:
        return None
    if all(os.fspath(p).lower().rstrip("/").endswith(_EXTENSIONS) for p in paths):
        return read_layers
    return None


def read_layers(path: str | Sequence[str]) -> list[LayerData]:
    """Read one or several images into napari layer-data tuples of dask arrays.

    Parameters
    ----------
    path : str or sequence of str
        TIFF / OME-TIFF file(s) or (OME-)Zarr directories.

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
    [('nuclei', 'Array'), ('er', 'Array')]
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    out: list[LayerData] = []
    for p in paths:
        p = os.fspath(p).rstrip("/")
        if p.lower().endswith(".zarr"):
            levels, axes = _open_zarr(p)
        else:
            levels, axes = _open_tiff(p)
        out.extend(_split_channels(levels, axes, os.path.basename(p)))
    return out


def _open_tiff(path: str) -> tuple[list[da.Array], str]:
    """Dask arrays (one per pyramid level) of the first series and its axes string."""
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        axes = series.axes
    store = tifffile.imread(path, aszarr=True)
    z = zarr.open(store, mode="r")
    if hasattr(z, "shape"):  # a single array
        levels = [da.from_zarr(z)]
    else:  # a group: multiscale pyramid "0", "1", ...
        keys = sorted((k for k in z.array_keys()), key=_level_key)
        levels = [da.from_zarr(z[k]) for k in keys]
    return levels, axes


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
    if len(shape) == 3 and 1 < shape[0] <= MAX_IMPLICIT_CHANNELS and (not axes or axes[0] in "QI"):
        return 0
    return None


def _split_channels(levels: list[da.Array], axes: str, stem: str) -> list[LayerData]:
    """One layer-data tuple per channel (lazy slices), or a single tuple."""
    base = levels[0]
    multiscale = len(levels) > 1
    rgb = axes.upper().endswith("S") and base.shape[-1] in (3, 4)
    caxis = None if rgb else _channel_axis(base.shape, axes)
    if caxis is None:
        data = levels if multiscale else base
        return [(data, {"name": stem, "rgb": rgb, "multiscale": multiscale}, "image")]
    out: list[LayerData] = []
    for c in range(base.shape[caxis]):
        index = (slice(None),) * caxis + (c,)
        chans = [lvl[index] for lvl in levels]
        name = CHANNEL_NAMES[c] if c < len(CHANNEL_NAMES) else f"ch{c}"
        meta = {
            "name": name,
            "colormap": CHANNEL_COLORMAPS[c % len(CHANNEL_COLORMAPS)],
            "blending": "additive",
            "multiscale": multiscale,
            "metadata": {"source": stem, "channel": c},
        }
        out.append((chans if multiscale else chans[0], meta, "image"))
    return out
