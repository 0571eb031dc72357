"""Work items: one field of a plate, with everything needed to load it later.

The batch engine (``erquant run``) and any other consumer plan work from *readers*:
small classes that turn an input (a MetaXpress folder, a folder matched by a regular
expression, an OME-TIFF file, an OME-Zarr plate, a vendor export) into
:class:`WorkItem` objects without reading pixels. A work item is plain, picklable data (plate, timepoint, well, field, and per
channel the file / series / plane to read), so it travels to a dask worker, which
calls :func:`load_item` there: the client never holds pixel data.

Adding a layout means adding a reader with ``items() -> list[WorkItem]`` and
``channel_ids() -> list[str]``; :func:`open_input` picks the reader (or, with
``layout=``, one of :data:`LAYOUTS`, checked in ``_forced``). Vendor layouts (Yokogawa
CellVoyager, Revvity Opera/Operetta Harmony exports) are in :mod:`erquant.io.vendors`,
OME-TIFF files of any form in :mod:`erquant.io.ometiff`, OME-Zarr in
:mod:`erquant.io.omezarr`. A reader describes a field's Z planes in its channel sources
(``z_paths`` / ``z_pages``); :func:`erquant.io.zstack.apply_z_mode` decides what is
quantified of them (maximum projection, the sharpest plane, or every plane).
Mosaics (one huge image, one work item per overlapping tile, with ``tile``/``core`` set
and each channel's ``region`` the window to read) are in :mod:`erquant.io.mosaic`.

Channel ids
-----------
- MetaXpress folders: ``w1``, ``w2``, … (the ``_w<n>`` of the file names).
- ``--pattern`` folders: the text of the ``channel`` group (``DAPI``, ``1``, …); a
  numeric id ``n`` is also reachable as ``w<n>``.
- OME-TIFF files: ``w1``, ``w2``, … (1-based order of the ``C`` axis), ``c0``, … and the
  OME channel names (:mod:`erquant.io.ometiff`).
- CellVoyager: ``C01``, ``C02``, … (also ``w1``, ``w2``, …).
- Opera / Operetta: ``ch1``, ``ch2``, … (also ``w1``, ``w2``, … and the channel names of
  ``Index.xml``).

A :class:`ChannelMap` maps channel ids to the names used in tables: the nuclear
stain must be called ``nuclei``; every other name is a marker measured per cell
(default ``w1=nuclei,w2=er``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "ChannelMap",
    "ChannelSource",
    "InputError",
    "MetaXpressReader",
    "LAYOUTS",
    "PatternReader",
    "WorkItem",
    "load_item",
    "open_input",
    "parse_channel_map",
]


class InputError(ValueError):
    """The input cannot be planned (nothing matches, unknown channel, bad pattern)."""


@dataclass(frozen=True)
class ChannelSource:
    """Where one channel of one field lives: a file, optionally a series and plane."""

    path: str
    series: int | None = None  #: OME series (None: the first/only one)
    plane: int | None = None  #: plane (channel) index inside the series
    z_paths: tuple[str, ...] = ()  #: further Z planes (files), projected with ``path``
    z_mode: str = "max"  #: how Z planes are combined: "max" (projection) or "best" (sharpest)
    array: str | None = None  #: a Zarr array inside the store at ``path`` (OME-Zarr)
    index: tuple[int, ...] = ()  #: with ``array``: index of the leading axes; -1 = max over it
    #: the Z planes of a stack inside one file, first to last: page numbers of ``series``
    #: (OME-TIFF; ``plane`` is the first of them) or, with ``array``, the indices along the
    #: axis marked -1 in ``index`` (OME-Zarr); empty: no Z stack inside the file
    z_pages: tuple[int, ...] = ()
    region: tuple[int, int, int, int] | None = None  #: mosaic window (y0, y1, x0, x1) to read


@dataclass(frozen=True)
class WorkItem:
    """One field to quantify: its keys and how to load each of its channels.

    ``channels`` pairs table names (``nuclei``, ``er``, …) with a
    :class:`ChannelSource`, or None when the input lacks that channel (the field then
    fails with a clear reason when loaded).
    """

    plate: str
    timepoint: int
    time_h: float
    well: str
    row: int
    col: int
    field: int
    channels: tuple[tuple[str, ChannelSource | None], ...]
    z: int | None = None
    image_group: str | None = None  #: OME-Zarr: "<store>::<image group>" (labels go there)
    pixel_size_um: float | None = None  #: from the metadata where the layout records it
    tile: tuple[int, int] | None = None  #: mosaic tile (row, column), 0-based
    core: tuple[int, int, int, int] | None = None  #: mosaic: the pixels it owns (y0, y1, x0, x1)

    @property
    def id(self) -> str:
        """A file-name-safe unique id, e.g. ``SYN01__T0001__A01__s001`` (``…__s001__z03``
        for one Z plane of a field, ``--z all``; mosaic tiles: ``…__s007__t001_002``, tile
        row 1, column 2)."""
        plate = re.sub(r"[^A-Za-z0-9._-]+", "_", str(self.plate))
        out = f"{plate}__T{self.timepoint:04d}__{self.well}__s{self.field:03d}"
        if self.z is not None:
            out += f"__z{self.z:02d}"
        if self.tile is not None:
            out += f"__t{self.tile[0]:03d}_{self.tile[1]:03d}"
        return out

    @property
    def keys(self) -> dict:
        """The table keys of this field (with ``z``, the 1-based plane, for one plane of a
        Z stack)."""
        keys = {"plate": self.plate, "timepoint": self.timepoint, "time_h": self.time_h,
                "well": self.well, "row": self.row, "col": self.col, "field": self.field}
        if self.z is not None:
            keys["z"] = self.z
        return keys

    @property
    def files(self) -> list[str]:
        """Distinct files this field is read from."""
        return sorted({p for _, src in self.channels if src is not None
                       for p in (src.path, *src.z_paths)})

    def describe(self) -> str:
        if self.tile is not None:
            return (f"{self.plate} tile {self.tile[0]},{self.tile[1]} (pixels "
                    f"y {self.core[0]}-{self.core[1]}, x {self.core[2]}-{self.core[3]})")
        zs = f" plane {self.z}" if self.z is not None else ""
        return f"{self.plate} {self.well} field {self.field}{zs} (timepoint {self.timepoint})"


# --------------------------------------------------------------------------- channels
@dataclass(frozen=True)
class ChannelMap:
    """Channel id → table name, e.g. ``{"w1": "nuclei", "w2": "er"}``."""

    mapping: tuple[tuple[str, str], ...] = (("w1", "nuclei"), ("w2", "er"))

    @property
    def names(self) -> list[str]:
        return [n for _, n in self.mapping]

    @property
    def markers(self) -> list[str]:
        return [n for _, n in self.mapping if n != "nuclei"]

    def as_dict(self) -> dict[str, str]:
        return dict(self.mapping)


def parse_channel_map(spec: str | Mapping[str, str] | None) -> ChannelMap:
    """``"w1=nuclei,w2=er"`` (or a mapping) → :class:`ChannelMap`.

    Examples
    --------
    >>> parse_channel_map("w1=nuclei, w2=er").as_dict()
    {'w1': 'nuclei', 'w2': 'er'}
    >>> parse_channel_map("DAPI=nuclei,GFP=er,Cy5=ki67").markers
    ['er', 'ki67']
    """
    if spec is None:
        return ChannelMap()
    if isinstance(spec, Mapping):
        pairs = [(str(k), str(v)) for k, v in spec.items()]
    else:
        pairs = []
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            cid, sep, name = part.partition("=")
            if not sep or not cid.strip() or not name.strip():
                raise InputError(f"--channels: {part!r} is not ID=NAME "
                                 "(expected e.g. 'w1=nuclei,w2=er')")
            pairs.append((cid.strip(), name.strip()))
    names = [n for _, n in pairs]
    if "nuclei" not in names:
        raise InputError(f"--channels {spec!r}: one channel must be named 'nuclei' "
                         "(the nuclear stain), e.g. 'w1=nuclei,w2=er'")
    for n in names:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", n):
            raise InputError(f"--channels: name {n!r} must be letters/digits starting with "
                             "a letter (it becomes part of table column names)")
    dup = {n for n in names if names.count(n) > 1} | {
        c for c, _ in pairs if [p for p, _ in pairs].count(c) > 1}
    if dup:
        raise InputError(f"--channels {spec!r}: {sorted(dup)} given twice")
    return ChannelMap(tuple(pairs))


def _resolve_channels(cmap: ChannelMap, available: Sequence[str], where: str,
                      aliases: Mapping[str, str] | None = None) -> dict[str, str]:
    """Table name → source channel id; unknown ids raise :class:`InputError`."""
    aliases = dict(aliases or {})
    out = {}
    for cid, name in cmap.mapping:
        real = cid if cid in available else aliases.get(cid)
        if real is None:
            raise InputError(
                f"{where}: channel {cid!r} (for {name!r}) not found; the input has "
                f"channel(s) {', '.join(map(repr, available))} — set --channels, e.g. "
                f"--channels {available[0]}=nuclei" + (
                    f",{available[1]}=er" if len(available) > 1 else ""))
        out[name] = real
    return out


# --------------------------------------------------------------------------- readers
def _timepoint_hours(folder: Path) -> dict[int, float]:
    from erquant.io.plate import _timepoint_hours as hours

    try:
        return hours(folder)
    except ValueError as exc:
        raise InputError(str(exc)) from exc


@dataclass
class MetaXpressReader:
    """MetaXpress / ImageXpress folders (:func:`erquant.io.scan_plate_folder`)."""

    folder: Path
    channels: ChannelMap = field(default_factory=ChannelMap)

    def _scan(self) -> pd.DataFrame:
        from erquant.io.plate import scan_plate_folder

        if not hasattr(self, "_table"):
            try:
                self._table = scan_plate_folder(self.folder)
            except ValueError as exc:
                raise InputError(str(exc)) from exc
        return self._table

    def _wave_names(self) -> dict[str, str]:
        """``.HTD`` plate description: wavelength names ("WaveName1", "DAPI") → ids."""
        out: dict[str, str] = {}
        for htd in sorted(self.folder.glob("*.[Hh][Tt][Dd]"))[:1]:
            for line in htd.read_text(errors="replace").splitlines():
                m = re.match(r'\s*"WaveName(\d+)"\s*,\s*"([^"]*)"', line)
                if m and m.group(2):
                    out[m.group(2)] = f"w{int(m.group(1))}"
        return out

    def channel_ids(self) -> list[str]:
        ids = [c[5:] for c in self._scan().columns if c.startswith("path_w")]
        return ids + [n for n, w in self._wave_names().items() if w in ids]

    def items(self) -> list[WorkItem]:
        tab = self._scan()
        names = _resolve_channels(self.channels, self.channel_ids(), str(self.folder))
        waves = self._wave_names()
        names = {n: waves.get(cid, cid) for n, cid in names.items()}
        out = []
        for r in tab.to_dict("records"):
            chans = tuple((name, ChannelSource(r[f"path_{cid}"], z_paths=tuple(
                p for p in (r.get(f"z_path_{cid}") or "").split(";") if p))
                if r[f"path_{cid}"] else None) for name, cid in names.items())
            out.append(WorkItem(str(r["plate"]), int(r["timepoint"]), float(r["time_h"]),
                                r["well"], int(r["row"]), int(r["col"]), int(r["field"]),
                                chans))
        return out


@dataclass
class PatternReader:
    """Any folder of one-channel images named by a regular expression.

    The expression is searched in each file's path relative to the folder (``/``
    separators) and must have named groups ``well`` (``B07``, ``b7``), ``channel`` and
    optionally ``field`` (default 1), ``plate`` (default: the folder name),
    ``timepoint`` (an index; hours from ``timepoints.csv`` when present) or
    ``time_h`` (hours).

    Examples
    --------
    >>> r = PatternReader(Path("."), r"(?P<well>[A-P]\\d+)_f(?P<field>\\d+)_(?P<channel>\\w+)\\.tif")
    >>> sorted(r.regex.groupindex)
    ['channel', 'field', 'well']
    """

    folder: Path
    pattern: str
    channels: ChannelMap = field(default_factory=ChannelMap)

    def __post_init__(self):
        try:
            self.regex = re.compile(self.pattern)
        except re.error as exc:
            raise InputError(f"--pattern {self.pattern!r} is not a valid regular expression: "
                             f"{exc}") from exc
        missing = {"well", "channel"} - set(self.regex.groupindex)
        if missing:
            raise InputError(f"--pattern {self.pattern!r} lacks the named group(s) "
                             f"{sorted(missing)}; use (?P<well>...), (?P<channel>...) and "
                             "optionally (?P<field>...), (?P<plate>...), (?P<timepoint>...)")

    def _scan(self) -> dict:
        from erquant.io.plate import parse_well, well_name

        if hasattr(self, "_records"):
            return self._records
        if not self.folder.is_dir():
            raise InputError(f"input folder not found: {self.folder}")
        hours = _timepoint_hours(self.folder)
        records: dict[tuple, dict] = {}
        for p in sorted(self.folder.rglob("*")):
            if not p.is_file():
                continue
            rel = p.relative_to(self.folder).as_posix()
            m = self.regex.search(rel)
            if not m:
                continue
            g = m.groupdict()
            try:
                row, col = parse_well(g["well"])
            except ValueError as exc:
                raise InputError(f"{p}: --pattern matched well {g['well']!r}: {exc}") from exc
            tp = int(g["timepoint"]) if g.get("timepoint") else 1
            th = float(re.sub(r"[^0-9.]", "", g["time_h"])) if g.get("time_h") else \
                hours.get(tp, np.nan)
            plate = g.get("plate") or self.folder.name
            fld = int(g["field"]) if g.get("field") else 1
            key = (plate, tp, row, col, fld)
            rec = records.setdefault(key, {"plate": plate, "timepoint": tp, "time_h": th,
                                           "well": well_name(row, col), "row": row,
                                           "col": col, "field": fld, "ch": {}})
            ch = g["channel"]
            if ch in rec["ch"]:
                raise InputError(f"--pattern matches two files for {rec['well']} field {fld} "
                                 f"channel {ch!r}: {rec['ch'][ch]} and {p}")
            rec["ch"][ch] = str(p)
        if not records:
            raise InputError(f"--pattern {self.pattern!r} matches no file under {self.folder}")
        self._records = records
        return records

    def channel_ids(self) -> list[str]:
        ids = sorted({c for r in self._scan().values() for c in r["ch"]})
        return ids

    def items(self) -> list[WorkItem]:
        ids = self.channel_ids()
        aliases = {f"w{c}": c for c in ids if c.isdigit()}
        aliases.update({f"w{int(c)}": c for c in ids if c.isdigit()})
        names = _resolve_channels(self.channels, ids, str(self.folder), aliases)
        out = []
        for key in sorted(self._scan()):
            r = self._records[key]
            chans = tuple((n, ChannelSource(r["ch"][cid]) if cid in r["ch"] else None)
                          for n, cid in names.items())
            out.append(WorkItem(r["plate"], r["timepoint"], r["time_h"], r["well"], r["row"],
                                r["col"], r["field"], chans))
        return out


def __getattr__(name: str):
    if name == "OmeStackReader":  # the generic OME-TIFF reader reads erquant's form too
        from erquant.io.ometiff import OmeTiffReader

        return OmeTiffReader
    raise AttributeError(name)


#: ``--layout`` names (``auto``: recognised from the input)
LAYOUTS = ("auto", "metaxpress", "pattern", "ome-tiff", "ome-zarr", "cellvoyager",
           "operetta")


def open_input(path: str | os.PathLike, *, pattern: str | None = None,
               channels: ChannelMap | str | Mapping | None = None, layout: str = "auto",
               tile: int | None = None):
    """The reader for ``path``: an OME-TIFF file, an OME-Zarr plate or image, a
    ``--pattern`` folder, a CellVoyager or Opera/Operetta export, a MetaXpress folder,
    or a mosaic (one huge image in tiles of ``tile`` px: with ``tile``, or automatically
    above :data:`erquant.io.mosaic.AUTO_TILE_PIXELS`; ``tile=0``: never).

    ``layout`` forces one of :data:`LAYOUTS` instead of recognising it; an input that
    does not fit the forced layout is an :class:`InputError` saying why. Raises
    :class:`InputError` when nothing can be read. Reads metadata only, never pixels.
    """
    path = Path(path).absolute()  # workers may run elsewhere: absolute paths in items
    cmap = channels if isinstance(channels, ChannelMap) else parse_channel_map(channels)
    if layout not in LAYOUTS:
        raise InputError(f"--layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if pattern and layout not in ("auto", "pattern"):
        raise InputError(f"--pattern reads a folder by file names: it does not go with "
                         f"--layout {layout}")
    if tile is not None and tile < 0:
        raise InputError(f"--tile must be > 0 (or 0: never tile), got {tile}")
    if tile and layout != "auto":
        raise InputError(f"--tile quantifies one huge image in tiles: it does not go with "
                         f"--layout {layout}")
    if layout != "auto":
        return _forced(path, layout, pattern, cmap)
    if not pattern and tile != 0:
        from erquant.io.mosaic import MosaicReader, _ome_zarr_image, is_mosaic

        if (path.is_file() or tile or _ome_zarr_image(path) is not None) and \
                is_mosaic(path, tile):
            return MosaicReader(path, cmap, tile=tile)
        if tile:
            MosaicReader(path, cmap)._open()  # raises the reason it is not one image
    from erquant.io.ometiff import OmeTiffReader

    if path.is_file():
        if path.name.lower().endswith((".ome.tif", ".ome.tiff")):
            return OmeTiffReader(path, cmap)
        raise InputError(f"{path}: a single input file must be an OME-TIFF "
                         "(*.ome.tif; --layout ome-tiff for other TIFF names) or, with "
                         "--tile, one (C, Y, X) image to tile; for folders of images give "
                         "the folder")
    if pattern:
        return PatternReader(path, pattern, cmap)
    from erquant.io.omezarr import OmeZarrReader, is_ome_zarr

    if is_ome_zarr(path):
        return OmeZarrReader(path, cmap)
    from erquant.io.vendors import detect_vendor

    vendor = detect_vendor(path, cmap)
    if vendor is not None:
        return vendor
    from erquant.io.plate import _NAME_RE

    if any(_NAME_RE.match(p.name) for p in path.rglob("*.tif*")):
        return MetaXpressReader(path, cmap)
    stacks = sorted(path.glob("*.ome.tif")) + sorted(path.glob("*.ome.tiff"))
    if len(stacks) == 1:
        return OmeTiffReader(stacks[0], cmap)
    raise InputError(f"{path}: no MetaXpress-style image (e.g. 'A01_s1_w1.tif' or "
                     "'TimePoint_1/A01_s1_w1.tif'), no CellVoyager or Opera/Operetta export "
                     "and no single OME-TIFF stack found; for other names give --pattern with "
                     "named groups well, field, channel")


def _forced(path: Path, layout: str, pattern: str | None, cmap: ChannelMap):
    """The reader of ``layout`` for ``path``, its metadata read now so that an input of
    another layout fails here, with the reason."""
    def unfit(why: str) -> InputError:
        return InputError(f"--layout {layout}: {path}: {why}")

    if layout == "ome-tiff":
        from erquant.io.ometiff import OmeTiffReader

        if path.is_dir():
            stacks = sorted(p for p in path.iterdir()
                            if p.name.lower().endswith((".ome.tif", ".ome.tiff")))
            if len(stacks) != 1:
                raise unfit(f"a folder with {len(stacks)} OME-TIFF files (*.ome.tif); give "
                            "one OME-TIFF file")
            path = stacks[0]
        elif not path.name.lower().endswith((".tif", ".tiff", ".btf", ".tf8")):
            raise unfit("not a TIFF file (.tif, .tiff)")
        reader = OmeTiffReader(path, cmap)
        reader._open()
        return reader
    if not path.is_dir():
        raise unfit("is a file; this layout is a folder")
    if layout == "pattern":
        if not pattern:
            raise unfit("needs --pattern REGEX (named groups well, channel)")
        reader = PatternReader(path, pattern, cmap)
        reader._scan()
        return reader
    if layout == "ome-zarr":
        from erquant.io.omezarr import OmeZarrReader, is_ome_zarr

        if not is_ome_zarr(path):
            raise unfit("not an OME-Zarr group (no NGFF 'plate' or 'multiscales' metadata "
                        "in its .zattrs / zarr.json)")
        reader = OmeZarrReader(path, cmap)
        reader._open()
        return reader
    from erquant.io.vendors import CellVoyagerReader, OperettaReader

    cls = {"metaxpress": MetaXpressReader, "cellvoyager": CellVoyagerReader,
           "operetta": OperettaReader}[layout]
    reader = cls(path, cmap)
    try:
        reader._scan()
    except InputError as exc:
        raise unfit(str(exc).replace(f"{path}: ", "")) from exc
    return reader


# --------------------------------------------------------------------------- loading
def _read_plane(src: ChannelSource, cache: dict | None = None) -> np.ndarray:
    """One (Y, X) plane of a channel source; the maximum projection of its Z planes."""
    if src.region is not None:  # a window of a mosaic
        from erquant.io.mosaic import read_region

        return read_region(src)
    if src.z_paths or (src.z_pages and src.array is None):  # a Z stack: maximum projection
        from erquant.io.zstack import z_count, z_plane

        if src.z_mode not in ("max", "best"):
            raise ValueError(f"unknown Z mode {src.z_mode!r} (supported: 'max', 'best')")
        planes = [_read_plane(z_plane(src, k), cache) for k in range(z_count(src))]
        if len({p.shape for p in planes}) != 1:
            raise ValueError(f"Z planes of {src.path!r} differ in shape: "
                             f"{sorted({p.shape for p in planes})}")
        return np.max(np.stack(planes), axis=0)
    if src.array is not None:
        from erquant.io.omezarr import read_zarr_plane

        return read_zarr_plane(src)
    if src.series is None and src.plane is None:
        from erquant.io.tiff import read_image

        return read_image(src.path)
    from erquant.io.ometiff import read_page

    return read_page(src.path, src.series or 0, src.plane or 0, cache)


def load_item(item: WorkItem, *, info: dict | None = None) -> tuple[np.ndarray, list[str]]:
    """Read a work item's channels → ((C, Y, X) array, channel names in that order).

    Z stacks are maximum-projected, or — sources with ``z_mode="best"``
    (:func:`erquant.io.zstack.apply_z_mode`) — read at the plane where the nuclear stain
    is sharpest; ``info`` (a dict) then receives ``z`` (that plane, 1-based) and
    ``z_focus`` (the focus score of every plane).

    Raises ValueError naming the file for a missing channel, an unreadable file or
    channels of different shapes.
    """
    planes, names, shapes, cache = [], [], {}, {}
    chosen = None
    try:
        if any(s is not None and s.z_mode == "best" for _, s in item.channels):
            chosen = _best_plane(item, cache, info)
        for name, src in item.channels:
            if src is None:
                have = [n for n, s in item.channels if s is not None]
                raise ValueError(f"{item.describe()}: channel {name!r} is missing (files "
                                 f"found for {have}: {item.files})")
            if chosen is not None:
                from erquant.io.zstack import z_plane

                src = z_plane(src, chosen)
            img = cache.pop(("best", name), None)  # the focus channel's plane: read already
            if img is None:
                img = _read_plane(src, cache)
            if img.ndim != 2:
                raise ValueError(f"{src.path!r}: expected one 2-D plane for channel {name!r}, "
                                 f"got shape {img.shape}")
            planes.append(img)
            names.append(name)
            shapes[src.path if src.series is None else f"{src.path}[{src.series}]"] = img.shape
    finally:
        for v in cache.values():  # open TIFF files of read_page
            close = getattr(v, "close", None)
            if close is not None:
                close()
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{item.describe()}: channels differ in shape: "
                         + ", ".join(f"{p} {s}" for p, s in shapes.items()))
    return np.stack(planes), names


def _best_plane(item: WorkItem, cache: dict, info: dict | None) -> int:
    """The 0-based plane where the nuclear stain (else the first channel) is sharpest."""
    from erquant.io.zstack import best_plane, z_count, z_plane

    srcs = dict(item.channels)
    name = "nuclei" if srcs.get("nuclei") is not None else next(
        (n for n, s in item.channels if s is not None), None)
    if name is None:
        return 0
    src = srcs[name]
    planes = [_read_plane(z_plane(src, k), cache) for k in range(z_count(src))]
    k, scores = best_plane(planes)
    cache[("best", name)] = planes[k]
    if info is not None:
        info.update(z=k + 1, z_focus=";".join(f"{s:.4g}" for s in scores))
    return k
