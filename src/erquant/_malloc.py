"""Keep freed image-sized buffers in the process for reuse (glibc ``mallopt``).

A 2048² field passes through ~100 whole-image arrays (float32 / int32: 16 MB each).
glibc serves allocations above ``M_MMAP_THRESHOLD`` (128 KiB, raised adaptively up to
32 MiB as such blocks are freed) with fresh ``mmap`` pages and trims the heap's free
top above ``M_TRIM_THRESHOLD``: each new full-size array is then zero-filled page by
page by the kernel on first touch, ~3-4 ms per 16 MB on the 2-core CI machine, which
is more than many of the kernels that write them cost. With fixed thresholds (arrays
up to :data:`MMAP_THRESHOLD` from the heap, up to :data:`TRIM_THRESHOLD` of free heap
kept), freed buffers are reused at once. Measured (``quantify``, 2048² sweep fields,
two alternating rounds): 8 px 0.445-0.476 -> 0.352-0.358 s per field, 12 px
0.387-0.459 -> 0.353-0.366 s; the scikit-image recipe in the same process 0-10 % less.

:func:`tune` runs once per process from :func:`erquant.pipeline.quantify` and
:func:`erquant.segment.segment_nuclei` on the CPU. The cost is memory: up to
``TRIM_THRESHOLD`` of freed heap stays with the process (reused by the next field).
``ERQUANT_NO_MALLOC_TUNING=1`` or the user's own ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` / ``GLIBC_TUNABLES`` leave the allocator as it is; other C
libraries (musl, macOS, Windows) are left alone. dask's workers are started with
``MALLOC_TRIM_THRESHOLD_=65536``, which turns glibc's adaptive threshold off (a 2048²
field took 0.39 s in a worker instead of 0.20 s): the batch engine's workers apply the
thresholds whatever their environment (``tune(force=True)``, via
:func:`erquant.batch.worker.tune_malloc`).
"""

from __future__ import annotations

import os
import sys

#: allocations up to this size come from the heap (reused), not fresh mmap pages
MMAP_THRESHOLD = 256 << 20
#: up to this much free memory at the heap's top stays with the process
TRIM_THRESHOLD = 512 << 20

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied = False
_declined = False


def tune(*, force: bool = False, mmap_threshold: int = MMAP_THRESHOLD,
         trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds once per process (see the module
    docstring); returns whether they are set. ``force``: whatever the environment's
    ``MALLOC_*`` settings (dask workers), still not with ``ERQUANT_NO_MALLOC_TUNING=1``
    or without glibc."""
    global _applied, _declined
    if _applied or (_declined and not force):
        return _applied
    if os.environ.get("ERQUANT_NO_MALLOC_TUNING") == "1" or not sys.platform.startswith("linux"):
        _declined = True
        return False
    if not force and any(k in os.environ for k in (
            "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")):
        _declined = True
        return False
    import platform

    if platform.libc_ver()[0] != "glibc":
        _declined = True
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
                        and libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1)
    except (OSError, AttributeError):  # pragma: no cover - no glibc after all
        _applied = False
    _declined = not _applied
    return _applied
