"""``erquant report OUTDIR``: dose-response fits, plate QC and the HTML report.

Exit codes: 0 ok; 2 bad plate map, missing tables or columns (one line
``error: <file>: <problem>`` on stderr, no traceback).

Examples
--------
>>> import argparse
>>> parser = argparse.ArgumentParser(prog="erquant")
>>> _ = add_parser(parser.add_subparsers(dest="command"))
>>> args = parser.parse_args(["report", "out", "--normalise", "reference", "--no-html"])
>>> (args.outdir, args.normalise, args.no_html, args.func is cmd_report)
('out', 'reference', True, True)
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

__all__ = ["add_parser", "cmd_report", "format_fit_table"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``report`` sub-command to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "report",
        help="fit DC50 / IC50 / Dmax, plate QC (Z′) and a self-contained report.html "
             "from the tables of `erquant run`",
        description="Reads OUTDIR/wells.csv (and fields.csv) written by `erquant run`; writes "
                    "dose_response.csv, plate_qc.csv, normalised_wells.csv, plots/ and "
                    "report.html in OUTDIR.",
    )
    p.add_argument("outdir", help="folder written by `erquant run`")
    p.add_argument("--plate-map", metavar="CSV", default=None,
                   help="plate map to (re-)join (well, compound, concentration_nM|_uM|_M, "
                        "[role, plate, time_h, cell_line]); default: the map columns of wells.csv")
    p.add_argument("--normalise", choices=("vehicle", "reference"), default="vehicle",
                   help="ERα as %% of vehicle (default) or scaled so reference wells read 0 %%")
    p.add_argument("--no-html", action="store_true", help="write the CSVs and plots only")
    p.set_defaults(func=cmd_report)
    return p


def _n(v, fmt="{:.3g}") -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v)


def format_fit_table(table) -> str:
    """Short text table of fits: compound, readout, time, DC50/IC50 [CI], Dmax, flag.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame([{"compound": "x", "readout": "er_mean", "time_h": 24.0,
    ...     "cell_line": "MCF7", "dc50_nM": 1.234, "ic50_nM": float("nan"),
    ...     "ci_low_nM": 1.0, "ci_high_nM": 1.5, "dmax_pct": 91.23, "flag": "ok"}])
    >>> print(format_fit_table(t))
    compound  readout  time  cell line  DC50/IC50 nM  95% CI   Dmax %  flag
    x         er_mean  24 h  MCF7       DC50 1.23     1 - 1.5  91.2    ok
    """
    head = ["compound", "readout", "time", "cell line", "DC50/IC50 nM", "95% CI", "Dmax %", "flag"]
    rows = [head]
    for r in table.to_dict("records"):
        is_ic = r["readout"] == "n_nuclei"
        ec = r["ic50_nM"] if is_ic else r["dc50_nM"]
        cl = r.get("cell_line")
        rows.append([
            str(r["compound"]), r["readout"],
            f"{r['time_h']:g} h" if isinstance(r.get("time_h"), float)
            and math.isfinite(r["time_h"]) else "-",
            "-" if cl is None or (isinstance(cl, float) and math.isnan(cl)) else str(cl),
            f"{'IC50' if is_ic else 'DC50'} {_n(ec)}",
            f"{_n(r['ci_low_nM'])} - {_n(r['ci_high_nM'])}",
            _n(r["dmax_pct"], "{:.1f}"), str(r["flag"]),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def cmd_report(args) -> int:
    """Run :func:`erquant.analysis.analyse_run` for the parsed ``args``; return the exit code."""
    from erquant.analysis.normalise import AnalysisError
    from erquant.analysis.platemap import PlateMapError
    from erquant.analysis.report import analyse_run

    load_field = None
    if (Path(args.outdir) / "parts").is_dir():  # written by `erquant run`: thumbnails
        from erquant.batch.thumbnails import field_loader

        load_field = field_loader(args.outdir)
    try:
        res = analyse_run(args.outdir, plate_map=args.plate_map, normalise=args.normalise,
                          report=not args.no_html, progress=False, load_field=load_field)
    except (AnalysisError, PlateMapError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in res["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(format_fit_table(res["fits"]))
    print(f"wrote {res['dose_response']}, {res['plate_qc']}")
    if res["report"] is not None:
        print(f"report: {res['report']}")
    return 0
