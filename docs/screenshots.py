"""Screenshots of the napari plugin, taken from a real viewer (not drawn by hand).

Run under a display (Linux without one: ``xvfb-run -a -s "-screen 0 1600x1000x24"``)::

    python docs/screenshots.py [--out docs]

Writes ``napari_widget.png`` (whole window: sample field, two named ROIs, cells
coloured by ERα class, the Quantify widget and the results dock),
``napari_results_dock.png`` (the results dock alone) and ``napari_plate_heatmap.png``
(the Batch widget after a run of a small synthetic plate), each under 400 kB.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

MAX_BYTES = 400_000


def _wait(app, cond, timeout=300.0) -> None:
    t0 = time.time()
    while not cond():
        app.processEvents()
        time.sleep(0.02)
        if time.time() - t0 > timeout:
            raise TimeoutError("the worker did not finish")
    for _ in range(20):
        app.processEvents()


def _close_toasts(app) -> None:
    """Close notification pop-ups (e.g. napari's PyQt5 deprecation notice)."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for top in app.topLevelWidgets():
        for toast in [top, *top.findChildren(NapariQtNotification)]:
            if isinstance(toast, NapariQtNotification):
                toast.close()


def _save(widget, path: Path, app) -> Path:
    """Grab a Qt widget; PNG, scaled down until it is under MAX_BYTES."""
    from qtpy.QtCore import Qt

    _close_toasts(app)
    for _ in range(10):
        app.processEvents()
    pix = widget.grab()
    pix.save(str(path), "PNG")
    while path.stat().st_size > MAX_BYTES and pix.width() > 300:
        pix = pix.scaledToWidth(int(pix.width() * 0.8), Qt.SmoothTransformation)
        pix.save(str(path), "PNG")
    print(f"{path} {pix.width()}x{pix.height()} {path.stat().st_size // 1000} kB")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import napari
    import pandas as pd
    from napari_erquant._batch import BatchWidget
    from napari_erquant._sample_data import make_sample_field
    from napari_erquant._widgets import QuantifyWidget
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from erquant.synthetic import PlateSpec, write_plate

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.window._qt_window.resize(1600, 950)
    for data, meta, kind in make_sample_field((512, 512), n_nuclei=90, seed=4):
        getattr(viewer, f"add_{kind}")(data, **meta)
    widget = QuantifyWidget(viewer)
    dock = viewer.window.add_dock_widget(widget, name="Quantify ERα", area="right")
    results_dock = next(d for d in viewer.window._qt_window.findChildren(type(dock))
                        if d.widget() is widget.results or widget.results in
                        d.findChildren(type(widget.results)))
    viewer.window._qt_window.resizeDocks([dock, results_dock], [520, 520], Qt.Horizontal)
    rois = widget.add_roi_layer()
    rois.add([np.array([[20, 20], [20, 240], [300, 240], [300, 20]], float),
              np.array([[260, 290], [260, 490], [490, 490], [490, 290]], float)],
             shape_type="rectangle")
    rois.features = pd.DataFrame({"name": ["tumour edge", "core"]})
    rois.refresh_text()
    rois.mode = "pan_zoom"
    widget.run()
    _wait(app, lambda: widget.worker is None)
    viewer.layers["sample nuclei"].visible = False
    viewer.layers.selection.active = viewer.layers["sample cells"]
    viewer.reset_view()
    _save(viewer.window._qt_window, out / "napari_widget.png", app)
    _save(widget.results, out / "napari_results_dock.png", app)

    with tempfile.TemporaryDirectory() as tmp:
        plate = Path(tmp) / "P1"
        write_plate(PlateSpec(shape=(128, 128), fields_per_well=1), plate, progress=False)
        batch = BatchWidget(viewer)
        viewer.window.add_dock_widget(batch, name="Batch run (plate)", area="right")
        batch.input.value = plate
        batch.outdir.value = Path(tmp) / "out"
        batch.workers.value = 0
        batch.run()
        _wait(app, lambda: batch.worker is None, timeout=900)
        if batch.result is None or batch.result.n_ok == 0:
            raise SystemExit(f"batch run failed: {batch.status.value}")
        batch.readout.value = "% ER-positive"
        batch.resize(560, 680)
        _save(batch, out / "napari_plate_heatmap.png", app)
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
