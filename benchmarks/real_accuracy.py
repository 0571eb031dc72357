"""Nuclei segmentation accuracy on the real annotated images (default parameters).

On ``../shared/data/real`` (or ``--data DIR``), evaluation that cannot hide a
failed image:

* per source: pooled F1 at IoU 0.5 (TP/FP/FN summed over its images) **and** the
  mean per-image F1, the worst image and the share of images whose estimated
  diameter is within 1.3× of the true median diameter;
* per image: F1, the estimated diameter vs the true median equivalent diameter
  of the ground-truth labels, and the unmatched objects by error type;
* the five worst images with their error types: each unmatched object is
  classified from its overlaps — **merge** (one predicted object over ≥ 2 true
  nuclei), **split** (one true nucleus over ≥ 2 predicted objects), **missed**
  (a true nucleus with < 10 % of its area predicted), **spurious** (a predicted
  object with < 10 % of its area on true nuclei) or **boundary** (one-to-one
  overlap with IoU ≤ 0.5);
* ``--loso NAME=v1,v2,...``: leave-one-source-out check of a data-driven default
  (a ``segment_nuclei`` keyword, or an UPPERCASE constant of ``erquant.segment``):
  for each source the value with the best mean per-image F1 on the *other*
  sources is chosen and scored on the held-out source::

    python benchmarks/real_accuracy.py [--data ../shared/data/real] [--backend numpy]
        [--per-image] [--loso NOISE_FLOOR=0.5,1,1.5,2] [--out benchmarks/results/real_accuracy]

Writes Markdown to stdout and, with ``--out`` (default
``benchmarks/results/real_accuracy``), ``.json`` and ``.md`` files.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from erquant.metrics import MatchResult, iou_pairs

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "real_accuracy"
ERROR_TYPES = ("merge", "split", "missed", "spurious", "boundary")


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


def true_median_diameter(gt) -> float:
    """Median equivalent diameter (px) of the ground-truth objects."""
    area = np.bincount(np.asarray(gt).ravel().astype(np.int64))[1:]
    area = area[area > 0]
    return float(np.median(2 * np.sqrt(area / np.pi))) if area.size else float("nan")


def classify_errors(gt, pred, iou_threshold: float = 0.5) -> tuple[MatchResult, dict]:
    """Match ``pred`` to ``gt`` and classify every unmatched object by its overlaps.

    Returns the match counts and ``{type: number of unmatched objects}`` over
    :data:`ERROR_TYPES` (true and predicted objects together; a merge of two true
    nuclei counts its unmatched true nuclei and its predicted object).

    Examples
    --------
    >>> gt = np.zeros((10, 20), np.uint16); gt[2:8, 2:8] = 1; gt[2:8, 9:15] = 2
    >>> pred = np.zeros_like(gt); pred[2:8, 2:15] = 1          # the two merged
    >>> m, err = classify_errors(gt, pred)
    >>> (m.tp, m.fp, m.fn), err["merge"]
    ((0, 1, 2), 3)
    """
    ti, pi, iou, nt, np_ = iou_pairs(gt, pred)
    from erquant.metrics import _compact

    t, _ = _compact(np.asarray(gt))
    p, _ = _compact(np.asarray(pred))
    area_t = np.bincount(t.ravel(), minlength=nt + 1).astype(float)
    area_p = np.bincount(p.ravel(), minlength=np_ + 1).astype(float)
    inter = iou * (area_t[ti] + area_p[pi]) / (1 + iou)
    matched = iou > iou_threshold
    tp = int(matched.sum())
    mt = np.zeros(nt + 1, bool)
    mp = np.zeros(np_ + 1, bool)
    mt[ti[matched]] = True
    mp[pi[matched]] = True
    frac_t = inter / area_t[ti]  # share of the true object covered by the pair
    frac_p = inter / area_p[pi]  # share of the predicted object on the true one
    # a predicted object over several true nuclei (each ≥ 25 % covered): a merge
    n_t_per_p = np.bincount(pi[frac_t >= 0.25], minlength=np_ + 1)
    # a true nucleus covered by several predicted objects (each ≥ 10 % of it): a split
    n_p_per_t = np.bincount(ti[frac_t >= 0.1], minlength=nt + 1)
    cover_t = np.bincount(ti, weights=frac_t, minlength=nt + 1)
    cover_p = np.bincount(pi, weights=frac_p, minlength=np_ + 1)
    # the dominant partner of each object
    best_p_of_t = np.zeros(nt + 1, np.int64)
    best_t_of_p = np.zeros(np_ + 1, np.int64)
    order = np.argsort(inter)  # later (larger) overlaps overwrite smaller ones
    best_p_of_t[ti[order]] = pi[order]
    best_t_of_p[pi[order]] = ti[order]
    err = dict.fromkeys(ERROR_TYPES, 0)
    for g in np.flatnonzero(~mt[1:]) + 1:
        if cover_t[g] < 0.1:
            err["missed"] += 1
        elif n_t_per_p[best_p_of_t[g]] >= 2:
            err["merge"] += 1
        elif n_p_per_t[g] >= 2:
            err["split"] += 1
        else:
            err["boundary"] += 1
    for q in np.flatnonzero(~mp[1:]) + 1:
        if cover_p[q] < 0.1:
            err["spurious"] += 1
        elif n_t_per_p[q] >= 2:
            err["merge"] += 1
        elif n_p_per_t[best_t_of_p[q]] >= 2:
            err["split"] += 1
        else:
            err["boundary"] += 1
    return MatchResult(tp=tp, fp=np_ - tp, fn=nt - tp), err


def _load(data: Path):
    """The real set in memory (so several parameter values re-read nothing)."""
    return list(load_real_set(data))


def evaluate(data: Path = DEFAULT_DATA, *, backend: str = "numpy", per_image: bool = False,
             images=None, **seg_kwargs):
    """Segment every image with default (or ``seg_kwargs``) parameters.

    Returns ``(per_source pooled MatchResult, overall MatchResult, rows, seconds)``;
    each row has the image's counts, F1, estimated and true median diameter and
    error types.
    """
    from erquant.backend import get_backend, to_numpy
    from erquant.segment import segment_nuclei

    bk = get_backend(backend)
    per_source: dict[str, MatchResult] = {}
    rows = []
    t0 = time.perf_counter()
    for source, name, img, gt in (images if images is not None else load_real_set(data)):
        pred, info = segment_nuclei(bk.asarray(img), return_info=True, **seg_kwargs)
        pred = to_numpy(pred)
        m, err = classify_errors(gt, pred)
        per_source[source] = per_source.get(source, MatchResult(0, 0, 0)) + m
        d_est = info.get("diameter")
        d_true = true_median_diameter(gt)
        ratio = float(d_est) / d_true if d_est else float("nan")
        rows.append(dict(source=source, image=name, tp=m.tp, fp=m.fp, fn=m.fn, f1=m.f1,
                         n_true=m.n_true, n_pred=m.n_pred,
                         d_est=float(d_est) if d_est else float("nan"), d_true=d_true,
                         d_ratio=ratio, errors=err))
        if per_image:
            print(f"{m.f1:.3f} tp={m.tp:4d} fp={m.fp:4d} fn={m.fn:4d} d={rows[-1]['d_est']:6.1f}"
                  f"/{d_true:5.1f}  {name}", file=sys.stderr)
    total = sum(per_source.values(), MatchResult(0, 0, 0))
    return per_source, total, rows, time.perf_counter() - t0


def within(ratio: float, factor: float = 1.3) -> bool:
    return bool(np.isfinite(ratio) and 1 / factor <= ratio <= factor)


def summary(per_source, total, rows) -> dict:
    """Per-source and overall figures (pooled F1, mean per-image F1, worst, diameters)."""
    out = {}
    for src in sorted(per_source) + ["overall"]:
        rs = [r for r in rows if src == "overall" or r["source"] == src]
        m = total if src == "overall" else per_source[src]
        f1s = np.array([r["f1"] for r in rs])
        out[src] = dict(images=len(rs), true=m.n_true, pred=m.n_pred, tp=m.tp, fp=m.fp,
                        fn=m.fn, precision=m.precision, recall=m.recall, f1_pooled=m.f1,
                        f1_mean_image=float(f1s.mean()), f1_min_image=float(f1s.min()),
                        below_05=int((f1s < 0.5).sum()),
                        diameter_within_1_3=float(np.mean([within(r["d_ratio"]) for r in rs])))
    return out


def markdown(per_source, total, rows=None) -> str:
    """Per-source table; with ``rows`` also mean/min per-image F1 and diameters."""
    if rows is None:
        lines = ["| source | true | pred | TP | FP | FN | precision | recall | F1@0.5 |",
                 "|---|---|---|---|---|---|---|---|---|"]
        for src, m in sorted(per_source.items()) + [("**overall**", total)]:
            lines.append(f"| {src} | {m.n_true} | {m.n_pred} | {m.tp} | {m.fp} | {m.fn} | "
                         f"{m.precision:.3f} | {m.recall:.3f} | {m.f1:.3f} |")
        return "\n".join(lines)
    s = summary(per_source, total, rows)
    lines = ["| source | images | true | pred | TP | FP | FN | precision | recall | "
             "pooled F1@0.5 | mean image F1 | worst image | images < 0.5 | d within 1.3× |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for src, v in s.items():
        name = "**overall**" if src == "overall" else src
        lines.append(f"| {name} | {v['images']} | {v['true']} | {v['pred']} | {v['tp']} | "
                     f"{v['fp']} | {v['fn']} | {v['precision']:.3f} | {v['recall']:.3f} | "
                     f"{v['f1_pooled']:.3f} | {v['f1_mean_image']:.3f} | "
                     f"{v['f1_min_image']:.3f} | {v['below_05']} | "
                     f"{100 * v['diameter_within_1_3']:.0f} % |")
    return "\n".join(lines)


def _short(name: str) -> str:
    parts = name.split("/")
    stem = parts[-1].rsplit(".", 1)[0]
    return f"{parts[0].split('_')[0]}/{stem[:12]}"


def image_table(rows, worst: int | None = None) -> str:
    """Per-image table (sorted by F1; the ``worst`` first only when given)."""
    rs = sorted(rows, key=lambda r: r["f1"])
    if worst:
        rs = rs[:worst]
    lines = ["| image | true | pred | F1 | d est / true (px) | ratio | "
             + " | ".join(ERROR_TYPES) + " |",
             "|---|---:|---:|---:|---:|---:|" + "---:|" * len(ERROR_TYPES)]
    for r in rs:
        lines.append(f"| {_short(r['image'])} | {r['n_true']} | {r['n_pred']} | {r['f1']:.3f} | "
                     f"{r['d_est']:.1f} / {r['d_true']:.1f} | {r['d_ratio']:.2f} | "
                     + " | ".join(str(r["errors"][k]) for k in ERROR_TYPES) + " |")
    return "\n".join(lines)


def _parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def comparison(summaries: dict) -> str:
    """Side-by-side table of the methods' per-source figures."""
    methods = list(summaries)
    head = "| source | " + " | ".join(f"{m} pooled F1 | {m} mean image F1 | {m} worst | "
                                        f"{m} < 0.5" for m in methods) + " |"
    lines = [head, "|---|" + "---:|" * (4 * len(methods))]
    for src in next(iter(summaries.values())):
        cells = []
        for m in methods:
            v = summaries[m][src]
            cells.append(f"{v['f1_pooled']:.3f} | {v['f1_mean_image']:.3f} | "
                         f"{v['f1_min_image']:.3f} | {v['below_05']}")
        lines.append(f"| {'**overall**' if src == 'overall' else src} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def leave_one_source_out(images, name: str, values, *, backend: str = "numpy",
                         method: str = "classical") -> dict:
    """For each source, pick ``name``'s value by the best mean per-image F1 on the
    other sources and score it on the held-out one."""
    from erquant import segment
    from erquant.models import learned

    module = segment if method == "classical" else learned
    by_value = {}
    for v in values:
        if name.isupper():  # a module constant (erquant.segment, or .models.learned)
            old = getattr(module, name)
            setattr(module, name, v)
            try:
                _, _, rows, _ = evaluate(images=images, backend=backend, method=method)
            finally:
                setattr(module, name, old)
        else:  # a keyword argument of segment_nuclei
            _, _, rows, _ = evaluate(images=images, backend=backend, method=method,
                                     **{name: v})
        by_value[v] = rows
    sources = sorted({r["source"] for r in next(iter(by_value.values()))})
    held = []
    chosen = {}
    for src in sources:
        def score(v, src=src):
            return np.mean([r["f1"] for r in by_value[v] if r["source"] != src])

        best = max(values, key=score)
        chosen[src] = best
        held += [r for r in by_value[best] if r["source"] == src]
    pooled = sum((MatchResult(r["tp"], r["fp"], r["fn"]) for r in held), MatchResult(0, 0, 0))
    in_sample = {}
    for v, rows in by_value.items():
        m = sum((MatchResult(r["tp"], r["fp"], r["fn"]) for r in rows), MatchResult(0, 0, 0))
        in_sample[str(v)] = dict(f1_pooled=m.f1, f1_mean_image=float(np.mean([r["f1"] for r in rows])))
    return dict(parameter=name, values=[str(v) for v in values], chosen={s: str(v) for s, v in chosen.items()},
                loso_f1_pooled=pooled.f1, loso_f1_mean_image=float(np.mean([r["f1"] for r in held])),
                in_sample=in_sample)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--backend", default="numpy")
    ap.add_argument("--out", type=lambda v: Path(v) if v else None, default=DEFAULT_OUT,
                    help="write OUT.json and OUT.md ('' to skip)")
    ap.add_argument("--per-image", action="store_true", help="print every image's row")
    ap.add_argument("--methods", default="learned,classical",
                    help="segment_nuclei methods to score side by side (comma-separated)")
    ap.add_argument("--loso", action="append", default=[], metavar="NAME=v1,v2,...",
                    help="leave-one-source-out check of a parameter of the first method")
    args = ap.parse_args(argv)
    if not (args.data / "manifest.csv").exists():
        print(f"no manifest.csv under {args.data}", file=sys.stderr)
        return 2
    images = _load(args.data)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    text, results = [], {}
    for method in methods:
        per_source, total, rows, secs = evaluate(images=images, backend=args.backend,
                                                 method=method)
        results[method] = dict(summary=summary(per_source, total, rows), images=rows,
                               seconds=secs)
        text += [f"\n## method={method}\n", markdown(per_source, total, rows),
                 f"\n{len(rows)} images in {secs:.1f} s (backend {args.backend})",
                 "\nFive worst images (unmatched objects by error type):\n", image_table(rows, 5)]
        if args.per_image:
            text += ["\nEvery image:\n", image_table(rows)]
    if len(methods) > 1:
        text = ["## Side by side\n", comparison({m: r["summary"] for m, r in results.items()})] + text
    loso = []
    for spec in args.loso:
        name, vals = spec.split("=", 1)
        res = leave_one_source_out(images, name, [_parse_value(v) for v in vals.split(",")],
                                   backend=args.backend, method=methods[0])
        loso.append(res)
        text.append(f"\nLeave-one-source-out ({methods[0]}), {name} ∈ {{{', '.join(res['values'])}}}: "
                    f"held-out pooled F1 {res['loso_f1_pooled']:.3f}, mean image F1 "
                    f"{res['loso_f1_mean_image']:.3f}; chosen per held-out source "
                    f"{res['chosen']}; in-sample {res['in_sample']}")
    print("\n".join(text))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text("\n".join(text) + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(
            dict(methods=results, loso=loso, backend=args.backend), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
