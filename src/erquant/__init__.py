"""erquant: nuclei counting, cell segmentation and ER-alpha quantification for
high-content screening images, on NumPy/SciPy or CuPy (CUDA).

Public API (imported lazily so ``import erquant`` stays fast)::

    from erquant import quantify, quantify_batch, segment_nuclei, segment_cells, measure_cells
    from erquant import run_batch        # whole plates / stacks (dask.distributed)
    from erquant import fit_ll4          # dose-response fits
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "segment_nuclei": "erquant.segment",
    "segment_cells": "erquant.segment",
    "estimate_diameter": "erquant.segment",
    "measure_cells": "erquant.measure",
    "classify_cells": "erquant.classify",
    "field_scores": "erquant.classify",
    "field_qc": "erquant.qc",
    "quantify": "erquant.pipeline",
    "quantify_iter": "erquant.pipeline",
    "quantify_batch": "erquant.pipeline",
    "quantify_batch_iter": "erquant.pipeline",
    "FieldResult": "erquant.pipeline",
    "remeasure": "erquant.pipeline",
    "remeasure_iter": "erquant.pipeline",
    "roi_summary": "erquant.pipeline",
    "assign_rois": "erquant.pipeline",
    "Params": "erquant.params",
    "get_backend": "erquant.backend",
    "run_batch": "erquant.batch",
    "fit_ll4": "erquant.analysis.fit",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'erquant' has no attribute {name!r}")


def __dir__():
    return __all__
