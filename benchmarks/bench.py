"""Throughput benchmark of erquant vs scikit-image and pyclesperanto recipes.

Same as ``erquant bench``; see :mod:`erquant.bench` for what is timed::

    python benchmarks/bench.py            # full run: 2048² fields, scaling to 8192² (< 5 min)
    python benchmarks/bench.py --quick    # CI-sized (< 1 min on 2 cores)
    python benchmarks/bench.py --backends numpy --no-reference --out /tmp/bench

Writes ``bench.json`` and ``bench.md`` to ``--out`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from erquant.bench import main
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from erquant.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
