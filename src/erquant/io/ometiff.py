"""OME-TIFF files of any form as work items: multi-series (positions / wells / fields),
multi-page series with T, Z and C axes, OME Plate / Well / WellSample metadata.

What each series is comes from, in this order:

1. the ``<name>_index.csv`` beside the file (the form :func:`erquant.io.write_ome_stack`
   writes: ``series, plate, well, field, timepoint, time_h``);
2. the OME-XML ``Plate`` / ``Well`` (``Row``, ``Column``: 0-based) / ``WellSample``
   (``ImageRef``): the well, and the field = the WellSample's place in its well;
3. an ``Image Name`` that starts with a well of a plate of up to 1536 wells (``A01``,
   ``Well B03``, ``A01_s2``, ``C05 field 3``): that well and field (default 1);
4. otherwise the series are fields 1, 2, … of well ``A01`` (positions of one sample).

Axes come from tifffile (``series.axes``, built from the OME ``DimensionOrder`` and
``SizeT/SizeZ/SizeC``): ``T`` gives time points (``time_h`` from the planes' ``DeltaT``,
else ``timepoints.csv`` beside the file), ``Z`` a Z stack (:mod:`erquant.io.zstack`),
``C`` the channels (one other leading axis of a plain multi-page TIFF is taken as ``C``).
Only the pages a field needs are read (:func:`read_page`), never the whole file.

Channel ids: ``w1``, ``w2``, … (1-based order of the ``C`` axis), ``c0``, ``c1``, … and
the OME ``Channel`` names. ``PhysicalSizeX`` (µm, nm or mm) gives the pixel size.

Examples
--------
>>> import tempfile, pathlib, numpy as np, tifffile
>>> p = pathlib.Path(tempfile.mkdtemp()) / "s.ome.tif"
>>> tifffile.imwrite(p, np.zeros((2, 3, 2, 8, 8), np.uint16), ome=True,
...                  metadata={"axes": "TZCYX", "Name": "B03",
...                            "Channel": {"Name": ["DAPI", "ERa"]}})
>>> r = OmeTiffReader(p)
>>> [(it.well, it.timepoint) for it in r.items()], r.channel_ids()[-2:]
([('B03', 1), ('B03', 2)], ['DAPI', 'ERa'])
>>> dict(r.items()[1].channels)["er"].z_pages     # the ERa pages of Z 1-3 at T 2
(7, 9, 11)
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from erquant.io.items import (
    ChannelMap,
    ChannelSource,
    InputError,
    WorkItem,
    _resolve_channels,
    _timepoint_hours,
)

__all__ = ["OmeTiffReader", "read_page"]

_WELL_NAME = re.compile(
    r"^\s*(?:well\s*)?(?P<well>(?:A[A-F]|[A-Z])\d{1,2})(?![0-9A-Za-z])"
    r"(?:[\s_,:-]*(?:s|f|field|site|pos|position|fov)?[\s_-]*(?P<field>\d+))?", re.IGNORECASE)
_UNIT_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "m": 1e6}
_UNIT_H = {"s": 1 / 3600, "ms": 1 / 3.6e6, "min": 1 / 60, "h": 1.0}


def _tag(el) -> str:
    return el.tag.rsplit("}", 1)[-1]


def _children(el, tag: str):
    return [c for c in el if _tag(c) == tag]


def _parse_ome(xml: str) -> tuple[list[dict], dict[str, dict]]:
    """(per OME Image: id, name, channel names, pixel size, hours per T; Image id →
    plate / row / col / field from the Plate metadata)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return [], {}
    images = []
    for im in _children(root, "Image"):
        px = next(iter(_children(im, "Pixels")), None)
        info = {"id": im.get("ID"), "name": im.get("Name") or "", "channels": [],
                "pixel_size_um": None, "hours": {}}
        if px is not None:
            info["channels"] = [c.get("Name") or "" for c in _children(px, "Channel")]
            size, unit = px.get("PhysicalSizeX"), px.get("PhysicalSizeXUnit") or "µm"
            if size and unit in _UNIT_UM:
                info["pixel_size_um"] = float(size) * _UNIT_UM[unit]
            for pl in _children(px, "Plane"):
                dt = pl.get("DeltaT")
                if dt is None or int(pl.get("TheZ", 0)) or int(pl.get("TheC", 0)):
                    continue
                scale = _UNIT_H.get(pl.get("DeltaTUnit") or "s")
                if scale is not None:
                    info["hours"].setdefault(int(pl.get("TheT", 0)), float(dt) * scale)
        images.append(info)
    wells: dict[str, dict] = {}
    for plate in _children(root, "Plate"):
        name = plate.get("Name") or None
        for w in _children(plate, "Well"):
            samples = sorted(_children(w, "WellSample"),
                             key=lambda s: int(s.get("Index", 0) or 0))
            for k, ws in enumerate(samples):
                ref = next(iter(_children(ws, "ImageRef")), None)
                if ref is not None and ref.get("ID"):
                    wells[ref.get("ID")] = {"plate": name, "row": int(w.get("Row")) + 1,
                                            "col": int(w.get("Column")) + 1, "field": k + 1}
    return images, wells


