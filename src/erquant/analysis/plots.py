"""Figures of the dose-response report (matplotlib, Agg backend).

Every function returns a :class:`matplotlib.figure.Figure`; :func:`save`
writes it as PNG and SVG.  Compounds keep one colour across all figures
(:func:`compound_colours`).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # noqa: E402 - before pyplot; the report never needs a display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from erquant.analysis.fit import Fit
from erquant.analysis.normalise import COUNT_READOUT, group_keys

__all__ = ["READOUT_LABELS", "compound_colours", "plate_heatmaps", "plot_dose_response",
           "png_bytes", "safe_name", "save", "thumbnail_strip"]

READOUT_LABELS = {
    "er_mean": "nuclear ERα, mean",
    "er_median": "nuclear ERα, median",
    "pct_er_positive": "ERα-positive nuclei",
    "n_nuclei": "nuclei per well",
}


def safe_name(*parts) -> str:
    """File-name-safe join of ``parts``.

    Examples
    --------
    >>> safe_name("SYN01", 24.0, "fulvestrant (1 µM)")
    'SYN01_24h_fulvestrant_1_M'
    """
    out = []
    for p in parts:
        if isinstance(p, float):
            p = f"{p:g}h"
        out.append(re.sub(r"[^A-Za-z0-9.-]+", "_", str(p)).strip("_"))
    return "_".join(o for o in out if o)


def compound_colours(compounds: Sequence[str]) -> dict[str, tuple]:
    """One colour per compound (sorted names → tab10 / tab20).

    Examples
    --------
    >>> sorted(compound_colours(["b", "a"]))
    ['a', 'b']
    """
    names = sorted({str(c) for c in compounds})
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def save(fig: Figure, stem: Path, *, dpi: int = 110) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg``; return both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    fig.savefig(paths[0], dpi=dpi)
    fig.savefig(paths[1])
    return paths


def png_bytes(fig: Figure, *, dpi: int = 90) -> bytes:
    """The figure as PNG bytes (for embedding in the HTML report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _fmt_nm(x: float) -> str:
    if not np.isfinite(x):
        return "–"
    return f"{x:.3g}"


def y_label(readout: str, normalise: str) -> str:
    """Axis label of a normalised readout, with its unit."""
    base = READOUT_LABELS.get(readout, readout)
    if normalise == "reference" and readout != COUNT_READOUT:
        return f"{base} (% remaining; vehicle 100, reference 0)"
    return f"{base} (% of vehicle)"


def _panel_keys(norm: pd.DataFrame) -> list[tuple]:
    keys = group_keys(norm)
    if not keys:
        return [()]
    g = norm.loc[norm["role"].notna(), keys].drop_duplicates()
    return [tuple(r) for r in g.sort_values(keys).itertuples(index=False)]


def _panel_title(keys: list[str], g: tuple) -> str:
    parts = []
    for k, v in zip(keys, g):
        if isinstance(v, float) and math.isnan(v):
            continue
        parts.append(f"{v:g} h" if k == "time_h" else str(v))
    return " · ".join(parts)


def plot_dose_response(
    norm: pd.DataFrame,
    fits: dict[tuple, Fit],
    readout: str,
    *,
    normalise: str = "vehicle",
    colours: dict | None = None,
) -> Figure:
    """Dose-response panels of one readout: one panel per plate × time point × cell line.

    Replicate wells are points, fitted curves lines, and the EC50 (DC50 / IC50)
    a marker on the curve with its confidence interval as a horizontal bar;
    compounds are overlaid.  The grey band is the vehicle mean ± SD.

    Parameters
    ----------
    norm : DataFrame
        Normalised wells (``<readout>_pct``, ``use``, ``role``, ``compound``,
        ``concentration_nM``).
    fits : dict
        ``(*group, compound, readout) → Fit`` (group = the plate / time_h /
        cell_line values present).
    readout : str
    normalise : {"vehicle", "reference"}
    colours : dict, optional
        ``compound → colour``.

    Returns
    -------
    Figure
    """
    keys = group_keys(norm)
    panels = _panel_keys(norm)
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.7 * nrow), squeeze=False,
                             layout="constrained")
    col = f"{readout}_pct"
    used = norm[norm["use"]]
    colours = colours or compound_colours(used["compound"].dropna().unique())
    pos = used.loc[used["concentration_nM"] > 0, "concentration_nM"]
    xlo, xhi = (float(pos.min()) / 3, float(pos.max()) * 3) if len(pos) else (0.1, 10.0)
    xs = np.geomspace(xlo, xhi, 200)
    for ax, g in zip(axes.ravel(), panels):
        sub = used
        for k, v in zip(keys, g):
            sub = sub[sub[k].isna()] if isinstance(v, float) and math.isnan(v) else sub[sub[k] == v]
        veh = pd.to_numeric(sub.loc[sub["role"] == "vehicle", col], errors="coerce").dropna()
        if len(veh):
            m, s = float(veh.mean()), float(veh.std(ddof=1)) if len(veh) > 1 else 0.0
            ax.axhspan(m - s, m + s, color="0.85", zorder=0, lw=0)
            ax.axhline(m, color="0.6", lw=0.8, ls="--", zorder=0)
        if normalise == "reference" and readout != COUNT_READOUT:
            ax.axhline(0.0, color="0.6", lw=0.8, ls=":", zorder=0)
        trt = sub[sub["role"].isin(["sample", "reference"]) & (sub["concentration_nM"] > 0)]
        for cpd, pts in trt.groupby("compound", sort=True):
            c = colours.get(str(cpd), "k")
            ax.scatter(pts["concentration_nM"], pts[col], s=16, color=c, alpha=0.75,
                       edgecolor="none", zorder=3)
            f = fits.get((*g, cpd, readout))
            label = str(cpd)
            if f is not None and f.model in ("LL.4", "LL.3"):
                ax.plot(xs, f.predict(xs), color=c, lw=1.6, zorder=2)
                if np.isfinite(f.ec50) and xlo <= f.ec50 <= xhi:
                    y50 = float(f.predict([f.ec50])[0])
                    lo, hi = f.ci_low, f.ci_high
                    if np.isfinite(lo) and np.isfinite(hi):
                        ax.plot([max(lo, xlo), min(hi, xhi)], [y50, y50], color=c, lw=3,
                                alpha=0.45, solid_capstyle="butt", zorder=4)
                    ax.plot([f.ec50], [y50], marker="D", ms=6, color=c, mec="k", mew=0.6,
                            zorder=5)
                name = "IC50" if readout == COUNT_READOUT else "DC50"
                label += f": {name} {_fmt_nm(f.ec50)} nM [{_fmt_nm(f.ci_low)}–{_fmt_nm(f.ci_high)}]"
            elif f is not None and f.model == "constant":
                ax.plot(xs, f.predict(xs), color=c, lw=1.0, ls="--", zorder=2)
                label += " (flat)"
            if f is not None and f.flag not in ("ok", "flat"):
                label += f" ⚑ {f.flag}"
            ax.plot([], [], color=c, marker="o", ms=4, lw=1.6, label=label)
        ax.set_xscale("log")
        ax.set_xlim(xlo, xhi)
        ax.set_xlabel("concentration (nM, log scale)")
        ax.set_ylabel(y_label(readout, normalise))
        ax.set_title(_panel_title(keys, g), fontsize=10)
        ax.grid(True, which="major", color="0.92", lw=0.6)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower left", frameon=True, framealpha=0.85)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{READOUT_LABELS.get(readout, readout)} — dose response "
                 "(points: wells; ◆ and bar: EC50 with 95 % CI; band: vehicle ± SD)", fontsize=10)
    return fig


