"""Array backends: NumPy/SciPy on the CPU, CuPy/cupyx (+cuCIM) on CUDA GPUs.

Core functions are written once against a :class:`Backend` (``xp`` = array
module, ``ndi`` = ndimage module) and dispatch on the type of their input, so
CuPy arrays stay on the device and NumPy arrays on the host.

CuPy is imported lazily: the package imports and works without it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import scipy.ndimage as _sp_ndi

log = logging.getLogger("erquant")

BACKENDS = ("auto", "numpy", "cupy")


@dataclass(frozen=True)
class Backend:
    """An array library and its ndimage module.

    Attributes
    ----------
    name : str
        ``"numpy"`` or ``"cupy"``.
    xp : module
        ``numpy`` or ``cupy``.
    ndi : module
        ``scipy.ndimage`` or ``cupyx.scipy.ndimage``.
    """

    name: str
    xp: ModuleType
    ndi: ModuleType

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"

    def asarray(self, a: Any, dtype=None):
        """Move ``a`` onto this backend (host→device for CuPy)."""
        if self.is_gpu:
            return self.xp.asarray(a, dtype=dtype)
        return np.asarray(to_numpy(a), dtype=dtype)

    def synchronize(self) -> None:
        """Wait for queued GPU work (no-op on NumPy); call before stopping a clock."""
        if self.is_gpu:
            self.xp.cuda.Stream.null.synchronize()


NUMPY = Backend("numpy", np, _sp_ndi)


@functools.lru_cache(maxsize=1)
def _cupy_backend() -> Backend | None:
    try:
        import cupy
        import cupyx.scipy.ndimage as cndi

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        # a tiny kernel proves the driver and the runtime really work
        int(cupy.arange(4).sum())  # host sync: one-time probe
    except Exception as exc:  # ImportError, CUDARuntimeError, driver mismatch ...
        log.debug("CuPy backend unavailable: %s", exc)
        return None
    return Backend("cupy", cupy, cndi)


def cupy_available() -> bool:
    """True when CuPy is installed and a CUDA device is usable."""
    return _cupy_backend() is not None


def get_backend(name: str | Backend = "auto") -> Backend:
    """Return the backend called ``name``.

    Parameters
    ----------
    name : {"auto", "numpy", "cupy"} or Backend
        ``"auto"`` picks CuPy when a CUDA device is usable, NumPy otherwise,
        and logs which one it picked.

    Examples
    --------
    >>> get_backend("numpy").name
    'numpy'
    """
    if isinstance(name, Backend):
        return name
    name = str(name).lower()
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "numpy":
        return NUMPY
    gpu = _cupy_backend()
    if name == "cupy":
        if gpu is None:
            raise RuntimeError(
                "backend 'cupy' requested but CuPy is not installed or no CUDA device is "
                "usable; install erquant[gpu-cuda12] or erquant[gpu-cuda13], or use --backend numpy"
            )
        return gpu
    chosen = gpu or NUMPY
    _log_choice(chosen.name)
    return chosen


@functools.cache
def _log_choice(name: str) -> None:
    """Say once per process which backend ``auto`` picked."""
    log.info("erquant backend: %s", "cupy (CUDA GPU)" if name == "cupy" else "numpy (CPU)")


def is_cupy_array(a: Any) -> bool:
    return type(a).__module__.split(".")[0] == "cupy"


def backend_for(*arrays: Any) -> Backend:
    """The backend that owns ``arrays`` (CuPy if any of them is a CuPy array)."""
    for a in arrays:
        if a is not None and is_cupy_array(a):
            gpu = _cupy_backend()
            if gpu is None:  # pragma: no cover - cupy array without usable device
                raise RuntimeError("got a CuPy array but CuPy is not usable")
            return gpu
    return NUMPY


def to_numpy(a: Any) -> np.ndarray:
    """Return ``a`` as a NumPy array (device→host copy for CuPy arrays)."""
    if is_cupy_array(a):
        return a.get()
    if hasattr(a, "compute") and not isinstance(a, np.ndarray):  # dask / xarray
        a = a.compute()
    return np.asarray(a)


def stack_to_host(xp, values) -> np.ndarray:
    """Stack scalars or equal-length vectors of backend ``xp`` as float64 and bring them
    to the host in one transfer (one host sync on CuPy).

    Examples
    --------
    >>> stack_to_host(np, [np.float32(1.5), 2]).tolist()
    [1.5, 2.0]
    """
    return to_numpy(xp.stack([xp.asarray(v, dtype=np.float64) for v in values]))
