"""From the batch tables to potency: normalise, fit, QC, plots and the HTML report.

:func:`analyse_run` reads ``OUTDIR/wells.csv`` (and ``fields.csv`` for the
thumbnails) written by ``erquant run`` and writes, in ``OUTDIR``:

``normalised_wells.csv``
    wells.csv + ``<readout>_pct``, ``use``, ``excluded``.
``dose_response.csv``
    One row per plate × compound × readout × time point × cell line:
    ``plate, compound, readout, time_h, cell_line, dc50_nM, ic50_nM, hill,
    top, bottom, dmax_pct, abs50_nM, ci_low_nM, ci_high_nM, se_log10, r2,
    n_points, flag``.  ``dc50_nM`` (ERα readouts) / ``ic50_nM``
    (``n_nuclei``) is the fitted relative EC50 (the other column NaN); ``hill``
    is drc's ``b`` (positive: the readout falls with concentration); ``top`` /
    ``bottom`` are the fitted responses at 0 / infinite concentration (% of
    vehicle); ``dmax_pct = 100 - bottom`` (maximal degradation or growth
    inhibition; NaN for a ``partial`` fit, whose bottom is fixed, not
    estimated); ``abs50_nM`` the concentration where the curve crosses 50 %
    (when it does); ``ci_*`` the 95 % delta-method CI on log EC50;
    ``se_log10`` the SE of log10 EC50; ``flag`` from
    :func:`~erquant.analysis.fit.fit_ll4`.
``plate_qc.csv``
    :func:`~erquant.analysis.plate_qc.plate_qc`.
``plots/``
    ``dose_response_<readout>.png/.svg``, ``heatmap_<plate>_<t>h.png/.svg``,
    ``thumbnails_<plate>_<t>h_<cell line>_<compound>.png``.
``report.html``
    Everything above on one self-contained page (images embedded).

Each compound's fit uses its sample and reference wells (one point per well)
plus the group's vehicle wells at concentration 0 (drc's way of anchoring the
top).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from erquant.analysis import plots
from erquant.analysis.fit import Fit, fit_ll4
from erquant.analysis.normalise import (
    COUNT_READOUT,
    AnalysisError,
    group_keys,
    normalise_wells,
    readouts_of,
)
from erquant.analysis.plate_qc import plate_qc
from erquant.analysis.platemap import match_wells, read_plate_map

__all__ = ["DOSE_RESPONSE_COLUMNS", "analyse_run", "fit_wells", "read_tables"]

DOSE_RESPONSE_COLUMNS = [
    "plate", "compound", "readout", "time_h", "cell_line", "dc50_nM", "ic50_nM", "hill", "top",
    "bottom", "dmax_pct", "abs50_nM", "ci_low_nM", "ci_high_nM", "se_log10", "r2", "n_points",
    "flag",
]
MAP_COLUMNS = ("compound", "concentration_nM", "role")
LoadField = Callable[[dict], dict]


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise AnalysisError(f"{path}: not found (run `erquant run` first, or give the folder "
                            "it wrote)")
    try:
        return pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - unreadable table: the user's file
        raise AnalysisError(f"{path}: cannot read table ({exc})") from exc


def _well_list(sub: pd.DataFrame, limit: int = 10) -> str:
    """``A01 (24 h), …`` for the rows of ``sub`` (first ``limit``, then the count)."""
    items = []
    for r in sub.to_dict("records"):
        ctx = [str(r["plate"]) if "plate" in r and sub["plate"].nunique() > 1 else "",
               f"{r['time_h']:g} h" if isinstance(r.get("time_h"), float)
               and math.isfinite(r["time_h"]) else ""]
        ctx = [c for c in ctx if c]
        items.append(r["well"] + (f" ({', '.join(ctx)})" if ctx else ""))
    more = f" … (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def read_tables(outdir: str | Path, plate_map: str | Path | None = None,
                ) -> tuple[pd.DataFrame, pd.DataFrame | None, list[str]]:
    """Read ``wells.csv`` (+ ``fields.csv`` when present) and attach the plate map.

    Parameters
    ----------
    outdir : str or Path
        Folder written by ``erquant run``.
    plate_map : str or Path, optional
        Re-join the map from this CSV (replacing the map columns of the tables).

    Returns
    -------
    wells, fields (or None), notes

    Raises
    ------
    AnalysisError, PlateMapError
        Missing table, missing columns, bad plate map.
    """
    outdir = Path(outdir)
    notes: list[str] = []
    wpath = outdir / "wells.csv"
    wells = _read_csv(wpath)
    miss = [c for c in ("well",) if c not in wells.columns]
    if miss or not readouts_of(wells):
        raise AnalysisError(
            f"{wpath}: missing column(s) {miss or ['er_mean or n_nuclei']} (expected the wells "
            "table of `erquant run`: plate, time_h, well, n_nuclei, er_mean, …)")
    fpath = outdir / "fields.csv"
    fields = _read_csv(fpath) if fpath.is_file() else None
    if plate_map is not None:
        pmap = read_plate_map(plate_map)
        drop = [c for c in pmap.columns if c in wells.columns
                and c not in ("plate", "well", "time_h", "row", "col")]
        wells, warn = match_wells(pmap, wells.drop(columns=drop))
        notes += warn
    else:
        miss = [c for c in MAP_COLUMNS if c not in wells.columns]
        if miss:
            raise AnalysisError(
                f"{wpath}: no plate-map column(s) {miss}; give the plate map (--plate-map CSV)")
        un = wells[wells["role"].isna()]
        if len(un):
            notes.append(f"wells in the images but not in the plate map (kept in the tables, left "
                         f"out of the fits): {_well_list(un)}")
    if "row" not in wells.columns or "col" not in wells.columns:
        from erquant.io.plate import parse_well

        rc = [parse_well(str(w)) for w in wells["well"]]
        wells["row"], wells["col"] = [r for r, _ in rc], [c for _, c in rc]
    if "time_h" in wells.columns:
        wells["time_h"] = pd.to_numeric(wells["time_h"], errors="coerce").astype(float)
    if "concentration_nM" in wells.columns:
        wells["concentration_nM"] = pd.to_numeric(wells["concentration_nM"], errors="coerce")
    return wells, fields, notes


MIN_REFERENCE_DOSES = 3  #: reference-only compounds with fewer doses are controls, not curves


def fit_wells(norm: pd.DataFrame, **fit_kw) -> tuple[pd.DataFrame, dict[tuple, Fit]]:
    """Fit every compound × readout of every plate / time point / cell line.

    Parameters
    ----------
    norm : DataFrame
        From :func:`~erquant.analysis.normalise.normalise_wells`.
    **fit_kw
        Passed to :func:`~erquant.analysis.fit.fit_ll4`.

    Returns
    -------
    DataFrame
        ``dose_response.csv`` rows (:data:`DOSE_RESPONSE_COLUMNS`).
    dict
        ``(*group values, compound, readout) → Fit``.

    Examples
    --------
    >>> x = [0.0] * 4 + [c for c in (0.1, 0.3, 1, 3, 10, 30, 100) for _ in range(2)]
    >>> y = [100.0 if c == 0 else 20 + 80 / (1 + c / 2.0) for c in x]
    >>> norm = pd.DataFrame({"plate": "P", "time_h": 24.0, "compound": "cpd",
    ...     "concentration_nM": x, "role": ["vehicle" if c == 0 else "sample" for c in x],
    ...     "use": True, "er_mean": y, "er_mean_pct": y})
    >>> table, _ = fit_wells(norm)
    >>> table[["compound", "readout", "dc50_nM", "dmax_pct", "flag"]].round(3)
      compound  readout  dc50_nM  dmax_pct flag
    0      cpd  er_mean      2.0      80.0   ok
    """
    keys = group_keys(norm)
    rows, fits = [], {}
    used = norm[norm["use"]]
    groups = used.groupby(keys, dropna=False, sort=True) if keys else [((), used)]
    for g, sub in groups:
        g = g if isinstance(g, tuple) else (g,)
        veh = sub[sub["role"] == "vehicle"]
        trt = sub[sub["role"].isin(["sample", "reference"])]
        for cpd, pts in trt.groupby("compound", sort=True):
            if (pts["role"] == "reference").all() and \
                    pts["concentration_nM"].nunique() < MIN_REFERENCE_DOSES:
                continue  # a control at one or two doses: used for Z′, not a curve
            for r in readouts_of(norm):
                col = f"{r}_pct"
                x = np.r_[np.zeros(len(veh)), pts["concentration_nM"].to_numpy(float)]
                y = np.r_[veh[col].to_numpy(float), pts[col].to_numpy(float)]
                f = fit_ll4(x, y, **fit_kw)
                fits[(*g, cpd, r)] = f
                rows.append(_dr_row(dict(zip(keys, g)), cpd, r, f))
    table = pd.DataFrame(rows, columns=DOSE_RESPONSE_COLUMNS)
    return table, fits


def _dr_row(key: dict, compound, readout: str, f: Fit) -> dict:
    fitted = f.model in ("LL.4", "LL.3")
    ec50 = f.ec50 if fitted else math.nan
    partial = "partial" in f.flags
    return {
        "plate": key.get("plate", np.nan), "compound": compound, "readout": readout,
        "time_h": key.get("time_h", np.nan), "cell_line": key.get("cell_line", np.nan),
        "dc50_nM": ec50 if readout != COUNT_READOUT else math.nan,
        "ic50_nM": ec50 if readout == COUNT_READOUT else math.nan,
        "hill": f.hill, "top": f.top, "bottom": f.bottom,
        "dmax_pct": math.nan if partial or not np.isfinite(f.bottom) else 100.0 - f.bottom,
        "abs50_nM": f.inverse(50.0), "ci_low_nM": f.ci_low, "ci_high_nM": f.ci_high,
        "se_log10": f.se_log10, "r2": f.r2, "n_points": f.n_points, "flag": f.flag,
    }


# ---------------------------------------------------------------------------- thumbnails
def _thumbnail_strips(norm, fields, load_field, keys, plot_dir):
    """Yield (title, png path, note) per plate × time × cell line × compound."""
    if fields is None:
        yield None, None, "thumbnails omitted: no fields.csv in the run folder"
        return
    if load_field is None:
        yield None, None, ("thumbnails omitted: no image loader (the report was built from the "
                           "tables alone)")
        return
    jk = [k for k in ("plate", "time_h", "well") if k in fields.columns and k in norm.columns]
    f = fields.drop(columns=[c for c in ("compound", "concentration_nM", "role", "cell_line")
                             if c in fields.columns and c in norm.columns])
    if "time_h" in f.columns:
        f["time_h"] = pd.to_numeric(f["time_h"], errors="coerce").astype(float)
    cols = [*jk, "compound", "concentration_nM", "role", "use"]
    cols += [c for c in ("cell_line",) if c in norm.columns and c not in cols]
    f = f.merge(norm[cols], on=jk, how="inner")
    f = f[f["use"] & (f.get("status", "ok") == "ok")]
    if f.empty:
        yield None, None, "thumbnails omitted: no usable fields in fields.csv"
        return
    sort_cols = ["well", "field"] if "field" in f.columns else ["well"]
    groups = f.groupby(keys, dropna=False, sort=True) if keys else [((), f)]
    for g, sub in groups:
        g = g if isinstance(g, tuple) else (g,)
        veh = sub[sub["role"] == "vehicle"].sort_values(sort_cols)
        trt = sub[sub["role"].isin(["sample", "reference"])]
        for cpd, pts in trt.groupby("compound", sort=True):
            title = plots._panel_title(keys, g) + f" · {cpd}"
            try:
                picks = [("vehicle", veh.iloc[0])] if len(veh) else []
                for conc, at in pts.groupby("concentration_nM", sort=True):
                    picks.append((f"{conc:.3g} nM", at.sort_values(sort_cols).iloc[0]))
                tiles = [(cap, load_field(row.to_dict())) for cap, row in picks]
                fig = plots.thumbnail_strip(tiles, title=title + " — ERα, nuclei outlined by "
                                            "their ERα (plasma scale: 0 → 1.2 × vehicle median)")
                path = plot_dir / (plots.safe_name("thumbnails", *g, cpd) + ".png")
                fig.savefig(path, dpi=100)
                plt.close(fig)
                yield title, path, None
            except Exception as exc:  # noqa: BLE001 - never fail the report for a thumbnail
                yield None, None, f"thumbnails of {title} omitted: {type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------------- main entry
def analyse_run(
    outdir: str | Path,
    *,
    plate_map: str | Path | None = None,
    normalise: str = "vehicle",
    report: bool = True,
    load_field: LoadField | None = None,
    progress: bool = False,
) -> dict:
    """Normalise, fit, QC and report the tables of one ``erquant run`` folder.

    Parameters
    ----------
    outdir : str or Path
        Folder with ``wells.csv`` (and ``fields.csv``) of ``erquant run``.
    plate_map : str or Path, optional
        Plate map CSV to (re-)join; default: the map columns of ``wells.csv``.
    normalise : {"vehicle", "reference"}
        ERα readouts as % of vehicle, or additionally scaled so the reference
        wells read 0 % remaining.  ``n_nuclei`` is always % of vehicle.
    report : bool
        Write ``report.html`` (the CSVs and plots are always written).
    load_field : callable, optional
        ``load_field(fields.csv row as dict) -> {"image_nuclei", "image_er",
        "labels" (or None)}`` for the thumbnail strips; without it (or when it
        raises) the strips are omitted with a note.
    progress : bool
        Print the stages to stderr.

    Returns
    -------
    dict
        ``dose_response, plate_qc, normalised_wells, report`` (paths; report
        None when not written), ``plots`` (list of paths), ``fits``
        (DataFrame as dose_response.csv), ``notes`` (list of str).

    Raises
    ------
    AnalysisError, PlateMapError
        Missing tables or columns, bad plate map (the message starts with the
        file).

    Examples
    --------
    >>> import tempfile
    >>> x = [0.0] * 4 + [c for c in (0.1, 0.3, 1, 3, 10, 30, 100) for _ in range(2)]
    >>> er = [800.0 if c == 0 else 160 + 640 / (1 + c / 2.0) for c in x]
    >>> out = Path(tempfile.mkdtemp())
    >>> pd.DataFrame({"plate": "P", "time_h": 24.0, "well": [f"A{i + 1:02d}" for i in range(len(x))],
    ...     "n_nuclei": 100, "n_fields_ok": 1, "er_mean": er, "compound": "cpd",
    ...     "concentration_nM": x, "role": ["vehicle" if c == 0 else "sample" for c in x],
    ...     }).to_csv(out / "wells.csv", index=False)
    >>> res = analyse_run(out, report=False)
    >>> res["fits"].set_index("readout").loc["er_mean", ["dc50_nM", "dmax_pct"]].round(3).tolist()
    [2.0, 80.0]
    """
    outdir = Path(outdir)

    def say(msg):
        if progress:
            print(f"[report] {msg}", file=sys.stderr, flush=True)

    wells, fields, notes = read_tables(outdir, plate_map)
    say(f"{len(wells)} wells read")
    try:
        norm = normalise_wells(wells, mode=normalise)
    except AnalysisError as exc:
        raise AnalysisError(f"{outdir / 'wells.csv'}: {exc}") from None
    notes += norm.attrs.get("notes", [])
    for why, sub in norm[~norm["use"]].groupby("excluded", sort=True):
        if why != "not in plate map":  # already reported by read_tables / match_wells
            notes.append(f"left out of the fits ({why}): {_well_list(sub)}")
    table, fits = fit_wells(norm)
    ctrl = norm[norm["use"] & (norm["role"] == "reference")].groupby("compound")
    for cpd, sub in ctrl:
        if cpd not in set(table["compound"]):
            doses = ", ".join(f"{c:g}" for c in sorted(sub["concentration_nM"].unique()))
            notes.append(f"reference {cpd} ({doses} nM, {len(sub)} wells) is a control for "
                         "Z′ and reference normalisation, not fitted (fewer than "
                         f"{MIN_REFERENCE_DOSES} doses)")
    say(f"{len(table)} curves fitted")
    qc = plate_qc(norm)
    paths = {
        "normalised_wells": outdir / "normalised_wells.csv",
        "dose_response": outdir / "dose_response.csv",
        "plate_qc": outdir / "plate_qc.csv",
    }
    norm.to_csv(paths["normalised_wells"], index=False)
    table.to_csv(paths["dose_response"], index=False)
    qc.to_csv(paths["plate_qc"], index=False)

    plot_dir = outdir / "plots"
    plot_dir.mkdir(exist_ok=True)
    keys = group_keys(norm)
    colours = plots.compound_colours(
        norm.loc[norm["role"].isin(["sample", "reference"]), "compound"].dropna().unique())
    figures: list[tuple[str, str, bytes]] = []  # (section, caption, png)
    plot_paths: list[Path] = []
    for r in readouts_of(norm):
        fig = plots.plot_dose_response(norm, fits, r, normalise=normalise, colours=colours)
        plot_paths += plots.save(fig, plot_dir / f"dose_response_{r}")
        if report:
            figures.append(("dose", plots.READOUT_LABELS.get(r, r), plots.png_bytes(fig)))
        plt.close(fig)
    hkeys = [k for k in ("plate", "time_h") if k in norm.columns]
    hgroups = norm.groupby(hkeys, dropna=False, sort=True) if hkeys else [((), norm)]
    for g, sub in hgroups:
        g = g if isinstance(g, tuple) else (g,)
        title = plots._panel_title(hkeys, g) or "plate"
        fig = plots.plate_heatmaps(sub, title=title)
        plot_paths += plots.save(fig, plot_dir / plots.safe_name("heatmap", *g))
        if report:
            figures.append(("heat", title, plots.png_bytes(fig, dpi=80)))
        plt.close(fig)
    say("plots written")
    thumbs: list[tuple[str, Path]] = []
    for title, path, note in _thumbnail_strips(norm, fields, load_field, keys, plot_dir):
        if note:
            notes.append(note)
        else:
            thumbs.append((title, path))
            plot_paths.append(path)
    paths["report"] = None
    if report:
        paths["report"] = outdir / "report.html"
        paths["report"].write_text(
            _html(outdir, table, qc, figures, thumbs, notes, normalise), encoding="utf-8")
        say(f"report: {paths['report']}")
    return {**paths, "plots": plot_paths, "fits": table, "notes": notes}


# ---------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;
max-width:1400px;color:#222;font-size:14px}
h1{font-size:22px;margin-bottom:2px}h2{font-size:17px;border-bottom:1px solid #ccc;
padding-bottom:3px;margin-top:28px}.meta{color:#666;font-size:12px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f3f3f3}
td.t{text-align:left}.ok{color:#17803d}.warn{color:#b45309}.bad{color:#b91c1c;font-weight:600}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.notes{background:#fff8e6;border:1px solid #f0d9a0;padding:6px 12px;font-size:12px}
.methods{color:#555;font-size:12px;line-height:1.45}
"""


