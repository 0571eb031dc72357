"""Z stacks: how the planes of a field are turned into the 2-D images that are quantified.

Every reader describes a field's Z planes in its :class:`~erquant.io.items.ChannelSource`
objects (single-plane files in ``path`` + ``z_paths`` — MetaXpress ``ZStep_<n>``,
CellVoyager ``Z01…``, Operetta ``p01…`` — or planes inside one file in ``z_pages`` —
OME-TIFF pages, an OME-Zarr ``z`` axis). :func:`apply_z_mode` then sets what is done
with them, the same way for every layout (``erquant run --z``):

``max`` (default)
    The maximum projection of the planes, one work item per field.
``best``
    The sharpest plane of each field: the :func:`erquant.qc.focus_score` (the focus
    measure of the field QC, on the same central ≤ 1024² crop) of each plane of the
    nuclear stain; every channel is then read at that plane. The chosen plane
    (1-based) is the field's ``z`` in ``fields.csv`` and the cell table, its
    per-plane scores ``z_focus``.
``all``
    Every plane is its own work item (``WorkItem.z`` = 1-based plane, ids end in
    ``__z01``…); tables get a ``z`` column and ``wells.csv`` one row per well and plane.

Examples
--------
>>> from erquant.io.items import ChannelSource, WorkItem
>>> src = ChannelSource("z1.tif", z_paths=("z2.tif", "z3.tif"))
>>> it = WorkItem("P", 1, 0.0, "A01", 1, 1, 1, (("nuclei", src),))
>>> [i.id for i in apply_z_mode([it], "all")]
['P__T0001__A01__s001__z01', 'P__T0001__A01__s001__z02', 'P__T0001__A01__s001__z03']
>>> dict(apply_z_mode([it], "all")[1].channels)["nuclei"].path
'z2.tif'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from erquant.io.items import ChannelSource, InputError, WorkItem

__all__ = ["Z_MODES", "apply_z_mode", "best_plane", "z_count", "z_plane"]

Z_MODES = ("max", "best", "all")
#: the focus score is computed on a central crop this wide (as the field QC does)
FOCUS_CROP = 1024


def z_count(src: ChannelSource | None) -> int:
    """Number of Z planes of one channel source (1: not a stack)."""
    if src is None:
        return 0
    if src.z_paths:
        return 1 + len(src.z_paths)
    return max(1, len(src.z_pages))


def z_plane(src: ChannelSource, k: int) -> ChannelSource:
    """The single-plane source of plane ``k`` (0-based) of ``src``; a source without Z
    planes is its own only plane (returned for any ``k`` of a stack of other channels)."""
    n = z_count(src)
    if n == 1:
        return dataclasses.replace(src, z_mode="max")
    if not 0 <= k < n:
        raise ValueError(f"{src.path!r}: has {n} Z planes, asked for plane {k + 1}")
    if src.z_paths:
        return dataclasses.replace(src, path=(src.path, *src.z_paths)[k], z_paths=(),
                                   z_mode="max")
    if src.array is not None:
        index = tuple(src.z_pages[k] if i < 0 else i for i in src.index)
        return dataclasses.replace(src, index=index, z_pages=(), z_mode="max")
    return dataclasses.replace(src, plane=src.z_pages[k], z_pages=(), z_mode="max")


def _item_planes(item: WorkItem) -> int:
    counts = {n: z_count(s) for n, s in item.channels if s is not None}
    stacks = {c for c in counts.values() if c > 1}
    if len(stacks) > 1:
        raise InputError(f"{item.describe()}: channels have different numbers of Z planes "
                         f"({', '.join(f'{n}: {c}' for n, c in counts.items())}) in "
                         f"{', '.join(item.files)}")
    return stacks.pop() if stacks else 1


def apply_z_mode(items: Sequence[WorkItem], mode: str = "max") -> list[WorkItem]:
    """The work items for Z mode ``mode`` (module docstring); ``max`` leaves them as they
    are. Reads no pixels."""
    if mode not in Z_MODES:
        raise InputError(f"--z must be one of {', '.join(Z_MODES)}, not {mode!r}")
    if mode == "max":
        return list(items)
    out = []
    for it in items:
        if mode == "best":
            chans = tuple((n, None if s is None else dataclasses.replace(s, z_mode="best"))
                          for n, s in it.channels)
            out.append(dataclasses.replace(it, channels=chans))
            continue
        for k in range(_item_planes(it)):
            chans = tuple((n, None if s is None else z_plane(s, k)) for n, s in it.channels)
            out.append(dataclasses.replace(it, channels=chans, z=k + 1))
    return out


def best_plane(planes: Sequence[np.ndarray]) -> tuple[int, list[float]]:
    """Index of the sharpest plane (highest focus score) and every plane's score.

    Examples
    --------
    >>> from scipy.ndimage import gaussian_filter
    >>> sharp = np.zeros((64, 64)); sharp[20:40, 20:40] = 1.0
    >>> best_plane([gaussian_filter(sharp, 3), sharp, gaussian_filter(sharp, 1.5)])[0]
    1
    """
    from erquant.qc import focus_score

    scores = []
    for p in planes:
        cy, cx = (max(0, (n - FOCUS_CROP) // 2) for n in p.shape)
        crop = np.asarray(p[cy:cy + FOCUS_CROP, cx:cx + FOCUS_CROP], dtype=np.float32)
        s = focus_score(crop)
        scores.append(float(s) if np.isfinite(s) else 0.0)
    return int(np.argmax(scores)), scores
