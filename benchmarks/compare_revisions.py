"""Is erquant slower than it was? Two git revisions timed side by side, interleaved.

Issue 14's bar "no slower than at the issue's start at any nucleus size (±5 %)" needs
the old code and the new on the same fields in the same run: this script checks the
old revision out into a temporary worktree, generates the nucleus-size sweep's fields
once (``erquant._bench_sweep``: 2048², 8 % covered, 8-40 px), then alternates a fresh
process per revision and round (old, new, old, new, ...), each timing
:func:`erquant.pipeline.quantify` (classical segmenter, diameter estimated) as the
minimum of ``--repeats`` after a warm-up. It prints, per diameter, each revision's
minimum over the rounds and the ratio new / old (< 1: faster now)::

    python benchmarks/compare_revisions.py e902bf1 [--new WORKTREE_OR_REV] [--rounds 3]

``--paired N`` instead keeps one warm process per revision and alternates single
fields between them (old, new, new, old, ...), N pairs per diameter, and reports the
median of the pairs' ratios beside each side's minimum: a slow phase of this shared
machine (seconds to minutes long) then falls on both sides of a pair, where whole
rounds of fresh processes catch it on one side only.

The new side is the working tree by default. Both sides run in this interpreter with
``PYTHONPATH=<side>/src`` (same dependencies); the old side must import with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# both sides' timing processes start alike: the classical segmenter's parameters
PRELUDE = r"""
import json, sys, time
import numpy as np
from erquant.params import Params
from erquant.pipeline import quantify
try:
    params = Params().replace(**{"segment.method": "classical"})
except Exception:  # revisions before the learned segmenter: classical is the only one
    params = Params()
"""

TIMER = PRELUDE + r"""
out = {}
folder, repeats = sys.argv[1], int(sys.argv[2])
for d in sys.argv[3].split(","):
    img = np.load(f"{folder}/f{d}.npy")
    quantify(img, nuclei_channel=0, marker_channels={"er": 1}, params=params)  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        r = quantify(img, nuclei_channel=0, marker_channels={"er": 1}, params=params)
        ts.append(time.perf_counter() - t)
    out[d] = [min(ts), int(r.nuclei.max())]
print(json.dumps(out))
"""


WORKER = PRELUDE + r"""
folder = sys.argv[1]
imgs = {}
for line in sys.stdin:  # one diameter per line: time one field, answer "seconds nuclei"
    d = line.strip()
    if d not in imgs:
        imgs[d] = np.load(f"{folder}/f{d}.npy")
        quantify(imgs[d], nuclei_channel=0, marker_channels={"er": 1}, params=params)
    t = time.perf_counter()
    r = quantify(imgs[d], nuclei_channel=0, marker_channels={"er": 1}, params=params)
    print(time.perf_counter() - t, int(r.nuclei.max()), flush=True)
