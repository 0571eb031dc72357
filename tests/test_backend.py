"""``erquant.backend``: choosing and moving between NumPy and CuPy."""

from __future__ import annotations

import numpy as np
import pytest

from erquant.backend import backend_for, cupy_available, get_backend, to_numpy


def test_get_numpy():
    bk = get_backend("numpy")
    assert bk.name == "numpy" and bk.xp is np and not bk.is_gpu
    import scipy.ndimage

    assert bk.ndi is scipy.ndimage
    assert get_backend(bk) is bk
    assert get_backend("NumPy") is bk


def test_auto_returns_a_working_backend():
    bk = get_backend("auto")
    assert bk.name == ("cupy" if cupy_available() else "numpy")


def test_unknown_backend_raises():
    with pytest.raises(ValueError, match="torch"):
        get_backend("torch")


@pytest.mark.skipif(cupy_available(), reason="CuPy with a CUDA device is available here")
def test_cupy_without_cuda_raises_with_install_hint():
    with pytest.raises(RuntimeError, match=r"erquant\[gpu-cuda1[23]\]"):
        get_backend("cupy")


def test_backend_for_numpy_and_none():
    assert backend_for(np.zeros(3)).name == "numpy"
    assert backend_for(None, np.zeros(3)).name == "numpy"
    assert backend_for([1, 2]).name == "numpy"


def test_to_numpy_of_list_and_array():
    a = to_numpy([[1, 2], [3, 4]])
    assert isinstance(a, np.ndarray) and a.shape == (2, 2) and a[1, 0] == 3
    b = np.arange(5)
    assert to_numpy(b) is b or np.array_equal(to_numpy(b), b)


def test_roundtrip_on_each_backend(backend):
    src = np.arange(12, dtype=np.uint16).reshape(3, 4)
    dev = backend.asarray(src)
    assert backend_for(dev).name == backend.name
    assert type(dev).__module__.split(".")[0] == ("cupy" if backend.is_gpu else "numpy")
    f = backend.asarray(src, dtype=np.float32)
    assert f.dtype == np.float32
    back = to_numpy(dev)
    assert isinstance(back, np.ndarray) and np.array_equal(back, src)
    # ndimage on the backend gives the CPU answer
    blurred = to_numpy(backend.ndi.uniform_filter(f, 3))
    import scipy.ndimage as ndi

    np.testing.assert_allclose(blurred, ndi.uniform_filter(src.astype(np.float32), 3), rtol=1e-6)
    backend.synchronize()


def test_allocator_tuning_once_per_process_and_opt_out():
    """erquant._malloc.tune raises glibc's mmap/trim thresholds once per process (so
    freed 16 MB image buffers are reused instead of re-faulted); ERQUANT_NO_MALLOC_TUNING=1
    or the user's own MALLOC_* settings leave the allocator alone."""
    import os
    import platform
    import subprocess
    import sys

    code = "from erquant import _malloc; print(_malloc.tune(), _malloc.tune())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop("ERQUANT_NO_MALLOC_TUNING", None)
    on = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert on.stdout.split() == ([str(glibc)] * 2), on.stderr
    for extra in ({"ERQUANT_NO_MALLOC_TUNING": "1"}, {"MALLOC_TRIM_THRESHOLD_": "1000000"}):
        off = subprocess.run([sys.executable, "-c", code], env=env | extra,
                             capture_output=True, text=True)
        assert off.stdout.split() == ["False", "False"], off.stderr
    # dask's workers (MALLOC_TRIM_THRESHOLD_=65536 in their environment) force it
    forced = ("from erquant import _malloc; from erquant.batch.worker import tune_malloc; "
              "print(_malloc.tune(), tune_malloc(), _malloc.tune())")
    run = subprocess.run([sys.executable, "-c", forced],
                         env=env | {"MALLOC_TRIM_THRESHOLD_": "65536"}, capture_output=True,
                         text=True)
    assert run.stdout.split() == ["False", str(glibc), str(glibc)], run.stderr
    run = subprocess.run([sys.executable, "-c", forced],
                         env=env | {"ERQUANT_NO_MALLOC_TUNING": "1"}, capture_output=True,
                         text=True)
    assert run.stdout.split() == ["False", "False", "False"], run.stderr
