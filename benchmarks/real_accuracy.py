"""Nuclei segmentation accuracy on the real annotated images (default parameters).

Matched F1 at IoU 0.5 per source folder and overall (TP/FP/FN summed over images)
on ``../shared/data/real`` (or ``--data DIR``)::

    python benchmarks/real_accuracy.py [--data ../shared/data/real] [--backend numpy]
        [--json out.json] [--per-image]

Writes a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from erquant.metrics import MatchResult, match_labels

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def gt_path(entry: str) -> str:
    """Ground-truth label path from a manifest cell (prefers the derived label TIFF)."""
    if "(+ gt_labels/" in entry:
        base = entry.split(" (")[0]
        folder = base.rsplit("/gt/", 1)[0]
        return folder + "/" + entry.split("(+ ")[1].rstrip(")")
    return entry.split(" (")[0]


def load_real_set(data: Path = DEFAULT_DATA):
    """Yield (source, name, image, gt_labels) for each image of the manifest."""
    from erquant.io import read_image

    with open(data / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            img = read_image(data / row["image"])
            gt = read_image(data / gt_path(row["ground_truth"]))
            yield row["image"].split("/")[0], row["image"], img, gt


def evaluate(data: Path = DEFAULT_DATA, *, backend: str = "numpy", per_image: bool = False,
             **seg_kwargs):
    from erquant.backend import get_backend, to_numpy
    from erquant.segment import segment_nuclei

    bk = get_backend(backend)
    per_source: dict[str, MatchResult] = {}
    rows = []
    t0 = time.perf_counter()
    for source, name, img, gt in load_real_set(data):
        pred = to_numpy(segment_nuclei(bk.asarray(img), **seg_kwargs))
        m = match_labels(gt, pred)
        per_source[source] = per_source.get(source, MatchResult(0, 0, 0)) + m
        rows.append(dict(source=source, image=name, tp=m.tp, fp=m.fp, fn=m.fn, f1=m.f1,
                         n_true=m.n_true, n_pred=m.n_pred))
        if per_image:
            print(f"{m.f1:.3f} tp={m.tp:4d} fp={m.fp:4d} fn={m.fn:4d}  {name}", file=sys.stderr)
    total = sum(per_source.values(), MatchResult(0, 0, 0))
    return per_source, total, rows, time.perf_counter() - t0


def markdown(per_source, total) -> str:
    lines = ["| source | images | true | pred | TP | FP | FN | precision | recall | F1@0.5 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for src, m in sorted(per_source.items()):
        lines.append(f"| {src} | | {m.n_true} | {m.n_pred} | {m.tp} | {m.fp} | {m.fn} | "
                     f"{m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} |")
    m = total
    lines.append(f"| **overall** | | {m.n_true} | {m.n_pred} | {m.tp} | {m.fp} | {m.fn} | "
                 f"{m.precision:.3f} | {m.recall:.3f} | **{m.f1:.3f}** |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--per-image", action="store_true")
    args = ap.parse_args(argv)
    if not (args.data / "manifest.csv").exists():
        print(f"no manifest.csv under {args.data}", file=sys.stderr)
        return 2
    per_source, total, rows, secs = evaluate(args.data, backend=args.backend,
                                             per_image=args.per_image)
    counts = {}
    for r in rows:
        counts[r["source"]] = counts.get(r["source"], 0) + 1
    table = markdown(per_source, total)
    for src, n in counts.items():
        table = table.replace(f"| {src} | |", f"| {src} | {n} |")
    table = table.replace("| **overall** | |", f"| **overall** | {len(rows)} |")
    print(table)
    print(f"\n{len(rows)} images in {secs:.1f} s (backend {args.backend})")
    if args.json:
        args.json.write_text(json.dumps(
            dict(per_source={k: dict(tp=v.tp, fp=v.fp, fn=v.fn, f1=v.f1) for k, v in per_source.items()},
                 overall=dict(tp=total.tp, fp=total.fp, fn=total.fn, f1=total.f1), images=rows),
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
