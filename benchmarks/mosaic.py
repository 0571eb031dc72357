"""``erquant run`` on one generated 20,000 × 20,000 two-channel mosaic (issue 12).

1. Writes a tiled uint16 BigTIFF (``(2, Y, X)``, 512² tiles, uncompressed) *lazily*:
   a few distinct synthetic blocks (:func:`erquant.synthetic.make_field`, no
   vignetting, nuclei kept ``MARGIN`` px inside each block so none is cut by a block
   edge) repeated over the plane and streamed to ``tifffile`` tile by tile — the
   mosaic is never whole in memory. Truth: the blocks' nucleus counts.
2. Runs ``erquant run MOSAIC --workers 2`` (tiles of ``--tile`` px; the default
   method, then ``--method classical``) as a fresh process, sampling the RSS of its
   whole process tree (client, scheduler, nanny and worker processes; summed, so
   shared pages count twice: an upper bound) every 0.2 s with psutil.
3. Prints wall time, peak RSS, cells found vs truth; ``--json`` writes them.

Usage: ``python benchmarks/mosaic.py [--size 20000] [--tile 2048] [--methods auto classical]
[--workdir /tmp/erquant-mosaic]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from _watch import run_watched

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 2000  #: side of one generated block
N_BLOCKS = 4  #: distinct blocks, repeated over the mosaic
MARGIN = 40  #: nuclei centres at least this far inside a block
SPACING = 46.0  #: mean distance between nucleus centres (jittered grid)


def make_blocks(seed: int = 0):
    """``N_BLOCKS`` synthetic (2, BLOCK, BLOCK) uint16 blocks and their nucleus counts."""
    from erquant.synthetic import make_field

    rng = np.random.default_rng(seed)
    g = np.arange(MARGIN + SPACING / 2, BLOCK - MARGIN - SPACING / 2, SPACING)
    blocks, counts = [], []
    for k in range(N_BLOCKS):
        yy, xx = np.meshgrid(g, g, indexing="ij")
        cen = np.column_stack([yy.ravel(), xx.ravel()])
        cen += rng.uniform(-6, 6, cen.shape)
        cen = cen[rng.random(len(cen)) < 0.8]  # 80 % of the sites: uneven density
        f = make_field(shape=(BLOCK, BLOCK), n_nuclei=len(cen), centres=cen, seed=seed + k,
                       vignetting=0.0, n_debris=20)
        blocks.append(f.image)
        counts.append(int(f.n_nuclei))
    return blocks, counts


def write_mosaic(path: Path, size: int, seed: int = 0, tile: int = 512) -> dict:
    """The (2, size, size) mosaic as a tiled BigTIFF, written tile by tile."""
    import tifffile

    blocks, counts = make_blocks(seed)
    nb = -(-size // BLOCK)
    which = np.random.default_rng(seed + 100).integers(0, N_BLOCKS, (nb, nb))

    def region(c, y0, y1, x0, x1):
        out = np.zeros((y1 - y0, x1 - x0), np.uint16)
        for by in range(y0 // BLOCK, (y1 - 1) // BLOCK + 1):
            for bx in range(x0 // BLOCK, (x1 - 1) // BLOCK + 1):
                b = blocks[which[by, bx]][c]
                ya, yb = max(y0, by * BLOCK), min(y1, (by + 1) * BLOCK)
                xa, xb = max(x0, bx * BLOCK), min(x1, (bx + 1) * BLOCK)
                out[ya - y0:yb - y0, xa - x0:xb - x0] = b[ya - by * BLOCK:yb - by * BLOCK,
                                                          xa - bx * BLOCK:xb - bx * BLOCK]
        return out

    def tiles():
        for c in range(2):
            for y0 in range(0, size, tile):
                for x0 in range(0, size, tile):
                    t = np.zeros((tile, tile), np.uint16)
                    r = region(c, y0, min(size, y0 + tile), x0, min(size, x0 + tile))
                    t[:r.shape[0], :r.shape[1]] = r
                    yield t

    tmp = path.with_suffix(".part.tif")
    tifffile.imwrite(tmp, tiles(), shape=(2, size, size), dtype=np.uint16, tile=(tile, tile),
                     bigtiff=True, photometric="minisblack", metadata={"axes": "CYX"})
    os.replace(tmp, path)
    # truth: whole blocks inside the mosaic count all their nuclei; a block cut by the
    # mosaic's edge counts those whose centre is inside (the generator's positions)
    truth = 0
    for by in range(nb):
        for bx in range(nb):
            if (by + 1) * BLOCK <= size and (bx + 1) * BLOCK <= size:
                truth += counts[which[by, bx]]
            else:
                truth = None
                break
        if truth is None:
            break
    return {"size": size, "truth_nuclei": truth, "blocks": counts}


def run_once(mosaic: Path, out: Path, tile: int, method: str, workers: int = 2) -> dict:
    import pandas as pd
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", "import sys; from erquant.cli import main; sys.exit(main())",
           "run", str(mosaic), "-o", str(out), "--workers", str(workers), "-q", "--no-report",
           "--tile", str(tile), "--method", method]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    wall, peak = run_watched(cmd, env=env, poll=0.2, tail=3000)
    run = json.loads((out / "run.json").read_text())
    fields = pd.read_csv(out / "fields.csv")
    return {"method": method, "workers": workers, "tile": tile, "tiles": int(run["n_fields"]),
            "wall_s": round(wall, 1), "peak_rss_mb": round(peak / 2**20),
            "n_cells": int(run["n_cells"]), "n_cut": int(fields["n_cut"].sum()),
            "mean_tile_s": round(float(fields["seconds"].mean()), 2),
            "mosaic": {k: run["mosaic"][k] for k in ("period", "halo", "diameter",
                                                       "downsample", "method")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--tile", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--methods", nargs="+", default=["auto", "classical"])
    ap.add_argument("--workdir", default="/tmp/erquant-mosaic")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    mosaic = work / f"mosaic_{args.size}.tif"
    meta_path = mosaic.with_suffix(".json")
    if not (mosaic.exists() and meta_path.exists()):
        t0 = time.perf_counter()
        meta = write_mosaic(mosaic, args.size)
        meta["write_s"] = round(time.perf_counter() - t0, 1)
        meta_path.write_text(json.dumps(meta))
    meta = json.loads(meta_path.read_text())
    print(f"mosaic {args.size}² x 2 channels ({mosaic.stat().st_size / 2**30:.2f} GiB, "
          f"written in {meta.get('write_s')} s), truth {meta['truth_nuclei']} nuclei",
          flush=True)
    results = []
    for m in args.methods:
        r = run_once(mosaic, work / f"out_{m}", args.tile, m, args.workers)
        truth = meta["truth_nuclei"]
        r["truth_nuclei"] = truth
        r["count_error_pct"] = round(100 * (r["n_cells"] - truth) / truth, 2) if truth else None
        results.append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"mosaic": meta, "runs": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
