"""Plate folders (MetaXpress naming) and OME-TIFF plate stacks.

MetaXpress / ImageXpress layout understood by :func:`scan_plate_folder`::

    PLATE/[TimePoint_<n>/][<prefix>_]<well>[_s<field>]_w<channel>[<GUID>].tif

e.g. ``TimePoint_1/A01_s1_w1.tif`` or ``MyPlate_B12_s3_w2_0F3A...tif``.
``TimePoint_<n>`` folders give the 1-based ``timepoint``; an optional
``timepoints.csv`` (columns ``timepoint,time_h``) in the plate folder gives
the time in hours (``time_h``, NaN without it). Thumbnails (``*_thumb*``) are
skipped. ``ZStep_<n>/`` folders hold the planes of a Z stack: the first plane is the
``path_w<k>`` column and the others are listed in ``z_path_w<k>`` (";"-joined; the batch
engine maximum-projects them) unless the instrument saved its own projection beside
the ZStep folders, which is then used.

The OME-TIFF stack form (:func:`write_ome_stack`, :func:`read_ome_stack`) is
one file with one OME Image (series) per field, each (C, Y, X), and a CSV index
next to it (``plate.ome.tif`` → ``plate_index.csv``: ``series, plate, well, row, col, field, timepoint,
time_h``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from erquant.io.tiff import read_image

__all__ = [
    "lazy_fields",
    "load_field",
    "metaxpress_name",
    "parse_well",
    "read_ome_stack",
    "scan_plate_folder",
    "well_name",
    "write_ome_stack",
]

_NAME_RE = re.compile(
    r"^(?:(?P<prefix>.+?)_)??(?P<well>[A-Za-z]{1,2}\d{1,3})(?:_s(?P<field>\d+))?_w(?P<channel>\d+)"
    r"(?P<guid>[_-]?[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?"
    r"[0-9A-Fa-f]{12})?\.tiff?$",
    re.IGNORECASE,
)
_TP_RE = re.compile(r"^TimePoint_(\d+)$", re.IGNORECASE)
_Z_RE = re.compile(r"^ZStep_(\d+)$", re.IGNORECASE)


def parse_well(well: str) -> tuple[int, int]:
    """Split a well name into 1-based (row, col).

    Examples
    --------
    >>> parse_well("B07"), parse_well("AA1")
    ((2, 7), (27, 1))
    """
    m = re.fullmatch(r"([A-Za-z]{1,2})(\d{1,3})", well.strip())
    if not m:
        raise ValueError(f"not a well name: {well!r} (expected e.g. 'A01')")
    letters, digits = m.group(1).upper(), m.group(2)
    row = 0
    for ch in letters:
        row = row * 26 + (ord(ch) - 64)
    return row, int(digits)


def well_name(row: int, col: int) -> str:
    """Well name from 1-based (row, col), zero-padded: ``well_name(1, 3) == 'A03'``.

    Examples
    --------
    >>> well_name(8, 12)
    'H12'
    """
    if row < 1 or col < 1:
        raise ValueError(f"row and col are 1-based, got ({row}, {col})")
    letters = ""
    r = row
    while r:
        r, rem = divmod(r - 1, 26)
        letters = chr(65 + rem) + letters
    return f"{letters}{col:02d}"


def metaxpress_name(well: str, field: int, channel: int | str, prefix: str | None = None) -> str:
    """File name of one channel of one field in MetaXpress style.

    Examples
    --------
    >>> metaxpress_name("A01", 2, 1)
    'A01_s2_w1.tif'
    """
    ch = str(channel).lstrip("w")
    return f"{prefix + '_' if prefix else ''}{well}_s{field}_w{ch}.tif"


def _timepoint_hours(folder: Path) -> dict[int, float]:
    csv = folder / "timepoints.csv"
    if not csv.exists():
        return {}
    tab = pd.read_csv(csv)
    if not {"timepoint", "time_h"} <= set(tab.columns):
        raise ValueError(f"{str(csv)!r} must have columns 'timepoint' and 'time_h'")
    return dict(zip(tab["timepoint"].astype(int), tab["time_h"].astype(float)))


def scan_plate_folder(folder: str | Path) -> pd.DataFrame:
    """Find MetaXpress-named images in a plate folder; one row per field.

    Parameters
    ----------
    folder : str or Path
        The plate folder (images directly inside, or in ``TimePoint_<n>``
        sub-folders).

    Returns
    -------
    DataFrame
        Columns ``plate, well, row, col, field, timepoint, time_h`` and one
        ``path_w<k>`` column per channel found (string paths; missing
        channels are ``None``), sorted by timepoint, row, col, field.
        ``plate`` is the file-name prefix when there is one, else the folder
        name.

    Raises
    ------
    FileNotFoundError
        When ``folder`` does not exist.
    ValueError
        When no file matches the naming pattern.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from erquant.io import write_tiff
    >>> d = pathlib.Path(tempfile.mkdtemp()) / "P1"
    >>> for w in (1, 2):
    ...     _ = write_tiff(d / f"A01_s1_w{w}.tif", np.zeros((4, 4), np.uint16))
    >>> scan_plate_folder(d)[["plate", "well", "field", "path_w2"]].shape
    (1, 4)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"plate folder not found: {str(folder)!r}")
    hours = _timepoint_hours(folder)
    records: dict[tuple, dict[str, Any]] = {}
    candidates = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".tif", ".tiff"))
    for p in candidates:
        if "_thumb" in p.name.lower() or p.name.lower().endswith(".ome.tif"):
            continue
        m = _NAME_RE.match(p.name)
        if not m:
            continue
        rel_parts = p.relative_to(folder).parts[:-1]
        timepoint = 1
        zstep = None
        skip = False
        for part in rel_parts:
            tm = _TP_RE.match(part)
            zm = _Z_RE.match(part)
            if tm:
                timepoint = int(tm.group(1))
            elif zm:
                zstep = int(zm.group(1))
            elif part.lower() in ("truth", "thumbs", "thumbnails"):
                skip = True
        if skip:
            continue
        well = m.group("well").upper()
        row, col = parse_well(well)
        well = well_name(row, col)
        field = int(m.group("field") or 1)
        plate = m.group("prefix") or folder.name
        key = (plate, timepoint, row, col, field)
        rec = records.setdefault(
            key,
            {
                "plate": plate,
                "well": well,
                "row": row,
                "col": col,
                "field": field,
                "timepoint": timepoint,
                "time_h": hours.get(timepoint, np.nan),
            },
        )
        ch = f"path_w{int(m.group('channel'))}"
        if zstep is not None:  # ZStep_<n>/: planes of a Z stack, kept apart
            zs = rec.setdefault("_z", {}).setdefault(ch, {})
            if zstep in zs:
                raise ValueError(f"two files for {well} field {field} channel {ch[5:]} "
                                 f"Z step {zstep}: {zs[zstep]!r} and {str(p)!r}")
            zs[zstep] = str(p)
            continue
        if ch in rec:
            raise ValueError(
                f"two files for {well} field {field} channel {ch[5:]} at timepoint "
                f"{timepoint}: {rec[ch]!r} and {str(p)!r}"
            )
        rec[ch] = str(p)
    if not records:
        raise ValueError(
            f"no MetaXpress-style image (e.g. 'A01_s1_w1.tif') found in {str(folder)!r} "
            "or its TimePoint_<n> sub-folders"
        )
    for rec in records.values():  # Z stacks: the instrument's own projection wins if saved
        for ch, zs in rec.pop("_z", {}).items():
            if ch not in rec:
                planes = [zs[z] for z in sorted(zs)]
                rec[ch] = planes[0]
                rec["z_" + ch] = ";".join(planes[1:])
    df = pd.DataFrame(list(records.values()))
    path_cols = sorted((c for c in df.columns if c.startswith("path_w")), key=lambda c: int(c[6:]))
    z_cols = [f"z_{c}" for c in path_cols if f"z_{c}" in df.columns]
    df = df[["plate", "well", "row", "col", "field", "timepoint", "time_h", *path_cols, *z_cols]]
    if z_cols:
        df[z_cols] = df[z_cols].fillna("")
    df[path_cols] = df[path_cols].astype(object).where(df[path_cols].notna(), None)
    return df.sort_values(["plate", "timepoint", "row", "col", "field"]).reset_index(drop=True)


