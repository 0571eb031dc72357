"""One field in, per-cell table out: :func:`quantify` and its generator twin.

``quantify_iter`` yields :class:`Progress` objects between stages and returns
a :class:`FieldResult` (``StopIteration.value``), so GUIs (napari's
``thread_worker``) and the batch engine show progress without threads inside
the core. The data moves to the chosen backend once; the labels and the table
come back once at the end.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from erquant.backend import Backend, get_backend, stack_to_host, to_numpy
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


def _run_to_end(gen):
    """Run a progress generator to its end and return its value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


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


def _field_on_device(bk: Backend, field_, nuclei_channel, marker_channels, params: Params):
    """Nuclei image and {marker: image} of a field on ``bk`` (one transfer), validated,
    and each channel's (min, max, saturated count) from the validation's pass (for the
    field's QC: :func:`erquant.qc.field_qc`'s ``ranges``)."""
    from erquant.qc import channel_saturation, validate_image

    nuc_img, markers = _split_field(field_, nuclei_channel, marker_channels)
    nuc = bk.asarray(nuc_img)  # the one host→device transfer of the field
    markers = {k: bk.asarray(v) for k, v in markers.items()}
    sv = params.qc.saturation_value
    ranges = {}
    for name, img in {params.nuclei_name: nuc, **markers}.items():
        ranges[name] = validate_image(img, name,
                                      saturation=channel_saturation(img, sv, name))
    return nuc, markers, ranges


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
                  flatfield=None, reference: Any = None, segment_levels: dict | None = None,
                  valid_shape: tuple[int, int] | None = None,
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
    from erquant import _malloc
    from erquant.segment import segment_cells, segment_nuclei

    _malloc.tune()  # freed image-sized buffers reused, not re-faulted (once per process)
    params = params or Params()
    if marker_channels is None:
        marker_channels = {"er": 1} if getattr(field_, "ndim", 0) == 3 else {}
    bk = get_backend(backend)
    yield Progress("load", 0.0)
    nuc, markers, ranges = _field_on_device(bk, field_, nuclei_channel, marker_channels,
                                            params)
    roi_map = roi_index_map(roi, tuple(nuc.shape)) if roi is not None else None
    whole = valid_shape is None or tuple(valid_shape) == tuple(nuc.shape)
    # QC's focus needs the raw channels only: taken beside the segmentation
    focus = _focus_beside(bk, {params.nuclei_name: nuc, **markers}, params) if whole else None

    yield Progress("nuclei", 0.05)
    # SegmentParams mirrors segment_nuclei's keyword arguments one to one
    nuclei, info = segment_nuclei(nuc, **dataclasses.asdict(params.segment), return_info=True,
                                  levels=segment_levels)

    yield Progress("cells", 0.45)
    cyto = next(iter(markers.values())) if (params.cells.use_marker and markers) else None
    # the labels' maximum, taken once for the cells and the measurements (the cells'
    # ids are their nuclei's; a cut window's labels stay at or below it)
    from erquant.kernels import range_and_count

    label_max = int(range_and_count(bk, nuclei, None)[1])  # host sync: one scalar
    cells = segment_cells(nuclei, cytoplasm_image=cyto, max_distance=params.cells.max_distance,
                          downsample=float(info.get("downsample", 1)), _label_max=label_max)
    if valid_shape is not None and tuple(valid_shape) != tuple(nuc.shape):
        # a padded mosaic window: segmented whole, measured only where it is image
        h, w = (int(v) for v in valid_shape)
        xp = bk.xp
        nuc = xp.ascontiguousarray(nuc[:h, :w])
        markers = {k: xp.ascontiguousarray(v[:h, :w]) for k, v in markers.items()}
        nuclei = xp.ascontiguousarray(nuclei[:h, :w])
        cells = xp.ascontiguousarray(cells[:h, :w])
        if roi_map is not None:
            roi_map = roi_map[:h, :w]
        ranges = None  # (the whole array's: QC measures the cut part)

    yield Progress("measure", 0.6)
    return (yield from _finish_field(bk, nuc, markers, nuclei, cells, info, params, roi_map,
                                     flatfield, reference, ranges=ranges, label_max=label_max,
                                     focus=focus))


