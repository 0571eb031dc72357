"""Illumination (flat-field) correction estimated from the nuclei themselves.

Vignetting scales every channel by the same smooth gain ``g(y, x)``. The
nuclear-stain content of a nucleus (DNA) does not depend on where the nucleus
lies in the field, so across many nuclei the background-corrected nuclear
intensity, divided by its median, follows ``g`` times position-independent
scatter. :func:`fit_illumination` fits a quadratic surface to it (robust
least squares over all nuclei of one or many fields of a plate) and
:meth:`Illumination.correct_table` divides the background-corrected columns of
per-cell tables by the gain at each cell's centroid (equivalent, for a smooth
gain, to dividing the background-corrected pixels).

Examples
--------
>>> import numpy as np, pandas as pd
>>> rng = np.random.default_rng(0)
>>> y, x = rng.uniform(0, 512, 2000), rng.uniform(0, 512, 2000)
>>> g = 1 - 0.3 * ((y - 256) ** 2 + (x - 256) ** 2) / (2 * 256 ** 2)
>>> t = pd.DataFrame({"centroid_y": y, "centroid_x": x,
...                   "nucleus_nuclei_mean_bgcorr": 1000 * g * rng.lognormal(0, 0.2, 2000)})
>>> ill = fit_illumination([t], (512, 512))
>>> bool(abs(ill.gain_at(np.array([0.0]), np.array([0.0]))[0] - 0.7) < 0.05)
True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

MODELS = ("radial", "quadratic")


def _design(y: np.ndarray, x: np.ndarray, shape: tuple[int, int], model: str = "radial"):
    """Design matrix: ``radial`` = c0 + c1·y + c2·x + c3·(y² + x²) (isotropic vignetting
    with a free centre, 4 terms); ``quadratic`` = full 2-D quadratic (6 terms)."""
    s = max(shape[0] - 1, shape[1] - 1, 1)  # one scale for both axes keeps "radial" round
    yy = (np.asarray(y, float) - (shape[0] - 1) / 2) / s
    xx = (np.asarray(x, float) - (shape[1] - 1) / 2) / s
    one = np.ones_like(yy)
    if model == "radial":
        return np.stack([one, yy, xx, yy * yy + xx * xx], axis=1)
    if model == "quadratic":
        return np.stack([one, yy, xx, yy * yy, xx * xx, yy * xx], axis=1)
    raise ValueError(f"unknown illumination model {model!r}; choose one of {', '.join(MODELS)}")


@dataclass(frozen=True)
class Illumination:
    """A quadratic gain surface over a field of ``shape``, 1.0 at its brightest point."""

    coef: tuple[float, ...]
    shape: tuple[int, int]
    n_cells: int = 0
    model: str = "radial"

    def _raw(self, y, x):
        return _design(y, x, self.shape, self.model) @ np.asarray(self.coef)

    @property
    def _peak(self) -> float:
        yy, xx = np.mgrid[0:self.shape[0]:64j, 0:self.shape[1]:64j]
        return float(self._raw(yy.ravel() * 1, xx.ravel()).max())

    def gain_at(self, y, x) -> np.ndarray:
        """Gain at pixel coordinates (arrays)."""
        return np.clip(self._raw(y, x) / self._peak, 0.05, None)

    def gain_map(self) -> np.ndarray:
        """(Y, X) float32 gain image (pass to ``measure_cells(flatfield=...)``)."""
        yy, xx = np.mgrid[0:self.shape[0], 0:self.shape[1]]
        return self.gain_at(yy.ravel(), xx.ravel()).reshape(self.shape).astype(np.float32)

    def correct_table(self, table: pd.DataFrame, channels: Sequence[str]) -> pd.DataFrame:
        """Copy of ``table`` with every ``*_{channel}_mean_bgcorr`` column divided by the gain."""
        out = table.copy()
        if not len(out):
            return out
        g = self.gain_at(out["centroid_y"].to_numpy(), out["centroid_x"].to_numpy())
        for c in channels:
            for comp in ("nucleus", "cyto", "cell"):
                col = f"{comp}_{c}_mean_bgcorr"
                if col in out:
                    out[col] = out[col].to_numpy() / g
        out["flatfield_gain"] = g
        return out


def fit_illumination(tables: Iterable[pd.DataFrame], shape: tuple[int, int], *,
                     column: str = "nucleus_nuclei_mean_bgcorr", min_cells: int = 50,
                     iterations: int = 3, model: str = "radial") -> Illumination:
    """Fit the vignetting gain from per-cell tables of fields of one optical setup.

    Parameters
    ----------
    tables : iterable of DataFrames
        Per-cell tables (``centroid_y``, ``centroid_x`` and ``column``), one per
        field; each field's values are normalised by their own median first, so
        fields of different brightness can be pooled.
    shape : (Y, X)
        Field shape.
    column : str
        Background-corrected nuclear-stain intensity column.
    min_cells : int
        Fewer usable cells raise a ValueError (the fit would be noise).
    model : {"radial", "quadratic"}
        ``radial`` (default): isotropic quadratic fall-off around a free centre,
        4 terms, the usual shape of vignetting and the stabler fit; ``quadratic``:
        any 2-D quadratic (6 terms) for tilted or elliptical illumination.
    """
    ys, xs, vs = [], [], []
    for t in tables:
        if not len(t) or column not in t:
            continue
        v = t[column].to_numpy(float)
        ok = np.isfinite(v) & (v > 0)
        if ok.sum() < 5:
            continue
        ys.append(t["centroid_y"].to_numpy(float)[ok])
        xs.append(t["centroid_x"].to_numpy(float)[ok])
        vs.append(v[ok] / np.median(v[ok]))
    if not vs or sum(map(len, vs)) < min_cells:
        n = sum(map(len, vs)) if vs else 0
        raise ValueError(f"need at least {min_cells} cells with a positive '{column}' to fit "
                         f"the illumination, got {n}")
    y, x, v = np.concatenate(ys), np.concatenate(xs), np.concatenate(vs)
    A = _design(y, x, shape, model)
    keep = np.ones(len(v), bool)
    coef = None
    for _ in range(iterations):  # robust: refit without > 3 MAD outliers (in log space)
        coef, *_ = np.linalg.lstsq(A[keep], v[keep], rcond=None)
        fit = A @ coef
        res = np.log(np.clip(v, 1e-6, None)) - np.log(np.clip(fit, 1e-6, None))
        mad = np.median(np.abs(res[keep] - np.median(res[keep]))) * 1.4826 + 1e-12
        keep = np.abs(res - np.median(res[keep])) < 3 * mad
    return Illumination(tuple(float(c) for c in coef), tuple(int(s) for s in shape),
                        int(keep.sum()), model)
