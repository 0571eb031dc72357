"""Vendor plate layouts as work-item readers: Yokogawa CellVoyager, Revvity Opera/Operetta.

Both write one single-plane TIFF per well × field × (time) × Z × channel; the readers
turn a folder into :class:`erquant.io.items.WorkItem` objects without reading pixels.
Z planes of a field become one channel source that is maximum-projected when loaded.

**Yokogawa CellVoyager CV7000 / CV8000**::

    <plate>_<well>_T0001F001L01A01Z01C01.tif

(time point, field, timeline, action, Z, channel; ``C01`` → channel id ``C01`` = ``w1``).
Recognised automatically by :func:`detect_vendor`.

**Revvity Opera Phenix / Operetta CLS (Harmony export)**::

    Images/r01c01f01p01-ch1sk1fk1fl1.tiff     + Images/Index.idx.xml or Index.xml

(row, column, field, plane, channel, ``sk`` = time point). Rows, columns, fields,
planes, time points, channel names and the pixel size come from the index XML when it
is there (its ``URL`` elements name the files), otherwise from the file names.
Channel ids ``ch1``, ``ch2``, … = ``w1``, ``w2``, …; the XML's channel names
(``HOECHST 33342``, ``Alexa 488``) also work in ``--channels``.

Examples
--------
>>> import tempfile, pathlib, numpy as np, tifffile
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> for z in (1, 2):
...     for c in (1, 2):
...         tifffile.imwrite(d / f"P1_B03_T0001F001L01A01Z0{z}C0{c}.tif",
...                          np.full((4, 4), 10 * z + c, np.uint16))
>>> items = detect_vendor(d).items()
>>> len(items), items[0].well, items[0].plate
(1, 'B03', 'P1')
>>> from erquant.io.items import load_item
>>> img, names = load_item(items[0])
>>> names, img[:, 0, 0].tolist()        # maximum over the two Z planes
(['nuclei', 'er'], [21, 22])
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from erquant.io.items import (
    ChannelMap,
    ChannelSource,
    InputError,
    WorkItem,
    _resolve_channels,
    _timepoint_hours,
)

__all__ = ["CellVoyagerReader", "OperettaReader", "detect_vendor"]

CV_RE = re.compile(
    r"^(?P<plate>.+?)_(?P<well>[A-Za-z]{1,2}\d{2,3})_T(?P<t>\d{4})F(?P<f>\d{3})L(?P<l>\d{2})"
    r"A(?P<a>\d{2})Z(?P<z>\d{2})C(?P<c>\d{2})\.tiff?$", re.IGNORECASE)
OP_RE = re.compile(
    r"^r(?P<r>\d{2})c(?P<c>\d{2})f(?P<f>\d{2,3})p(?P<p>\d{2,3})-ch(?P<ch>\d{1,2})"
    r"sk(?P<sk>\d+)fk\d+fl\d+\.tiff?$", re.IGNORECASE)


def _group_items(records: dict, names: dict[str, str], z_mode: str = "max",
                 pixel_size_um: float | None = None) -> list[WorkItem]:
    """records: (plate, tp, row, col, field) → {"time_h", "ch": {cid: {z: path}}}."""
    from erquant.io.plate import well_name

    out = []
    for key in sorted(records):
        plate, tp, row, col, fld = key
        rec = records[key]
        chans = []
        for name, cid in names.items():
            planes = rec["ch"].get(cid)
            if not planes:
                chans.append((name, None))
                continue
            paths = [planes[z] for z in sorted(planes)]
            chans.append((name, ChannelSource(paths[0], z_paths=tuple(paths[1:]),
                                              z_mode=z_mode)))
        out.append(WorkItem(str(plate), int(tp), float(rec["time_h"]), well_name(row, col),
                            int(row), int(col), int(fld), tuple(chans),
                            pixel_size_um=pixel_size_um))
    return out


@dataclass
class CellVoyagerReader:
    """Yokogawa CellVoyager CV7000/CV8000 folders (module docstring)."""

    folder: Path
    channels: ChannelMap = field(default_factory=ChannelMap)

    def _scan(self) -> dict:
        from erquant.io.plate import parse_well

        if hasattr(self, "_records"):
            return self._records
        hours = _timepoint_hours(self.folder)
        records: dict = {}
        for p in sorted(self.folder.rglob("*")):
            m = CV_RE.match(p.name)
            if not m or not p.is_file():
                continue
            row, col = parse_well(m["well"])
            tp, fld, z = int(m["t"]), int(m["f"]), int(m["z"])
            key = (m["plate"], tp, row, col, fld)
            rec = records.setdefault(key, {"time_h": hours.get(tp, np.nan), "ch": {}})
            cid = f"C{int(m['c']):02d}"
            planes = rec["ch"].setdefault(cid, {})
            zkey = (int(m["l"]), int(m["a"]), z)
            if zkey in planes:
                raise InputError(f"two CellVoyager files for {m['well']} F{fld:03d} {cid} "
                                 f"Z{z:02d}: {planes[zkey]} and {p}")
            planes[zkey] = str(p)
        if not records:
            raise InputError(f"{self.folder}: no CellVoyager image "
                             "(<plate>_<well>_T0001F001L01A01Z01C01.tif)")
        self._records = records
        return records

    def channel_ids(self) -> list[str]:
        return sorted({c for r in self._scan().values() for c in r["ch"]})

    def items(self) -> list[WorkItem]:
        ids = self.channel_ids()
        aliases = {f"w{int(c[1:])}": c for c in ids}
        aliases.update({c.lower(): c for c in ids})
        names = _resolve_channels(self.channels, ids, str(self.folder), aliases)
        return _group_items(self._scan(), names)


def _xml_text(el, tag: str):
    for child in el:
        if child.tag.rsplit("}", 1)[-1] == tag:
            return child.text
    return None


@dataclass
class OperettaReader:
    """Revvity Opera Phenix / Operetta CLS Harmony exports (module docstring)."""

    folder: Path
    channels: ChannelMap = field(default_factory=ChannelMap)

    def _index_file(self) -> Path | None:
        for name in ("Index.idx.xml", "Index.xml", "Index.ref.xml"):
            for base in (self.folder, self.folder / "Images"):
                if (base / name).exists():
                    return base / name
        return None

    def _scan(self) -> dict:
        if hasattr(self, "_records"):
            return self._records
        self.channel_names: dict[str, str] = {}
        self.pixel_size_um = None
        index = self._index_file()
        rows = self._from_xml(index) if index is not None else self._from_names()
        records: dict = {}
        hours = _timepoint_hours(self.folder)
        plate = self.folder.name
        for r in rows:
            key = (r.get("plate") or plate, r["tp"], r["row"], r["col"], r["field"])
            th = r.get("time_h")
            rec = records.setdefault(key, {"time_h": th if th is not None else
                                           hours.get(r["tp"], np.nan), "ch": {}})
            planes = rec["ch"].setdefault(f"ch{r['ch']}", {})
            if r["plane"] in planes:
                raise InputError(f"two Operetta files for r{r['row']:02d}c{r['col']:02d} "
                                 f"f{r['field']} ch{r['ch']} plane {r['plane']}: "
                                 f"{planes[r['plane']]} and {r['path']}")
            planes[r["plane"]] = r["path"]
        if not records:
            raise InputError(f"{self.folder}: no Opera/Operetta image "
                             "(r01c01f01p01-ch1sk1fk1fl1.tiff)")
        self._records = records
        return records

    def _from_names(self) -> list[dict]:
        rows = []
        for p in sorted(self.folder.rglob("*")):
            m = OP_RE.match(p.name)
            if m and p.is_file():
                rows.append({"row": int(m["r"]), "col": int(m["c"]), "field": int(m["f"]),
                             "plane": int(m["p"]), "ch": int(m["ch"]), "tp": int(m["sk"]),
                             "path": str(p)})
        return rows

    def _from_xml(self, index: Path) -> list[dict]:
        try:
            root = ET.parse(index).getroot()
        except (ET.ParseError, OSError) as exc:
            raise InputError(f"{index}: not a readable Harmony index XML: {exc}") from exc
        plate = None
        for el in root.iter():
            tag = el.tag.rsplit("}", 1)[-1]
            if tag == "Plate" and plate is None:
                plate = _xml_text(el, "PlateID") or _xml_text(el, "Name")
        rows = []
        for el in root.iter():
            if el.tag.rsplit("}", 1)[-1] != "Image" or _xml_text(el, "URL") is None:
                continue
            url = _xml_text(el, "URL")
            path = (index.parent / url)
            if not path.exists():
                raise InputError(f"{index}: lists {url}, which is not in {index.parent}")

            def num(tag, default=None, el=el):
                v = _xml_text(el, tag)
                return int(float(v)) if v not in (None, "") else default

            ch = num("ChannelID", 1)
            name = _xml_text(el, "ChannelName")
            if name:
                self.channel_names.setdefault(f"ch{ch}", name.strip())
            res = _xml_text(el, "ImageResolutionX")
            if res and self.pixel_size_um is None:
                self.pixel_size_um = float(res) * 1e6  # metres in the XML
            # TimepointID is 0-based in Harmony; erquant's time points are 1-based
            rows.append({"row": num("Row"), "col": num("Col"), "field": num("FieldID", 1),
                         "plane": num("PlaneID", 1), "ch": ch, "tp": num("TimepointID", 0) + 1,
                         "path": str(path), "plate": plate})
        if not rows:
            raise InputError(f"{index}: lists no images")
        return rows

    def channel_ids(self) -> list[str]:
        ids = sorted({c for r in self._scan().values() for c in r["ch"]},
                     key=lambda c: int(c[2:]))
        return ids + [n for c, n in self.channel_names.items() if c in ids]

    def items(self) -> list[WorkItem]:
        ids = self.channel_ids()
        aliases = {f"w{int(c[2:])}": c for c in ids if c.startswith("ch")}
        aliases.update({n: c for c, n in self.channel_names.items()})
        names = _resolve_channels(self.channels, ids, str(self.folder), aliases)
        names = {n: aliases.get(cid, cid) if not cid.startswith("ch") else cid
                 for n, cid in names.items()}
        return _group_items(self._scan(), names, pixel_size_um=self.pixel_size_um)


def detect_vendor(folder: str | Path, channels: ChannelMap | None = None):
    """A CellVoyager or Operetta reader when ``folder`` holds such files, else None."""
    folder = Path(folder)
    cmap = channels or ChannelMap()
    counts: dict[str, int] = defaultdict(int)
    for i, p in enumerate(folder.rglob("*.tif*")):
        if CV_RE.match(p.name):
            counts["cv"] += 1
        elif OP_RE.match(p.name):
            counts["op"] += 1
        if i > 2000:
            break
    if not counts:
        return None
    kind = max(counts, key=counts.get)
    return CellVoyagerReader(folder, cmap) if kind == "cv" else OperettaReader(folder, cmap)