def _focus_beside(bk, channels, params: Params):
    """QC's focus band energies of ``channels`` (:func:`erquant.qc.focus_terms`) started
    on a thread beside the segmentation, on the CPU where the compiled kernels may run
    from two threads at once (TBB, or serial): the diameter estimate is many small
    steps that leave a core idle, which the focus's compiled passes fill (2048² at
    12 px: estimate then focus 30 ms, beside each other 23 ms; the same values).
    None on the GPU, without the compiled kernels, or where one thread was asked for
    (``ERQUANT_NO_PARALLEL=1``, ``NUMBA_NUM_THREADS=1`` or ``numba.set_num_threads(1)``):
    QC takes them itself, as before."""
    import os

    from erquant.kernels import _numba_ok

    if bk.is_gpu or not _numba_ok(bk) or os.environ.get("ERQUANT_NO_PARALLEL") == "1":
        return None
    import numba

    if numba.get_num_threads() < 2:
        return None
    from concurrent.futures import ThreadPoolExecutor

    from erquant.qc import focus_terms

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="erquant-focus")
    try:
        return pool.submit(focus_terms, channels, focus_channel=params.nuclei_name)
    finally:
        pool.shutdown(wait=False)  # (its thread ends with this one task)


def _finish_field(bk, nuc, markers, nuclei, cells, seg_info, params, roi_map, flatfield,
                  reference, start: float = 0.6, span: float = 0.4, ranges=None,
                  label_max: int | None = None, focus=None
                  ) -> Generator[Progress, None, FieldResult]:
    """Measure, ROI-filter, classify and QC one segmented field → FieldResult (yields
    "classify" and "qc" progress between ``start`` and ``start + span``). ``ranges``:
    the channels' (min, max, saturated count) where known (:func:`_field_on_device`);
    ``label_max``: an upper bound of the label images' ids where known (else measured);
    ``focus``: QC's focus band energies under way (:func:`_focus_beside`'s future), or
    None."""
    from erquant.classify import classify_cells, field_scores
    from erquant.measure import measure_cells
    from erquant.qc import field_qc

    mp = params.measure
    channels = {params.nuclei_name: nuc, **markers}
    table = measure_cells(nuclei, cells, channels, background=mp.background,
                          flatfield=flatfield, background_margin=mp.background_margin,
                          tile=mp.tile, _label_max=label_max)
    n_field = len(table)  # nuclei in the whole field (before the ROI filter), for QC
    nuclei_h, cells_h = to_numpy(nuclei), to_numpy(cells)  # the one device→host transfer
    if roi_map is not None:
        table["roi"] = _roi_of_cells(table, roi_map)
        outside = table.loc[table["roi"] < 0, "label"].to_numpy()
        if outside.size:
            lut = np.ones(int(nuclei_h.max()) + 1, bool)
            lut[outside] = False
            nuclei_h = np.where(lut[nuclei_h], nuclei_h, 0).astype(np.uint32)
            cells_h = np.where(lut[cells_h], cells_h, 0).astype(np.uint32)
        table = table[table["roi"] >= 0].reset_index(drop=True)
    else:
        table["roi"] = np.zeros(len(table), np.int16)

    yield Progress("classify", start + 0.625 * span)
    cp = params.classify
    scores = {}
    for name in markers:
        table = classify_cells(table, channel=name, compartment=cp.compartment,
                               threshold=cp.threshold, reference=reference,
                               positive_fraction=cp.positive_fraction,
                               class_bounds=cp.class_bounds)
        scores[name] = field_scores(table, channel=name, compartment=cp.compartment)

    yield Progress("qc", start + 0.8 * span)
    qp = params.qc
    qc = field_qc(channels, nuclei=nuclei, saturation_value=qp.saturation_value,
                  focus_channel=params.nuclei_name, saturation_limit=qp.saturation_limit,
                  focus_threshold=qp.focus_threshold, n_nuclei=n_field, ranges=ranges,
                  focus_terms=focus.result() if focus is not None else None)
    info = {"diameter": float(seg_info["diameter"]) if seg_info["diameter"] else None,
            "threshold": seg_info["threshold"],
            "downsample": float(seg_info.get("downsample", 1)), "backend": bk.name,
            "method": seg_info.get("method", "classical")}
    info.update({k: v for k, v in seg_info.items() if k.startswith("montage")})
    if seg_info.get("levels") is not None:
        info["levels"] = seg_info["levels"]
    yield Progress("done", start + span)
    return FieldResult(nuclei=nuclei_h.astype(np.uint32, copy=False),
                       cells=cells_h.astype(np.uint32, copy=False), table=table, qc=qc,
                       scores=scores, params=params, info=info)


