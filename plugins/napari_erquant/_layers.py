"""Turn an :class:`erquant.pipeline.FieldResult` into napari layers (no Qt here).

* :func:`result_layer_data` - pure: result → layer-data tuples (nuclei / cells as
  Labels with a ``features`` table keyed by ``label``, centroids as Points).
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

#: names of the result layers (distinct from the ``nuclei`` / ``er`` image layers)
NUCLEI_LAYER = "nuclei labels"
CELLS_LAYER = "cell labels"
POINTS_LAYER = "ERα per cell"

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


def labels_features(table: pd.DataFrame) -> pd.DataFrame:
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
    if "label" not in table.columns:
        raise ValueError("the result table has no 'label' column")
    feats = table.reset_index(drop=True).copy()
    feats["index"] = feats["label"].to_numpy()
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


def result_layer_data(
    result: Any,
    *,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
) -> list[LayerData]:
    """Napari layer-data tuples for a :class:`~erquant.pipeline.FieldResult`.

    Parameters
    ----------
    result : FieldResult
        Has ``.nuclei`` and ``.cells`` (uint32 (Y, X) labels), ``.table`` (one row per
        cell with ``label``, ``centroid_y``, ``centroid_x``...), ``.qc`` and ``.params``.
    scale, translate : sequence of float, optional
        (Y, X) scale / translate of the source image layer so the results overlay it.

    Returns
    -------
    list of (data, meta, layer_type)
        ``[(nuclei, meta, "labels"), (cells, meta, "labels"), (centroids, meta, "points")]``
        named :data:`NUCLEI_LAYER`, :data:`CELLS_LAYER`, :data:`POINTS_LAYER`; both
        Labels carry ``features`` keyed by ``label`` (see :func:`labels_features`).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from types import SimpleNamespace
    >>> lab = np.zeros((8, 8), np.uint32); lab[2:4, 2:4] = 1
    >>> tab = pd.DataFrame({"label": [1], "centroid_y": [2.5], "centroid_x": [2.5]})
    >>> res = SimpleNamespace(nuclei=lab, cells=lab, table=tab, qc={}, params=None)
    >>> [(m["name"], t) for _, m, t in result_layer_data(res)]
    [('nuclei labels', 'labels'), ('cell labels', 'labels'), ('ERα per cell', 'points')]
    """
    table = result.table
    feats = labels_features(table)
    geo: dict[str, Any] = {}
    if scale is not None:
        geo["scale"] = tuple(float(s) for s in scale)
    if translate is not None:
        geo["translate"] = tuple(float(t) for t in translate)
    metadata = {"erquant_qc": dict(getattr(result, "qc", {}) or {}),
                "erquant_params": getattr(result, "params", None)}
    nuclei_meta = {"name": NUCLEI_LAYER, "features": feats, "metadata": metadata,
                   "opacity": 0.5, **geo}
    cells_meta = {"name": CELLS_LAYER, "features": feats.copy(), "metadata": metadata,
                  "contour": 1, "opacity": 0.8, **geo}  # contour: set after creation
    if len(table):
        centroids = table[["centroid_y", "centroid_x"]].to_numpy(dtype=float)
    else:
        centroids = np.zeros((0, 2))
    if "nucleus_area_px" in table.columns and len(table):
        size = float(np.clip(np.sqrt(np.nanmedian(table["nucleus_area_px"]) / np.pi), 2, 50))
    else:
        size = 5.0
    points_meta = {
        "name": POINTS_LAYER,
        "features": table.reset_index(drop=True),
        # napari refuses an empty (0, 4) colour array: give one colour for no points
        "face_color": point_colors(table) if len(table) else CLASS_COLORS[0],
        "border_width": 0,
        "size": size,
        **geo,
    }
    return [
        (np.asarray(result.nuclei), nuclei_meta, "labels"),
        (np.asarray(result.cells), cells_meta, "labels"),
        (centroids, points_meta, "points"),
    ]


#: meta keys re-applied when a layer is updated in place (display settings the user may
#: have changed, such as opacity, contour or visibility, are left alone)
_UPDATE_KEYS = ("scale", "translate", "metadata", "features", "face_color", "size")
#: meta keys that the ``add_*`` constructors do not take; set on the new layer instead
_POST_KEYS = ("contour",)


def add_or_update_layers(viewer: Any, layer_data: Sequence[LayerData]) -> list[Any]:
    """Add layer-data tuples to *viewer*, updating same-name same-type layers in place.

    Parameters
    ----------
    viewer : napari.Viewer
        Target viewer.
    layer_data : sequence of (data, meta, layer_type)
        As returned by :func:`result_layer_data`.

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
