"""Batch-engine benchmark: ``erquant run`` on generated plates read from disk.

Measures, each run a fresh ``erquant run`` process (``-q --no-report``):

1. **throughput** — fields/s on a plate of ``--fields`` (≥ 200) two-channel uint16 fields of
   ``--size``² (2048² by default) with 1 and with 2 worker processes (``--workers-list``),
   and the speed-up of 2 over 1 (same files, same process layout, run back to back);
2. **memory** — peak RSS of the whole process tree (client + scheduler + workers,
   sampled every 0.1 s with psutil) for two plate sizes (``--mem-fields``, default
   100 and 400 fields of 1024²): with a bounded number of fields in flight it should not
   grow with the plate.

Plates are built from ``--unique`` rendered synthetic fields (``erquant.synthetic``,
300 nuclei per 1024², 24 px nuclei) written again under every well name, so generating
400 fields takes seconds, not an hour; every field is still a separate pair of TIFF files
read and decoded from disk by the workers.

    python benchmarks/batch.py                    # full: 200 × 2048², 100/400 × 1024²
    python benchmarks/batch.py --quick            # CI-sized smoke run
    python benchmarks/batch.py --out /tmp/bb      # where plates and results go

Writes ``batch.json`` and ``batch.md`` to ``--out`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from _watch import run_watched


def make_plate(folder: Path, n_fields: int, size: int, unique: int, seed: int = 0) -> Path:
    """A MetaXpress folder of ``n_fields`` fields (4 per well) built from ``unique`` renders."""
    import tifffile

    from erquant.io.plate import well_name
    from erquant.synthetic import make_field

    if (folder / "done.json").exists():
        meta = json.loads((folder / "done.json").read_text())
        if meta == {"n": n_fields, "size": size, "unique": unique, "seed": seed}:
            return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    n_nuc = int(300 * size * size / 1024**2)
    renders = [make_field(shape=(size, size), n_nuclei=n_nuc, seed=seed + i, in_focus=True).image
               for i in range(unique)]
    for k in range(n_fields):
        well, fld = divmod(k, 4)
        r, c = divmod(well, 24)
        img = renders[k % unique]
        for ch in (0, 1):
            tifffile.imwrite(folder / f"{well_name(r + 1, c + 1)}_s{fld + 1}_w{ch + 1}.tif",
                             img[ch], compression="zlib")
    (folder / "done.json").write_text(json.dumps({"n": n_fields, "size": size,
                                                  "unique": unique, "seed": seed}))
    return folder


def run_once(plate: Path, out: Path, workers: int, extra=()) -> dict:
    """One fresh ``erquant run`` process; wall time and peak RSS of its process tree."""
    shutil.rmtree(out, ignore_errors=True)
    exe = Path(sys.executable).parent / "erquant"
    cmd = [str(exe), "run", str(plate), "-o", str(out), "--workers", str(workers), "-q",
           "--no-report", "--no-flatfield", *extra]
    wall, peak = run_watched(cmd, poll=0.1, tail=2000)
    run = json.loads((out / "run.json").read_text())
    import pandas as pd

    fields = pd.read_csv(out / "fields.csv")
    return {"workers": workers, "fields": int(run["n_fields"]), "wall_s": round(wall, 2),
            "fields_per_s": round(run["n_fields"] / wall, 3),
            "mean_field_s": round(float(fields["seconds"].mean()), 4),
            "peak_rss_mb": round(peak / 2**20, 1), "n_cells": int(run["n_cells"])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fields", type=int, default=200)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--workers-list", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--mem-fields", type=int, nargs=2, default=[100, 400])
    ap.add_argument("--mem-size", type=int, default=1024)
    ap.add_argument("--unique", type=int, default=8, help="distinct rendered fields")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="smoke run: 12 × 512², 8/24 × 256²")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args(argv)
    if args.quick:
        args.fields, args.size, args.mem_fields, args.mem_size, args.unique = 12, 512, [8, 24], \
            256, 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / "batch_plates"
    t0 = time.perf_counter()
    plate = make_plate(work / f"tp_{args.fields}x{args.size}", args.fields, args.size,
                       args.unique)
    gen_s = time.perf_counter() - t0
    print(f"plate of {args.fields} × {args.size}² generated in {gen_s:.0f} s", flush=True)
    thr = []
    for rep in range(args.repeats):
        for w in args.workers_list:
            r = run_once(plate, work / "out", w)
            r["repeat"] = rep
            thr.append(r)
            print(f"  {w} worker(s): {r['fields_per_s']:.2f} fields/s "
                  f"({r['wall_s']:.1f} s wall, peak RSS {r['peak_rss_mb']:.0f} MB)", flush=True)
    mem = []
    for n in args.mem_fields:
        p = make_plate(work / f"mem_{n}x{args.mem_size}", n, args.mem_size, args.unique)
        r = run_once(p, work / "out", max(args.workers_list))
        mem.append(r)
        print(f"  memory, {n} × {args.mem_size}²: peak RSS {r['peak_rss_mb']:.0f} MB "
              f"({r['fields_per_s']:.2f} fields/s)", flush=True)
    best = {w: max(r["fields_per_s"] for r in thr if r["workers"] == w)
            for w in args.workers_list}
    speedup = best[max(best)] / best[min(best)] if len(best) > 1 else None
    res = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "processor": platform.processor()},
           "plate": {"fields": args.fields, "size": args.size, "unique": args.unique},
           "throughput": thr, "memory": mem, "speedup": speedup,
           "memory_growth": mem[1]["peak_rss_mb"] / mem[0]["peak_rss_mb"]}
    (out / "batch.json").write_text(json.dumps(res, indent=1))
    lines = [f"# erquant run — batch engine benchmark ({os.cpu_count()} CPUs)", "",
             f"Throughput: {args.fields} fields of {args.size}² (2 channels, uint16, zlib TIFF "
             "from disk); each row a fresh `erquant run` process.", "",
             "| workers | fields | wall s | fields/s | s/field in worker | peak RSS MB |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['workers']} | {r['fields']} | {r['wall_s']} | {r['fields_per_s']} | "
              f"{r['mean_field_s']} | {r['peak_rss_mb']} |" for r in thr]
    if speedup:
        lines += ["", f"Speed-up {max(best)} vs {min(best)} workers: **{speedup:.2f}×**"]
    lines += ["", f"Memory ({max(args.workers_list)} workers, {args.mem_size}² fields):", "",
              "| fields | peak RSS MB (whole process tree) | fields/s |", "|---:|---:|---:|"]
    lines += [f"| {r['fields']} | {r['peak_rss_mb']} | {r['fields_per_s']} |" for r in mem]
    lines += ["", f"Peak RSS ratio {mem[1]['fields']}/{mem[0]['fields']} fields: "
              f"{res['memory_growth']:.2f}×"]
    (out / "batch.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