def quantify(field_, *, nuclei_channel: int = 0, marker_channels: Mapping[str, int] | None = None,
             roi=None, params: Params | None = None, backend: str | Backend = "auto",
             flatfield=None, reference: Any = None,
             segment_levels: dict | None = None,
             valid_shape: tuple[int, int] | None = None) -> FieldResult:
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
    segment_levels : dict, optional
        Image-level segmentation statistics measured once for a whole image (the
        ``info["levels"]`` of an earlier result; see :func:`erquant.segment.segment_nuclei`):
        the tiles of a mosaic pass the mosaic's, so they are segmented alike.
    valid_shape : (h, w), optional
        Only the top-left ``h`` × ``w`` pixels are image, the rest padding (a mosaic
        window at the image's border): nuclei and cells are segmented on the whole
        array, then cut to ``(h, w)`` and measured there (labels, table and QC are
        of the ``(h, w)`` part).

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
                        reference=reference, segment_levels=segment_levels,
                        valid_shape=valid_shape)
    return _run_to_end(gen)


# ------------------------------------------------------------------ batches
def _fields_of(fields, bk: Backend) -> list:
    """A (N, C, Y, X) / (N, Y, X) stack (moved to ``bk`` in one transfer) or a sequence
    of fields → list of fields."""
    if hasattr(fields, "ndim") and not isinstance(fields, (list, tuple)):
        if hasattr(fields, "compute") and not isinstance(fields, np.ndarray):  # dask
            fields = fields.compute()
        if fields.ndim not in (3, 4):
            raise ValueError("a batch must be an (N, C, Y, X) or (N, Y, X) stack or a list "
                             f"of fields, got shape {tuple(fields.shape)}")
        stack = bk.asarray(fields)  # one host→device transfer for the whole stack
        return [stack[i] for i in range(stack.shape[0])]
    return list(fields)


def _grid(n: int) -> tuple[int, int]:
    """Rows × columns of a montage of ``n`` fields: fewest empty slots, then the squarest,
    never more than 4:1.

    Examples
    --------
    >>> [_grid(n) for n in (1, 2, 3, 4, 5, 7, 16)]
    [(1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (2, 4), (4, 4)]
    """
    shapes = [(r, math.ceil(n / r)) for r in range(1, n + 1)]
    ok = [(r, c) for r, c in shapes if r <= c <= 4 * r] or [(1, n)]  # n ≤ 4: one row
    return min(ok, key=lambda rc: (rc[0] * rc[1] - n, rc[1] - rc[0]))


