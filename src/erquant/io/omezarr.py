"""OME-Zarr (NGFF 0.4 / Zarr v2 and 0.5 / Zarr v3): HCS plates and single images as work
items; nuclei and cell labels written back as NGFF ``labels`` of each field.

Reading needs only the NGFF metadata (``plate`` → wells → ``well.images`` → each field's
``multiscales``/``omero``) and the full-resolution array of each field, opened with
``zarr`` inside the worker. Writing labels uses ome-zarr-py (``ome_zarr.writer.write_labels``,
the reference implementation, which writes the ``image-label`` metadata for either NGFF
version), so napari-ome-zarr and other NGFF viewers show them. ome-zarr-py 0.18 writes
HCS plates at both versions (used by the tests); ngff-zarr and iohub were not needed.

Channel ids: ``w1``, ``w2``, … (1-based order of the ``c`` axis), ``c0``, ``c1``, … and the
``omero`` channel labels. A ``t`` axis becomes time points; a ``z`` axis is
maximum-projected (or see :mod:`erquant.io.zstack` for ``--z best`` / ``all``).

Examples
--------
>>> import tempfile, numpy as np
>>> from erquant.io.omezarr import write_hcs_plate
>>> root = write_hcs_plate(tempfile.mkdtemp() + "/p.zarr",
...     {("A01", 1): np.zeros((2, 8, 8), np.uint16)}, channel_names=("DAPI", "ERa"))
>>> r = OmeZarrReader(root)
>>> [it.well for it in r.items()], r.channel_ids()
(['A01'], ['w1', 'w2', 'c0', 'c1', 'DAPI', 'ERa'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from erquant.io.items import ChannelMap, ChannelSource, InputError, WorkItem, _resolve_channels

__all__ = ["OmeZarrReader", "is_ome_zarr", "read_zarr_plane", "write_field_labels",
           "write_hcs_plate"]


def _ome(attrs: Mapping) -> dict:
    attrs = dict(attrs)
    return dict(attrs.get("ome", attrs))  # 0.5 nests everything under "ome"


def is_ome_zarr(path: str | Path) -> bool:
    """True for a folder that is a Zarr group with NGFF ``plate`` or ``multiscales``."""
    p = Path(path)
    if not p.is_dir() or not ((p / ".zattrs").exists() or (p / "zarr.json").exists()):
        return False
    try:
        import zarr

        ome = _ome(zarr.open_group(str(p), mode="r").attrs)
    except Exception:  # not a readable group: let other readers try
        return False
    return "plate" in ome or "multiscales" in ome


@dataclass
class OmeZarrReader:
    """An OME-Zarr HCS plate (or a single OME-Zarr image) as work items."""

    path: Path
    channels: ChannelMap = field(default_factory=ChannelMap)

    def _open(self):
        import zarr

        if hasattr(self, "_fields"):
            return
        try:
            root = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:
            raise InputError(f"{self.path}: cannot open as Zarr: {exc}") from exc
        ome = _ome(root.attrs)
        fields = []  # (plate, well, field index, image group path)
        if "plate" in ome:
            plate = ome["plate"]
            name = plate.get("name") or self.path.name.split(".")[0]
            for w in plate.get("wells", []):
                wpath = w["path"]
                try:
                    images = _ome(root[wpath].attrs)["well"]["images"]
                except KeyError as exc:
                    raise InputError(f"{self.path}/{wpath}: no NGFF 'well' metadata") from exc
                well = wpath.replace("/", "")
                for k, im in enumerate(images):
                    fields.append((name, well, k + 1, f"{wpath}/{im['path']}"))
        elif "multiscales" in ome:
            fields.append((self.path.name.split(".")[0], "A01", 1, ""))
        else:
            raise InputError(f"{self.path}: a Zarr group without NGFF plate or image metadata")
        if not fields:
            raise InputError(f"{self.path}: the plate lists no wells")
        first = root[fields[0][3]] if fields[0][3] else root
        fome = _ome(first.attrs)
        ms = fome["multiscales"][0]
        self._axes = "".join(a["name"] if isinstance(a, dict) else a
                             for a in ms.get("axes", [])) or "cyx"
        self._dataset = ms["datasets"][0]["path"]
        shape = first[self._dataset].shape
        self._shape = dict(zip(self._axes, shape))
        self._pixel_size = None
        axes = ms.get("axes", [])
        units = {a.get("name"): a.get("unit") for a in axes if isinstance(a, dict)}
        for t in ms["datasets"][0].get("coordinateTransformations", []):
            if t.get("type") == "scale" and units.get("x") in ("micrometer", "µm", "um"):
                self._pixel_size = float(t["scale"][self._axes.index("x")])
        labels = [c.get("label") for c in fome.get("omero", {}).get("channels", [])]
        nc = self._shape.get("c", 1)
        self._names = [n for n in labels[:nc] if n]
        self._fields = fields

    def channel_ids(self) -> list[str]:
        self._open()
        nc = self._shape.get("c", 1)
        return [f"w{i + 1}" for i in range(nc)] + [f"c{i}" for i in range(nc)] + self._names

    def items(self) -> list[WorkItem]:
        from erquant.io.plate import parse_well, well_name

        self._open()
        nc = self._shape.get("c", 1)
        plane = {f"w{i + 1}": i for i in range(nc)}
        plane.update({f"c{i}": i for i in range(nc)})
        plane.update({n: i for i, n in enumerate(self._names)})
        names = _resolve_channels(self.channels, self.channel_ids(), str(self.path))
        lead = [a for a in self._axes if a not in "yx"]
        nz = self._shape.get("z", 1)
        z_pages = tuple(range(nz)) if "z" in lead and nz > 1 else ()  # --z best / all
        out = []
        for plate, well, fld, group in self._fields:
            try:
                row, col = parse_well(well)
            except ValueError as exc:
                raise InputError(f"{self.path}: well path {well!r}: {exc}") from exc
            array = f"{group}/{self._dataset}" if group else self._dataset
            for t in range(self._shape.get("t", 1)):
                chans = []
                for name, cid in names.items():
                    idx = tuple(t if a == "t" else plane[cid] if a == "c" else -1
                                for a in lead)
                    chans.append((name, ChannelSource(str(self.path), array=array, index=idx,
                                                      z_pages=z_pages)))
                out.append(WorkItem(str(plate), t + 1, np.nan, well_name(row, col), row, col,
                                    fld, tuple(chans), image_group=f"{self.path}::{group}",
                                    pixel_size_um=self._pixel_size))
        return sorted(out, key=lambda it: (it.plate, it.timepoint, it.row, it.col, it.field))


def read_zarr_plane(src: ChannelSource) -> np.ndarray:
    """Read one (Y, X) plane: index the leading axes, max-project those marked -1."""
    import zarr

    try:
        arr = zarr.open_array(store=src.path, path=src.array, mode="r")
    except Exception as exc:
        raise ValueError(f"cannot open {src.path!r}/{src.array}: {exc}") from exc
    sel = tuple(slice(None) if i < 0 else i for i in src.index)
    try:
        data = np.asarray(arr[sel])
    except Exception as exc:  # missing / corrupt chunks
        raise ValueError(f"cannot read {src.path!r}/{src.array}: {exc}") from exc
    while data.ndim > 2:
        data = data.max(axis=0)
    return data


def write_field_labels(image_group: str, labels: Mapping[str, np.ndarray]) -> None:
    """Write label images as NGFF ``labels/<name>`` of one image (``"<store>::<group>"``)."""
    import zarr
    from ome_zarr.writer import write_labels

    store, _, group = image_group.partition("::")
    root = zarr.open_group(store, mode="r+")
    img = root[group] if group else root
    axes = [a["name"] if isinstance(a, dict) else a
            for a in _ome(img.attrs)["multiscales"][0]["axes"]]
    for name, lab in labels.items():
        lab = np.asarray(lab, dtype=np.uint32)
        shape = tuple(1 if a not in "yx" else None for a in axes)
        full = lab.reshape(tuple(s or d for s, d in zip(shape, (*[1] * (len(axes) - 2),
                                                                  *lab.shape))))
        write_labels(full, img, name=name, axes=axes, scaler=None, scale_factors=())


def write_hcs_plate(path: str | Path, fields: Mapping[tuple[str, int], np.ndarray], *,
                    channel_names: Sequence[str] = ("Hoechst", "ERa"), version: str = "0.4",
                    name: str | None = None) -> Path:
    """Write (C, Y, X) — or (C, Z, Y, X) — fields keyed by (well, field) as an OME-Zarr HCS
    plate.

    ``version`` "0.4" (Zarr v2) or "0.5" (Zarr v3); uses ome-zarr-py's writers.
    """
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image, write_plate_metadata, write_well_metadata

    from erquant.io.plate import parse_well

    fmt = {"0.4": FormatV04, "0.5": FormatV05}[version]()
    path = Path(path)
    root = zarr.group(store=parse_url(str(path), mode="w", fmt=fmt).store)
    wells: dict[tuple[str, str], list[int]] = {}
    for well, fld in fields:
        r, c = parse_well(well)
        wells.setdefault((_row_letters(r), str(c)), []).append(fld)
    rows = sorted({r for r, _ in wells}, key=lambda s: (len(s), s))
    cols = sorted({c for _, c in wells}, key=int)
    write_plate_metadata(root, rows, cols, [f"{r}/{c}" for r, c in sorted(wells)], fmt=fmt,
                         name=name or path.name.split(".")[0])
    for (r, c), flds in sorted(wells.items()):
        wg = root.require_group(r).require_group(c)
        write_well_metadata(wg, [{"path": str(f - 1)} for f in sorted(flds)], fmt=fmt)
        for f in sorted(flds):
            data = np.asarray(fields[(f"{r}{int(c):02d}", f)])
            ig = wg.require_group(str(f - 1))
            write_image(data, ig, axes="czyx" if data.ndim == 4 else "cyx", fmt=fmt,
                        scale_factors=(),
                        omero={"channels": [
                            {"label": n, "active": True, "color": col,
                             "window": {"start": 0, "end": int(np.iinfo(data.dtype).max)
                                        if data.dtype.kind in "ui" else 1,
                                        "min": 0, "max": int(np.iinfo(data.dtype).max)
                                        if data.dtype.kind in "ui" else 1}}
                            for n, col in zip(channel_names[:len(data)],
                                              ("0000FF", "00FF00", "FF0000", "FFFFFF"))]})
    return path


def _row_letters(row: int) -> str:
    out = ""
    while row:
        row, rem = divmod(row - 1, 26)
        out = chr(65 + rem) + out
    return out
