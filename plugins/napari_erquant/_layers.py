"""Turn an :class:`erquant.pipeline.FieldResult` into napari layers (no Qt here).

* :func:`result_layer_data` - pure: result → layer-data tuples (``<image> nuclei`` /
  ``<image> cells`` Labels with a ``features`` table keyed by ``label``; cells coloured
  by ERα class).
* :func:`add_or_update_layers` - adds those tuples to a viewer, updating layers of the
  same name and type in place so a re-run does not pile up new layers.
* :func:`save_table` - write the per-cell table as CSV or Parquet.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LayerData = tuple[Any, dict[str, Any], str]

#: colours of ERα intensity classes, lowest first (0, 1+, 2+, 3+, ...)
CLASS_COLORS = np.array(
    [
        [0.55, 0.55, 0.55, 1.0],  # 0 / negative: grey
        [1.00, 0.90, 0.20, 1.0],  # 1+: yellow
        [1.00, 0.55, 0.00, 1.0],  # 2+: orange
        [0.90, 0.10, 0.10, 1.0],  # 3+: red
        [0.80, 0.20, 0.90, 1.0],  # beyond: purple
    ]
)
#: table columns tried in order for colouring points by intensity (no class column)
INTENSITY_COLUMNS = ("nucleus_er_mean_bgcorr", "nucleus_er_mean", "cell_er_mean")


def labels_features(table: pd.DataFrame, key: str = "label") -> pd.DataFrame:
    """Features table for a napari Labels layer, keyed by the ``label`` column.

    napari maps label values to rows through an ``index`` column when there is one
    (otherwise row *i* would have to be label *i*, background included), so a copy
    of ``label`` is added as ``index``; no background row is needed.

    Parameters
    ----------
    table : pandas.DataFrame
        Per-cell table with a ``label`` column.

    Returns
    -------
    pandas.DataFrame
        ``table`` with a fresh RangeIndex and an ``index`` column equal to ``label``.

    Examples
    --------
    >>> import pandas as pd
    >>> labels_features(pd.DataFrame({"label": [3, 7], "x": [1.0, 2.0]}))["index"].tolist()
    [3, 7]
    """
    if key not in table.columns:
        raise ValueError(f"the result table has no {key!r} column")
    feats = table.reset_index(drop=True).copy()
    feats["index"] = feats[key].to_numpy()
    return feats


def point_colors(table: pd.DataFrame) -> np.ndarray:
    """RGBA colour per cell: by ``er_class`` if present, else by ERα intensity.

    Classes are ranked by their categorical code, integer value or the number in
    ``"0"``, ``"1+"``, ``"2+"``, ``"3+"`` and coloured grey → yellow → orange → red.
    Intensities are scaled between their 1st and 99th percentile through viridis.

    Parameters
    ----------
    table : pandas.DataFrame
        Per-cell table.

    Returns
    -------
    numpy.ndarray
        (N, 4) float RGBA.

    Examples
    --------
    >>> import pandas as pd
    >>> point_colors(pd.DataFrame({"er_class": ["0", "3+"]}))[:, 0].round(2).tolist()
    [0.55, 0.9]
    """
    n = len(table)
    if n == 0:
        return np.zeros((0, 4))
    if "er_class" in table.columns:
        cls = table["er_class"]
        order = _class_order(cls)
        order = np.clip(order, 0, len(CLASS_COLORS) - 1)
        return CLASS_COLORS[order]
    col = next((c for c in INTENSITY_COLUMNS if c in table.columns), None)
    if col is None:
        return np.tile(CLASS_COLORS[0], (n, 1))
    from napari.utils.colormaps import ensure_colormap

    vals = table[col].to_numpy(dtype=float)
    lo, hi = np.nanpercentile(vals, [1, 99]) if np.isfinite(vals).any() else (0.0, 1.0)
    scaled = np.clip((vals - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.asarray(ensure_colormap("viridis").map(np.nan_to_num(scaled)))


def _class_order(cls: pd.Series) -> np.ndarray:
    """Ordinal of each class: categorical code, integer value, or the number in "2+"."""
    if isinstance(cls.dtype, pd.CategoricalDtype):
        return np.asarray(cls.cat.codes, dtype=int)
    if pd.api.types.is_numeric_dtype(cls):
        return np.nan_to_num(cls.to_numpy(dtype=float)).astype(int)
    uniq, inverse = np.unique(cls.astype(str).to_numpy(), return_inverse=True)
    try:
        ranks = np.array([int(u.strip().rstrip("+")) for u in uniq])
    except ValueError:  # free-text classes: sorted order
        ranks = np.arange(len(uniq))
    return ranks[np.asarray(inverse).ravel()]


#: columns of the cells layer's features (a short hover status); the nuclei layer has all
SHORT_COLUMNS = ("label", "nucleus_er_mean_bgcorr", "er_class", "nucleus_area_px", "roi_name")
#: legend of the ERα classes (label, RGBA)
CLASS_NAMES = ("0 (negative)", "1+", "2+", "3+")


def layer_names(source: str) -> dict[str, str]:
    """Names of the result layers of an image called *source*.

    Examples
    --------
    >>> layer_names("A01_s1")["nuclei"]
    'A01_s1 nuclei'
    """
    return {"nuclei": f"{source} nuclei", "cells": f"{source} cells"}


def class_colormap(table: pd.DataFrame, marker: str = "er", key: str = "label",
                   bounds: Sequence[float] | None = None,
                   column: str = "nucleus_er_mean_bgcorr") -> Any:
    """napari label colormap: each cell coloured by its ``{marker}_class`` (grey → red);
    cells without a class (no marker) in a neutral grey. *key* names the column holding
    the label values of the layer (``stack_label`` for stacks).

    With *bounds* ``(lo, hi)`` (the contrast control of the results dock) the cells are
    coloured continuously instead: *column* (nuclear ERα by default) mapped through
    viridis, ``lo`` and below dark, ``hi`` and above bright.
    """
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[Any, Any] = {None: np.array([0.0, 0.0, 0.0, 0.0]), 0: np.zeros(4)}
    if len(table):
        ccol = f"{marker}_class"
        if bounds is not None and column in table.columns:
            from napari.utils.colormaps import ensure_colormap

            lo, hi = float(bounds[0]), float(bounds[1])
            vals = table[column].to_numpy(dtype=float)
            scaled = np.clip((vals - lo) / max(hi - lo, 1e-12), 0, 1)
            rgba = np.asarray(ensure_colormap("viridis").map(np.nan_to_num(scaled)))
        elif ccol in table.columns:
            order = np.clip(_class_order(table[ccol]), 0, len(CLASS_COLORS) - 1)
            rgba = CLASS_COLORS[order]
        else:
            rgba = np.tile(np.array([0.7, 0.7, 0.7, 1.0]), (len(table), 1))
        for lab, c in zip(table[key].to_numpy(), rgba, strict=True):
            colors[int(lab)] = c
    return DirectLabelColormap(color_dict=colors)


def result_layer_data(
    result: Any,
    *,
    source: str = "result",
    table: pd.DataFrame | None = None,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    metadata: dict | None = None,
) -> list[LayerData]:
    """Napari layer-data tuples for a :class:`~erquant.pipeline.FieldResult`.

    Parameters
    ----------
    result : FieldResult
        Has ``.nuclei`` and ``.cells`` (uint32 (Y, X) labels), ``.table``, ``.qc``.
    source : str
        Name of the quantified image: the layers are ``<source> nuclei`` and
        ``<source> cells`` (:func:`layer_names`), so several images' results coexist.
    table : DataFrame, optional
        Table to show instead of ``result.table`` (e.g. with ``roi_name``).
    scale, translate : sequence of float, optional
        (Y, X) scale / translate of the source image layer so the results overlay it.
    metadata : dict, optional
        Extra layer metadata.

    Returns
    -------
    list of (data, meta, layer_type)
        Nuclei Labels (``features``: the whole table, keyed by ``label``) and cell
        Labels coloured by ERα class (``features``: :data:`SHORT_COLUMNS`, so hovering
        shows a short status).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> lab = np.zeros((8, 8), np.uint32); lab[2:4, 2:4] = 1
    >>> tab = pd.DataFrame({"label": [1], "centroid_y": [2.5], "centroid_x": [2.5]})
    >>> res = SimpleNamespace(nuclei=lab, cells=lab, table=tab, qc={}, params=None)
    >>> [(m["name"], t) for _, m, t in result_layer_data(res, source="A01")]
    [('A01 nuclei', 'labels'), ('A01 cells', 'labels')]
    """
    table = result.table if table is None else table
    feats = labels_features(table)
    short = feats[[c for c in (*SHORT_COLUMNS, "index") if c in feats.columns]].copy()
    geo: dict[str, Any] = {}
    if scale is not None:
        geo["scale"] = tuple(float(s) for s in scale)
    if translate is not None:
        geo["translate"] = tuple(float(t) for t in translate)
    meta = {"erquant_qc": dict(getattr(result, "qc", {}) or {}),
            "erquant_params": getattr(result, "params", None), "erquant_source": source,
            **(metadata or {})}
    names = layer_names(source)
    nuclei_meta = {"name": names["nuclei"], "features": feats, "metadata": dict(meta),
                   "opacity": 0.5, "contour": 1, **geo}
    cells_meta = {"name": names["cells"], "features": short, "metadata": dict(meta),
                  "colormap": class_colormap(table), "opacity": 0.45, **geo}
    return [
        (np.asarray(result.nuclei), nuclei_meta, "labels"),
        (np.asarray(result.cells), cells_meta, "labels"),
    ]


def stack_stride(max_label: int) -> int:
    """Label offset between planes of a result stack: a power of ten above every label of
    a plane, so label ``L`` of plane ``k`` reads ``k * stride + L`` in the stack.

    Examples
    --------
    >>> stack_stride(57), stack_stride(1234)
    (1000, 10000)
    """
    return max(1000, 10 ** len(str(max(int(max_label), 0))))


def stack_dtype(n_planes: int, stride: int) -> Any:
    return np.uint32 if n_planes * stride < 2**32 else np.uint64


def offset_labels(labels: Any, plane: int, stride: int, dtype: Any = np.uint32) -> Any:
    """Labels of *plane* shifted by ``plane * stride`` (background stays 0); NumPy or dask.

    Examples
    --------
    >>> offset_labels(np.array([[0, 3]]), 2, 1000).tolist()
    [[0, 2003]]
    """
    lab = labels.astype(dtype)
    return (lab + dtype(plane * stride)) * (lab > 0) if plane else lab


def stack_table(tables: dict[int, pd.DataFrame], stride: int,
                fields: Sequence[str] | None = None) -> pd.DataFrame:
    """One per-cell table for a stack: each plane's table with ``plane`` (flat index over
    the leading axes), ``field_name`` (when the planes are named, e.g. ``A01 s2``) and ``stack_label`` (the value
    of the cell in the label stacks, :func:`offset_labels`) in front.

    Examples
    --------
    >>> t = stack_table({0: pd.DataFrame({"label": [1]}), 2: pd.DataFrame({"label": [5]})}, 1000)
    >>> t[["plane", "label", "stack_label"]].values.tolist()
    [[0, 1, 1], [2, 5, 2005]]
    """
    parts = []
    for k in sorted(tables):
        t = tables[k].reset_index(drop=True).copy()
        t.insert(0, "plane", int(k))
        if fields is not None:
            t.insert(1, "field_name", str(fields[k]) if k < len(fields) else "")
        t["stack_label"] = (int(k) * stride + t["label"].astype("int64")).astype("int64")
        parts.append(t)
    if not parts:
        return pd.DataFrame({"plane": [], "label": [], "stack_label": []})
    return pd.concat(parts, ignore_index=True)


def stack_layer_data(nuclei: Any, cells: Any, table: pd.DataFrame, *, source: str,
                     scale: Sequence[float] | None = None,
                     translate: Sequence[float] | None = None,
                     metadata: dict | None = None, suffix: str = "") -> list[LayerData]:
    """Label-stack layer-data tuples (``<source> nuclei`` / ``<source> cells``, aligned with
    the image stack) whose ``features`` hold every plane's cells keyed by ``stack_label``
    (so hovering any plane shows that cell's row)."""
    geo: dict[str, Any] = {}
    if scale is not None:
        geo["scale"] = tuple(float(s) for s in scale)
    if translate is not None:
        geo["translate"] = tuple(float(t) for t in translate)
    feats = labels_features(table, key="stack_label") if len(table) else \
        pd.DataFrame({"index": pd.Series([], dtype="int64")})
    short = feats[[c for c in ("plane", *SHORT_COLUMNS, "index") if c in feats.columns]].copy()
    meta = {"erquant_source": source, "erquant_stack": True, **(metadata or {})}
    names = {k: v + suffix for k, v in layer_names(source).items()}
    return [
        (nuclei, {"name": names["nuclei"], "features": feats, "metadata": dict(meta),
                  "opacity": 0.5, "contour": 1, **geo}, "labels"),
        (cells, {"name": names["cells"], "features": short, "metadata": dict(meta),
                 "colormap": class_colormap(table, key="stack_label"), "opacity": 0.45,
                 **geo}, "labels"),
    ]


#: meta keys re-applied when a layer is updated in place (display settings the user may
#: have changed, such as opacity, contour or visibility, are left alone)
_UPDATE_KEYS = ("scale", "translate", "metadata", "features", "colormap")
#: meta keys that the ``add_*`` constructors do not take; set on the new layer instead
_POST_KEYS = ("contour", "colormap")


def add_or_update_layers(viewer: Any, layer_data: Sequence[LayerData], *,
                         keep_data: Sequence[str] = ()) -> list[Any]:
    """Add layer-data tuples to *viewer*, updating same-name same-type layers in place.

    Parameters
    ----------
    viewer : napari.Viewer
        Target viewer.
    layer_data : sequence of (data, meta, layer_type)
        As returned by :func:`result_layer_data`.
    keep_data : sequence of str
        Names of existing layers whose data is kept (only features etc. updated), e.g.
        the nuclei a user corrected before re-measuring.

    Returns
    -------
    list of napari.layers.Layer
        The added or updated layers, in input order.

    Examples
    --------
    >>> import napari, numpy as np  # doctest: +SKIP
    >>> v = napari.Viewer(show=False)  # doctest: +SKIP
    >>> tup = [(np.zeros((4, 4), np.uint32), {"name": "a"}, "labels")]  # doctest: +SKIP
    >>> add_or_update_layers(v, tup); add_or_update_layers(v, tup); len(v.layers)  # doctest: +SKIP
    1
    """
    out = []
    for data, meta, ltype in layer_data:
        name = meta.get("name")
        existing = next((lay for lay in viewer.layers if lay.name == name), None)
        if existing is not None and type(existing).__name__.lower() == ltype:
            if name not in keep_data:
                existing.data = data
            for key in _UPDATE_KEYS:
                if key in meta:
                    setattr(existing, key, meta[key])
            out.append(existing)
        else:
            kwargs = {k: v for k, v in meta.items() if k not in _POST_KEYS}
            layer = getattr(viewer, f"add_{ltype}")(data, **kwargs)
            for key in _POST_KEYS:
                if key in meta:
                    setattr(layer, key, meta[key])
            out.append(layer)
    return out


def save_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the per-cell table to CSV (``.csv``) or Parquet (``.parquet`` / ``.pq``).

    Parameters
    ----------
    table : pandas.DataFrame
        Per-cell table.
    path : str or Path
        Output file; the suffix picks the format (anything else → CSV with ``.csv`` added).

    Returns
    -------
    Path
        The file written.

    Examples
    --------
    >>> import pandas as pd
    >>> save_table(pd.DataFrame({"label": [1]}), "/tmp/cells.csv").name
    'cells.csv'
    """
    path = Path(path)
    table = table.drop(columns=["index"], errors="ignore")
    if path.suffix.lower() in (".parquet", ".pq"):
        table.to_parquet(path, index=False)
    else:
        if path.suffix.lower() != ".csv":
            path = path.with_name(path.name + ".csv")
        table.to_csv(path, index=False)
    return path


def results_metadata(result: Any, *, source: str, source_path: str | None = None,
                     roi_names: Sequence[str] = (), marker: str = "er") -> dict[str, Any]:
    """What a saved table needs to be understood later: source, parameters, thresholds,
    QC, field scores and the erquant version."""
    import erquant

    params = getattr(result, "params", None)
    info = dict(getattr(result, "info", {}) or {})
    bounds = result.table.attrs.get(f"{marker}_class_bounds")
    from erquant.io.meta import jsonable

    return jsonable({
        "source": source,
        "source_path": source_path,
        "erquant_version": erquant.__version__,
        "napari_erquant_version": __import__("napari_erquant").__version__,
        "parameters": params.to_dict() if hasattr(params, "to_dict") else params,
        "segmenter": info.get("method"),
        "thresholds": {"nuclei": info.get("threshold"),
                       f"{marker}_class_bounds": list(bounds) if bounds is not None else None},
        "diameter_px": info.get("diameter"),
        "downsample": info.get("downsample"),
        "remeasured": bool(info.get("remeasured", False)),
        "backend": info.get("backend"),
        "qc": dict(getattr(result, "qc", {}) or {}),
        "scores": dict(getattr(result, "scores", {}) or {}),
        "rois": list(roi_names),
    })


def export_results(path: str | Path, table: pd.DataFrame, summary: pd.DataFrame | None,
                   metadata: dict[str, Any]) -> dict[str, Path]:
    """Write the cell table (CSV / Parquet by suffix), the per-ROI summary next to it
    (``<stem>_summary.csv``) and a metadata sidecar (``<stem>.json``).

    Examples
    --------
    >>> import pandas as pd, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> out = export_results(os.path.join(d, "cells.csv"), pd.DataFrame({"label": [1]}),
    ...                      pd.DataFrame({"roi_name": ["whole field"]}), {"source": "x"})
    >>> sorted(p.name for p in out.values())
    ['cells.csv', 'cells.json', 'cells_summary.csv']
    """
    import json

    from erquant.io.meta import jsonable

    cells = save_table(table, path)
    out = {"cells": cells}
    if summary is not None:
        out["summary"] = cells.with_name(f"{cells.stem}_summary.csv")
        summary.to_csv(out["summary"], index=False)
    out["metadata"] = cells.with_suffix(".json")
    meta = {**metadata, "files": {k: v.name for k, v in out.items()}}
    out["metadata"].write_text(json.dumps(jsonable(meta), indent=1))
    return out