def _montage(bk: Backend, images: list, margin: int):
    """Fields side by side in a grid, each framed by ``margin`` px of its own background
    level (10th percentile of a strided sample: objects never touch across fields, an
    object cut by a field's edge stays cut, as alone) → (montage, top-left corner of
    each field). Unused grid slots repeat the first field (results discarded)."""
    xp = bk.xp
    Y, X = (int(v) for v in images[0].shape)
    rows, cols = _grid(len(images))
    P, Q = Y + 2 * margin, X + 2 * margin
    big = xp.empty((rows * P, cols * Q), images[0].dtype)
    step = max(1, -(-max(Y, X) // 256))
    levels = stack_to_host(xp, [xp.percentile(im[::step, ::step].astype(xp.float32), 10.0)
                                for im in images]).tolist()  # host sync: one per field
    corners = []
    for k in range(rows * cols):
        r, c = divmod(k, cols)
        i = k if k < len(images) else 0
        tile = big[r * P:(r + 1) * P, c * Q:(c + 1) * Q]
        tile[...] = levels[i]
        tile[margin:margin + Y, margin:margin + X] = images[i]
        if k < len(images):
            corners.append((r * P + margin, c * Q + margin))
    return big, corners


def _crop_labels(bk: Backend, nuclei, cells, y0: int, x0: int, shape, min_area: float):
    """One field's nuclei and cells out of the montage's labels, renumbered 1..n (cell k
    holds nucleus k); objects of less than ``min_area`` px inside the field and cells
    whose nucleus lies outside it (in the frame or a neighbouring field) go."""
    from erquant.segment import _relabel_lut

    xp = bk.xp
    Y, X = shape
    nuc = nuclei[y0:y0 + Y, x0:x0 + X]
    cel = cells[y0:y0 + Y, x0:x0 + X]
    top = max(int(nuc.max()) if nuc.size else 0, int(cel.max()) if cel.size else 0)  # host sync
    area = xp.bincount(nuc.ravel().astype(xp.int64), minlength=top + 1)
    lut = _relabel_lut(xp, area >= min_area)  # the same renumbering for nuclei and cells
    return lut[nuc], lut[cel]


def quantify_batch_iter(fields, *, nuclei_channel: int = 0,
                        marker_channels: Mapping[str, int] | None = None, rois=None,
                        params: Params | None = None, backend: str | Backend = "auto",
                        flatfield=None, reference: Any = None, max_pixels: int | None = None,
                        margin: int | None = None,
                        ) -> Generator[Progress, None, list[FieldResult]]:
    """Quantify N fields of one shape together, yielding :class:`Progress`; returns a
    list of :class:`FieldResult` (see :func:`quantify_batch`)."""
    from erquant.qc import validate_image
    from erquant.segment import (estimate_diameter, resolve_method, segment_cells,
                                  segment_nuclei)

    params = params or Params()
    bk = get_backend(backend)
    items = _fields_of(fields, bk)
    if not items:
        return []
    if rois is not None and len(rois) != len(items):
        raise ValueError(f"rois: {len(rois)} given for {len(items)} fields (one per field, "
                         "None for none)")
    if marker_channels is None:
        marker_channels = {"er": 1} if getattr(items[0], "ndim", 0) == 3 else {}
    yield Progress("load", 0.0, f"{len(items)} fields")
    nucs, marks = [], []
    for k, f in enumerate(items):
        try:
            nuc_img, markers = _split_field(f, nuclei_channel, marker_channels)
            nuc = bk.asarray(nuc_img)
            markers = {n: bk.asarray(v) for n, v in markers.items()}
            validate_image(nuc, params.nuclei_name)
            for n, v in markers.items():
                validate_image(v, n)
        except ValueError as e:
            raise ValueError(f"field {k} of the batch: {e}") from None
        if tuple(nuc.shape) != tuple(nucs[0].shape if nucs else nuc.shape):
            raise ValueError(f"field {k} of the batch has shape {tuple(nuc.shape)}, field 0 "
                             f"{tuple(nucs[0].shape)}: a batch needs fields of one shape")
        nucs.append(nuc)
        marks.append(markers)
    shape = tuple(int(v) for v in nucs[0].shape)
    sp = dataclasses.asdict(params.segment)
    d = sp.get("diameter")
    learned_method = resolve_method(sp["method"], sp["threshold"],
                                    sp["threshold_value"]) == "learned"
    # one diameter for the batch: the median estimate of three fields (the learned
    # method sizes each field itself: classical estimate, checked by the network)
    if d is None and not learned_method:
        picks = sorted({0, len(nucs) // 2, len(nucs) - 1})
        est = [estimate_diameter(nucs[i], threshold=sp["threshold"]) for i in picks]
        est = [e for e in est if math.isfinite(e)]  # blank fields give none
        d = float(np.median(est)) if est else None
    if max_pixels is None:
        max_pixels = 2**27 if bk.is_gpu else 2**22
    m = int(margin) if margin is not None else (max(4, math.ceil(0.5 * d)) if d else 0)
    per = max(1, int(max_pixels // ((shape[0] + 2 * m) * (shape[1] + 2 * m))))
    if d is None:
        per = 1  # nothing to size a margin by (blank fields): one field at a time
    if learned_method:
        # the network normalises and checks the scale per image: fields go alone (a
        # montage's shared normalisation and diameter cost ~3 % of the nuclei)
        per = 1
    if per == 1:
        m = 0  # fields alone need no frame (they still share the diameter)
    per = -(-len(nucs) // -(-len(nucs) // per))  # montages of even size: 16 → 8 + 8, not 15 + 1
    results: list[FieldResult] = []
    n = len(nucs)
    for g0 in range(0, n, per):
        group = list(range(g0, min(n, g0 + per)))
        yield Progress("nuclei", g0 / n, f"fields {g0 + 1}–{group[-1] + 1} of {n}")
        use_cyto = params.cells.use_marker and bool(marks[0])
        alone = len(group) == 1 and m == 0  # segmented as it is: no montage, no crop
        if alone:
            big = nucs[group[0]]
            cyto = next(iter(marks[group[0]].values())) if use_cyto else None
        else:
            big, corners = _montage(bk, [nucs[i] for i in group], m)
            cyto = (_montage(bk, [next(iter(marks[i].values())) for i in group], m)[0]
                    if use_cyto else None)
        kw = dict(sp, diameter=d) if d else sp
        nuclei_big, info = segment_nuclei(big, **kw, return_info=True)
        cells_big = segment_cells(nuclei_big, cytoplasm_image=cyto,
                                  max_distance=params.cells.max_distance,
                                  downsample=float(info.get("downsample", 1)))
        dd = info.get("diameter") or d or 0.0
        min_area = params.segment.min_area_fraction * math.pi * (dd / 2) ** 2
        info["montage_fields"] = len(group)
        for j, i in enumerate(group):
            if alone:  # its labels as they are
                nuclei, cells = nuclei_big, cells_big
            else:
                nuclei, cells = _crop_labels(bk, nuclei_big, cells_big, *corners[j], shape,
                                             min_area)
            roi = rois[i] if rois is not None else None
            roi_map = roi_index_map(roi, shape) if roi is not None else None
            sub = _finish_field(bk, nucs[i], marks[i], nuclei, cells, info, params, roi_map,
                                flatfield, reference, start=(i + 0.5) / n, span=0.5 / n)
            while True:  # the per-field stages, as fractions of the whole batch
                try:
                    p = next(sub)
                except StopIteration as stop:
                    results.append(stop.value)
                    break
                if p.stage != "done":
                    yield Progress(p.stage, p.fraction, f"field {i + 1} of {n}")
    yield Progress("done", 1.0, f"{n} fields")
    return results


def quantify_batch(fields, *, nuclei_channel: int = 0,
                   marker_channels: Mapping[str, int] | None = None, rois=None,
                   params: Params | None = None, backend: str | Backend = "auto",
                   flatfield=None, reference: Any = None, max_pixels: int | None = None,
                   margin: int | None = None) -> list[FieldResult]:
    """Quantify N fields of one shape, segmenting them together: many fields per launch.

    The fields are laid side by side in a montage (each framed by ``margin`` px of its
    own background level, so objects never touch across fields and an object cut by
    a field's edge stays cut, as alone), the nuclei and cells are segmented once per
    montage, and each field is cut out, renumbered and measured, classified and QC'd
    on its own. The montage shares one diameter
    (given, or the median estimate of three fields), one normalisation and one
    global threshold — a per-plate threshold — while the background stays local.
    Per-field costs (diameter estimate, ~700 small launches on a GPU, Python
    overhead) are paid once per montage: small fields go several times faster
    (``erquant bench`` measures it). Results match :func:`quantify` up to the shared
    threshold (on synthetic fields F1 and nuclear-ERα accuracy as field by field).

    Parameters
    ----------
    fields : (N, C, Y, X) or (N, Y, X) array, or a sequence of (C, Y, X) / (Y, X) fields
        All of one shape. A stack moves to the device in one transfer.
    rois : sequence, optional
        One ROI (see :func:`quantify`) or None per field.
    max_pixels : int, optional
        Largest montage (pixels); default 2**22 on the CPU (beyond ~4 MP a montage
        gains nothing there), 2**27 on a GPU. Fields that large are segmented one at a
        time (sharing the diameter estimate).
    margin : int, optional
        Background frame around each field (px); default half a nucleus diameter (wider
        frames add background pixels that shift the shared automatic threshold).
    nuclei_channel, marker_channels, params, backend, flatfield, reference
        As :func:`quantify`.

    Returns
    -------
    list of FieldResult, in the order of ``fields``; ``info["montage_fields"]`` says
    how many fields shared a montage.

    Examples
    --------
    >>> from erquant.synthetic import make_field
    >>> fs = [make_field(shape=(192, 192), n_nuclei=20, seed=s) for s in range(4)]
    >>> rs = quantify_batch([f.image for f in fs], backend="numpy")
    >>> [abs(r.n_nuclei - int(f.nuclei.max())) <= 2 for r, f in zip(rs, fs)]
    [True, True, True, True]
    """
    gen = quantify_batch_iter(fields, nuclei_channel=nuclei_channel,
                              marker_channels=marker_channels, rois=rois, params=params,
                              backend=backend, flatfield=flatfield, reference=reference,
                              max_pixels=max_pixels, margin=margin)
    return _run_to_end(gen)


# ------------------------------------------------------------------ corrections and ROIs
def remeasure_iter(nuclei, field_, *, nuclei_channel: int = 0,
                   marker_channels: Mapping[str, int] | None = None,
                   params: Params | None = None, roi=None, reference: Any = None,
                   backend: str | Backend = "auto", flatfield=None, downsample: float = 1.0,
                   ) -> Generator[Progress, None, FieldResult]:
    """Generator twin of :func:`remeasure` (yields :class:`Progress`)."""
    from erquant.segment import segment_cells

    params = params or Params()
    if marker_channels is None:
        marker_channels = {"er": 1} if getattr(field_, "ndim", 0) == 3 else {}
    bk = get_backend(backend)
    yield Progress("load", 0.0)
    nuc, markers, ranges = _field_on_device(bk, field_, nuclei_channel, marker_channels,
                                            params)
    lab = np.asarray(to_numpy(nuclei))
    if hasattr(lab, "compute") and not isinstance(lab, np.ndarray):  # dask
        lab = np.asarray(lab.compute())
    if lab.shape != tuple(nuc.shape):
        raise ValueError(f"nuclei labels {lab.shape} and the field {tuple(nuc.shape)} "
                         "differ in shape")
    if lab.dtype.kind not in "iu" or (lab.size and lab.min() < 0):
        raise ValueError(f"nuclei labels must be non-negative integers, got {lab.dtype}")
    roi_map = roi_index_map(roi, tuple(nuc.shape)) if roi is not None else None
    nuclei_d = bk.asarray(lab.astype(np.uint32, copy=False))

    yield Progress("cells", 0.2)
    cyto = next(iter(markers.values())) if (params.cells.use_marker and markers) else None
    cells = segment_cells(nuclei_d, cytoplasm_image=cyto,
                          max_distance=params.cells.max_distance,
                          downsample=max(1.0, float(downsample or 1)))
    areas = np.bincount(lab.ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    seg_info = {"diameter": float(np.median(2 * np.sqrt(areas / np.pi))) if areas.size else None,
                "threshold": None, "downsample": max(1.0, float(downsample or 1))}
    yield Progress("measure", 0.4)
    result = yield from _finish_field(bk, nuc, markers, nuclei_d, cells, seg_info, params,
                                      roi_map, flatfield, reference, start=0.4, span=0.6,
                                      ranges=ranges)
    result.info["remeasured"] = True
    return result


def remeasure(nuclei, field_, *, nuclei_channel: int = 0,
              marker_channels: Mapping[str, int] | None = None, params: Params | None = None,
              roi=None, reference: Any = None, backend: str | Backend = "auto",
              flatfield=None, downsample: float = 1.0) -> FieldResult:
    """Rebuild cells from (edited) nuclei labels and measure again, without segmenting.

    What a user fixed by hand (painted, erased, split or merged nuclei) is what gets
    measured: the nuclei keep their label values, cells are grown from them with
    :func:`erquant.segment.segment_cells`, and the table, scores and QC are
    recomputed by the same per-field tail as :func:`quantify`.

    Parameters
    ----------
    nuclei : (Y, X) integer array
        Nucleus labels (0 = background), e.g. a corrected napari Labels layer.
    field_ : (C, Y, X) or (Y, X) array
        The field the labels belong to.
    nuclei_channel, marker_channels, params, roi, reference, backend, flatfield
        As :func:`quantify`.
    downsample : float
        Grow the cells on a copy this many times smaller (1: exact). Pass the
        ``info["downsample"]`` of the :class:`FieldResult` being corrected to grow them
        exactly as :func:`quantify` did (unchanged labels then give the same table).

    Returns
    -------
    FieldResult
        ``info["diameter"]`` is the median equivalent diameter of the given nuclei,
        ``info["threshold"]`` None (nothing was thresholded), ``info["remeasured"]`` True.

    Examples
    --------
    >>> from erquant.synthetic import make_field
    >>> f = make_field(shape=(128, 128), n_nuclei=8, seed=2)
    >>> r = remeasure(f.nuclei, f.image, backend="numpy")
    >>> r.n_nuclei == len(set(f.nuclei.ravel()) - {0})
    True
    """
    gen = remeasure_iter(nuclei, field_, nuclei_channel=nuclei_channel,
                         marker_channels=marker_channels, params=params, roi=roi,
                         reference=reference, backend=backend, flatfield=flatfield,
                         downsample=downsample)
    return _run_to_end(gen)


def assign_rois(table: pd.DataFrame, roi, shape: tuple[int, int]) -> pd.DataFrame:
    """Copy of ``table`` with ``roi``: the ROI index (0-based) holding each cell's nucleus
    centre (rounded, as :func:`quantify` does), -1 outside every ROI.

    ``roi`` as in :func:`roi_index_map`. Cells are kept, so a field can be classified as
    a whole and summarised per ROI (:func:`roi_summary`).

    Examples
    --------
    >>> t = pd.DataFrame({"label": [1, 2], "centroid_y": [2.0, 8.0], "centroid_x": [2.0, 8.0]})
    >>> square = np.array([[0, 0], [0, 5], [5, 5], [5, 0]])
    >>> assign_rois(t, [square], (10, 10))["roi"].tolist()
    [0, -1]
    """
    out = table.copy()
    if roi is None:
        out["roi"] = np.zeros(len(out), np.int16)
        return out
    out["roi"] = _roi_of_cells(out, roi_index_map(roi, tuple(shape)))
    return out


def _roi_of_cells(table: pd.DataFrame, roi_map: np.ndarray) -> np.ndarray:
    """ROI index of each cell: ``roi_map`` at its nucleus centre (rounded), -1 outside."""
    if not len(table):
        return np.zeros(0, np.int16)
    cy = np.clip(np.rint(table["centroid_y"].to_numpy()), 0, roi_map.shape[0] - 1).astype(int)
    cx = np.clip(np.rint(table["centroid_x"].to_numpy()), 0, roi_map.shape[1] - 1).astype(int)
    return roi_map[cy, cx]


WHOLE_FIELD = "whole field"


def roi_summary(table: pd.DataFrame, roi_names=None, marker: str = "er", *,
                compartment: str = "nucleus", whole_field: bool = True) -> pd.DataFrame:
    """One row per ROI (and one for the whole field): counts and ERα scores.

    Parameters
    ----------
    table : pandas.DataFrame
        Classified per-cell table (``{marker}_class``, ``roi`` as from :func:`quantify` or
        :func:`assign_rois`; -1 = outside every ROI).
    roi_names : sequence of str, optional
        Name of ROI 0, 1, …; default ``roi1``, ``roi2``, … for the indices present.
    marker : str
        Marker to score; without its columns only the counts are given.
    compartment : str
        Compartment whose background-corrected mean is classified (``nucleus``).
    whole_field : bool
        Add a row named :data:`WHOLE_FIELD` with every cell of the table.

    Returns
    -------
    pandas.DataFrame
        ``roi``, ``roi_name``, ``n_cells``, ``mean_{marker}``, ``median_{marker}`` (of
        ``{compartment}_{marker}_mean_bgcorr``), ``pct_positive``, ``h_score``, ``allred``;
        the whole-field row has ``roi`` -1.

    Examples
    --------
    >>> t = pd.DataFrame({"roi": [0, 0, 1], "er_class": [0, 2, 3],
    ...                   "nucleus_er_mean_bgcorr": [1.0, 5.0, 9.0]})
    >>> s = roi_summary(t, ["a", "b"])
    >>> s[["roi_name", "n_cells", "pct_positive", "h_score"]].round(1).values.tolist()
    [['a', 2, 50.0, 100.0], ['b', 1, 100.0, 300.0], ['whole field', 3, 66.7, 166.7]]
    """
    from erquant.classify import field_scores

    if "roi" in table.columns:
        present = sorted(int(v) for v in pd.unique(table["roi"]) if int(v) >= 0)
    else:
        present = []
    names = list(roi_names) if roi_names is not None else [f"roi{i + 1}" for i in
                                                           range(max(present, default=-1) + 1)]
    groups = [(i, names[i] if i < len(names) else f"roi{i + 1}",
               table[table["roi"] == i] if "roi" in table.columns else table.iloc[:0])
              for i in range(max(len(names), max(present, default=-1) + 1))]
    if whole_field:
        groups.append((-1, WHOLE_FIELD, table))
    vcol = f"{compartment}_{marker}_mean_bgcorr"
    scored = f"{marker}_class" in table.columns and vcol in table.columns
    rows = []
    for idx, name, sub in groups:
        row: dict[str, Any] = {"roi": idx, "roi_name": name, "n_cells": int(len(sub))}
        if scored:
            vals = sub[vcol].to_numpy(dtype=float)
            finite = vals[np.isfinite(vals)]
            sc = field_scores(sub, channel=marker, compartment=compartment)
            row.update({
                f"mean_{marker}": float(finite.mean()) if finite.size else math.nan,
                f"median_{marker}": float(np.median(finite)) if finite.size else math.nan,
                "pct_positive": sc["pct_positive"], "h_score": sc["h_score"],
                "allred": sc["allred"],
            })
        rows.append(row)
    return pd.DataFrame(rows)
