"""One field in, per-cell table out: :func:`quantify` and its generator twin.

``quantify_iter`` yields :class:`Progress` objects between stages and returns
a :class:`FieldResult` (``StopIteration.value``), so GUIs (napari's
``thread_worker``) and the batch engine show progress without threads inside
the core. The data moves to the chosen backend once; the labels and the table
come back once at the end.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from erquant.backend import Backend, get_backend, to_numpy
from erquant.params import Params

STAGES = ("load", "nuclei", "cells", "measure", "classify", "qc", "done")


@dataclass(frozen=True)
class Progress:
    """Progress of a running quantification: stage name and overall fraction 0..1."""

    stage: str
    fraction: float
    message: str = ""


@dataclass
class FieldResult:
    """Result of quantifying one field.

    Attributes
    ----------
    nuclei, cells : (Y, X) uint32 NumPy arrays
        Label images (cell ``k`` contains nucleus ``k``; cells outside the ROI removed).
    table : pandas.DataFrame
        One row per cell, keyed by ``label`` (see :func:`erquant.measure.measure_cells`),
        plus ``roi`` and, for each marker, ``{marker}_positive`` / ``{marker}_class``.
    qc : dict
        Field QC (focus, saturation, background, flags; :func:`erquant.qc.field_qc`).
    scores : dict
        Field scores per marker (% positive, H-score, Allred; :func:`erquant.classify.field_scores`).
    info : dict
        Diameter and threshold used, the working scale (``downsample``: the nuclei were
        segmented on a copy that many times smaller), backend name.
    """

    nuclei: np.ndarray
    cells: np.ndarray
    table: pd.DataFrame
    qc: dict = field(default_factory=dict)
    scores: dict = field(default_factory=dict)
    params: Params = field(default_factory=Params)
    info: dict = field(default_factory=dict)

    @property
    def n_nuclei(self) -> int:
        return len(self.table)

    def summary(self) -> dict[str, Any]:
        """One flat row describing the field (counts, scores, QC, flags)."""
        from erquant.qc import flatten_qc

        row: dict[str, Any] = {"n_nuclei": self.n_nuclei,
                               "diameter_px": self.info.get("diameter")}
        for marker, sc in self.scores.items():
            for k, v in sc.items():
                row[f"{marker}_{k}" if not k.startswith(marker) else k] = v
        row.update(flatten_qc(self.qc))
        return row


def _split_field(field_, nuclei_channel, marker_channels):
    """Return (nuclei image, {marker: image}) views of a (C, Y, X) or (Y, X) field."""
    arr = field_
    if not hasattr(arr, "ndim"):
        arr = np.asarray(arr)
    if hasattr(arr, "compute") and not isinstance(arr, np.ndarray):  # dask
        arr = arr.compute()
    if arr.ndim == 2:
        if marker_channels:
            raise ValueError(f"a 2-D field has only the nuclei image; marker channels "
                             f"{dict(marker_channels)} need a (C, Y, X) field")
        return arr, {}
    if arr.ndim != 3:
        raise ValueError(f"field must be (C, Y, X) or (Y, X), got shape {tuple(arr.shape)}")
    n = arr.shape[0]
    if n > 16 and arr.shape[-1] <= 4:
        raise ValueError(f"field shape {tuple(arr.shape)} looks channel-last (Y, X, C); "
                         "pass it as (C, Y, X), e.g. np.moveaxis(field, -1, 0)")

    def pick(idx, what):
        if not isinstance(idx, (int, np.integer)) or not -n <= idx < n:
            raise ValueError(f"{what} channel index {idx!r} is out of range for a field "
                             f"with {n} channel(s)")
        return arr[int(idx)]

    return pick(nuclei_channel, "nuclei"), {
        name: pick(idx, f"marker {name!r}") for name, idx in dict(marker_channels).items()}


def roi_index_map(roi, shape: tuple[int, int]) -> np.ndarray:
    """(Y, X) int16 map: ROI index (0-based) of each pixel, -1 outside all ROIs.

    ``roi`` is a boolean mask, an integer label mask (1..K → ROI 0..K-1) or a
    sequence of polygons, each an (N, 2) array of (y, x) vertices (napari
    Shapes convention). Where polygons overlap, the later one wins.
    """
    from skimage.draw import polygon2mask

    if isinstance(roi, np.ndarray) or hasattr(roi, "__array__") and not isinstance(roi, list):
        m = np.asarray(to_numpy(roi))
        if m.shape != tuple(shape):
            raise ValueError(f"ROI mask shape {m.shape} does not match the field {tuple(shape)}")
        if m.dtype == bool:
            return np.where(m, 0, -1).astype(np.int16)
        if np.issubdtype(m.dtype, np.integer):
            return (m.astype(np.int32) - 1).clip(-1).astype(np.int16)
        raise ValueError(f"ROI mask must be boolean or integer, got {m.dtype}")
    out = np.full(shape, -1, np.int16)
    for k, poly in enumerate(roi):
        poly = np.asarray(poly, dtype=float)
        if poly.ndim != 2 or poly.shape[1] < 2 or len(poly) < 3:
            raise ValueError(f"ROI polygon {k} must be an (N>=3, 2) array of (y, x) vertices, "
                             f"got shape {poly.shape}")
        out[polygon2mask(shape, poly[:, -2:])] = k
    return out


def quantify_iter(field_, *, nuclei_channel: int = 0,
                  marker_channels: Mapping[str, int] | None = None, roi=None,
                  params: Params | None = None, backend: str | Backend = "auto",
                  flatfield=None, reference: Any = None,
                  ) -> Generator[Progress, None, FieldResult]:
    """Quantify one field, yielding :class:`Progress`; returns a :class:`FieldResult`.

    Same arguments as :func:`quantify`. Use it where progress matters::

        gen = quantify_iter(field)
        try:
            while True:
                p = next(gen); print(p.stage, p.fraction)
        except StopIteration as stop:
            result = stop.value
    """
    from erquant.classify import classify_cells, field_scores
    from erquant.measure import measure_cells
    from erquant.qc import field_qc, validate_image
    from erquant.segment import segment_cells, segment_nuclei

    params = params or Params()
    if marker_channels is None:
        marker_channels = {"er": 1} if getattr(field_, "ndim", 0) == 3 else {}
    bk = get_backend(backend)
    yield Progress("load", 0.0)
    nuc_img, markers = _split_field(field_, nuclei_channel, marker_channels)
    nuc = bk.asarray(nuc_img)  # the one host→device transfer of the field
    markers = {k: bk.asarray(v) for k, v in markers.items()}
    validate_image(nuc, params.nuclei_name)
    for name, img in markers.items():
        validate_image(img, name)
    roi_map = roi_index_map(roi, tuple(nuc.shape)) if roi is not None else None

    yield Progress("nuclei", 0.05)
    # SegmentParams mirrors segment_nuclei's keyword arguments one to one
    nuclei, info = segment_nuclei(nuc, **dataclasses.asdict(params.segment), return_info=True)

    yield Progress("cells", 0.45)
    cyto = next(iter(markers.values())) if (params.cells.use_marker and markers) else None
    cells = segment_cells(nuclei, cytoplasm_image=cyto, max_distance=params.cells.max_distance,
                          downsample=float(info.get("downsample", 1)))

    yield Progress("measure", 0.6)
    mp = params.measure
    channels = {params.nuclei_name: nuc, **markers}
    table = measure_cells(nuclei, cells, channels, background=mp.background,
                          flatfield=flatfield, background_margin=mp.background_margin,
                          tile=mp.tile)
    n_field = len(table)  # nuclei in the whole field (before the ROI filter), for QC
    nuclei_h, cells_h = to_numpy(nuclei), to_numpy(cells)  # the one device→host transfer
    if roi_map is not None:
        cy = np.clip(np.rint(table["centroid_y"].to_numpy()), 0, nuc.shape[0] - 1).astype(int)
        cx = np.clip(np.rint(table["centroid_x"].to_numpy()), 0, nuc.shape[1] - 1).astype(int)
        table["roi"] = roi_map[cy, cx] if len(table) else np.zeros(0, np.int16)
        outside = table.loc[table["roi"] < 0, "label"].to_numpy()
        if outside.size:
            lut = np.ones(int(nuclei_h.max()) + 1, bool)
            lut[outside] = False
            nuclei_h = np.where(lut[nuclei_h], nuclei_h, 0).astype(np.uint32)
            cells_h = np.where(lut[cells_h], cells_h, 0).astype(np.uint32)
        table = table[table["roi"] >= 0].reset_index(drop=True)
    else:
        table["roi"] = np.zeros(len(table), np.int16)

    yield Progress("classify", 0.85)
    cp = params.classify
    scores = {}
    for name in markers:
        table = classify_cells(table, channel=name, compartment=cp.compartment,
                               threshold=cp.threshold, reference=reference,
                               positive_fraction=cp.positive_fraction,
                               class_bounds=cp.class_bounds)
        scores[name] = field_scores(table, channel=name, compartment=cp.compartment)

    yield Progress("qc", 0.92)
    qp = params.qc
    qc = field_qc(channels, nuclei=nuclei, saturation_value=qp.saturation_value,
                  focus_channel=params.nuclei_name, saturation_limit=qp.saturation_limit,
                  focus_threshold=qp.focus_threshold, n_nuclei=n_field)
    info = {"diameter": float(info["diameter"]) if info["diameter"] else None,
            "threshold": info["threshold"], "downsample": float(info.get("downsample", 1)),
            "backend": bk.name}
    yield Progress("done", 1.0)
    return FieldResult(nuclei=nuclei_h.astype(np.uint32, copy=False),
                       cells=cells_h.astype(np.uint32, copy=False), table=table, qc=qc,
                       scores=scores, params=params, info=info)


def quantify(field_, *, nuclei_channel: int = 0, marker_channels: Mapping[str, int] | None = None,
             roi=None, params: Params | None = None, backend: str | Backend = "auto",
             flatfield=None, reference: Any = None) -> FieldResult:
    """Segment nuclei and cells of one field and measure every marker per cell.

    Parameters
    ----------
    field_ : (C, Y, X) or (Y, X) array
        The field (NumPy, CuPy or dask). Channel ``nuclei_channel`` is the nuclear stain.
    nuclei_channel : int
        Index of the nuclear-stain channel.
    marker_channels : mapping name → channel index, optional
        Markers to measure, default ``{"er": 1}`` for a (C, Y, X) field, none for (Y, X).
    roi : bool mask, int mask or sequence of (N, 2) (y, x) polygons, optional
        Cells whose nucleus centre lies outside every ROI are dropped; the
        ``roi`` column gives each cell's ROI index.
    params : Params, optional
        All tuning parameters (defaults work across magnifications).
    backend : {"auto", "numpy", "cupy"}
    flatfield : (Y, X) array or {channel: array}, optional
        Illumination gain (mean ≈ 1) to divide background-corrected intensities by.
    reference : DataFrame or array, optional
        Vehicle cells (table or values) for relative ER-positivity and classes.

    Returns
    -------
    FieldResult

    Examples
    --------
    >>> from erquant.synthetic import make_field
    >>> f = make_field(shape=(256, 256), n_nuclei=30, seed=1)
    >>> r = quantify(f.image, backend="numpy")
    >>> abs(r.n_nuclei - 30) <= 3
    True
    """
    gen = quantify_iter(field_, nuclei_channel=nuclei_channel, marker_channels=marker_channels,
                        roi=roi, params=params, backend=backend, flatfield=flatfield,
                        reference=reference)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