def load_field(row: pd.Series | dict, channels: Sequence[str] = ("w1", "w2")) -> np.ndarray:
    """Read the channels of one field (a row of :func:`scan_plate_folder`) as (C, Y, X).

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from erquant.io import write_tiff
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for w in (1, 2):
    ...     _ = write_tiff(d / f"A01_s1_w{w}.tif", np.full((4, 5), w, np.uint16))
    >>> load_field(scan_plate_folder(d).iloc[0]).shape
    (2, 4, 5)
    """
    planes = []
    for ch in channels:
        key = ch if str(ch).startswith("path_") else f"path_{ch}"
        path = row.get(key) if hasattr(row, "get") else None
        if path is None or (isinstance(path, float) and np.isnan(path)):
            raise ValueError(
                f"field {row.get('well')} s{row.get('field')} has no channel {ch!r} "
                f"(columns: {', '.join(k for k in row if str(k).startswith('path_'))})"
            )
        planes.append(read_image(path))
    shapes = {p.shape for p in planes}
    if len(shapes) != 1:
        sizes = ", ".join(
            f"{row.get(ch if str(ch).startswith('path_') else f'path_{ch}')} {p.shape}"
            for ch, p in zip(channels, planes)
        )
        raise ValueError(
            f"channels of field {row.get('well')} s{row.get('field')} have different shapes: "
            f"{sizes}"
        )
    return np.stack(planes)