def _plate_shape(rows: pd.Series, cols: pd.Series) -> tuple[int, int]:
    r, c = int(rows.max()), int(cols.max())
    for nr, nc in ((8, 12), (16, 24), (32, 48)):
        if r <= nr and c <= nc:
            return nr, nc
    return r, c


def plate_heatmaps(wells: pd.DataFrame, values: Sequence[str] = ("n_nuclei", "er_mean"),
                   title: str = "") -> Figure:
    """Plate layout heatmaps (rows × columns) of per-well values of one plate and time point.

    Wells left out of the fits are crossed; wells without data are blank.

    Examples
    --------
    >>> w = pd.DataFrame({"row": [1, 1, 2], "col": [1, 2, 1], "n_nuclei": [100, 90, 50],
    ...                   "er_mean": [800.0, 700.0, 100.0], "use": [True, True, False]})
    >>> len(plate_heatmaps(w).axes)
    4
    """
    values = [v for v in values if v in wells.columns]
    nr, nc = _plate_shape(wells["row"], wells["col"])
    fig, axes = plt.subplots(1, len(values), figsize=(0.42 * nc * len(values) + 1.6,
                                                      0.36 * nr + 1.1),
                             squeeze=False, layout="constrained")
    for ax, v in zip(axes.ravel(), values):
        grid = np.full((nr, nc), np.nan)
        r = wells["row"].to_numpy(int) - 1
        c = wells["col"].to_numpy(int) - 1
        grid[r, c] = pd.to_numeric(wells[v], errors="coerce").to_numpy(float)
        im = ax.imshow(grid, cmap="viridis" if v == "n_nuclei" else "magma", aspect="equal",
                       interpolation="nearest")
        if "use" in wells.columns:
            bad = ~wells["use"].to_numpy(bool)
            ax.scatter(c[bad], r[bad], marker="x", color="w", s=30, lw=1.2)
        ax.set_xticks(range(nc), [str(i + 1) for i in range(nc)], fontsize=6)
        ax.set_yticks(range(nr), [chr(65 + i) if i < 26 else str(i + 1) for i in range(nr)],
                      fontsize=6)
        ax.tick_params(length=0)
        ax.set_title(READOUT_LABELS.get(v, v) + (" (a.u.)" if v.startswith("er_") else ""),
                     fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title + "   (× = left out of the fits)", fontsize=10)
    return fig


