"""Why a field segmented as it did: the numbers behind a segmentation and an overlay.

``erquant segment --explain`` calls :func:`write_explain` for every image: a JSON
file with the method, diameter estimate(s), threshold, noise estimate and
working scale, and a PNG of the image (percentile-stretched) with the nuclei
outlined and those numbers in the title — the first things to check when a
field's count looks wrong (a diameter estimate locked onto clumps, a threshold
sitting in the noise, a wrong working scale).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def explain(labels, info: dict) -> dict:
    """The segmentation's numbers: ``info`` plus the object count and size spread.

    Examples
    --------
    >>> lab = np.zeros((20, 20), np.uint32); lab[2:8, 2:8] = 1; lab[10:14, 10:14] = 2
    >>> e = explain(lab, {"method": "classical", "diameter": 6.0})
    >>> e["n_nuclei"], e["median_object_diameter_px"]
    (2, 5.6)
    """
    lab = np.asarray(labels)
    area = np.bincount(lab.ravel().astype(np.int64))[1:]
    area = area[area > 0]
    d = 2 * np.sqrt(area / np.pi)
    from erquant.io.meta import jsonable

    # private keys (the classical path's internals) are not part of the explanation
    out = jsonable({k: v for k, v in info.items() if not str(k).startswith("_")})
    out["n_nuclei"] = int(area.size)
    if area.size:
        q = np.percentile(d, [10, 50, 90])
        out["median_object_diameter_px"] = round(float(q[1]), 1)
        out["object_diameter_p10_p90_px"] = [round(float(q[0]), 1), round(float(q[2]), 1)]
        est = info.get("diameter")
        if est:
            out["median_object_vs_estimate"] = round(float(q[1]) / float(est), 2)
    return out


def overlay_png(image, labels, path: str | Path, title: str = "", max_side: int = 1600) -> Path:
    """Save the image (1-99.8 % stretch) with nuclei outlines in yellow as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    img = np.asarray(image, np.float32)
    lab = np.asarray(labels)
    step = max(1, int(np.ceil(max(img.shape) / max_side)))
    img, lab = img[::step, ::step], lab[::step, ::step]
    lo, hi = np.percentile(img, [1, 99.8])
    grey = np.clip((img - lo) / (hi - lo if hi > lo else 1), 0, 1)
    rgb = np.dstack([grey] * 3)
    rgb[find_boundaries(lab, mode="inner")] = (1.0, 0.85, 0.0)
    h, w = img.shape
    fig_h = 8 * h / w + 0.4  # inches: the image plus a title line
    fig = plt.figure(figsize=(8, fig_h), dpi=max(100, int(w / 8)))
    ax = fig.add_axes([0, 0, 1, (fig_h - 0.4) / fig_h])
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, fontsize=9, y=0.995, va="top")
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_explain(image, labels, info: dict, stem: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>_explain.json`` and ``<stem>_explain.png``; returns both paths."""
    e = explain(labels, info)
    stem = Path(stem)
    js = stem.with_name(stem.name + "_explain.json")
    js.write_text(json.dumps(e, indent=2) + "\n")
    bits = [f"{e.get('method', '?')}", f"{e['n_nuclei']} nuclei"]
    if e.get("diameter"):
        bits.append(f"diameter {e['diameter']:.1f} px")
    if e.get("diameter_classical"):
        bits.append(f"(classical estimate {e['diameter_classical']:.1f})")
    if e.get("median_object_diameter_px"):
        bits.append(f"objects median {e['median_object_diameter_px']} px")
    if isinstance(e.get("threshold"), float):
        bits.append(f"threshold {e['threshold']:.3g}")
    if isinstance(e.get("noise_sigma"), float):
        bits.append(f"noise {e['noise_sigma']:.3g}")
    if e.get("downsample"):
        bits.append(f"downsample {e['downsample']:.2g}")
    if e.get("scale"):
        bits.append(f"scale {e['scale']:.2g}")
    png = overlay_png(image, labels, stem.with_name(stem.name + "_explain.png"),
                      title=", ".join(bits))
    return js, png
