"""Single-image readers and writers (TIFF / OME-TIFF / PNG / JPEG).

:func:`read_image` returns a 2-D array for one channel of one image, with a
clear :class:`ValueError` that names the file when it cannot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ChannelError", "read_image", "read_image_stack", "write_tiff"]

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class ChannelError(ValueError):
    """The requested channel is not in the image (or a multi-channel image needs one).

    A :class:`ValueError` whose message speaks to Python callers
    (``channel=<index>``); the attributes let a command line word it with its
    own option name.

    Attributes
    ----------
    path : Path
        The image file.
    n_channels : int
        Channels in the file (1 for a 2-D grey image).
    requested : int or None
        The channel asked for (None: none was given for a multi-channel stack).
    shape : tuple of int
        The shape of one channel.
    """

    def __init__(self, message: str, *, path: Path, n_channels: int, requested: int | None,
                 shape: tuple[int, ...]):
        super().__init__(message)
        self.path = path
        self.n_channels = n_channels
        self.requested = requested
        self.shape = shape


def _human_bytes(n: float) -> str:
    """``1234`` → ``'1.2 kB'``, ``2e10`` → ``'18.6 GiB'`` (binary multiples above a kB).

    Examples
    --------
    >>> _human_bytes(900), _human_bytes(1234), _human_bytes(20e9)
    ('900 bytes', '1.2 kB', '18.6 GiB')
    """
    if n < 1000:
        return f"{int(n)} bytes"
    if n < 1024**2:
        return f"{n / 1000:.1f} kB"
    for unit, k in (("MiB", 2), ("GiB", 3), ("TiB", 4)):
        if n < 1024 ** (k + 1) or unit == "TiB":
            return f"{n / 1024**k:.1f} {unit}"
    raise AssertionError  # pragma: no cover


def _check_declared_size(tif, series) -> None:
    """Refuse a TIFF whose header declares more pixel data than the file holds.

    Checked before any pixel is read (a corrupt header would otherwise make the
    reader allocate the declared size, e.g. 18.6 GiB for 100000² uint16, and
    abort): every strip or tile must lie inside the file, the page must have as
    many strips/tiles as its size needs, and uncompressed data must be at
    least as large as the declared pixels.
    """
    size = int(tif.filehandle.size)
    declared = int(np.prod(series.shape, dtype=np.float64)) * series.dtype.itemsize
    uncompressed = int(series.keyframe.compression) == 1
    held = 0
    ok = True
    for page in series.pages:
        if page is None:
            continue
        offsets, counts = page.dataoffsets, page.databytecounts
        if len(offsets) != len(counts) or len(offsets) < int(np.prod(page.chunked)):
            ok = False  # fewer strips/tiles than the declared size needs
            break
        if any(o + c > size for o, c in zip(offsets, counts)):
            ok = False  # a strip/tile reaches past the end of the file: truncated
            break
        held += int(sum(counts))
    if ok and uncompressed and held < declared:
        ok = False
    if not ok:
        shape = "×".join(str(n) for n in series.shape)
        raise ValueError(
            f"the header declares {shape} {series.dtype} pixels ({_human_bytes(declared)}) "
            f"but the file holds only {_human_bytes(size)}: truncated or corrupt"
        )


def _read_raw(path: Path) -> np.ndarray:
    """Read the whole first series/frame of ``path`` as an array."""
    suffix = path.suffix.lower()
    try:
        if suffix in _TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                _check_declared_size(tif, series)
                arr = series.asarray()
                axes = series.axes
            # move a sample axis (RGB) last, channel-like axes first
            if "S" in axes and axes.index("S") != arr.ndim - 1:
                arr = np.moveaxis(arr, axes.index("S"), -1)
            return arr
        if suffix in _PIL_SUFFIXES:
            try:
                import imageio.v3 as iio  # type: ignore[import-not-found]
            except ImportError:
                pass
            else:
                try:
                    return np.asarray(iio.imread(path))
                except (OSError, ValueError, RuntimeError, SyntaxError) as exc:
                    # imageio's "no backend" message names plugins to install: misleading
                    raise OSError(f"not a valid {suffix[1:].upper()} image "
                                  "(no decoder could read it)") from exc
            import cv2

            arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise OSError("OpenCV could not decode the file")
            if arr.ndim == 3:  # OpenCV gives BGR(A): turn into RGB(A)
                arr = arr[..., [2, 1, 0, 3][: arr.shape[-1]]]
            return arr
    except (OSError, ValueError, RuntimeError, KeyError, IndexError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot read image file {str(path)!r}: {first}") from exc
    raise ValueError(
        f"cannot read image file {str(path)!r}: unsupported extension {suffix!r} "
        f"(supported: {', '.join(_TIFF_SUFFIXES + _PIL_SUFFIXES)})"
    )


def _brightest_channel(arr: np.ndarray, axis: int) -> int:
    """Index of the channel with the highest mean (ties broken by the max)."""
    moved = np.moveaxis(arr, axis, 0).reshape(arr.shape[axis], -1).astype(np.float64)
    score = moved.mean(axis=1) + 1e-9 * moved.max(axis=1)
    return int(np.argmax(score))


def read_image(path: str | Path, *, channel: int | None = None) -> np.ndarray:
    """Read one 2-D grey image from a TIFF, OME-TIFF, PNG or JPEG file.

    Parameters
    ----------
    path : str or Path
        The image file.
    channel : int, optional
        For multi-channel files (RGB(A) images, or (C, Y, X) TIFF stacks) the
        channel to return. By default an RGB(A) image gives its brightest
        colour channel (highest mean; alpha is ignored) and a 2-D image is
        returned as is. A (C, Y, X) stack without ``channel`` is an error.

    Returns
    -------
    ndarray
        2-D array in the file's dtype.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    IsADirectoryError
        When ``path`` is a folder.
    ValueError
        When the file cannot be decoded (also when its header declares more
        pixels than the file holds: truncated or corrupt) or has an unsupported
        dimensionality; the message names the file.
    ChannelError
        (a ValueError) When ``channel`` is out of range or a (C, Y, X) stack
        needs one.

    Examples
    --------
    >>> import numpy as np, tifffile, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "x.tif")
    >>> tifffile.imwrite(p, np.arange(12, dtype=np.uint16).reshape(3, 4))
    >>> read_image(p).shape
    (3, 4)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder, not an image file")
    arr = _read_raw(path)
    # drop singleton axes (e.g. T=1, Z=1) but keep Y, X
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        if channel not in (None, 0):
            raise ChannelError(
                f"{str(path)!r} is a 2-D grey image; it has no channel {channel}",
                path=path, n_channels=1, requested=channel, shape=arr.shape)
        return arr
    if arr.ndim == 3:
        if arr.shape[-1] in (3, 4) and arr.shape[0] > 4:  # (Y, X, RGB[A])
            if channel is None:
                channel = _brightest_channel(arr[..., :3], -1)
            if not 0 <= channel < arr.shape[-1]:
                raise ChannelError(
                    f"{str(path)!r} has {arr.shape[-1]} colour channels; channel {channel} "
                    "is out of range",
                    path=path, n_channels=arr.shape[-1], requested=channel, shape=arr.shape[:2])
            return np.ascontiguousarray(arr[..., channel])
        # (C, Y, X) stack
        if channel is None:
            raise ChannelError(
                f"{str(path)!r} holds {arr.shape[0]} channels of shape {arr.shape[1:]}; "
                "pass channel=<index> to pick one",
                path=path, n_channels=arr.shape[0], requested=None, shape=arr.shape[1:])
        if not 0 <= channel < arr.shape[0]:
            raise ChannelError(
                f"{str(path)!r} has {arr.shape[0]} channels; channel {channel} is out of range",
                path=path, n_channels=arr.shape[0], requested=channel, shape=arr.shape[1:])
        return np.ascontiguousarray(arr[channel])
    raise ValueError(
        f"{str(path)!r} has shape {arr.shape}: expected a 2-D image, an RGB(A) image or a "
        "(C, Y, X) stack"
    )


