"""Pixels for the report's thumbnails, found again from a finished run's parts.

Each ``parts/<id>.json`` records where its channels came from (file, series, plane),
so :func:`field_loader` reads one field back without re-planning the input; the labels
come from ``labels/`` when the run saved them, otherwise the field is segmented again
with the run's parameters (one field per dose: a fraction of a second each).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["field_loader"]


def field_loader(outdir):
    """``load_field(row) -> {"image_nuclei", "image_er", "labels"}`` for fields.csv rows."""
    outdir = Path(outdir)
    try:
        run = json.loads((outdir / "run.json").read_text())
    except (OSError, ValueError):
        run = {}

    def load_field(row: dict) -> dict:
        from erquant.io.items import ChannelSource, WorkItem, load_item

        pid = row.get("id")
        if not pid:
            raise ValueError("fields.csv row has no id")
        part = json.loads((outdir / "parts" / f"{pid}.json").read_text())
        chans = tuple((n, None if src is None else ChannelSource(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in src.items()}))
            for n, src in part["sources"])
        item = WorkItem(str(part["plate"]), int(part["timepoint"]), float("nan"),
                        str(part["well"]), int(part["row"]), int(part["col"]),
                        int(part["field"]), chans)
        img, names = load_item(item)
        marker = "er" if "er" in names else next((n for n in names if n != "nuclei"), None)
        if marker is None:
            raise ValueError("the run has no marker channel (only nuclei) to colour by")
        lab_path = outdir / "labels" / f"{pid}_nuclei.tif"
        if lab_path.exists():
            import tifffile

            labels = tifffile.imread(lab_path)
        else:
            from erquant.params import Params
            from erquant.segment import segment_nuclei

            params = Params.from_dict(run.get("params") or {})
            labels = np.asarray(segment_nuclei(img[names.index("nuclei")],
                                               **_seg_kwargs(params, part)))
        return {"image_nuclei": img[names.index("nuclei")],
                "image_er": img[names.index(marker)],
                "labels": labels.astype(np.uint32)}

    return load_field


def _seg_kwargs(params, part) -> dict:
    import dataclasses

    kw = dataclasses.asdict(params.segment)
    if part.get("diameter_px"):
        kw["diameter"] = float(part["diameter_px"])  # the diameter the run used
    return kw
