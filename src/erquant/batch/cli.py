"""``erquant run``: the command-line face of :func:`erquant.batch.run_batch`."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["add_parser", "cmd_run"]

EPILOG = """\
examples:
  erquant run plate/ -o results/                          # MetaXpress folder, all cores
  erquant run plate/ -o results/ --plate-map map.csv      # + dose-response fits and report
  erquant run stack.ome.tif -o results/ --workers 2 --save-labels
  erquant run plate.zarr -o results/ --z best              # OME-Zarr HCS, sharpest Z plane
  erquant run export/ -o results/ --layout operetta --channels ch1=nuclei,ch2=er
  erquant run imgs/ -o out/ --pattern '(?P<well>[A-P]\\d+)_f(?P<field>\\d+)_(?P<channel>\\w+)\\.tif' \\
      --channels DAPI=nuclei,FITC=er
  erquant run plate/ -o results/ --scheduler tcp://10.0.0.5:8786  # an existing dask cluster
  erquant run slide.ome.tif -o results/ --tile 2048      # one huge image, in tiles

Mosaics (one huge 2-D (C, Y, X) image: TIFF/BigTIFF/OME-TIFF or an OME-Zarr single
image) are quantified in overlapping tiles, one task per tile: the nucleus diameter,
thresholds and normalisation are decided once on a sample of the whole image (recorded
in run.json), every nucleus is counted once (by the tile holding its centre) and whole,
and cells.parquet has global coordinates and cell numbers. Images over 8192 x 8192 px
are tiled by 2048 automatically; --tile 0 never tiles.

Layouts (--layout, recognised with auto): metaxpress (A01_s1_w1.tif, TimePoint_<n>/,
ZStep_<n>/, .HTD), cellvoyager (<plate>_<well>_T0001F001L01A01Z01C01.tif), operetta
(Harmony export: r01c01f01p01-ch1sk1fk1fl1.tiff + Index.idx.xml), ome-zarr (NGFF 0.4/0.5
HCS plate or image), ome-tiff (any OME-TIFF: series, T/Z/C axes, OME Plate/Well),
pattern (--pattern).

Z stacks (--z): max = maximum projection (default); best = the sharpest plane of each
field (focus score of the nuclear stain; chosen plane in fields.csv column z); all =
every plane quantified on its own (ids ..._z01, a z column, wells.csv per plane).

A rerun into the same OUTDIR resumes (finished fields are skipped); a rerun with other
parameters or inputs is refused unless --overwrite. Exit status: 0 all fields ok, 1 some
fields failed (listed in fields.csv and run.json), 2 nothing done (bad input or options),
130 interrupted (finished fields kept).
"""


def add_parser(subparsers) -> None:
    """Add the ``run`` sub-command to an argparse sub-parsers object."""
    import argparse

    p = subparsers.add_parser(
        "run", help="quantify whole plates / stacks (dask-parallel, resumable)",
        description="Quantify every field of a plate folder or OME-TIFF stack into "
                    "cells.parquet, fields.csv and wells.csv (and, with a plate map, "
                    "dose_response.csv and report.html).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", help="plate folder (MetaXpress, CellVoyager, Operetta, or "
                   "--pattern), OME-Zarr plate (*.zarr), OME-TIFF file (*.ome.tif), or one "
                   "huge image (TIFF / OME-Zarr) to tile")
    p.add_argument("-o", "--outdir", required=True, help="output folder")
    p.add_argument("--plate-map", default=None,
                   help="plate map CSV (default: INPUT/plate_map.csv when present)")
    p.add_argument("--params", default=None, help="TOML parameter file (erquant.params)")
    p.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    p.add_argument("--method", default=None, choices=["auto", "learned", "classical"],
                   help="nuclei segmenter (default: the --params file's segment.method, "
                        "else auto = the learned network)")
    p.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: one per core); 0 = no cluster")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on an existing dask cluster, e.g. tcp://host:8786")
    p.add_argument("--gpus", type=int, default=None,
                   help="one dask-cuda worker per GPU (CuPy backend)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted run (also what a plain rerun does)")
    g.add_argument("--overwrite", action="store_true",
                   help="discard an earlier run in OUTDIR with other inputs/parameters")
    p.add_argument("--roi", default=None, help="GeoJSON ROIs in pixel coordinates")
    p.add_argument("--save-labels", action="store_true",
                   help="write nuclei/cell label TIFFs to OUTDIR/labels (mosaics: also one "
                        "stitched zarr label image each)")
    p.add_argument("--channels", default=None, metavar="ID=NAME,...",
                   help="channel ids to names; one must be 'nuclei' (default w1=nuclei,w2=er)")
    p.add_argument("--pattern", default=None, metavar="REGEX",
                   help="regex with named groups well, channel [, field, plate, timepoint, "
                        "time_h] for other file names")
    from erquant.io.items import LAYOUTS
    from erquant.io.zstack import Z_MODES

    p.add_argument("--layout", default="auto", choices=LAYOUTS,
                   help="read INPUT as this layout instead of recognising it (default auto); "
                        "an input that does not fit is an error")
    p.add_argument("--z", default="max", choices=Z_MODES, dest="z",
                   help="Z stacks: max = maximum projection (default), best = sharpest "
                        "plane per field, all = every plane as its own field")
    p.add_argument("--tile", type=int, default=None, metavar="PX",
                   help="quantify one huge image in tiles of PX x PX (plus an overlap decided "
                        "from the nucleus diameter), one task each; default: tiles of 2048 "
                        "for images over 8192 x 8192 px; 0 = never tile")
    p.add_argument("--fields-per-task", type=int, default=None,
                   help="fields segmented together per task (default 1; 8 with --gpus)")
    p.add_argument("--no-flatfield", action="store_true",
                   help="do not fit/divide the per-plate vignetting gain")
    p.add_argument("--no-report", action="store_true",
                   help="skip the dose-response fits and report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_run)


def cmd_run(args) -> int:
    from erquant.batch import RunUsageError, run_batch

    params = args.params
    try:
        if args.method is not None:  # the file's parameters (or the defaults) + --method
            from erquant._cli_errors import UsageError, load_params_file

            try:
                params = load_params_file(args.params).replace(**{"segment.method": args.method})
            except UsageError as exc:
                raise RunUsageError(str(exc)) from exc
        res = run_batch(args.input, args.outdir, plate_map=args.plate_map, params=params,
                        backend=args.backend, workers=args.workers, scheduler=args.scheduler,
                        gpus=args.gpus, resume=args.resume, overwrite=args.overwrite,
                        roi=args.roi, save_labels=args.save_labels, channels=args.channels,
                        pattern=args.pattern, layout=args.layout, z=args.z,
                        fields_per_task=args.fields_per_task,
                        flatfield=not args.no_flatfield, analysis=not args.no_report,
                        progress=not args.quiet, tile=args.tile)
    except RunUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if res.interrupted:
        return res.exit_code
    out = Path(args.outdir)
    print(f"{res.n_ok} of {res.n_fields} fields ok ({res.n_skipped} resumed), "
          f"{res.n_failed} failed")
    for fid, err in res.failures[:20]:
        print(f"  failed {fid}: {err}", file=sys.stderr)
    if len(res.failures) > 20:
        print(f"  ... and {len(res.failures) - 20} more (fields.csv, run.json)", file=sys.stderr)
    print(f"tables in {out}: cells.parquet, fields.csv, wells.csv, run.json, run.log")
    if res.analysis:
        for key in ("dose_response", "report"):
            if res.analysis.get(key):
                print(f"  {res.analysis[key]}")
    return res.exit_code
