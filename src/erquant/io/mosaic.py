"""Mosaics: one huge 2-D image, quantified in overlapping tiles on the batch engine.

A mosaic is a single (C, Y, X) image — a (Big)TIFF / OME-TIFF (tiled or not) or an
OME-Zarr single image — too big to segment at once. :class:`MosaicReader` makes one
:class:`~erquant.io.items.WorkItem` per tile: the tile's *core* (a ``tile`` × ``tile``
rectangle of a regular grid, in global pixels) and a *window* read around it (core +
halo). Workers read only their window (``tifffile``'s ``aszarr`` / zarr slicing), so a
worker's memory is bounded by the window, and the client never holds pixels beyond a
≤ 2048² plan-time sample.

Tiled = untiled, by construction:

- **one set of image-level decisions** (:meth:`MosaicReader.prepare`, once per run, on
  a sample of the whole image: up to 4 × 4 crops of 512² montaged): the nucleus diameter,
  an integer working scale (``segment.downsample``), the normalisation levels and
  thresholds (``levels``, see :func:`erquant.segment.segment_nuclei`), the cells' growth
  distance and the measurement background tile — recorded in ``run.json`` and passed
  to every tile;
- **one pixel grid**: every grid the segmentation and measurement use (working-scale
  blocks, the segmentation background's tiles, the local-background tiles of
  :func:`erquant.measure.background_map`) has a period dividing :attr:`MosaicLayout.period`;
  windows start at global multiples of it and are padded (a constant, per channel)
  at the image's bottom/right border to a whole period, so a pixel's grids are the
  same in every window that holds it and in the whole image;
- **a halo** of at least two periods and several nucleus diameters (more than the
  reach of every local operation: smoothing, local peaks, background interpolation,
  the network's receptive field, the cells grown around nuclei);
- **ownership**: a tile keeps the objects whose nucleus centroid lies in its core
  (half-open rectangles, decided on exact integer pixel sums, so an object on a seam
  belongs to exactly one tile) — whole, since the halo is wider than an object and its
  cell; objects owned by a tile but touching its window's inner edge are counted
  (``n_cut`` in fields.csv: a halo too small for the data).

The reduce step numbers the cells globally (tile by tile, ``label`` 1..N), the worker
already shifted ``centroid_y`` / ``centroid_x`` to global pixels, and with
``--save-labels`` the tiles' label cores are written into one zarr label image per
mosaic (``labels/<name>_nuclei.zarr``, ``_cells.zarr``), tile by tile, each tile's
chunks written once.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from erquant.io.items import ChannelMap, ChannelSource, InputError, WorkItem, _resolve_channels

__all__ = ["AUTO_TILE_PIXELS", "DEFAULT_TILE", "MosaicLayout", "MosaicReader", "is_mosaic",
           "own_tile", "pad_window", "read_region"]

#: images with more pixels than this are quantified in tiles without ``--tile``
AUTO_TILE_PIXELS = 8192 * 8192
#: core tile side (px) when tiling is automatic
DEFAULT_TILE = 2048
#: the plan-time sample: at most this many px per side, in this many crops per side
SAMPLE_SIDE = 2048
SAMPLE_CROPS = 4


# --------------------------------------------------------------------------- arrays
def _open_array(path: str, array: str | None):
    """A lazily sliced array of a TIFF or of an OME-Zarr image: uncompressed contiguous
    TIFF data memory-mapped (one strip per plane would make a zarr view read the whole
    plane for any window), other TIFFs through ``tifffile``'s ``aszarr`` (tiles or
    strips decoded as needed), OME-Zarr through zarr."""
    import zarr

    if array is None:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            contiguous = tif.series[0].dataoffset is not None
        if contiguous:
            return tifffile.memmap(path, mode="r")
        store = tifffile.imread(path, aszarr=True)
        z = zarr.open(store, mode="r")
        if not hasattr(z, "shape"):  # a pyramid: the full-resolution level
            z = z["0"]
        return z
    return zarr.open_array(str(Path(path) / array), mode="r")


def read_region(src: ChannelSource) -> np.ndarray:
    """The (Y, X) window ``src.region`` = (y0, y1, x0, x1) of one channel of a mosaic."""
    y0, y1, x0, x1 = src.region
    z = _open_array(src.path, src.array)
    lead = tuple(src.index)
    if z.ndim == 2 + len(lead):
        sel = (*lead, slice(y0, y1), slice(x0, x1))
    else:  # a channel axis right before Y, X
        sel = (*lead, int(src.plane or 0), slice(y0, y1), slice(x0, x1))
    out = np.asarray(z[sel])
    if out.shape != (y1 - y0, x1 - x0):
        raise ValueError(f"{src.path}: region {src.region} read as shape {out.shape}")
    return out


def _ome_zarr_image(path: Path):
    """(array path, axes) of an OME-Zarr single image (NGFF 0.4 ``.zattrs`` or 0.5
    ``zarr.json``), or None."""
    import json

    for meta in (path / "zarr.json", path / ".zattrs"):
        if meta.is_file():
            try:
                attrs = json.loads(meta.read_text())
            except ValueError:
                return None
            attrs = attrs.get("attributes", attrs)
            attrs = attrs.get("ome", attrs)
            ms = attrs.get("multiscales")
            if ms and not attrs.get("plate") and not attrs.get("well"):
                axes = [a["name"] if isinstance(a, dict) else str(a)
                        for a in ms[0].get("axes", [])]
                return ms[0]["datasets"][0]["path"], axes
    return None


def is_mosaic(path: Path, tile: int | None) -> bool:
    """Should ``path`` be read as a mosaic? With ``tile`` (> 0): any single 2-D image
    (TIFF, OME-TIFF with one series, OME-Zarr single image); without: such an image
    above :data:`AUTO_TILE_PIXELS` pixels. ``tile == 0`` never."""
    if tile == 0:
        return False
    try:
        shape = MosaicReader(Path(path))._open()["shape"]
    except (InputError, OSError, ValueError):
        return False
    return tile is not None or shape[1] * shape[2] > AUTO_TILE_PIXELS


# --------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class MosaicLayout:
    """The tile grid and the image-level decisions shared by every tile of a mosaic."""

    shape: tuple[int, int]  #: (Y, X) of the mosaic
    tile: int  #: core tile side (px)
    period: int  #: windows start at multiples of this; every grid divides it
    halo: int  #: window margin around each core (px, a multiple of ``period``)
    method: str  #: the segmenter ("classical" / "learned")
    diameter: float  #: nucleus diameter (px)
    downsample: float  #: the working-scale factor (classical; an integer)
    max_distance: float  #: cells grow this far from their nuclei (px)
    measure_tile: int  #: local-background tile of the measurement (px)
    levels: dict = field(default_factory=dict)  #: segmentation levels (segment_nuclei)
    pad_values: dict = field(default_factory=dict)  #: channel → constant beyond the image
    sample: str = ""  #: what the decisions were measured on

    @property
    def grid(self) -> tuple[int, int]:
        return (-(-self.shape[0] // self.tile), -(-self.shape[1] // self.tile))

    def params(self, params):
        """``params`` with the mosaic's diameter, working scale, cell growth and
        measurement tile fixed (what every tile runs with)."""
        changes = {"segment.method": self.method, "segment.diameter": float(self.diameter),
                   "cells.max_distance": float(self.max_distance),
                   "measure.tile": int(self.measure_tile)}
        if self.method == "classical":
            changes["segment.downsample"] = float(self.downsample)
        return params.replace(**changes)

    def to_dict(self) -> dict:
        from erquant.io.meta import jsonable

        return jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> MosaicLayout:
        d = dict(d)
        d["shape"] = tuple(d["shape"])
        return cls(**d)

    def window(self, core: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """The window (y0, y1, x0, x1) read for a core: core + halo, starting at a
        multiple of the period, a whole number of periods long (clipped to the image)."""
        P, h = self.period, self.halo
        out = []
        for a, b, n in ((core[0], core[1], self.shape[0]), (core[2], core[3], self.shape[1])):
            w0 = max(0, (a - h) // P * P)
            w1 = min(n, w0 + -(-(b + h - w0) // P) * P)
            out += [w0, w1]
        return tuple(out)


def _sample_slices(n: int) -> list[slice]:
    if n <= SAMPLE_SIDE:
        return [slice(0, n)]
    side = SAMPLE_SIDE // SAMPLE_CROPS
    starts = np.linspace(0, n - side, SAMPLE_CROPS).round().astype(int)
    return [slice(int(s), int(s) + side) for s in starts]


def _median_diameter(labels) -> float:
    area = np.bincount(np.asarray(labels).ravel())[1:]
    area = area[area > 0]
    return float(np.median(2 * np.sqrt(area / math.pi))) if area.size else float("nan")


# --------------------------------------------------------------------------- reader
@dataclass
class MosaicReader:
    """A single huge (C, Y, X) image as tiles (see the module docstring).

    ``tile``: core tile side in px (default :data:`DEFAULT_TILE`). Call
    :meth:`prepare` with the run's parameters before :meth:`items` (the engine does).
    """

    path: Path
    channels: ChannelMap = field(default_factory=ChannelMap)
    tile: int | None = None
    layout: MosaicLayout | None = None

    def _open(self) -> dict:
        if hasattr(self, "_meta"):
            return self._meta
        path = Path(self.path)
        meta: dict = {"names": [], "pixel_size": None, "array": None, "index": ()}
        if path.is_dir():
            found = _ome_zarr_image(path)
            if found is None:
                raise InputError(f"{path}: --tile needs one image (a TIFF / OME-TIFF file or "
                                 "an OME-Zarr single image); this folder is not an OME-Zarr "
                                 "single image (no multiscales metadata)")
            arr_path, axes = found
            try:
                z = _open_array(str(path), arr_path)
            except Exception as exc:
                raise InputError(f"{path}: cannot open the OME-Zarr image: {exc}") from exc
            axes = axes or list("tczyx"[-z.ndim:])
            if axes[-2:] != ["y", "x"] or "z" in axes and z.shape[axes.index("z")] > 1:
                raise InputError(f"{path}: a mosaic must be one 2-D plane per channel "
                                 f"(axes {axes}, shape {tuple(z.shape)})")
            lead = tuple(0 for a in axes[:-2] if a != "c")
            nc = z.shape[axes.index("c")] if "c" in axes else 1
            if "c" in axes and axes.index("c") != len(axes) - 3:
                raise InputError(f"{path}: channel axis must come right before y, x "
                                 f"(axes {axes})")
            meta.update(array=arr_path, index=lead, shape=(nc, *z.shape[-2:]),
                        dtype=str(z.dtype))
        else:
            import tifffile

            try:
                with tifffile.TiffFile(path) as tif:
                    if len(tif.series) != 1:
                        raise InputError(f"{path}: a mosaic must be one image series, found "
                                         f"{len(tif.series)}")
                    s = tif.series[0]
                    shape, dtype = tuple(s.shape), str(s.dtype)
                    if tif.ome_metadata:
                        meta["names"] = re.findall(r'<Channel[^>]*Name="([^"]*)"',
                                                   tif.ome_metadata)
                        ps = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata)
                        if ps:
                            meta["pixel_size"] = float(ps.group(1))
            except InputError:
                raise
            except Exception as exc:  # tifffile raises many types on corrupt files
                raise InputError(f"{path}: cannot read as TIFF: {exc}") from exc
            if len(shape) == 2:
                shape = (1, *shape)
            if len(shape) != 3 or shape[0] > 16:
                raise InputError(f"{path}: a mosaic must be (C, Y, X) with a few channels, "
                                 f"got shape {shape}")
            meta.update(shape=shape, dtype=dtype)
        if min(meta["shape"][1:]) < 16:
            raise InputError(f"{path}: image too small for tiles: {meta['shape']}")
        self._meta = meta
        return meta

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._open()["shape"])

    def channel_ids(self) -> list[str]:
        meta = self._open()
        n = meta["shape"][0]
        return [f"w{i + 1}" for i in range(n)] + list(dict.fromkeys(meta["names"]))[:n]

    def _plane(self) -> dict[str, int]:
        """Table name → channel index."""
        meta = self._open()
        ids = self.channel_ids()
        aliases = {f"c{i}": f"w{i + 1}" for i in range(meta["shape"][0])}
        names = _resolve_channels(self.channels, ids, str(self.path), aliases)
        index = {f"w{i + 1}": i for i in range(meta["shape"][0])}
        index.update({n: i for i, n in enumerate(meta["names"][:meta["shape"][0]])})
        return {name: index[cid] for name, cid in names.items()}

    def _source(self, plane: int, region) -> ChannelSource:
        meta = self._open()
        return ChannelSource(str(Path(self.path).absolute()), plane=plane,
                             array=meta["array"], index=tuple(meta["index"]),
                             region=tuple(int(v) for v in region))

    def sample(self) -> tuple[np.ndarray, list[str], str]:
        """≤ 2048² of the image (whole, or 4 × 4 evenly spaced crops side by side) →
        ((C, h, w) array, channel names, description)."""
        _, Y, X = self.shape
        planes = self._plane()
        ys, xs = _sample_slices(Y), _sample_slices(X)
        out = []
        for ci in planes.values():
            rows = [np.concatenate([read_region(self._source(ci, (sy.start, sy.stop,
                                                                  sx.start, sx.stop)))
                                    for sx in xs], axis=1) for sy in ys]
            out.append(np.concatenate(rows, axis=0))
        what = ("the whole image" if len(ys) == len(xs) == 1 else
                f"{len(ys)} x {len(xs)} crops of {ys[0].stop - ys[0].start} x "
                f"{xs[0].stop - xs[0].start} px")
        return np.stack(out), list(planes), what

    def prepare(self, params=None) -> MosaicLayout:
        """Decide the image-level parameters once, on a sample (module docstring)."""
        from erquant.params import Params
        from erquant.segment import auto_downsample, resolve_method, segment_nuclei

        params = params or Params()
        _, Y, X = self.shape
        img, names, what = self.sample()
        nuc = img[names.index("nuclei")]
        sp = dataclasses.asdict(params.segment)
        method = resolve_method(sp["method"], sp["threshold"], sp["threshold_value"])
        sp["method"] = method
        d = sp["diameter"]
        if d is None:
            _, info = segment_nuclei(nuc, **sp, return_info=True)
            d = info.get("diameter")
        if d is None or not np.isfinite(d) or d <= 0:
            raise InputError(f"{self.path}: no nuclei found in {what} to size them; give "
                             "segment.diameter in a --params file")
        d = float(d)
        f = 1.0
        if method == "learned":
            from erquant.models.learned import WORK_DIAMETER

            # a working scale of whole eighths: windows at multiples of 128 px start at
            # whole multiples of 16 working px (the network's pooling grid)
            scale = max(1, round(8 * WORK_DIAMETER / d)) / 8
            d = WORK_DIAMETER / scale
            seg_period = 128
        else:
            f = float(sp["downsample"]) or auto_downsample(d)
            f = float(max(1, round(f)))  # an integer factor: whole blocks on one grid
            ds = d / f
            s = max(1, int(ds // 4))  # segment.background's block size at working scale
            win = int(round(params.segment.background_factor * ds / s)) | 1
            seg_period = int(f * s * (max(4, win) if params.segment.background_factor > 0
                                      else 1))
        sp.update(diameter=d, downsample=f)
        labels, info = segment_nuclei(nuc, **sp, return_info=True)
        levels = info.get("levels") or {}
        mt = params.measure.tile or 128
        measure_tile = seg_period * max(1, round(mt / seg_period))
        md = params.cells.max_distance
        if md is None:
            md = 0.5 * _median_diameter(labels)
            if not np.isfinite(md):
                md = 0.5 * d
        P = measure_tile
        need = max(2 * P, 1.5 * P + d + md, 4 * d + md)
        if method == "learned":
            need = max(need, 112 * d / 15.0 + d + md)
        halo = P * int(math.ceil(need / P))
        tile = int(self.tile or DEFAULT_TILE)
        if tile < 64:
            raise InputError(f"--tile {tile}: tiles must be at least 64 px")
        pads = {n: float(np.percentile(img[i][::4, ::4], 10)) for i, n in enumerate(names)}
        self.layout = MosaicLayout(shape=(int(Y), int(X)), tile=tile, period=int(P),
                                   halo=int(halo), method=method, diameter=d, downsample=f,
                                   max_distance=float(md), measure_tile=int(measure_tile),
                                   levels=levels, pad_values=pads, sample=what)
        return self.layout

    def items(self) -> list[WorkItem]:
        if self.layout is None:
            self.prepare()
        lay = self.layout
        meta = self._open()
        planes = self._plane()
        name = Path(self.path).name
        plate = re.sub(r"\.(ome\.)?(tiff?|zarr)$", "", name, flags=re.I) or name
        Y, X = lay.shape
        T = lay.tile
        ny, nx = lay.grid
        out = []
        for r in range(ny):
            for c in range(nx):
                core = (r * T, min(Y, (r + 1) * T), c * T, min(X, (c + 1) * T))
                win = lay.window(core)
                chans = tuple((n, self._source(ci, win)) for n, ci in planes.items())
                out.append(WorkItem(plate, 1, float("nan"), "A01", 1, 1, r * nx + c + 1,
                                    chans, pixel_size_um=meta["pixel_size"],
                                    tile=(r, c), core=core))
        return out


def prepare_layout(path, channels, tile, params) -> MosaicLayout:
    """:meth:`MosaicReader.prepare` of a new reader (picklable: for another process)."""
    return MosaicReader(Path(path), channels, tile=tile).prepare(params)


# --------------------------------------------------------------------------- tiles
def pad_window(img: np.ndarray, names: list[str], layout: MosaicLayout) -> np.ndarray:
    """A (C, h, w) window padded at the bottom/right to whole periods with the
    channels' constants (only windows at the image's border are not whole already)."""
    P = layout.period
    h, w = img.shape[-2:]
    ph, pw = (-h) % P, (-w) % P
    if not (ph or pw):
        return img
    out = np.empty((img.shape[0], h + ph, w + pw), img.dtype)
    for i, n in enumerate(names):
        v = layout.pad_values.get(n, 0.0)
        out[i] = np.asarray(v).astype(img.dtype) if img.dtype.kind in "ui" else v
        out[i, :h, :w] = img[i]
    return out


def own_tile(item: WorkItem, res, layout: MosaicLayout, params) -> tuple:
    """The objects of a tile's result that the tile owns → (result with the owned
    cells only: table in global coordinates, labels of the window (owned objects
    only, whole, numbered 1..n as the table's ``label``); summary extras)."""
    import pandas as pd

    from erquant.classify import field_scores

    wy0, wy1, wx0, wx1 = item.channels[0][1].region
    cy0, cy1, cx0, cx1 = item.core
    h, w = wy1 - wy0, wx1 - wx0
    nuc = np.asarray(res.nuclei)
    cells = np.asarray(res.cells)
    n = int(nuc.max()) if nuc.size else 0
    flat = nuc.ravel()
    area = np.bincount(flat, minlength=n + 1).astype(np.float64)
    rows = np.repeat(np.arange(nuc.shape[0], dtype=np.float64), nuc.shape[1])
    cols = np.tile(np.arange(nuc.shape[1], dtype=np.float64), nuc.shape[0])
    sy = np.bincount(flat, weights=rows, minlength=n + 1)  # exact integer sums
    sx = np.bincount(flat, weights=cols, minlength=n + 1)
    gy, gx = sy + area * wy0, sx + area * wx0  # global sums
    own = (area > 0) & (gy >= cy0 * area) & (gy < cy1 * area) & (gx >= cx0 * area) & \
        (gx < cx1 * area)
    own[0] = False
    # owned objects reaching an inner edge of the window: cut (the halo is too small)
    edges = []
    if wy0 > 0:
        edges += [nuc[0, :w], cells[0, :w]]
    if wy1 < layout.shape[0]:
        edges += [nuc[h - 1, :w], cells[h - 1, :w]]
    if wx0 > 0:
        edges += [nuc[:h, 0], cells[:h, 0]]
    if wx1 < layout.shape[1]:
        edges += [nuc[:h, w - 1], cells[:h, w - 1]]
    on_edge = np.zeros(n + 1, bool)
    for e in edges:
        on_edge[e[e <= n]] = True
    n_cut = int((on_edge & own).sum())
    lut = np.zeros(n + 1, np.uint32)
    lut[own] = np.arange(1, int(own.sum()) + 1, dtype=np.uint32)
    sl = (slice(0, h), slice(0, w))  # the window without its padding
    own_nuc = lut[nuc[sl]]
    own_cells = lut[np.minimum(cells[sl], n)]
    t = res.table
    lab = t["label"].to_numpy().astype(np.int64)
    keep = own[lab]
    t = t.loc[keep].copy()
    t["label"] = lut[lab[keep]].astype(np.int64)
    t["centroid_y"] = t["centroid_y"] + wy0
    t["centroid_x"] = t["centroid_x"] + wx0
    t["tile_row"], t["tile_col"] = item.tile
    t = t.reset_index(drop=True)
    cp = params.classify
    scores = {m: field_scores(t, channel=m, compartment=cp.compartment) for m in res.scores}
    out = dataclasses.replace(res, table=pd.DataFrame(t), nuclei=own_nuc, cells=own_cells,
                              scores=scores)
    extra = {"tile_row": item.tile[0], "tile_col": item.tile[1],
             "core": ",".join(map(str, item.core)), "window": f"{wy0},{wy1},{wx0},{wx1}",
             "n_cut": n_cut}
    return out, extra


def stitch_labels(outdir, fields, offsets: dict, mosaic: dict) -> dict:
    """Write the tiles' owned objects (``labels/<id>_nuclei.tif`` / ``_cells.tif``: the
    window, owned objects whole, local numbers) into one zarr label image per mosaic,
    ``labels/<plate>_nuclei.zarr`` / ``_cells.zarr``, with the global cell numbers (tile
    offset + local). Tiles go one at a time, here in the reduce step (memory: one
    window); an object over a seam reaches into a neighbour's chunks, which are read,
    merged (the owner's pixels win) and rewritten — sequentially, never by two writers."""
    import tifffile
    import zarr

    outdir = Path(outdir)
    lay = MosaicLayout.from_dict(mosaic)
    T = lay.tile
    dtype = "uint32" if max(offsets.values(), default=0) + T * T < 2**32 else "uint64"
    written = {}
    for plate, g in fields.groupby("plate", sort=True):
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(plate))
        for kind in ("nuclei", "cells"):
            dest = outdir / "labels" / f"{safe}_{kind}.zarr"
            arr = zarr.create_array(store=str(dest), shape=lay.shape, chunks=(T, T),
                                    dtype=dtype, fill_value=0, overwrite=True)
            for pid, win in zip(g["id"], g["window"]):
                src = outdir / "labels" / f"{pid}_{kind}.tif"
                if not src.exists() or pid not in offsets:
                    continue
                y0, y1, x0, x1 = (int(v) for v in str(win).split(","))
                lab = tifffile.imread(src).astype(dtype)
                if not lab.any():
                    continue
                ys, xs = np.nonzero(lab.any(axis=1))[0], np.nonzero(lab.any(axis=0))[0]
                sy, sx = slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)
                lab = lab[sy, sx]
                region = (slice(y0 + sy.start, y0 + sy.stop), slice(x0 + sx.start, x0 + sx.stop))
                cur = np.asarray(arr[region])
                on = lab > 0
                cur[on] = lab[on] + np.array(offsets[pid], dtype=dtype)
                arr[region] = cur
            written[kind] = str(dest)
    return written
