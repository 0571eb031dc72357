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
    """The parameters of ``--params`` (or the defaults) with the segment options applied.

    Raises :class:`UsageError` (exit 2) for a missing or invalid parameter file
    and for option values no image could use, naming the option or the file.
    """
    from erquant._cli_errors import UsageError, load_params_file

    seg = {"method": args.method, "diameter": args.diameter, "threshold": args.threshold,
           "threshold_value": args.threshold_value, "downsample": args.downsample}
    given = {k: v for k, v in seg.items() if v is not None}
    params = load_params_file(args.params).replace(
        **{f"segment.{k}": v for k, v in given.items()})
    s = params.segment

    def where(key: str) -> str:  # the option or the file that set segment.<key>
        if key in given:
            return "--" + key.replace("_", "-")
        return f"{args.params}: segment.{key}" if args.params is not None else f"segment.{key}"

    for key in ("diameter", "downsample", "threshold_value"):
        value = getattr(s, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise UsageError(f"{where(key)}: must be a number, got {value!r}")
    if s.diameter is not None and not s.diameter > 0:
        raise UsageError(f"{where('diameter')}: must be > 0 px, got {s.diameter:g}")
    if not (s.downsample == 0 or s.downsample >= 1):
        raise UsageError(f"{where('downsample')}: must be 0 (automatic) or >= 1, "
                         f"got {s.downsample:g}")
    if s.method not in ("auto", "learned", "classical"):
        raise UsageError(f"{where('method')}: must be auto, learned or classical, "
                         f"got {s.method!r}")
    if s.threshold not in ("otsu", "li", "triangle", "manual"):
        raise UsageError(f"{where('threshold')}: must be otsu, li, triangle or manual, "
                         f"got {s.threshold!r}")
    if s.threshold == "manual" and s.threshold_value is None:
        raise UsageError(f"{where('threshold')}: 'manual' needs a threshold value "
                         "(--threshold-value)")
    return params


def _channel_message(exc, flag: str | None) -> str:
    """A :class:`~erquant.io.tiff.ChannelError` worded for the command line.

    ``flag`` is the option that picks a channel (None: the command has none).
    """
    n, path = exc.n_channels, exc.path
    if exc.requested is None:
        how = (f"pick one with {flag} N (0–{n - 1})" if flag else
               "this command reads one 2-D image per file (save each channel as its own file, "
               "or pick one with erquant segment --channel N)")
        return f"{path}: holds {n} channels of shape {tuple(exc.shape)}; {how}"
    if n == 1:
        return (f"{path}: is a 2-D grey image without channels; {flag} {exc.requested} "
                f"does not apply (leave {flag} out)")
    return f"{path}: has {n} channels; {flag} {exc.requested} is out of range (0–{n - 1})"


def _add_method_option(p):
    p.add_argument("--method", default=None, choices=["auto", "learned", "classical"],
                   help="nuclei segmenter: learned (the shipped network), classical (the "
                        "fast threshold/split path) or auto = learned (default, or the "
                        "--params file's segment.method)")


def _add_segment_options(p):
    _add_method_option(p)
    p.add_argument("--diameter", type=float, default=None,
                   help="nucleus diameter in px (default: estimated per image)")
    p.add_argument("--threshold", default=None, choices=["otsu", "li", "triangle", "manual"],
                   help="foreground threshold method (default: otsu, or the --params file's)")
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

    from erquant._cli_errors import check_output_dir, file_message, get_backend_or_usage
    from erquant.backend import to_numpy
    from erquant.io import read_image
    from erquant.io.tiff import ChannelError
    from erquant.qc import validate_image
    from erquant.segment import segment_nuclei

    # usage errors (exit 2) before any work
    params = _segment_params(args).segment
    bk = get_backend_or_usage(args.backend)
    out = check_output_dir(args.outdir)
    failures = 0
    rows = []
    written: set[str] = set()
    for path in tqdm([Path(p) for p in args.images], desc="segment", unit="image",
                     disable=args.quiet or len(args.images) < 2):
        try:
            img = read_image(path, channel=args.channel)
            # NaN, saturated or constant (all pixels equal, e.g. a blank acquisition) is a
            # failed input, as in `erquant quantify` and `erquant run`; an empty field
            # (background and noise, no nucleus) is a valid result: 0 nuclei
            validate_image(img, "nuclei")
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
            if args.explain:
                from erquant.explain import write_explain

                write_explain(img, labels, info, out / stem)
            rows.append((path, int(labels.max()), info.get("diameter")))
        except ChannelError as exc:
            failures += 1
            print(f"error: {_channel_message(exc, '--channel')}", file=sys.stderr)
        except (ValueError, TypeError, OSError) as exc:
            failures += 1
            print(f"error: {file_message(path, exc)}", file=sys.stderr)
    for path, n, d in rows:
        size = f"diameter {d:.1f} px" if d is not None else "no nucleus size found"
        print(f"{path}\t{n} nuclei\t({size})")
    print(f"wrote {len(rows)} label image(s) to {out}" +
          (f"; {failures} input(s) failed" if failures else ""))
    return 1 if failures else 0


def _parse_markers(specs) -> list[tuple[str, str]]:
    """``--marker`` values → [(name, path)]; a malformed one is a UsageError."""
    from erquant._cli_errors import UsageError

    markers: list[tuple[str, str]] = []
    for k, spec in enumerate(specs or []):
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = f"marker{k + 1}", name
        if not name.strip() or not path.strip():
            raise UsageError(f"--marker {spec!r}: expected NAME=PATH (e.g. er=A01_s1_w2.tif) "
                             "or PATH")
        if name in {n for n, _ in markers} or name == "nuclei":
            raise UsageError(f"--marker {spec!r}: the name {name!r} is taken (by the nuclei "
                             "image or an earlier --marker)")
        markers.append((name, path))
    return markers


def cmd_quantify(args) -> int:
    import numpy as np
    import tifffile

    from erquant._cli_errors import check_output_dir, file_message, get_backend_or_usage
    from erquant.io import read_image
    from erquant.io.tiff import ChannelError
    from erquant.pipeline import quantify
    from erquant.qc import validate_image

    # usage errors (exit 2) before any work
    params = _segment_params(args)
    marker_specs = _parse_markers(args.marker)
    bk = get_backend_or_usage(args.backend)
    out = check_output_dir(args.outdir)
    # input errors (exit 1), each naming its file
    path = args.nuclei
    try:
        nuc = read_image(path)
        chans = [nuc]
        markers = {}
        for name, path in marker_specs:
            img = read_image(path)
            if img.shape != nuc.shape:
                raise ValueError(f"{path}: shape {img.shape} differs from the nuclei image "
                                 f"{args.nuclei} {nuc.shape}")
            chans.append(img)
            markers[name] = len(chans) - 1
        # NaN / constant / saturated: quantify would refuse the field without naming the file
        for name, img_path, img in zip([params.nuclei_name, *markers],
                                       [args.nuclei, *(p for _, p in marker_specs)], chans):
            path = img_path  # the file the error below names
            validate_image(img, name)
        field = np.stack(chans)
    except ChannelError as exc:
        print(f"error: {_channel_message(exc, None)}", file=sys.stderr)
        return 1
    except (ValueError, TypeError, OSError) as exc:
        print(f"error: {file_message(path, exc)}", file=sys.stderr)
        return 1
    res = quantify(field, nuclei_channel=0, marker_channels=markers, params=params,
                   backend=bk)
    stem = _stem(Path(args.nuclei))
    res.table.to_csv(out / f"{stem}_cells.csv", index=False)
    tifffile.imwrite(out / f"{stem}_nuclei.tif", res.nuclei, compression="zlib")
    tifffile.imwrite(out / f"{stem}_cells.tif", res.cells, compression="zlib")
    print(f"{args.nuclei}: {res.n_nuclei} cells; table {out / (stem + '_cells.csv')}")
    for k, v in res.summary().items():
        print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    return 0


def cmd_demo(args) -> int:
    from erquant._cli_errors import UsageError, check_output_dir
    from erquant._synthplate import PlateFolderError
    from erquant.demo import run_demo

    check_output_dir(args.outdir)
    try:
        return run_demo(Path(args.plate) if args.plate else None, Path(args.outdir),
                        regenerate=args.regenerate, workers=args.workers,
                        backend=args.backend, method=args.method or "auto")
    except PlateFolderError as exc:  # the generator refused a folder holding user data
        raise UsageError(f"{exc} (--plate)") from exc


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
    p.add_argument("--explain", action="store_true",
                   help="also write <name>_explain.json (method, diameter estimate, "
                        "threshold, noise, working scale) and <name>_explain.png (outlines)")
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
    _add_method_option(p)
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
    from erquant._cli_errors import run_command

    ap = build_parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(message)s")
    if not args.verbose:  # tifffile logs a corrupt header before our one-line error
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    # user errors: one line `error: <file>: <problem>`, exit 2 (usage) or 1 (inputs failed)
    return run_command(args.func, args, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
