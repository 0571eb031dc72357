"""Sample data: a 2-channel synthetic ERα field (nuclei + ERα) with ground truth."""

from __future__ import annotations

from typing import Any

import numpy as np

LayerData = tuple[Any, dict[str, Any], str]


def make_sample_field(
    shape: tuple[int, int] = (512, 512), n_nuclei: int = 60, seed: int = 0
) -> list[LayerData]:
    """Synthetic field as napari layer-data tuples: ``nuclei``, ``er`` and the truth labels.

    Uses :func:`erquant.synthetic.make_field`; if that is not importable (or fails),
    falls back to a few bright disks drawn here so the menu entry still works.

    Parameters
    ----------
    shape : tuple of int
        Field size (Y, X).
    n_nuclei : int
        Number of nuclei to draw.
    seed : int
        Random seed.

    Returns
    -------
    list of (data, meta, layer_type)
        Two ``"image"`` tuples (``nuclei``, ``er``) and one hidden ``"labels"`` tuple
        (``ground truth``).

    Examples
    --------
    >>> [m["name"] for _, m, _ in make_sample_field((128, 128), n_nuclei=5)]
    ['nuclei', 'er', 'ground truth']
    """
    try:
        from erquant.synthetic import make_field

        field = make_field(shape=shape, n_nuclei=n_nuclei, seed=seed)
        image, truth = np.asarray(field.image), np.asarray(field.nuclei)
    except Exception:  # noqa: BLE001 - any failure of the optional generator: fall back
        image, truth = _fallback_field(shape, n_nuclei, seed)
    common = {"blending": "additive"}
    return [
        (image[0], {"name": "nuclei", "colormap": "blue", "metadata": {"source": "sample"},
                    **common}, "image"),
        (image[1], {"name": "er", "colormap": "green", "metadata": {"source": "sample"}, **common}, "image"),
        (truth, {"name": "ground truth", "visible": False, "opacity": 0.4}, "labels"),
    ]


def _fallback_field(
    shape: tuple[int, int], n_nuclei: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping bright disks (nuclei) with a random ERα level each, plus noise."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    radius = max(3, min(ny, nx) // 40)
    yy, xx = np.mgrid[:ny, :nx]
    truth = np.zeros(shape, np.uint32)
    er = np.zeros(shape, np.float32)
    placed = 0
    for _ in range(n_nuclei * 20):
        if placed == n_nuclei:
            break
        cy, cx = rng.integers(radius + 2, (ny - radius - 2, nx - radius - 2))
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        ring = (yy - cy) ** 2 + (xx - cx) ** 2 <= (2 * radius + 3) ** 2
        if truth[ring].any():
            continue
        placed += 1
        truth[disk] = placed
        er[disk] = rng.uniform(200, 3000)
    nuclei = np.where(truth > 0, 2000.0, 0.0)
    noise = rng.normal(100, 10, (2, *shape))
    image = np.clip(np.stack([nuclei, er]) + noise, 0, 65535).astype(np.uint16)
    return image, truth
