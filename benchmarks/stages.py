"""Where a field's time goes: each function's own wall time per 2048² sweep field.

Wraps every public and private function of ``erquant.kernels``, ``erquant.segment``,
``erquant.measure`` and ``erquant.qc`` with a timer, runs
:func:`erquant.pipeline.quantify` (classical segmenter, diameter estimated) on the
nucleus-size sweep's field of the given diameter (``erquant._bench_sweep``: 2048², 8 %
covered) ``--fields`` times after a warm-up, and prints each function's time per field
*including what it calls* (so the rows overlap) as the minimum over the repeats, with
its number of calls per field::

    python benchmarks/stages.py 12 [--fields 5] [--min-ms 3] [--density 0.25] [--clumps 20]

Compare two revisions by running it alternately in fresh processes (e.g. with
``PYTHONPATH=<worktree>/src`` for the old one): the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import collections
import functools
import time
import types


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("diameter", type=float)
    ap.add_argument("--fields", type=int, default=5)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--min-ms", type=float, default=3.0)
    ap.add_argument("--density", type=float, default=1.0,
                    help="nuclei per field relative to the sweep's (8 %% covered)")
    ap.add_argument("--clumps", type=int, default=0, metavar="N",
                    help="an MCF-7-like field of N-nucleus clumps (make_clumped_field)")
    args = ap.parse_args(argv)

    import erquant.kernels as K
    import erquant.measure as M
    import erquant.qc as Q
    import erquant.segment as S
    from erquant._bench_sweep import sweep_field
    from erquant.params import Params
    from erquant.pipeline import quantify

    acc: dict[str, float] = collections.defaultdict(float)
    calls: dict[str, int] = collections.defaultdict(int)

    def wrap(mod, name):
        fn = getattr(mod, name)
        key = f"{mod.__name__.split('.')[-1]}.{name}"

        @functools.wraps(fn)
        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[key] += time.perf_counter() - t
                calls[key] += 1
        setattr(mod, name, timed)

    for mod in (K, S, M, Q):
        for name, obj in list(vars(mod).items()):
            if (isinstance(obj, types.FunctionType) and obj.__module__ == mod.__name__
                    and not name.startswith("__")):
                wrap(mod, name)

    d = args.diameter
    f = sweep_field(args.size, d, density=args.density, clumps=args.clumps)
    params = Params().replace(**{"segment.method": "classical"})

    def run():
        return quantify(f.image, nuclei_channel=0, marker_channels={"er": 1}, backend="numpy",
                        params=params)

    run()  # warm-up: compilation, caches
    best: dict[str, float] = {}
    per_call: dict[str, int] = {}
    totals = []
    for _ in range(args.fields):
        acc.clear()
        calls.clear()
        t = time.perf_counter()
        res = run()
        totals.append(time.perf_counter() - t)
        for k, v in acc.items():
            best[k] = min(best.get(k, float("inf")), v)
        per_call = dict(calls)
    print(f"{d:g} px, {args.size}², {len(res.table)} nuclei: quantify min {min(totals) * 1e3:.0f} ms "
          f"over {args.fields} fields")
    print("| function (incl. callees) | ms per field | calls |\n|---|---:|---:|")
    for k, v in sorted(best.items(), key=lambda kv: -kv[1]):
        if v * 1e3 >= args.min_ms:
            print(f"| `{k}` | {v * 1e3:.1f} | {per_call.get(k, 0)} |")


if __name__ == "__main__":
    main()