@dataclass
class OmeTiffReader:
    """Any OME-TIFF (or multi-page TIFF) file as work items (module docstring)."""

    path: Path
    channels: ChannelMap = field(default_factory=ChannelMap)

    def _open(self):
        import tifffile

        if hasattr(self, "_series"):
            return
        try:
            with tifffile.TiffFile(self.path) as tif:
                series = [(s.axes, tuple(s.shape), s.name or "") for s in tif.series]
                xml = tif.ome_metadata or ""
        except Exception as exc:  # tifffile raises many types on corrupt files
            raise InputError(f"{self.path}: cannot read as (OME-)TIFF: {exc}") from exc
        if not series:
            raise InputError(f"{self.path}: holds no image series")
        images, plate_of = _parse_ome(xml) if xml else ([], {})
        if len(images) != len(series):  # pair by name when tifffile skipped some
            by_name = {im["name"]: im for im in images}
            images = [by_name.get(name, {}) for _, _, name in series]
        self._series = []
        for s, (axes, shape, name) in enumerate(series):
            dims = [(a, n) for a, n in zip(axes, shape) if a not in "YX"]
            if "S" in axes:
                raise InputError(f"{self.path}: series {s} holds RGB pixels (axes {axes}); "
                                 "erquant reads one grey plane per channel")
            other = [a for a, _ in dims if a not in "TZC"]
            if other and (len(dims) > 1 or "C" in axes):
                raise InputError(f"{self.path}: series {s} has axes {axes!r}: cannot tell "
                                 f"channels (C), Z and time (T) from {other}")
            dims = [("C" if a not in "TZC" else a, n) for a, n in dims]
            info = images[s] if s < len(images) else {}
            self._series.append({"dims": dims, "sizes": dict(dims), "name": name,
                                 "info": info, "plate": plate_of.get(info.get("id"))})
        first = self._series[0]
        self._nc = first["sizes"].get("C", 1)
        names = first["info"].get("channels", [])[:self._nc]
        self._names = names if len(set(names)) == len(names) and all(names) else []
        self._where = self._map_series()

    def _map_series(self) -> list[dict]:
        """Per series: plate, well, field (and timepoint / time_h from an index)."""
        from erquant.io.plate import _index_path, parse_well

        stem = self.path.name.split(".")[0]
        idx = _index_path(self.path)
        if idx.exists():
            index = pd.read_csv(idx)
            if len(index) != len(self._series):
                raise InputError(f"{idx}: {len(index)} rows but {self.path} has "
                                 f"{len(self._series)} series")
            out = []
            for k, r in enumerate(index.to_dict("records")):
                s = int(r.get("series", k))
                try:
                    row, col = parse_well(str(r.get("well", "A01")))
                except ValueError as exc:
                    raise InputError(f"{idx}: row {k + 1}: {exc}") from exc
                th = r.get("time_h", np.nan)
                out.append({"series": s, "plate": str(r.get("plate", stem)), "row": row,
                            "col": col, "field": int(r.get("field", s + 1)),
                            "timepoint": int(r.get("timepoint", 1)),
                            "time_h": float(th) if th is not None else np.nan})
            return out
        out = []
        for s, ser in enumerate(self._series):
            where = {"series": s, "plate": stem, "row": 1, "col": 1, "field": s + 1}
            if ser["plate"] is not None:
                where.update({k: v for k, v in ser["plate"].items() if v is not None})
            else:
                m = _WELL_NAME.match(ser["info"].get("name") or ser["name"])
                if m:
                    where["row"], where["col"] = parse_well(m["well"])
                    where["field"] = int(m["field"] or 1)
            out.append(where)
        seen: dict[tuple, int] = {}
        for w in out:
            key = (w["plate"], w["row"], w["col"], w["field"])
            if key in seen:
                from erquant.io.plate import well_name

                raise InputError(
                    f"{self.path}: series {seen[key]} and {w['series']} are both "
                    f"{well_name(w['row'], w['col'])} field {w['field']} (from the "
                    "OME Plate metadata or Image names); add a <name>_index.csv mapping "
                    "series to plate, well, field")
            seen[key] = w["series"]
        return out

    def channel_ids(self) -> list[str]:
        self._open()
        return ([f"w{i + 1}" for i in range(self._nc)] + [f"c{i}" for i in range(self._nc)]
                + self._names)

    def items(self) -> list[WorkItem]:
        from erquant.io.plate import well_name

        self._open()
        plane = {f"w{i + 1}": i for i in range(self._nc)}
        plane.update({f"c{i}": i for i in range(self._nc)})
        plane.update({n: i for i, n in enumerate(self._names)})
        names = _resolve_channels(self.channels, self.channel_ids(), str(self.path))
        hours = _timepoint_hours(self.path.parent)
        out = []
        for where in self._where:
            ser = self._series[where["series"]]
            sizes = ser["sizes"]
            nt, nz = sizes.get("T", 1), sizes.get("Z", 1)
            for t in range(nt):
                chans = []
                for name, cid in names.items():
                    c = plane[cid]
                    if c >= sizes.get("C", 1):
                        chans.append((name, None))
                        continue
                    pages = tuple(self._page(ser["dims"], t, z, c) for z in range(nz))
                    chans.append((name, ChannelSource(str(self.path), where["series"],
                                                      pages[0], z_pages=pages
                                                      if nz > 1 else ())))
                if nt > 1 or "timepoint" not in where:
                    tp = t + 1
                    th = ser["info"].get("hours", {}).get(t, hours.get(tp, np.nan))
                else:
                    tp, th = where["timepoint"], where["time_h"]
                out.append(WorkItem(where["plate"], tp, float(th),
                                    well_name(where["row"], where["col"]), where["row"],
                                    where["col"], where["field"], tuple(chans),
                                    pixel_size_um=ser["info"].get("pixel_size_um")))
        return sorted(out, key=lambda it: (it.plate, it.timepoint, it.row, it.col, it.field))

    @staticmethod
    def _page(dims, t: int, z: int, c: int) -> int:
        if not dims:
            return 0
        at = {"T": t, "Z": z, "C": c}
        return int(np.ravel_multi_index([at[a] for a, _ in dims], [n for _, n in dims]))