def _img(png: bytes, alt: str) -> str:
    b64 = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _num(v, fmt="{:.3g}") -> str:
    try:
        return "–" if v is None or not np.isfinite(float(v)) else fmt.format(float(v))
    except (TypeError, ValueError):
        return html.escape(str(v))


def _flag_cls(flag: str) -> str:
    return "ok" if flag == "ok" else ("bad" if any(
        f in str(flag) for f in ("too_few_points", "unstable")) else "warn")


def _fit_table(table: pd.DataFrame) -> str:
    head = ("<tr><th>plate</th><th>time (h)</th><th>cell line</th><th>compound</th>"
            "<th>readout</th><th>DC50 / IC50 (nM)</th><th>95 % CI (nM)</th><th>Hill</th>"
            "<th>Dmax / Imax (%)</th><th>abs. 50 % (nM)</th><th>R²</th><th>n</th>"
            "<th>flag</th></tr>")
    body = []
    for r in table.itertuples(index=False):
        ec = r.ic50_nM if r.readout == COUNT_READOUT else r.dc50_nM
        kind = "IC50" if r.readout == COUNT_READOUT else "DC50"
        body.append(
            f"<tr><td class=t>{html.escape(str(r.plate))}</td><td>{_num(r.time_h, '{:g}')}</td>"
            f"<td class=t>{html.escape(str(r.cell_line))}</td>"
            f"<td class=t>{html.escape(str(r.compound))}</td>"
            f"<td class=t>{html.escape(plots.READOUT_LABELS.get(r.readout, r.readout))}</td>"
            f"<td title={kind}>{_num(ec)}</td>"
            f"<td>{_num(r.ci_low_nM)}–{_num(r.ci_high_nM)}</td><td>{_num(r.hill)}</td>"
            f"<td>{_num(r.dmax_pct, '{:.1f}')}</td><td>{_num(r.abs50_nM)}</td>"
            f"<td>{_num(r.r2, '{:.3f}')}</td><td>{r.n_points}</td>"
            f"<td class='t {_flag_cls(r.flag)}'>{html.escape(str(r.flag))}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _qc_table(qc: pd.DataFrame) -> str:
    if qc.empty:
        return "<p>No QC rows.</p>"
    head = ("<tr><th>plate</th><th>time (h)</th><th>cell line</th><th>readout</th>"
            "<th>n vehicle</th><th>n reference</th><th>vehicle CV (%)</th><th>Z′</th>"
            "<th>signal window</th><th>S/B</th><th>wells used / all</th><th>flagged wells</th>"
            "<th>well QC flags</th></tr>")
    body = []
    for r in qc.itertuples(index=False):
        z = r.z_prime
        zc = "ok" if np.isfinite(z) and z >= 0.5 else ("warn" if np.isfinite(z) and z >= 0 else
                                                        "bad")
        body.append(
            f"<tr><td class=t>{html.escape(str(getattr(r, 'plate', '')))}</td>"
            f"<td>{_num(getattr(r, 'time_h', np.nan), '{:g}')}</td>"
            f"<td class=t>{html.escape(str(getattr(r, 'cell_line', '')))}</td>"
            f"<td class=t>{html.escape(plots.READOUT_LABELS.get(r.readout, r.readout))}</td>"
            f"<td>{r.n_vehicle}</td><td>{r.n_reference}</td>"
            f"<td>{_num(r.vehicle_cv_pct, '{:.1f}')}</td><td class={zc}>{_num(z, '{:.2f}')}</td>"
            f"<td>{_num(r.signal_window, '{:.1f}')}</td>"
            f"<td>{_num(r.signal_to_background, '{:.2f}')}</td>"
            f"<td>{r.n_wells_used} / {r.n_wells}</td><td>{r.n_wells_flagged}</td>"
            f"<td class=t>{html.escape(str(r.well_flags or ''))}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _html(outdir: Path, table, qc, figures, thumbs, notes, normalise: str) -> str:
    try:
        from erquant import __version__ as ver
    except ImportError:  # pragma: no cover
        ver = "?"
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    norm_txt = ("ERα readouts as % of the vehicle mean" if normalise == "vehicle" else
                "ERα readouts scaled so the vehicle mean reads 100 % and the reference wells 0 %")
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>erquant report — {html.escape(outdir.name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Dose response — {html.escape(outdir.name)}</h1>",
        f"<div class=meta>erquant {html.escape(str(ver))} · {now} · normalisation: "
        f"{html.escape(norm_txt)}; nuclei count as % of vehicle</div>",
    ]
    if notes:
        parts.append("<div class=notes><b>Notes</b><ul>" + "".join(
            f"<li>{html.escape(n)}</li>" for n in notes) + "</ul></div>")
    parts.append("<h2>Potency</h2>" + _fit_table(table))
    parts.append("<h2>Dose-response curves</h2>")
    parts += [_img(png, cap) for sec, cap, png in figures if sec == "dose"]
    parts.append("<h2>Plate QC</h2>" + _qc_table(qc))
    parts += [_img(png, cap) for sec, cap, png in figures if sec == "heat"]
    if thumbs:
        parts.append("<h2>Fields per dose</h2>")
        for title, path in thumbs:
            parts.append(_img(Path(path).read_bytes(), title))
    parts.append(
        "<h2>Methods</h2><div class=methods>Four-parameter log-logistic model (R drc's LL.4, "
        "GraphPad's “log(inhibitor) vs. response — variable slope”): f(x) = bottom + (top − "
        "bottom) / (1 + (x / EC50)^hill), fitted by least squares to one point per well, with "
        "the plate's vehicle wells at concentration 0. DC50 (ERα readouts) and IC50 (nuclei "
        "count) are the relative EC50s; Dmax = 100 − bottom; “abs. 50 %” is where the curve "
        "crosses 50 %. Standard errors from the observed Hessian of the residual sum of squares "
        "(as drc); 95 % CIs by the delta method on log EC50 with the t distribution. When the "
        "lower plateau is not reached (less than 80 % of the effect at the top dose) the bottom "
        "is fixed at 0 (LL.3, flag <i>partial</i>, no Dmax). Flags: <i>flat</i> (F-test against "
        "a constant not significant at 0.05), <i>ec50_outside_range</i>, <i>unstable</i> "
        "(ill-conditioned Hessian or a bound reached), <i>too_few_points</i>. Z′ (Zhang 1999) "
        "and signal window (Iversen 2006) between vehicle and reference wells on raw values. "
        "Wells with role exclude/blank, wells whose fields all failed and wells not in the plate "
        "map are left out of the fits.</div>")
    parts.append("</body></html>")
    return "\n".join(parts)