def read_image_stack(path: str | Path) -> np.ndarray:
    """Read a (C, Y, X) stack (or a 2-D image as (1, Y, X)) from a TIFF file.

    Examples
    --------
    >>> import numpy as np, tifffile, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "s.tif")
    >>> tifffile.imwrite(p, np.zeros((2, 5, 6), np.uint16))
    >>> read_image_stack(p).shape
    (2, 5, 6)
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder, not an image file")
    arr = np.squeeze(_read_raw(path))
    if arr.ndim == 2:
        return arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{str(path)!r} has shape {arr.shape}: expected (C, Y, X)")
    return arr


def write_tiff(
    path: str | Path,
    data: np.ndarray,
    *,
    compression: str | None = "zlib",
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``data`` to a TIFF file, deterministically (no date/time tag).

    Parameters
    ----------
    path : str or Path
        Destination; parent folders are created.
    data : ndarray
        2-D image or (C, Y, X) stack.
    compression : str or None
        ``"zlib"`` (default, lossless) or ``None``.
    metadata : dict, optional
        Passed to :func:`tifffile.imwrite` (e.g. ``{"axes": "CYX"}``).

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> p = write_tiff(os.path.join(tempfile.mkdtemp(), "a", "x.tif"), np.ones((4, 4), np.uint8))
    >>> p.name
    'x.tif'
    """
    import tifffile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(
        path,
        np.asarray(data),
        photometric="minisblack",
        compression=compression,
        metadata=metadata,
    )
    return path
