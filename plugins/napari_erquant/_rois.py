"""ROIs: napari Shapes ↔ polygons in image pixels ↔ GeoJSON (:mod:`erquant.io.roi`).

No Qt here. A Shapes layer's ``name`` feature names each ROI (``roi1``, ``roi2``, …
filled in where empty or repeated); the GeoJSON is the same file ``erquant run --roi``
reads: [x, y] pixel coordinates of the image, ``name`` and, when the image came from a
file, ``image`` (its file name, which restricts the ROI to that field in a batch run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

#: text shown on the canvas next to each ROI
ROI_TEXT = {"string": "{name}", "color": "yellow", "size": 10, "anchor": "upper_left"}


def _geo(layer: Any) -> tuple[np.ndarray, np.ndarray]:
    """(Y, X) scale and translate of a layer (identity when it has none)."""
    if layer is None:
        return np.ones(2), np.zeros(2)
    return np.asarray(layer.scale[-2:], float), np.asarray(layer.translate[-2:], float)


def shapes_to_polygons(shapes: Any, image: Any = None) -> list[np.ndarray]:
    """ROI polygons ((N, 2) (y, x) vertices in *image* pixel coordinates) of a Shapes layer.

    Rectangles and polygons keep their vertices; ellipses become 64-gons; lines and
    paths (no area) are skipped (see :func:`roi_names`, which skips the same ones).
    Scale and translate of both layers are undone (rotations are not supported).

    Examples
    --------
    >>> import numpy as np
    >>> from napari.layers import Shapes
    >>> rect = Shapes([np.array([[0, 0], [0, 10], [10, 10], [10, 0]])], shape_type="rectangle")
    >>> shapes_to_polygons(rect)[0].shape
    (4, 2)
    """
    polys = []
    s_scale, s_trans = _geo(shapes)
    i_scale, i_trans = _geo(image)
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)[:, None]
    for verts, kind in zip(shapes.data, shapes.shape_type, strict=False):
        v = np.asarray(verts, dtype=float)[:, -2:]
        if kind in ("line", "path") or len(v) < 3:
            continue
        if kind == "ellipse":
            c, u, w = v.mean(0), (v[1] - v[0]) / 2, (v[3] - v[0]) / 2
            v = c + np.cos(t) * u + np.sin(t) * w
        world = v * s_scale + s_trans
        polys.append((world - i_trans) / i_scale)
    return polys


def _area_shapes(shapes: Any) -> list[int]:
    return [i for i, (verts, kind) in enumerate(zip(shapes.data, shapes.shape_type, strict=False))
            if kind not in ("line", "path") and len(verts) >= 3]


def ensure_roi_names(shapes: Any) -> list[str]:
    """Give every shape a unique non-empty ``name`` feature (``roi<k>``); return all names.

    Examples
    --------
    >>> import numpy as np
    >>> from napari.layers import Shapes
    >>> sq = np.array([[0, 0], [0, 4], [4, 4], [4, 0]])
    >>> lay = Shapes([sq, sq + 5, sq + 10], features={"name": ["tumour", "", "tumour"]})
    >>> ensure_roi_names(lay)
    ['tumour', 'roi2', 'tumour 2']
    """
    n = len(shapes.data)
    feats = shapes.features
    old = feats["name"].tolist() if "name" in feats.columns else [None] * n
    names: list[str] = []
    for i, v in enumerate(old):
        name = "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()
        if not name:
            name = f"roi{i + 1}"
        base, k = name, 2
        while name in names:
            name, k = f"{base} {k}", k + 1
        names.append(name)
    if names != old:
        new = feats.copy() if len(feats) == n else pd.DataFrame(index=range(n))
        new["name"] = names
        shapes.features = new
    shapes.feature_defaults = {**_defaults(shapes), "name": ""}
    return names


def _defaults(shapes: Any) -> dict:
    fd = shapes.feature_defaults
    return {c: fd[c].iloc[0] for c in fd.columns} if len(fd) else {}


def roi_names(shapes: Any) -> list[str]:
    """Names of the area ROIs of a Shapes layer, in :func:`shapes_to_polygons` order."""
    names = ensure_roi_names(shapes)
    return [names[i] for i in _area_shapes(shapes)]


def shapes_to_rois(shapes: Any, image: Any = None, *, image_name: str | None = None,
                   source: str | None = None) -> list:
    """:class:`erquant.io.roi.Roi` objects (pixel (y, x) of *image*) of a Shapes layer."""
    from erquant.io.roi import Roi

    props = {"source": source} if source else {}
    return [Roi(name, [tuple(map(float, p)) for p in poly], image=image_name,
                properties=props)
            for name, poly in zip(roi_names(shapes), shapes_to_polygons(shapes, image),
                                  strict=True)]


def save_rois(path: Any, shapes: Any, image: Any = None, *, image_name: str | None = None,
              source: str | None = None):
    """Write a Shapes layer's ROIs as GeoJSON (:func:`erquant.io.roi.write_roi_geojson`)."""
    from erquant.io.roi import write_roi_geojson

    rois = shapes_to_rois(shapes, image, image_name=image_name, source=source)
    if not rois:
        raise ValueError(f"layer {shapes.name!r} has no polygon, rectangle or ellipse to save")
    return write_roi_geojson(path, rois)


def rois_layer_data(rois: Sequence, image: Any = None, name: str = "ROIs") -> tuple:
    """Layer-data tuple of a Shapes layer (polygons, ``name`` feature) for *rois*, placed on
    *image* (its scale / translate)."""
    scale, trans = _geo(image)
    data = []
    for r in rois:
        v = np.asarray(r.vertices_yx, float)
        if len(v) > 3 and np.allclose(v[0], v[-1]):  # GeoJSON rings repeat the first vertex
            v = v[:-1]
        data.append(v * scale + trans)
    meta = {"name": name, "shape_type": "polygon", "features": {"name": [r.name for r in rois]},
            "edge_color": "yellow", "face_color": "transparent", "edge_width": 2,
            "text": ROI_TEXT}
    return data, meta, "shapes"


def foreign_rois(rois: Any, image_name: str | None = None,
                 source: str | None = None) -> dict[str, str]:
    """ROIs that name another image than the current one: ``{roi name: its image}``.

    A ROI's ``image`` (file name) is compared with *image_name*; a ROI without one but with
    a ``source`` property (saved from an image that had no file) with *source*.

    Examples
    --------
    >>> from erquant.io.roi import Roi
    >>> rois = [Roi("a", [(0, 0)], image="A01.tif"), Roi("b", [(0, 0)], image="B02.tif")]
    >>> foreign_rois(rois, image_name="A01.tif")
    {'b': 'B02.tif'}
    """
    out = {}
    for r in rois:
        theirs = getattr(r, "image", None)
        if theirs and image_name:
            if str(theirs) != str(image_name):
                out[r.name] = str(theirs)
            continue
        src = (getattr(r, "properties", None) or {}).get("source")
        if src and source and str(src) != str(source):
            out[r.name] = str(src)
        elif theirs and not image_name and source and str(theirs) != str(source):
            out[r.name] = str(theirs)
    return out
