"""Parameters of the quantification: frozen dataclasses with documented defaults.

One :class:`Params` object describes a whole run (segmentation, cells,
measurement, classification, QC). It round-trips through plain dicts and TOML
files, so a batch run can record exactly what it used and the napari plugin
can save settings for batch reuse.

Examples
--------
>>> p = Params.from_dict({"segment": {"diameter": 30}})
>>> p.segment.diameter, p.segment.threshold
(30, 'otsu')
>>> Params.from_dict(p.to_dict()) == p
True
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SegmentParams:
    """Nuclei segmentation (see :func:`erquant.segment.segment_nuclei`)."""

    method: str = "auto"  #: auto (learned, where installed) | learned | classical
    diameter: float | None = None  #: nucleus diameter in px; None = estimate per image
    threshold: str = "otsu"  #: otsu | li | triangle | manual
    threshold_value: float | None = None  #: raw intensity, for threshold="manual"
    min_area_fraction: float = 0.12  #: smaller objects (fraction of a nucleus) are debris
    seed_distance: float = 0.3  #: seed window / local radius (larger = fewer splits)
    background_factor: float = 4.0  #: background window in diameters (0 = none)
    smoothing: float = 0.08  #: Gaussian sigma / diameter
    log_threshold: bool = True  #: threshold log intensities (robust to bright debris)
    local_contrast: float = 0.4  #: keep pixels above this fraction of the local peak
    contrast_window: float = 0.6  #: local-peak window / diameter
    intensity_weight: float = 0.3  #: weight of intensity vs. shape in the seed map
    seed_contrast: float = 0.55  #: seeds from pixels above this fraction of the local peak
    seed_hole_fraction: float = 0.08  #: fill seed-mask holes up to this fraction of a nucleus
    rim_fraction: float = 0.1  #: re-admit dim rims within this fraction of a diameter
    seed_smoothing: float = 0.06  #: extra blur (× diameter) before the seed mask
    min_snr: float = 4.0  #: objects' mean contrast must exceed this × pixel noise sigma
    valley_strength: float = 0.07  #: cut line-like dark seams inside clusters (0 = off)
    downsample: float = 0.0  #: segment an N× smaller copy; 0 = auto (~10 px per diameter), 1 = off
    fill_holes: bool = True


@dataclass(frozen=True)
class CellParams:
    """Cells grown from nuclei (see :func:`erquant.segment.segment_cells`)."""

    max_distance: float | None = None  #: px; None = half the median nucleus diameter
    use_marker: bool = False  #: bound cells by the first marker channel's signal


@dataclass(frozen=True)
class MeasureParams:
    """Per-cell measurement (see :func:`erquant.measure.measure_cells`)."""

    background: str | float | None = "local"  #: local | field | number | None
    background_margin: int = 3  #: px kept free around cells for the background
    tile: int | None = 128  #: tile size of the local background map


@dataclass(frozen=True)
class ClassifyParams:
    """ER-positive / intensity classes (see :func:`erquant.classify.classify_cells`)."""

    compartment: str = "nucleus"  #: nucleus | cell | cyto
    threshold: float | None = None  #: absolute positivity threshold (bg-corrected)
    positive_fraction: float = 0.5  #: with a vehicle reference: positive ≥ this × its median
    class_bounds: tuple[float, float, float] | None = None  #: absolute 1+/2+/3+ bounds


@dataclass(frozen=True)
class QCParams:
    """Field QC (see :func:`erquant.qc.field_qc`)."""

    saturation_value: float | None = None  #: default: the dtype maximum of integer images
    saturation_limit: float = 0.01  #: flag "saturated" above this fraction
    focus_threshold: float = 0.2  #: flag "out_of_focus" below this focus score


@dataclass(frozen=True)
class Params:
    """All parameters of one quantification run."""

    nuclei_name: str = "nuclei"  #: channel name of the nuclear stain in tables
    segment: SegmentParams = field(default_factory=SegmentParams)
    cells: CellParams = field(default_factory=CellParams)
    measure: MeasureParams = field(default_factory=MeasureParams)
    classify: ClassifyParams = field(default_factory=ClassifyParams)
    qc: QCParams = field(default_factory=QCParams)

    # ------------------------------------------------------------ conversion
    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (None values kept)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Params:
        """Build from a (partial) nested dict; unknown keys raise a ValueError."""
        return _from_dict(cls, data or {}, "params")

    def replace(self, **changes: Any) -> Params:
        """Copy with changes; dotted keys reach into sections: ``replace(**{"segment.diameter": 20})``."""
        data = self.to_dict()
        for key, value in changes.items():
            *path, last = key.split(".")
            node = data
            for p in path:
                if p not in node or not isinstance(node[p], dict):
                    raise ValueError(f"unknown parameter section {p!r} in {key!r}")
                node = node[p]
            if last not in node:
                raise ValueError(f"unknown parameter {key!r}")
            node[last] = value
        return Params.from_dict(data)

    def to_toml(self, path: str | Path | None = None) -> str:
        """TOML text of the parameters (None written as ``"none"``); written to ``path`` if given."""
        text = _to_toml(self.to_dict())
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_toml(cls, path: str | Path) -> Params:
        """Read parameters from a TOML file (missing keys take their defaults)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: not a valid TOML parameter file: {exc}") from exc
        return cls.from_dict(data)


def _from_dict(cls, data: dict[str, Any], where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table/dict, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown parameter(s) in {where}: {', '.join(sorted(unknown))}; "
                         f"known: {', '.join(known)}")
    kwargs = {}
    for name, value in data.items():
        default = known[name].default_factory() if known[name].default_factory is not \
            dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _from_dict(type(default), value, f"{where}.{name}")
        elif isinstance(value, list):
            kwargs[name] = tuple(value)
        elif isinstance(value, str) and value.lower() == NONE:
            kwargs[name] = None  # TOML has no null: None is written as "none"
        else:
            kwargs[name] = value
    return cls(**kwargs)


NONE = "none"


def _toml_value(v: Any) -> str:
    if v is None:
        return f'"{NONE}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _to_toml(data: dict[str, Any]) -> str:
    top = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    out = ["# erquant parameters", *top]
    for k, v in data.items():
        if isinstance(v, dict):
            out += ["", f"[{k}]"]
            out += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(out) + "\n"
