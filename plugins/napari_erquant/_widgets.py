"""The "Quantify ERα" dock widget.

The widget only gathers inputs (two image layers, an optional Shapes ROI, a few
parameters), builds a :class:`erquant.params.Params`, and runs
:func:`erquant.pipeline.quantify_iter` in a ``thread_worker``: ``yielded`` drives the
progress bar, ``returned`` adds / updates result layers (:mod:`._layers`) on the main
thread, ``errored`` shows a notification, and Cancel quits the worker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, ProgressBar, PushButton
from napari.layers import Image, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog, QVBoxLayout, QWidget

from ._layers import add_or_update_layers, result_layer_data, save_table

if TYPE_CHECKING:
    import napari

THRESHOLDS = ("otsu", "li", "triangle", "manual")
BACKENDS = ("auto", "numpy", "cupy")
_NUCLEI_HINTS = ("nucle", "dapi", "hoechst", "dna")
_MARKER_HINTS = ("er", "esr", "marker")


def build_params(
    *,
    diameter: float = 0.0,
    threshold: str = "otsu",
    threshold_value: float | None = None,
    max_distance: float = 0.0,
) -> Any:
    """Build an :class:`erquant.params.Params` from the widget's values.

    Parameters
    ----------
    diameter : float
        Expected nucleus diameter in pixels; 0 means estimate it automatically.
    threshold : {"otsu", "li", "triangle", "manual"}
        Nucleus threshold method.
    threshold_value : float, optional
        Threshold for ``"manual"`` (ignored otherwise).
    max_distance : float
        Largest distance (px) a cell may grow from its nucleus; 0 keeps the default.

    Returns
    -------
    erquant.params.Params

    Examples
    --------
    >>> build_params(diameter=12, threshold="li").segment.diameter
    12.0
    """
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {THRESHOLDS}, got {threshold!r}")
    from erquant.params import Params

    spec: dict[str, dict[str, Any]] = {
        "segment": {
            "diameter": float(diameter) if diameter and diameter > 0 else None,
            "threshold": threshold,
            "threshold_value": float(threshold_value) if threshold == "manual" else None,
        }
    }
    if max_distance and max_distance > 0:
        spec["cells"] = {"max_distance": float(max_distance)}
    return Params.from_dict(spec)


def current_plane(layer: Image, viewer: napari.Viewer | None = None) -> np.ndarray:
    """The 2-D (Y, X) plane of an image layer currently shown in *viewer*, as NumPy.

    Leading axes (T, Z, ...) are indexed at the viewer's current dims position; a
    dask-backed layer reads only that plane. Multiscale layers use the full resolution.

    Parameters
    ----------
    layer : napari.layers.Image
        Grayscale image layer (RGB is refused: split channels first).
    viewer : napari.Viewer, optional
        Gives the current position; without it the first plane is used.

    Returns
    -------
    numpy.ndarray
        (Y, X) array.

    Examples
    --------
    >>> import numpy as np
    >>> from napari.layers import Image
    >>> current_plane(Image(np.zeros((3, 8, 9)))).shape
    (8, 9)
    """
    if layer.rgb:
        raise ValueError(f"layer {layer.name!r} is RGB; open its channels as separate layers")
    data = layer.data[0] if layer.multiscale else layer.data
    lead = data.ndim - 2
    if lead <= 0:
        return np.asarray(data)
    if viewer is not None:
        pos = np.asarray(layer.world_to_data(viewer.dims.point))[:lead]
        idx = tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(pos, data.shape[:lead]))
    else:
        idx = (0,) * lead
    return np.asarray(data[idx])


def shapes_to_polygons(shapes: Shapes, image: Image | None = None) -> list[np.ndarray]:
    """ROI polygons ((N, 2) (y, x) vertices in *image* pixel coordinates) from a Shapes layer.

    Rectangles and polygons keep their vertices; ellipses become 64-gons; lines and
    paths (no area) are skipped.

    Parameters
    ----------
    shapes : napari.layers.Shapes
        The ROI layer.
    image : napari.layers.Image, optional
        Layer whose pixel grid the polygons refer to (its scale / translate are undone).

    Returns
    -------
    list of numpy.ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from napari.layers import Shapes
    >>> rect = Shapes([np.array([[0, 0], [0, 10], [10, 10], [10, 0]])], shape_type="rectangle")
    >>> shapes_to_polygons(rect)[0].shape
    (4, 2)
    """
    polys = []
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)[:, None]
    for verts, kind in zip(shapes.data, shapes.shape_type):
        v = np.asarray(verts, dtype=float)
        if kind in ("line", "path") or len(v) < 3:
            continue
        if kind == "ellipse":
            c, u, w = v.mean(0), (v[1] - v[0]) / 2, (v[3] - v[0]) / 2
            v = c + np.cos(t) * u + np.sin(t) * w
        if image is not None:
            v = np.array([image.world_to_data(shapes.data_to_world(p)) for p in v])
        polys.append(v[:, -2:])
    return polys


def _guess(layers: list[Any], hints: tuple[str, ...], avoid: Any = None) -> Any:
    """First layer whose name contains a hint (prefix match for short hints)."""
    for layer in layers:
        name = layer.name.lower()
        if layer is not avoid and any(
            name.startswith(h) if len(h) <= 3 else h in name for h in hints
        ):
            return layer
    rest = [layer for layer in layers if layer is not avoid]
    return rest[0] if rest else None


class QuantifyWidget(QWidget):
    """Dock widget: segment nuclei and cells and quantify ERα in the current plane.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari (npe2 widget contribution).

    Examples
    --------
    >>> w = QuantifyWidget(viewer)  # doctest: +SKIP
    >>> viewer.window.add_dock_widget(w)  # doctest: +SKIP
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker: Any = None
        self.last_result: Any = None

        self.nuclei_layer = ComboBox(label="nuclei image", choices=self._image_choices)
        self.er_layer = ComboBox(label="ERα image", choices=self._image_choices, nullable=True)
        self.roi_layer = ComboBox(label="ROI (shapes)", choices=self._shapes_choices,
                                  nullable=True)
        self.diameter = FloatSpinBox(label="diameter (px, 0=auto)", min=0, max=1000, value=0)
        self.threshold = ComboBox(label="threshold", choices=list(THRESHOLDS), value="otsu")
        self.threshold_value = FloatSpinBox(label="manual threshold", min=0, max=1e9, value=0,
                                            enabled=False)
        self.max_distance = FloatSpinBox(label="cell max distance (px, 0=default)", min=0,
                                         max=1000, value=0)
        self.backend = ComboBox(label="backend", choices=list(BACKENDS), value="auto")
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(min=0, max=100, value=0, label="progress")
        self.status = Label(value="")
        self.save_button = PushButton(text="Save table…", enabled=False)
        self.container = Container(widgets=[
            self.nuclei_layer, self.er_layer, self.roi_layer, self.diameter, self.threshold,
            self.threshold_value, self.max_distance, self.backend, self.run_button,
            self.cancel_button, self.progress, self.status, self.save_button,
        ])
        self.setLayout(QVBoxLayout())
        self.layout().addWidget(self.container.native)

        self.threshold.changed.connect(
            lambda v: setattr(self.threshold_value, "enabled", v == "manual"))
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(self._save_dialog)
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed,
                      napari_viewer.layers.events.reordered):
            event.connect(self.reset_choices)
        self.reset_choices()

    # ------------------------------------------------------------------ layer choices
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(lay.name, lay) for lay in self.viewer.layers if isinstance(lay, Image)]

    def _shapes_choices(self, _widget: Any = None) -> list[tuple[str, Shapes]]:
        return [(lay.name, lay) for lay in self.viewer.layers if isinstance(lay, Shapes)]

    def reset_choices(self, _event: Any = None) -> None:
        """Refresh the layer combo boxes; guess nuclei / ERα layers by name if unset."""
        had_nuclei, had_er = self.nuclei_layer.value, self.er_layer.value
        for combo in (self.nuclei_layer, self.er_layer, self.roi_layer):
            combo.reset_choices()
        images = [lay for _, lay in self._image_choices()]
        if not images:
            return
        if had_nuclei is None or had_nuclei not in images:
            self.nuclei_layer.value = _guess(images, _NUCLEI_HINTS)
        if had_er is None or had_er not in images:
            self.er_layer.value = _guess(images, _MARKER_HINTS, avoid=self.nuclei_layer.value)

    # ------------------------------------------------------------------ running
    def run(self) -> Any:
        """Start quantification of the current plane in a worker thread; return the worker."""
        if self.worker is not None:
            return self.worker
        try:
            field, kwargs = self._inputs()
        except Exception as exc:  # noqa: BLE001 - shown to the user, nothing started
            show_error(f"erquant: {exc}")
            return None
        # errored given in _connect, so the worker does not re-raise in the event loop
        self.worker = create_worker(_quantify_gen, field, **kwargs, _start_thread=False,
                                    _connect={"errored": self._on_errored})
        self.worker.yielded.connect(self._on_yielded)
        self.worker.returned.connect(self._on_returned)
        self.worker.aborted.connect(lambda: setattr(self.status, "value", "cancelled"))
        self.worker.finished.connect(self._on_finished)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value = 0
        self.status.value = "starting…"
        self.worker.start()
        return self.worker

    def cancel(self) -> None:
        """Ask the running worker to stop at its next progress step."""
        if self.worker is not None:
            self.status.value = "cancelling…"
            self.worker.quit()

    def _inputs(self) -> tuple[np.ndarray, dict[str, Any]]:
        nuc_layer, er_layer = self.nuclei_layer.value, self.er_layer.value
        if nuc_layer is None:
            raise ValueError("choose a nuclei image layer")
        planes = [current_plane(nuc_layer, self.viewer)]
        if er_layer is not None:
            planes.append(current_plane(er_layer, self.viewer))
            if planes[1].shape != planes[0].shape:
                raise ValueError(
                    f"nuclei {planes[0].shape} and ERα {planes[1].shape} planes differ in shape")
        field = np.stack(planes) if len(planes) > 1 else planes[0]
        roi = None
        if self.roi_layer.value is not None:
            roi = shapes_to_polygons(self.roi_layer.value, nuc_layer) or None
        params = build_params(
            diameter=self.diameter.value, threshold=self.threshold.value,
            threshold_value=self.threshold_value.value, max_distance=self.max_distance.value)
        kwargs = {
            "nuclei_channel": 0,
            "marker_channels": {"er": 1} if er_layer is not None else {},
            "roi": roi,
            "params": params,
            "backend": self.backend.value,
        }
        return field, kwargs

    def _on_yielded(self, progress: Any) -> None:
        self.progress.value = round(100 * float(getattr(progress, "fraction", 0.0)))
        self.status.value = str(getattr(progress, "stage", ""))

    def _on_returned(self, result: Any) -> None:
        self.last_result = result
        src = self.nuclei_layer.value
        scale = translate = None
        if src is not None:
            scale, translate = src.scale[-2:], src.translate[-2:]
        try:
            add_or_update_layers(
                self.viewer, result_layer_data(result, scale=scale, translate=translate))
        except Exception as exc:  # noqa: BLE001 - a display problem must not kill the UI
            self._on_errored(exc)
            return
        self.progress.value = 100
        self.status.value = f"{len(result.table)} cells"
        self.save_button.enabled = True

    def _on_errored(self, exc: BaseException) -> None:
        self.status.value = "error"
        show_error(f"erquant failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False

    # ------------------------------------------------------------------ saving
    def _save_dialog(self) -> None:
        if self.last_result is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Save cell table", "cells.parquet", "Parquet (*.parquet);;CSV (*.csv)")
        if path:
            written = save_table(self.last_result.table, path)
            show_info(f"erquant: table written to {written}")


class QuantifyError(Exception):
    """A RuntimeError raised by the core, re-raised under a type the worker reports."""


def _quantify_gen(field: np.ndarray, **kwargs: Any):
    """Generator wrapper so ``create_worker`` always builds a GeneratorWorker.

    superqt's GeneratorWorker takes a RuntimeError from the generator for "worker
    deleted" and stops without emitting ``errored`` or ``finished``, which would leave
    the widget busy forever; such errors are re-raised as :class:`QuantifyError`.
    """
    from erquant.pipeline import quantify_iter

    try:
        result = yield from quantify_iter(field, **kwargs)
    except RuntimeError as exc:
        raise QuantifyError(f"{type(exc).__name__}: {exc}") from exc
    return result
