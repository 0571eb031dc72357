"""Run a command and watch it: wall time and peak RSS of its whole process tree.

Shared by ``benchmarks/batch.py`` and ``benchmarks/mosaic.py`` (run as scripts, so this
folder is on ``sys.path``). The RSS is summed over the process and its children (a
dask cluster's workers), so pages they share count more than once: an upper bound.
"""

from __future__ import annotations

import subprocess
import time


def tree_rss(proc) -> int:
    """Resident bytes of ``proc`` (a psutil.Process) and all its children, now."""
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_watched(cmd, *, env=None, poll: float = 0.1, what: str = "erquant run",
                tail: int = 3000) -> tuple[float, int]:
    """Run ``cmd`` to the end, sampling its tree's RSS every ``poll`` s: (wall seconds,
    peak bytes). Raises RuntimeError with the end of its stderr when it fails."""
    import psutil

    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    ps = psutil.Process(p.pid)
    peak = 0
    while p.poll() is None:
        peak = max(peak, tree_rss(ps))
        time.sleep(poll)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    if p.returncode != 0:
        raise RuntimeError(f"{what} failed ({p.returncode}): {err[-tail:]}")
    return wall, peak