def read_page(path: str, series: int, page: int, cache: dict | None = None) -> np.ndarray:
    """Page ``page`` of ``series`` of a TIFF file as a 2-D array (only that page is read;
    the series' declared size is checked against the file first). ``cache`` keeps the
    file open between calls (the caller closes it)."""
    import tifffile

    from erquant.io.tiff import _check_declared_size

    key = ("tiff", path)
    try:
        tif = cache.get(key) if cache is not None else None
        if tif is None:
            tif = tifffile.TiffFile(path)
            if cache is not None:
                cache[key] = tif
        try:
            if series >= len(tif.series):
                raise ValueError(f"the file holds {len(tif.series)} series: it is truncated "
                                 "or changed")
            ser = tif.series[series]
            checked = cache.setdefault(("checked", path), set()) if cache is not None else set()
            if series not in checked:
                _check_declared_size(tif, ser)  # before allocating the declared size
                checked.add(series)
            npages = int(np.prod([n for a, n in zip(ser.axes, ser.shape) if a not in "YXS"]))
            if not 0 <= page < max(npages, 1):
                raise ValueError(f"the series has {npages} planes, asked for plane {page}")
            if npages <= 1:
                arr = ser.asarray()
            else:
                pg = ser.pages[page]
                if pg is None:
                    raise ValueError(f"plane {page} is missing: the file is truncated")
                arr = pg.asarray()
        finally:
            if cache is None:
                tif.close()
    except (OSError, ValueError, RuntimeError, KeyError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read series {series} of {str(path)!r}: {first}") from exc
    return np.squeeze(arr) if arr.ndim > 2 else arr
