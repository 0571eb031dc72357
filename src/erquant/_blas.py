"""Small matrix products on one BLAS thread (:func:`one_thread`).

erquant's CPU kernels run on Numba's TBB threads and OpenCV's; NumPy's OpenBLAS keeps
its own pool, whose threads *spin* for a while after every threaded product before they
sleep. The background maps' interpolation (:func:`erquant.measure.background_map`: two
products per map, up to 2048 × ~10 × 2048, seven maps per field) woke that pool seven
times per field, and its spinning threads then took a core from every kernel that
followed: measured (``quantify``, 2048² sweep fields, ``OPENBLAS_NUM_THREADS=1`` against
the default, alternating processes) 12 px 289-307 -> 263-265 ms per field, 40 px
171-173 -> 136-142 ms, user CPU time 474-487 -> 400 ms at 12 px. These products are
small: on one thread they cost no more, and the pool is never woken.

:func:`one_thread` limits BLAS to one thread for its block through ``threadpoolctl``
(the controller built once per process); the same products, the same values (a
product's sums do not depend on the thread count: tested via the tables). Without
threadpoolctl it does nothing.
"""

from __future__ import annotations

import contextlib
import functools


@functools.lru_cache(maxsize=1)
def _controller():
    try:
        from threadpoolctl import ThreadpoolController
    except Exception:  # pragma: no cover - a core dependency; stay importable without it
        return None
    try:
        ctl = ThreadpoolController()
    except Exception:  # pragma: no cover - unusual loaders: leave BLAS alone
        return None
    return ctl if ctl.select(user_api="blas").lib_controllers else None


def one_thread():
    """Context manager: BLAS (OpenBLAS, MKL, BLIS) on one thread inside its block."""
    ctl = _controller()
    if ctl is None:
        return contextlib.nullcontext()
    return ctl.limit(limits=1, user_api="blas")