"""


def _paired(sides: dict, folder: Path, diameters, pairs: int) -> dict:
    """Per diameter: (old min, new min, median of new / old over the pairs, nuclei
    old, nuclei new), from one warm process per side taking single fields in turn."""
    import statistics

    procs = {name: subprocess.Popen([sys.executable, "-c", WORKER, str(folder)],
                                    env=dict(os.environ, PYTHONPATH=str(src)),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for name, src in sides.items()}

    def one(name, d):
        p = procs[name]
        p.stdin.write(f"{d}\n")
        p.stdin.flush()
        line = p.stdout.readline()
        if not line:
            raise RuntimeError(f"the {name} side's worker ended (diameter {d})")
        s, n = line.split()
        return float(s), int(n)

    out = {}
    try:
        for d in diameters:
            one("old", d), one("new", d)  # first sight: load and warm up (untimed)
            ts = {"old": [], "new": []}
            ratios = []
            nuc = {}
            for i in range(pairs):
                order = ("old", "new") if i % 2 == 0 else ("new", "old")
                got = {name: one(name, d) for name in order}
                for name in order:
                    ts[name].append(got[name][0])
                    nuc[name] = got[name][1]
                ratios.append(got["new"][0] / got["old"][0])
            out[str(d)] = (min(ts["old"]), min(ts["new"]), statistics.median(ratios),
                           nuc["old"], nuc["new"])
            print(f"{d} px: old min {out[str(d)][0]:.3f} s, new min {out[str(d)][1]:.3f} s, "
                  f"median pair ratio {out[str(d)][2]:.3f}", flush=True)
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()
    return out


def _fields(folder: Path, diameters, size: int) -> None:
    import numpy as np

    from erquant._bench_sweep import sweep_field

    for d in diameters:
        np.save(folder / f"f{d}.npy", sweep_field(size, d).image)


def _time(src: Path, folder: Path, repeats: int, diameters) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src))
    out = subprocess.run([sys.executable, "-c", TIMER, str(folder), str(repeats),
                          ",".join(str(d) for d in diameters)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="git revision to compare against")
    ap.add_argument("--new", default=None,
                    help="git revision for the new side (default: the working tree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--diameters", default="8,12,16,20,24,32,40")
    ap.add_argument("--paired", type=int, default=0, metavar="N",
                    help="N alternating single-field pairs per diameter in two warm "
                         "processes (median pair ratio) instead of rounds")
    a = ap.parse_args(argv)
    diameters = [int(d) for d in a.diameters.split(",") if d]
    with tempfile.TemporaryDirectory(prefix="erquant-ab-") as tmp:
        tmp = Path(tmp)
        sides = {}
        for name, rev in (("old", a.old), ("new", a.new)):
            if rev is None:
                sides[name] = REPO / "src"
                continue
            wt = tmp / name
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f",
                            str(wt), rev], check=True, capture_output=True)
            sides[name] = wt / "src"
        try:
            _fields(tmp, diameters, a.size)
            if a.paired > 0:
                paired = _paired(sides, tmp, diameters, a.paired)
            best: dict = {"old": {}, "new": {}}
            for r in range(a.rounds if a.paired <= 0 else 0):
                for name in ("old", "new"):
                    res = _time(sides[name], tmp, a.repeats, diameters)
                    for d, (s, n) in res.items():
                        prev = best[name].get(d)
                        best[name][d] = (min(s, prev[0]) if prev else s, n)
                    print(f"round {r + 1} {name}: " + ", ".join(
                        f"{d} px {s:.3f} s" for d, (s, _) in res.items()), flush=True)
        finally:
            for name in ("old", "new"):
                if sides[name] != REPO / "src":
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "-f",
                                    str(sides[name].parent)], capture_output=True)
    if a.paired > 0:
        print(f"\n| diameter | old min s/field ({a.old}) | new min s/field "
              f"({a.new or 'working tree'}) | median new / old of {a.paired} pairs "
              "| nuclei old / new |")
        print("|---:|---:|---:|---:|---:|")
        for d in diameters:
            so, sn, med, no, nn = paired[str(d)]
            print(f"| {d} px | {so:.3f} | {sn:.3f} | {med:.3f} | {no} / {nn} |")
        print(f"\nslowest relative to old: {max(v[2] for v in paired.values()):.3f}× "
              f"(median of {a.paired} alternating single-field pairs per diameter)")
        return 0
    print(f"\n| diameter | old s/field ({a.old}) | new s/field ({a.new or 'working tree'}) "
          "| new / old | nuclei old / new |")
    print("|---:|---:|---:|---:|---:|")
    worst = 0.0
    for d in diameters:
        (so, no), (sn, nn) = best["old"][str(d)], best["new"][str(d)]
        worst = max(worst, sn / so)
        print(f"| {d} px | {so:.3f} | {sn:.3f} | {sn / so:.2f} | {no} / {nn} |")
    print(f"\nslowest relative to old: {worst:.2f}× (min over {a.rounds} interleaved rounds "
          f"of {a.repeats} repeats each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