def lazy_fields(df: pd.DataFrame, channels: Sequence[str] = ("w1", "w2")):
    """A lazy dask array (N, C, Y, X) over the fields of a scan table.

    The first field is read once to learn shape and dtype; every other
    field is read only when its chunk is computed.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from erquant.io import write_tiff
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for s in (1, 2):
    ...     for w in (1, 2):
    ...         _ = write_tiff(d / f"A01_s{s}_w{w}.tif", np.full((4, 5), w, np.uint16))
    >>> arr = lazy_fields(scan_plate_folder(d))
    >>> arr.shape, int(arr[1, 1].sum().compute())
    ((2, 2, 4, 5), 40)
    """
    import dask
    import dask.array as da

    if len(df) == 0:
        raise ValueError("lazy_fields: the table has no fields")
    rows = [r for _, r in df.iterrows()]
    first = load_field(rows[0], channels)
    delayed_load = dask.delayed(load_field, pure=True)
    parts = [da.from_array(first, chunks=first.shape)]
    for r in rows[1:]:
        parts.append(
            da.from_delayed(delayed_load(dict(r), tuple(channels)), first.shape, first.dtype)
        )
    return da.stack(parts)


def write_ome_stack(
    path: str | Path,
    fields: Iterable[tuple[dict[str, Any], np.ndarray]],
    *,
    channel_names: Sequence[str] = ("Hoechst", "ERa"),
    uuid: str | None = None,
    compression: str | None = "zlib",
) -> Path:
    """Write fields to one OME-TIFF (one series per field) and its CSV index.

    Parameters
    ----------
    path : str or Path
        Destination ``*.ome.tif``; the index is written next to it
        (``plate.ome.tif`` → ``plate_index.csv``).
    fields : iterable of (dict, ndarray)
        Per field: index columns (e.g. plate, well, row, col, field,
        timepoint, time_h) and the (C, Y, X) image. Consumed lazily.
    channel_names : sequence of str
        OME channel names.
    uuid : str, optional
        OME UUID; pass a fixed one for byte-identical files (tifffile
        otherwise draws a random one).
    compression : str or None
        ``"zlib"`` (default) or ``None``.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "p.ome.tif")
    >>> img = np.zeros((2, 8, 8), np.uint16)
    >>> _ = write_ome_stack(p, [({"well": "A01", "field": 1}, img)])
    >>> read_ome_stack(p)[0].shape
    (1, 2, 8, 8)
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    index = []
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
        for i, (meta, img) in enumerate(fields):
            img = np.asarray(img)
            if img.ndim != 3:
                raise ValueError(
                    f"write_ome_stack: field {meta} must be (C, Y, X), got {img.shape}"
                )
            name = "_".join(f"{v}" for k, v in meta.items() if k in ("well", "field", "time_h"))
            md: dict[str, Any] = {
                "axes": "CYX",
                "Name": name or f"field{i}",
                "Channel": {"Name": list(channel_names)[: img.shape[0]]},
            }
            if i == 0 and uuid is not None:
                md["UUID"] = uuid
            tw.write(img, photometric="minisblack", compression=compression, metadata=md)
            index.append({"series": i, **meta})
    pd.DataFrame(index).to_csv(_index_path(path), index=False)
    return path


def _index_path(path: Path) -> Path:
    """``plate.ome.tif`` → ``plate_index.csv``."""
    name = path.name
    for suf in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suf):
            return path.with_name(name[: -len(suf)] + "_index.csv")
    return path.with_name(name + "_index.csv")


def _read_series(path: str, series: int, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read one series; ``shape``: what the index said (a file changed since, or cut
    short so that its OME-XML is lost and tifffile sees other series, is an error)."""
    import tifffile

    from erquant.io.tiff import _check_declared_size

    try:
        with tifffile.TiffFile(path) as tif:
            if series >= len(tif.series):
                raise ValueError(f"the file now holds {len(tif.series)} series: it is "
                                 "truncated or changed")
            ser = tif.series[series]
            if shape is not None and tuple(ser.shape) != tuple(shape):
                raise ValueError(f"the series now has shape {tuple(ser.shape)}, expected "
                                 f"{tuple(shape)}: the file is truncated or changed")
            _check_declared_size(tif, ser)  # before allocating the declared size
            return ser.asarray()
    except (OSError, ValueError, RuntimeError, KeyError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read series {series} of {str(path)!r}: {first}") from exc


def read_ome_stack(path: str | Path):
    """Open an OME-TIFF plate stack lazily: (dask array (N, C, Y, X), index table).

    Every series must have the same shape; pixels are read when computed.
    The index is the CSV written by :func:`write_ome_stack`, or a plain
    ``series`` column when there is none.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "p.ome.tif")
    >>> imgs = [({"well": "A01", "field": f}, np.full((2, 4, 4), f, np.uint16)) for f in (1, 2)]
    >>> arr, index = read_ome_stack(write_ome_stack(p, imgs))
    >>> int(arr[1].max().compute()), list(index["well"])
    (2, ['A01', 'A01'])
    """
    import dask
    import dask.array as da
    import tifffile

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"OME-TIFF stack not found: {str(path)!r}")
    try:
        with tifffile.TiffFile(path) as tif:
            shapes = [(tuple(s.shape), s.dtype) for s in tif.series]
    except Exception as exc:  # tifffile raises various types on corrupt files
        raise ValueError(f"cannot read OME-TIFF stack {str(path)!r}: {exc}") from exc
    if not shapes:
        raise ValueError(f"{str(path)!r} holds no image series")
    if len(set(shapes)) != 1:
        raise ValueError(f"{str(path)!r}: series have different shapes/dtypes: {shapes[:4]}...")
    shape, dtype = shapes[0]
    if len(shape) == 2:
        shape = (1, *shape)
    reader = dask.delayed(_read_series, pure=True)
    arr = da.stack(
        [
            da.from_delayed(reader(str(path), i, shapes[i][0]), shapes[i][0], dtype)
            .reshape(shape)
            for i in range(len(shapes))
        ]
    )
    idx_path = _index_path(path)
    if idx_path.exists():
        index = pd.read_csv(idx_path)
        if len(index) != len(shapes):
            raise ValueError(
                f"index {str(idx_path)!r} has {len(index)} rows but {str(path)!r} has "
                f"{len(shapes)} series"
            )
    else:
        index = pd.DataFrame({"series": range(len(shapes))})
    return arr, index
