"""Regions of interest as GeoJSON, in pixel coordinates (the file ``erquant run --roi``
reads and the napari plugin writes).

Format: a GeoJSON ``FeatureCollection``; each feature a ``Polygon`` (outer ring only;
holes are ignored) or ``MultiPolygon`` whose coordinates are ``[x, y]`` pixel
positions (x = column, y = row, as in QuPath's and GeoJSON's x-first order), and
``properties``:

- ``name`` — the ROI's name (appears in every table as ``roi_name``);
- optionally ``plate``, ``well``, ``field``, ``timepoint``, ``image`` — the ROI applies
  only to fields that match all of the given ones (``image``: the file name of the
  field's first channel). A ROI without them applies to every field.

Examples
--------
>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "rois.geojson")
>>> _ = write_roi_geojson(p, [Roi("tumour", [(10, 10), (10, 50), (60, 50)], well="A01")])
>>> rois = read_roi_geojson(p)
>>> rois[0].name, rois[0].yx[1].tolist(), len(rois[0].yx), rois[0].applies_to({"well": "B02"})
('tumour', [10.0, 50.0], 3, False)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as _field
from pathlib import Path

import numpy as np

__all__ = ["Roi", "read_roi_geojson", "rois_for", "write_roi_geojson"]

_MATCH_KEYS = ("plate", "well", "field", "timepoint", "image")


@dataclass(frozen=True)
class Roi:
    """One polygon ROI: ``name``, vertices as (y, x) and the fields it applies to."""

    name: str
    vertices_yx: Sequence[tuple[float, float]]
    plate: str | None = None
    well: str | None = None
    field: int | None = None
    timepoint: int | None = None
    image: str | None = None
    properties: Mapping = _field(default_factory=dict)

    @property
    def yx(self) -> np.ndarray:
        return np.asarray(self.vertices_yx, dtype=float)

    def applies_to(self, keys: Mapping) -> bool:
        """True when every match key given on this ROI equals the field's."""
        for k in _MATCH_KEYS:
            mine = getattr(self, k)
            if mine is None:
                continue
            theirs = keys.get(k)
            if k == "image":
                theirs = Path(str(theirs)).name if theirs is not None else None
            if k == "well" and theirs is not None:
                from erquant.io.plate import parse_well

                if parse_well(str(mine)) != parse_well(str(theirs)):
                    return False
                continue
            if theirs is None or str(mine) != str(theirs):
                return False
        return True


def read_roi_geojson(path: str | Path) -> list[Roi]:
    """Read ROIs from a GeoJSON file; ValueError naming the file on any problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: ROI file not found") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable GeoJSON file: {exc}") from exc
    feats = data.get("features") if isinstance(data, dict) else None
    if isinstance(data, dict) and data.get("type") == "Feature":
        feats = [data]
    if not isinstance(feats, list):
        raise ValueError(f"{path}: expected a GeoJSON FeatureCollection with 'features'")
    out: list[Roi] = []
    for i, f in enumerate(feats):
        geom = (f or {}).get("geometry") or {}
        props = dict((f or {}).get("properties") or {})
        kind, coords = geom.get("type"), geom.get("coordinates")
        if kind == "Polygon":
            rings = [coords[0]] if coords else []
        elif kind == "MultiPolygon":
            rings = [poly[0] for poly in coords or [] if poly]
        else:
            raise ValueError(f"{path}: feature {i} is a {kind!r}; only Polygon and "
                             "MultiPolygon ROIs are supported")
        cls = props.get("classification")  # QuPath's export puts the class here
        name = str(props.get("name") or (cls.get("name") if isinstance(cls, dict) else None)
                   or f"roi{i + 1}")
        for ring in rings:
            xy = np.asarray(ring, dtype=float)
            if xy.ndim == 2 and len(xy) > 3 and np.array_equal(xy[0], xy[-1]):
                xy = xy[:-1]  # GeoJSON rings repeat the first vertex at the end
            if xy.ndim != 2 or xy.shape[1] < 2 or len(xy) < 3:
                raise ValueError(f"{path}: feature {i} ({name}) needs ≥ 3 [x, y] vertices")
            out.append(Roi(
                name, [(float(y), float(x)) for x, y in xy[:, :2]],
                plate=None if props.get("plate") is None else str(props["plate"]),
                well=None if props.get("well") is None else str(props["well"]),
                field=None if props.get("field") is None else int(props["field"]),
                timepoint=None if props.get("timepoint") is None else int(props["timepoint"]),
                image=None if props.get("image") is None else Path(str(props["image"])).name,
                properties=props))
    return out


def write_roi_geojson(path: str | Path, rois: Sequence[Roi]) -> Path:
    """Write ROIs as a GeoJSON FeatureCollection (pixel coordinates, [x, y])."""
    feats = []
    for r in rois:
        ring = [[float(x), float(y)] for y, x in r.vertices_yx]
        if ring and ring[0] != ring[-1]:
            ring.append(ring[0])
        props = {**dict(r.properties), "name": r.name}
        props.update({k: getattr(r, k) for k in _MATCH_KEYS if getattr(r, k) is not None})
        feats.append({"type": "Feature", "properties": props,
                      "geometry": {"type": "Polygon", "coordinates": [ring]}})
    path = Path(path)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}, indent=1))
    return path


def rois_for(rois: Sequence[Roi], keys: Mapping) -> list[Roi]:
    """The ROIs that apply to a field with these keys (plate, well, field, …)."""
    return [r for r in rois if r.applies_to(keys)]
