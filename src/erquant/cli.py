"""Command-line interface: ``erquant segment | quantify | synth | run | report | demo | bench``.

A thin layer over the library: each sub-command parses its arguments and calls
library functions; errors in one input are reported (naming the file) and the
remaining inputs are still processed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from erquant import __version__


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".png", ".jpeg", ".jpg"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _segment_params(args):
    from erquant.params import Params

    seg = {"diameter": args.diameter, "threshold": args.threshold,
           "threshold_value": args.threshold_value, "downsample": args.downsample}
    seg_given = {k: v for k, v in seg.items() if v is not None}
    return Params.from_dict({"segment": seg_given}) if args.params is None else \
        Params.from_toml(args.params).replace(**{f"segment.{k}": v for k, v in seg.items()
                                                 if v is not None and k != "threshold"})


def _add_segment_options(p):
    p.add_argument("--diameter", type=float, default=None,
                   help="nucleus diameter in px (default: estimated per image)")
    p.add_argument("--threshold", default="otsu", choices=["otsu", "li", "triangle", "manual"])
    p.add_argument("--threshold-value", type=float, default=None,
                   help="raw intensity threshold for --threshold manual")
    p.add_argument("--downsample", type=float, default=None,
                   help="segment an N× smaller copy; 0 = automatic (default: ~10 px per "
                        "nucleus diameter), 1 = full resolution")
    p.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    p.add_argument("--params", type=Path, default=None, help="TOML parameter file")


def cmd_segment(args) -> int:
    import numpy as np
    import tifffile
    from tqdm import tqdm

    from erquant.backend import get_backend, to_numpy
    from erquant.io import read_image
    from erquant.segment import segment_nuclei

    bk = get_backend(args.backend)
    params = _segment_params(args).segment
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    rows = []
    written: set[str] = set()
    for path in tqdm([Path(p) for p in args.images], desc="segment", unit="image",
                     disable=args.quiet or len(args.images) < 2):
        try:
            img = read_image(path, channel=args.channel)
            # SegmentParams mirrors segment_nuclei's keyword arguments one to one
            labels, info = segment_nuclei(bk.asarray(img), **dataclasses.asdict(params),
                                          return_info=True)
            labels = to_numpy(labels).astype(np.uint32)
            stem = _stem(path)
            if stem in written:  # same file name from two folders: keep both outputs
                stem = f"{path.parent.name}_{stem}"
                print(f"note: {path} shares its name with an earlier input; "
                      f"writing {stem}_nuclei.tif", file=sys.stderr)
            written.add(stem)
            dest = out / f"{stem}_nuclei.tif"
            tifffile.imwrite(dest, labels, compression="zlib")
            rows.append((path, int(labels.max()), info["diameter"]))
        except (ValueError, OSError) as exc:
            failures += 1
            msg = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
            print(f"error: {msg}", file=sys.stderr)
    for path, n, d in rows:
        print(f"{path}\t{n} nuclei\t(diameter {d:.1f} px)")
    print(f"wrote {len(rows)} label image(s) to {out}" +
          (f"; {failures} input(s) failed" if failures else ""))
    return 1 if failures else 0


def cmd_quantify(args) -> int:
    import numpy as np
    import tifffile

    from erquant.io import read_image
    from erquant.pipeline import quantify

    try:
        nuc = read_image(args.nuclei)
        chans = [nuc]
        markers = {}
        for k, spec in enumerate(args.marker or []):
            name, _, path = spec.partition("=")
            if not path:
                name, path = f"marker{k + 1}", name
            img = read_image(path)
            if img.shape != nuc.shape:
                raise ValueError(f"{path}: shape {img.shape} differs from the nuclei image "
                                 f"{args.nuclei} {nuc.shape}")
            chans.append(img)
            markers[name] = len(chans) - 1
        field = np.stack(chans)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    params = _segment_params(args)
    res = quantify(field, nuclei_channel=0, marker_channels=markers, params=params,
                   backend=args.backend)
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    stem = _stem(Path(args.nuclei))
    res.table.to_csv(out / f"{stem}_cells.csv", index=False)
    tifffile.imwrite(out / f"{stem}_nuclei.tif", res.nuclei, compression="zlib")
    tifffile.imwrite(out / f"{stem}_cells.tif", res.cells, compression="zlib")
    print(f"{args.nuclei}: {res.n_nuclei} cells; table {out / (stem + '_cells.csv')}")
    for k, v in res.summary().items():
        print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    return 0


def cmd_demo(args) -> int:
    from erquant.demo import run_demo

    return run_demo(Path(args.plate) if args.plate else None, Path(args.outdir),
                    regenerate=args.regenerate, workers=args.workers,
                    backend=args.backend)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="erquant",
        description="Nuclei counting, cell segmentation and ERα quantification "
                    "(NumPy or CuPy backend).")
    ap.add_argument("--version", action="version", version=f"erquant {__version__}")
    ap.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment nuclei in images; write uint32 label TIFFs",
                       description="Segment nuclei in 2-D greyscale, RGB (brightest channel) "
                                   "or multi-channel (--channel N) TIFF/PNG/JPEG images and "
                                   "write OUTDIR/<stem>_nuclei.tif.")
    p.add_argument("images", nargs="+", help="input image files")
    p.add_argument("-o", "--outdir", required=True)
    p.add_argument("--channel", type=int, default=None,
                   help="channel index of a multi-channel image (default: brightest of RGB)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_segment_options(p)
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("quantify", help="quantify one field: nuclei + marker images → per-cell CSV")
    p.add_argument("nuclei", help="nuclear-stain image")
    p.add_argument("--marker", action="append", metavar="NAME=PATH",
                   help="marker image, e.g. er=A01_s1_w2.tif (repeatable)")
    p.add_argument("-o", "--outdir", required=True)
    _add_segment_options(p)
    p.set_defaults(func=cmd_quantify)

    from erquant.synthetic import add_cli as add_synth

    add_synth(sub)

    p = sub.add_parser("demo", help="generate the demo plate (if missing) and quantify it")
    p.add_argument("--plate", default=None,
                   help="demo plate folder (default: OUTDIR/demo_plate; generated if missing)")
    p.add_argument("-o", "--outdir", default="demo_output")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per core; 0 = in this process)")
    p.add_argument("--regenerate", action="store_true")
    p.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    p.set_defaults(func=cmd_demo)

    from erquant.bench import add_parser as add_bench

    add_bench(sub)

    from erquant.batch.cli import add_parser as add_run

    add_run(sub)
    try:  # the dose-response report (erquant.analysis)
        from erquant.analysis.cli import add_parser as add_report
    except ImportError:
        add_report = None
    if add_report is not None:
        add_report(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    rc = args.func(args)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