def _er_outline_rgb(img: np.ndarray, labels: np.ndarray | None, lims: tuple[float, float],
                    colour_lims: tuple[float, float]) -> np.ndarray:
    """Grey ERα image with nucleus outlines coloured by each nucleus' mean ERα."""
    lo, hi = lims
    g = np.clip((img - lo) / max(hi - lo, 1e-9), 0, 1)
    rgb = np.repeat(g[..., None], 3, axis=2)
    if labels is None or not labels.any():
        return rgb
    from skimage.segmentation import find_boundaries

    lab = labels.astype(np.int64)
    n = int(lab.max())
    sums = np.bincount(lab.ravel(), weights=img.ravel(), minlength=n + 1)
    cnt = np.bincount(lab.ravel(), minlength=n + 1)
    means = np.divide(sums, cnt, out=np.zeros_like(sums), where=cnt > 0)
    c0, c1 = colour_lims
    cm = plt.get_cmap("plasma")
    edge = find_boundaries(lab, mode="inner") & (lab > 0)
    vals = np.clip((means[lab[edge]] - c0) / max(c1 - c0, 1e-9), 0, 1)
    rgb[edge] = cm(vals)[:, :3]
    return rgb


def thumbnail_strip(
    tiles: Sequence[tuple[str, dict]], *, crop: int = 256, title: str = ""
) -> Figure:
    """One row of field thumbnails (e.g. vehicle then each dose).

    Parameters
    ----------
    tiles : sequence of (caption, field)
        ``field`` as returned by a ``load_field`` callable: ``image_er`` (2-D),
        ``image_nuclei`` (2-D, unused here), ``labels`` (2-D or None).  The
        first tile sets the display range (it should be the vehicle).
    crop : int
        Central crop size in pixels (no resampling: nuclei stay visible).
    title : str

    Examples
    --------
    >>> from erquant.synthetic import make_field
    >>> f = make_field(shape=(64, 64), n_nuclei=5, seed=1)
    >>> tile = {"image_er": f.image[1], "image_nuclei": f.image[0], "labels": f.nuclei}
    >>> len(thumbnail_strip([("vehicle", tile), ("10 nM", tile)]).axes)
    2
    """
    crops = []
    for cap, fld in tiles:
        im = np.asarray(fld["image_er"], dtype=np.float64)
        lab = fld.get("labels")
        lab = None if lab is None else np.asarray(lab)
        y0 = max(0, (im.shape[0] - crop) // 2)
        x0 = max(0, (im.shape[1] - crop) // 2)
        sl = (slice(y0, y0 + crop), slice(x0, x0 + crop))
        bg_mask = (lab[sl] == 0) if lab is not None else np.ones(im[sl].shape, bool)
        bg = float(np.median(im[sl][bg_mask])) if bg_mask.any() else float(np.median(im[sl]))
        crops.append((cap, im[sl] - bg, None if lab is None else lab[sl]))
    ref = crops[0][1]
    hi = float(np.percentile(ref, 99.5)) if ref.size else 1.0
    ref_lab = crops[0][2]
    if ref_lab is not None and ref_lab.any():
        nm = [ref[ref_lab == i].mean() for i in np.unique(ref_lab[ref_lab > 0])]
        c_hi = 1.2 * float(np.median(nm))
    else:
        c_hi = hi
    n = len(crops)
    fig, axes = plt.subplots(1, n, figsize=(1.45 * n, 1.75), squeeze=False,
                             layout="constrained")
    for ax, (cap, im, lab) in zip(axes.ravel(), crops):
        ax.imshow(_er_outline_rgb(im, lab, (0.0, hi), (0.0, c_hi)), interpolation="nearest")
        ax.set_title(cap, fontsize=7)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=8)
    return fig
