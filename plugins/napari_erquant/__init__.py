"""napari plugin for erquant: nuclei / cell segmentation and ERα quantification.

A thin layer over :mod:`erquant`: the widget builds a :class:`erquant.params.Params`,
runs :func:`erquant.pipeline.quantify_iter` in a ``thread_worker`` and shows the
result as Labels / Points layers (see :mod:`napari_erquant._layers`). Contributions
are declared in ``napari.yaml`` (npe2); nothing Qt-related is imported here.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
