"""The "Quantify ERα" dock widget.

The widget only gathers inputs (two image layers guessed by name, a Shapes ROI
layer, a few parameters), builds a :class:`erquant.params.Params`, and runs
:func:`erquant.pipeline.quantify_iter` (Run) or :func:`erquant.pipeline.remeasure_iter`
(Re-measure, from corrected labels) in a ``thread_worker``: ``yielded`` drives the
progress bar, ``returned`` adds / updates the ``<image> nuclei`` / ``<image> cells``
layers (:mod:`._layers`) and the results dock (per-ROI and whole-field summary from
:func:`erquant.pipeline.roi_summary`) on the main thread, ``errored`` shows a
notification and marks that image's old results stale, and Cancel quits the worker.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, ProgressBar, PushButton
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt
from superqt import QLabeledDoubleRangeSlider
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ._channels import check_same_field, guess_channels, source_of
from ._layers import (
    CLASS_COLORS,
    CLASS_NAMES,
    add_or_update_layers,
    class_colormap,
    export_results,
    layer_names,
    result_layer_data,
    results_metadata,
)
from ._rois import (
    ROI_TEXT,
    ensure_roi_names,
    rois_layer_data,
    roi_names,
    save_rois,
    shapes_to_polygons,
)

if TYPE_CHECKING:
    import napari

THRESHOLDS = ("otsu", "li", "triangle", "manual")
METHODS = ("auto", "learned", "classical")
SCOPES = ("current plane", "all planes")
#: result label stacks are '<source> nuclei (stack)' (a plate's channel may be '<source> nuclei')
STACK_SUFFIX = " (stack)"
BACKENDS = ("auto", "numpy", "cupy")


def build_params(
    *,
    method: str = "auto",
    diameter: float = 0.0,
    threshold: str = "otsu",
    threshold_value: float | None = None,
    max_distance: float = 0.0,
) -> Any:
    """Build an :class:`erquant.params.Params` from the widget's values.

    Parameters
    ----------
    method : {"auto", "learned", "classical"}
        Nuclei segmenter (auto = the shipped learned network).
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
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    from erquant.params import Params

    spec: dict[str, dict[str, Any]] = {
        "segment": {
            "method": method,
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


@dataclass
class FieldState:
    """The results of one image (a *source*) shown in the viewer."""

    source: str
    result: Any
    table: pd.DataFrame
    summary: pd.DataFrame
    roi_names: list[str]
    source_path: str | None = None
    roi_layer: Any = None
    image_layer: Any = None
    polys: list | None = None
    shape: tuple[int, int] = (0, 0)
    stale: bool = False
    error: str = ""
    #: for a plane of a stack: its flat index and the stack it belongs to
    plane: int | None = None
    stack: Any = None


@dataclass
class StackState:
    """The results of all planes of an image stack (``<source> nuclei`` / ``cells`` label
    stacks, one table with a ``plane`` column); :attr:`planes` holds one
    :class:`FieldState` per quantified plane (what the results dock shows)."""

    source: str
    lead_shape: tuple[int, ...]
    table: pd.DataFrame
    planes: dict[int, FieldState]
    stride: int
    layer: Any = None
    n_planes: int = 0


def _layer_path(layer: Any) -> str | None:
    src = getattr(layer, "source", None)
    path = getattr(src, "path", None) if src is not None else None
    return str(path) if path else (layer.metadata or {}).get("path")


class QuantifyWidget(QWidget):
    """Dock widget: segment nuclei and cells and quantify ERα in the current plane.

    Inputs (nuclei / ERα image layers guessed by name, a Shapes ROI layer picked
    automatically), Run (segment + quantify), Re-measure (rebuild cells from the
    corrected ``<image> nuclei`` Labels and measure again), ROI save / load as GeoJSON.
    Results go to ``<image> nuclei`` / ``<image> cells`` layers and to the results dock
    (:class:`ResultsDock`): a table per ROI and for the whole field.

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
        self.states: dict[str, FieldState] = {}
        self.stacks: dict[str, StackState] = {}
        self._partial: dict[int, Any] = {}
        self.current_source: str | None = None
        self._ctx: dict[str, Any] | None = None
        self._chosen = {"nuclei": False, "er": False, "roi": False}
        self._setting = False

        tip = "Layers are guessed from their names (DAPI/Hoechst/w1 → nuclei, ER/ESR1/w2 → ERα)"
        self.nuclei_layer = ComboBox(label="nuclei image", choices=self._image_choices,
                                     nullable=True, tooltip=tip)
        self.er_layer = ComboBox(label="ERα image", choices=self._image_choices, nullable=True,
                                 tooltip=tip)
        self.roi_layer = ComboBox(label="ROIs (shapes)", choices=self._shapes_choices,
                                  nullable=True,
                                  tooltip="Shapes layer whose polygons are the ROIs "
                                          "(the 'name' feature names them)")
        self.add_roi_button = PushButton(text="Add ROI layer",
                                         tooltip="New Shapes layer to draw named ROIs in")
        self.save_rois_button = PushButton(text="Save ROIs…", tooltip="ROIs → GeoJSON "
                                           "(pixel coordinates; `erquant run --roi` reads it)")
        self.load_rois_button = PushButton(text="Load ROIs…", tooltip="GeoJSON → Shapes layer")
        self.method = ComboBox(label="segmenter", choices=list(METHODS), value="auto",
                               tooltip="Nuclei segmenter: learned (the shipped network; auto "
                                       "picks it) or classical (threshold/split, faster). "
                                       "The threshold settings apply to classical only")
        self.diameter = FloatSpinBox(label="diameter (px, 0=auto)", min=0, max=1000, value=0,
                                     tooltip="Expected nucleus diameter; 0 estimates it")
        self.threshold = ComboBox(label="threshold", choices=list(THRESHOLDS), value="otsu",
                                  tooltip="Nucleus threshold method")
        self.threshold_value = FloatSpinBox(label="manual threshold", min=0, max=1e9, value=0,
                                            enabled=False)
        self.max_distance = FloatSpinBox(label="cell max distance (px, 0=default)", min=0,
                                         max=1000, value=0,
                                         tooltip="How far a cell may grow from its nucleus")
        self.backend = ComboBox(label="backend", choices=list(BACKENDS), value="auto",
                                tooltip="Array backend (cupy: NVIDIA GPU)")
        self.scope = ComboBox(label="planes", choices=list(SCOPES), value=SCOPES[0],
                              tooltip="Of a (Z/T/field, Y, X) stack: only the plane shown, or "
                                      "every plane (label stacks aligned with the data, one "
                                      "table with a 'plane' column)")
        self.run_button = PushButton(text="Run", tooltip="Segment and quantify the shown plane")
        self.remeasure_button = PushButton(
            text="Re-measure", enabled=False,
            tooltip="Rebuild cells from the (edited) '<image> nuclei' labels and measure "
                    "again, without segmenting")
        self.cancel_button = PushButton(text="Cancel", enabled=False,
                                        tooltip="Stop (all planes: finished planes are kept)")
        self.progress = ProgressBar(min=0, max=100, value=0, label="progress")
        self.status = Label(value="")
        self.save_button = PushButton(text="Export table…", enabled=False,
                                      tooltip="Cells (CSV/Parquet) + ROI summary + metadata JSON")
        self.container = Container(widgets=[
            self.nuclei_layer, self.er_layer, self.roi_layer,
            Container(widgets=[self.add_roi_button, self.save_rois_button,
                               self.load_rois_button], layout="horizontal", labels=False),
            self.method, self.diameter, self.threshold, self.threshold_value,
            self.max_distance, self.backend, self.scope,
            Container(widgets=[self.run_button, self.remeasure_button, self.cancel_button],
                      layout="horizontal", labels=False),
            self.progress, self.status, self.save_button,
        ])
        self.setLayout(QVBoxLayout())
        self.layout().addWidget(self.container.native)
        self.layout().addStretch(1)

        self.results = ResultsDock(self)
        with contextlib.suppress(Exception):  # no window (e.g. a bare viewer model)
            napari_viewer.window.add_dock_widget(self.results, name="erquant results",
                                                 area="right")

        self.threshold.changed.connect(
            lambda v: setattr(self.threshold_value, "enabled", v == "manual"))
        self.method.changed.connect(self._method_changed)
        self._method_changed(self.method.value)
        self.run_button.clicked.connect(self.run)
        self.remeasure_button.clicked.connect(self.remeasure)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(self._save_dialog)
        self.add_roi_button.clicked.connect(self.add_roi_layer)
        self.save_rois_button.clicked.connect(self._save_rois_dialog)
        self.load_rois_button.clicked.connect(self._load_rois_dialog)
        for key, combo in (("nuclei", self.nuclei_layer), ("er", self.er_layer),
                           ("roi", self.roi_layer)):
            combo.changed.connect(lambda _v, k=key: self._user_chose(k))
        for event in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed,
                      napari_viewer.layers.events.reordered):
            event.connect(self.reset_choices)
        napari_viewer.layers.events.inserted.connect(self._on_inserted)
        napari_viewer.dims.events.current_step.connect(self._on_dims)
        for lay in napari_viewer.layers:
            self._watch_shapes(lay)
        self.reset_choices()

    # ------------------------------------------------------------------ layer choices
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(lay.name, lay) for lay in self.viewer.layers if isinstance(lay, Image)]

    def _shapes_choices(self, _widget: Any = None) -> list[tuple[str, Shapes]]:
        return [(lay.name, lay) for lay in self.viewer.layers if isinstance(lay, Shapes)]

    def _user_chose(self, key: str) -> None:
        if not self._setting:
            self._chosen[key] = True  # remembered while the viewer is open

    def _set(self, combo: ComboBox, value: Any) -> None:
        self._setting = True
        try:
            combo.value = value
        finally:
            self._setting = False

    def reset_choices(self, _event: Any = None) -> None:
        """Refresh the layer boxes; guess nuclei / ERα by name and pick the ROI layer,
        keeping what the user chose while it exists."""
        self._setting = True
        try:
            for combo in (self.nuclei_layer, self.er_layer, self.roi_layer):
                combo.reset_choices()
        finally:
            self._setting = False
        images = [lay for _, lay in self._image_choices()]
        nuc_guess, er_guess = guess_channels(images)
        for key, combo, guess in (("nuclei", self.nuclei_layer, nuc_guess),
                                  ("er", self.er_layer, er_guess)):
            if self._chosen[key] and (combo.value is None or combo.value in images):
                continue
            self._chosen[key] = False
            self._set(combo, guess)
        shapes = [lay for _, lay in self._shapes_choices()]
        if not (self._chosen["roi"] and (self.roi_layer.value is None
                                         or self.roi_layer.value in shapes)):
            self._chosen["roi"] = False
            self._set(self.roi_layer, shapes[-1] if shapes else None)

    def _on_inserted(self, event: Any) -> None:
        self._watch_shapes(event.value)

    def _watch_shapes(self, layer: Any) -> None:
        if isinstance(layer, Shapes) and not getattr(layer, "_erquant_watched", False):
            layer._erquant_watched = True
            layer.events.data.connect(lambda _e, lay=layer: self._name_rois(lay))
            if "name" in layer.features.columns:
                layer.text = ROI_TEXT

    def _name_rois(self, layer: Any) -> None:
        with contextlib.suppress(Exception):  # naming must never break drawing
            ensure_roi_names(layer)

    def add_roi_layer(self) -> Shapes:
        """Add a Shapes layer for named ROIs, select it and start drawing rectangles."""
        layer = self.viewer.add_shapes(
            name="ROIs", features=pd.DataFrame({"name": pd.Series([], dtype=object)}),
            edge_color="yellow", face_color="transparent", edge_width=2, text=ROI_TEXT)
        self._set(self.roi_layer, layer)
        self._chosen["roi"] = False
        layer.mode = "add_rectangle"
        return layer

    # ------------------------------------------------------------------ running
    def _start(self, gen_name: str, args: tuple, kwargs: dict, ctx: dict) -> Any:
        return self._start_gen(_core_gen, (gen_name, *args), kwargs, ctx)

    def _start_gen(self, gen: Any, args: tuple, kwargs: dict, ctx: dict) -> Any:
        self._ctx = ctx
        # errored given in _connect, so the worker does not re-raise in the event loop
        self.worker = create_worker(gen, *args, **kwargs, _start_thread=False,
                                    _connect={"errored": self._on_errored})
        self.worker.yielded.connect(self._on_yielded)
        self.worker.returned.connect(self._on_returned)
        self.worker.aborted.connect(self._on_aborted)
        self.worker.finished.connect(self._on_finished)
        self.run_button.enabled = self.remeasure_button.enabled = False
        self.cancel_button.enabled = True
        self.progress.value = 0
        self.status.value = "starting…"
        self.worker.start()
        return self.worker

    def _method_changed(self, method: str) -> None:
        """The threshold settings belong to the classical segmenter only."""
        classical = method == "classical"
        self.threshold.enabled = classical
        self.threshold_value.enabled = classical and self.threshold.value == "manual"

    def run(self) -> Any:
        """Start quantification of the current plane in a worker thread; return the worker."""
        if self.worker is not None:
            return self.worker
        try:
            if self.scope.value == "all planes":
                return self.run_all_planes()
            field, kwargs, ctx = self._inputs()
        except Exception as exc:  # noqa: BLE001 - shown to the user, nothing started
            show_error(f"erquant: {exc}")
            return None
        return self._start("quantify_iter", (field,), kwargs, ctx)

    def run_all_planes(self) -> Any:
        """Quantify every plane of the chosen (…, Y, X) stacks, one
        :func:`erquant.pipeline.quantify_iter` per plane, in a worker thread."""
        nuc_layer, er_layer = self.nuclei_layer.value, self.er_layer.value
        _field, kwargs, ctx = self._inputs()
        datas = []
        for lay in (nuc_layer, er_layer):
            if lay is None:
                continue
            if lay.multiscale:
                raise ValueError(f"layer {lay.name!r} is multiscale: quantify its planes one "
                                 "at a time ('current plane')")
            datas.append(lay.data)
        lead = tuple(int(n) for n in datas[0].shape[:-2])
        if not lead:
            raise ValueError(f"layer {nuc_layer.name!r} has no planes to step through (2-D): "
                             "use 'current plane'")
        if len(datas) > 1 and tuple(datas[1].shape) != tuple(datas[0].shape):
            raise ValueError(f"nuclei {tuple(datas[0].shape)} and ERα "
                             f"{tuple(datas[1].shape)} stacks differ in shape")
        md = nuc_layer.metadata or {}
        from ._channels import strip_channel_words

        source = str(md.get("source") or strip_channel_words(nuc_layer.name) or nuc_layer.name)
        fields = md.get("fields")
        ctx.update(source=source, lead=lead, stack=True,
                   fields=list(fields) if fields is not None and len(lead) == 1 else None,
                   scale=tuple(nuc_layer.scale), translate=tuple(nuc_layer.translate))
        self._partial = {}
        return self._start_gen(_stack_gen, (datas, lead, self._partial), kwargs, ctx)

    def remeasure(self) -> Any:
        """Re-measure from the edited ``<image> nuclei`` labels (or the selected Labels
        layer) without segmenting; return the worker."""
        if self.worker is not None:
            return self.worker
        try:
            field, kwargs, ctx = self._inputs()
            labels_layer = self._labels_for(ctx["source"])
            labels = np.asarray(labels_layer.data)
            if labels.ndim != 2:
                raise ValueError(f"labels layer {labels_layer.name!r} is not 2-D")
            if labels.shape != ctx["shape"]:
                raise ValueError(f"labels layer {labels_layer.name!r} {labels.shape} does not "
                                 f"match the image {ctx['shape']}")
            kwargs.pop("roi", None)
            old = self.states.get(ctx["source"])
            ds = old.result.info.get("downsample", 1.0) if old is not None else 1.0
            kwargs["downsample"] = float(ds or 1.0)
            ctx["keep"] = labels_layer.name
        except Exception as exc:  # noqa: BLE001
            show_error(f"erquant: {exc}")
            return None
        return self._start("remeasure_iter", (labels, field), kwargs, ctx)

    def _labels_for(self, source: str) -> Labels:
        name = layer_names(source)["nuclei"]
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            return self.viewer.layers[name]
        active = self.viewer.layers.selection.active
        if isinstance(active, Labels):
            return active
        raise ValueError(f"no '{name}' labels layer: run first, or select the Labels layer "
                         "of corrected nuclei")

    def cancel(self) -> None:
        """Ask the running worker to stop at its next progress step."""
        if self.worker is not None:
            self.status.value = "cancelling…"
            self.worker.quit()

    def _inputs(self) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
        nuc_layer, er_layer = self.nuclei_layer.value, self.er_layer.value
        if nuc_layer is None:
            raise ValueError("choose a nuclei image layer (none is named DAPI, Hoechst, "
                             "nuclei, DNA or w1)")
        if er_layer is nuc_layer:
            raise ValueError("the nuclei and ERα layers are the same layer")
        check_same_field(nuc_layer, er_layer, self.viewer)
        planes = [current_plane(nuc_layer, self.viewer)]
        if er_layer is not None:
            planes.append(current_plane(er_layer, self.viewer))
            if planes[1].shape != planes[0].shape:
                raise ValueError(
                    f"nuclei {planes[0].shape} and ERα {planes[1].shape} planes differ in shape")
        field = np.stack(planes) if len(planes) > 1 else planes[0]
        shape = tuple(planes[0].shape)
        roi_layer = self.roi_layer.value
        polys, names = None, []
        if roi_layer is not None:
            polys = shapes_to_polygons(roi_layer, nuc_layer) or None
            names = roi_names(roi_layer) if polys else []
        params = build_params(
            method=self.method.value, diameter=self.diameter.value, threshold=self.threshold.value,
            threshold_value=self.threshold_value.value, max_distance=self.max_distance.value)
        kwargs = {
            "nuclei_channel": 0,
            "marker_channels": {"er": 1} if er_layer is not None else {},
            "params": params,
            "backend": self.backend.value,
        }
        ctx = {"source": source_of(nuc_layer, self.viewer), "image": nuc_layer,
               "path": _layer_path(nuc_layer), "roi_layer": roi_layer, "polys": polys,
               "roi_names": names, "shape": shape,
               "scale": tuple(nuc_layer.scale[-2:]), "translate": tuple(nuc_layer.translate[-2:])}
        return field, kwargs, ctx

    def _on_yielded(self, progress: Any) -> None:
        self.progress.value = round(100 * float(getattr(progress, "fraction", 0.0)))
        self.status.value = str(getattr(progress, "stage", ""))

    def _on_aborted(self) -> None:
        ctx = self._ctx or {}
        if ctx.get("stack") and self._partial:
            with contextlib.suppress(Exception):
                self.show_stack(dict(self._partial), ctx)
                self.status.value = (f"cancelled: {len(self._partial)} of "
                                     f"{int(np.prod(ctx['lead']))} planes kept")
                return
        self.status.value = "cancelled"

    def _on_returned(self, result: Any) -> None:
        ctx = self._ctx or {}
        try:
            if ctx.get("stack"):
                self.show_stack(result, ctx)
            else:
                self.show_result(result, ctx)
        except Exception as exc:  # noqa: BLE001 - a display problem must not kill the UI
            self._on_errored(exc)
            return
        self.progress.value = 100

    def show_result(self, result: Any, ctx: dict[str, Any]) -> FieldState:
        """Layers, state and results dock for *result* of the image in *ctx*."""
        from erquant.pipeline import assign_rois, roi_summary

        source = ctx.get("source", "result")
        polys, names = ctx.get("polys"), list(ctx.get("roi_names") or [])
        table = assign_rois(result.table, polys, ctx.get("shape", result.nuclei.shape))
        if not polys:
            table["roi"] = np.full(len(table), -1, np.int16)
        lut = np.asarray([*names, ""], dtype=object)  # -1 → ""
        table["roi_name"] = lut[table["roi"].to_numpy().astype(int)] if len(table) else []
        table.attrs = dict(result.table.attrs)
        summary = roi_summary(table, names)
        state = FieldState(source=source, result=result, table=table, summary=summary,
                           roi_names=names, source_path=ctx.get("path"),
                           roi_layer=ctx.get("roi_layer"), image_layer=ctx.get("image"),
                           polys=polys, shape=tuple(ctx.get("shape", result.nuclei.shape)))
        keep = [ctx["keep"]] if ctx.get("keep") else []
        added = add_or_update_layers(
            self.viewer,
            result_layer_data(result, source=source, table=table, scale=ctx.get("scale"),
                              translate=ctx.get("translate")),
            keep_data=keep)
        for lay in added:  # coloured afresh by the results dock
            lay._erquant_colouring = None
        self.states[source] = state
        self.current_source = source
        self.last_result = result
        self.results.show_state(state)
        flags = list((result.qc or {}).get("flags", []))
        self.status.value = (f"{source}: {len(table)} cells"
                             + (" (re-measured)" if result.info.get("remeasured") else "")
                             + (f" — QC: {', '.join(flags)}" if flags else ""))
        self.save_button.enabled = True
        return state

    def _plane_state(self, result: Any, ctx: dict[str, Any], plane: int) -> FieldState:
        from erquant.pipeline import assign_rois, roi_summary

        polys, names = ctx.get("polys"), list(ctx.get("roi_names") or [])
        table = assign_rois(result.table, polys, ctx.get("shape", result.nuclei.shape))
        if not polys:
            table["roi"] = np.full(len(table), -1, np.int16)
        lut = np.asarray([*names, ""], dtype=object)
        table["roi_name"] = lut[table["roi"].to_numpy().astype(int)] if len(table) else []
        table.attrs = dict(result.table.attrs)
        return FieldState(source=ctx["source"], result=result, table=table,
                          summary=roi_summary(table, names), roi_names=names,
                          source_path=ctx.get("path"), roi_layer=ctx.get("roi_layer"),
                          image_layer=ctx.get("image"), polys=polys,
                          shape=tuple(ctx.get("shape", result.nuclei.shape)), plane=plane)

    def show_stack(self, results: dict[int, Any], ctx: dict[str, Any]) -> StackState:
        """Label stacks, one table (``plane`` column) and per-plane states for *results*
        (flat plane index → FieldResult) of the stack in *ctx*; planes not quantified
        (cancelled) stay empty."""
        from ._layers import offset_labels, stack_dtype, stack_layer_data, stack_stride, \
            stack_table

        lead, shape = tuple(ctx["lead"]), tuple(ctx["shape"])
        n = int(np.prod(lead))
        planes = {k: self._plane_state(r, ctx, k) for k, r in sorted(results.items())}
        max_label = max((int(r.nuclei.max(initial=0)) for r in results.values()), default=0)
        stride = stack_stride(max_label)
        dtype = stack_dtype(n, stride)
        table = stack_table({k: st.table for k, st in planes.items()}, stride,
                            fields=ctx.get("fields"))
        stacks = {}
        for kind in ("nuclei", "cells"):
            arr = np.zeros((n, *shape), dtype)
            for k, r in results.items():
                arr[k] = offset_labels(np.asarray(getattr(r, kind)), k, stride, dtype)
            stacks[kind] = arr.reshape(*lead, *shape)
        stack = StackState(source=ctx["source"], lead_shape=lead, table=table, planes=planes,
                           stride=stride, layer=ctx.get("image"), n_planes=n)
        for st in planes.values():
            st.stack = stack
        added = add_or_update_layers(self.viewer, stack_layer_data(
            stacks["nuclei"], stacks["cells"], table, source=ctx["source"],
            scale=ctx.get("scale"), translate=ctx.get("translate"), suffix=STACK_SUFFIX))
        for lay in added:  # coloured afresh by the results dock
            lay._erquant_colouring = None
        self.stacks[ctx["source"]] = stack
        self.current_source = ctx["source"]
        self.last_result = stack
        self._show_plane(stack)
        self.status.value = (f"{ctx['source']}: {len(table)} cells in {len(planes)} of {n} "
                             "planes")
        self.save_button.enabled = True
        self.progress.value = 100
        return stack

    def _current_flat(self, stack: StackState) -> int | None:
        from ._channels import plane_index

        lay = stack.layer
        if lay is None or lay not in self.viewer.layers:
            return None
        idx = plane_index(lay, self.viewer)
        if len(idx) != len(stack.lead_shape):
            return None
        return int(np.ravel_multi_index(idx, stack.lead_shape))

    def _show_plane(self, stack: StackState) -> None:
        """Show the current plane's summary of *stack* in the results dock."""
        k = self._current_flat(stack)
        st = stack.planes.get(k) if k is not None else None
        if st is None:
            st = stack.planes[min(stack.planes)] if stack.planes else None
        if st is None:
            return
        self.states[stack.source] = st
        self.results.show_state(st)

    def _on_dims(self, _event: Any = None) -> None:
        stack = self.stacks.get(self.current_source or "")
        if stack is not None:
            with contextlib.suppress(Exception):  # display only
                self._show_plane(stack)

    def _on_errored(self, exc: BaseException) -> None:
        self.status.value = "error"
        source = (self._ctx or {}).get("source")
        state = self.states.get(source) if source else None
        if state is not None:  # old results no longer match what was asked
            state.stale, state.error = True, str(exc)
            for name in [n + sfx for n in layer_names(source).values()
                         for sfx in ("", STACK_SUFFIX)]:
                if name in self.viewer.layers:
                    self.viewer.layers[name].metadata["erquant_stale"] = True
            self.results.show_state(state)
        show_error(f"erquant failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
        self.remeasure_button.enabled = bool(self.states)

    # ------------------------------------------------------------------ saving
    def export(self, path: str | Path, source: str | None = None) -> dict[str, Path] | None:
        """Write the current (or *source*'s) results; refused (None) when stale."""
        source = source or self.current_source
        state = self.states.get(source) if source else None
        if state is None:
            show_error("erquant: nothing to export yet: run first")
            return None
        if state.stale:
            show_error(f"erquant: the results of {source!r} are stale (the last run failed: "
                       f"{state.error}); run again before exporting")
            return None
        meta = results_metadata(state.result, source=source, source_path=state.source_path,
                                roi_names=state.roi_names)
        table, summary = state.table, state.summary
        stack = self.stacks.get(source) if state.stack is not None else None
        if stack is not None:  # every plane: one table with a plane column
            table = stack.table
            summary = pd.concat([st.summary.assign(plane=k) for k, st in stack.planes.items()],
                                ignore_index=True)
            meta["planes"] = {"shape": list(stack.lead_shape), "quantified": len(stack.planes),
                              "label_stride": stack.stride}
        written = export_results(path, table, summary, meta)
        show_info(f"erquant: {', '.join(str(p) for p in written.values())}")
        return written

    def _save_dialog(self) -> None:
        if self.current_source is None:
            return
        path, _ = QFileDialog.getSaveFileName(
            self, "Export cell table", f"{self.current_source}_cells.csv",
            "CSV (*.csv);;Parquet (*.parquet)")
        if path:
            self.export(path)

    def save_rois(self, path: str | Path) -> Path | None:
        """Save the ROI layer as GeoJSON in the nuclei image's pixel coordinates."""
        shapes, image = self.roi_layer.value, self.nuclei_layer.value
        try:
            if shapes is None:
                raise ValueError("no ROI (shapes) layer to save")
            img_path = _layer_path(image) if image is not None else None
            written = save_rois(path, shapes, image,
                                image_name=Path(img_path).name if img_path else None,
                                source=source_of(image, self.viewer) if image else None)
        except Exception as exc:  # noqa: BLE001
            show_error(f"erquant: {exc}")
            return None
        show_info(f"erquant: ROIs written to {written}")
        return written

    def load_rois(self, path: str | Path) -> Shapes | None:
        """Load ROIs from GeoJSON onto the nuclei image as a new Shapes layer."""
        from erquant.io.roi import read_roi_geojson

        try:
            rois = read_roi_geojson(path)
            if not rois:
                raise ValueError(f"{path}: no ROI in the file")
        except Exception as exc:  # noqa: BLE001
            show_error(f"erquant: {exc}")
            return None
        image = self.nuclei_layer.value
        if image is not None:
            from ._rois import foreign_rois

            img_path = _layer_path(image)
            other = foreign_rois(rois, image_name=Path(img_path).name if img_path else None,
                                 source=source_of(image, self.viewer))
            if other:
                mine = Path(img_path).name if img_path else source_of(image, self.viewer)
                show_warning(f"erquant: {len(other)} of {len(rois)} ROI(s) in "
                             f"{Path(path).name} were drawn on another image "
                             f"({', '.join(sorted(set(other.values())))}), not on {mine!r}: "
                             "check that they belong here")
        data, meta, _ = rois_layer_data(rois, self.nuclei_layer.value,
                                        name=f"{Path(path).stem} ROIs")
        layer = self.viewer.add_shapes(data, **meta)
        self._set(self.roi_layer, layer)
        show_info(f"erquant: {len(rois)} ROI(s) loaded from {path}")
        return layer

    def _save_rois_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save ROIs", "rois.geojson",
                                              "GeoJSON (*.geojson *.json)")
        if path:
            self.save_rois(path)

    def _load_rois_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load ROIs", "",
                                              "GeoJSON (*.geojson *.json)")
        if path:
            self.load_rois(path)


#: columns of the results table: (header, summary column, format)
_SUMMARY_COLUMNS = (("ROI", "roi_name", "{}"), ("cells", "n_cells", "{:d}"),
                    ("ERα mean", "mean_er", "{:.0f}"), ("median", "median_er", "{:.0f}"),
                    ("% ER+", "pct_positive", "{:.1f}"), ("H-score", "h_score", "{:.0f}"),
                    ("Allred", "allred", "{:.0f}"))


def _fmt(fmt: str, value: Any) -> str:
    try:
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return "–"
        return fmt.format(int(value) if fmt == "{:d}" else value)
    except (TypeError, ValueError):
        return str(value)


#: colourings of the cells layer offered in the results dock
COLOUR_MODES = ("ERα class", "ERα level")


def legend_html() -> str:
    """HTML legend of the ERα class colours of the cells layer."""
    items = []
    for name, rgba in zip(CLASS_NAMES, CLASS_COLORS, strict=False):
        hexc = "#" + "".join(f"{round(255 * c):02x}" for c in rgba[:3])
        items.append(f'<span style="color:{hexc}">■</span>&nbsp;{name}')
    return "cells by ERα class: " + " &nbsp; ".join(items)


class ResultsDock(QWidget):
    """Results of the shown image: header (cells, diameter, thresholds, QC flags in a
    warning colour), class legend, a table per ROI and the whole field, Export.

    Clicking a ROI row selects that ROI in its Shapes layer; editing its name renames it.
    """

    def __init__(self, owner: QuantifyWidget) -> None:
        super().__init__()
        self.owner = owner
        self.state: FieldState | None = None
        self._filling = False
        self.source_box = QComboBox()
        self.source_box.setToolTip("Image whose results are shown")
        self.header = QLabel("no results yet: press Run")
        self.header.setWordWrap(True)
        self.qc_label = QLabel("")
        self.qc_label.setWordWrap(True)
        self.legend = QLabel(legend_html())
        self.colour_mode = QComboBox()
        self.colour_mode.addItems(list(COLOUR_MODES))
        self.colour_mode.setToolTip("Colour the cells layer by ERα class (bounds from the "
                                    "classification) or by nuclear ERα level (range below)")
        self.colour_range = QLabeledDoubleRangeSlider(Qt.Orientation.Horizontal)
        self.colour_range.setToolTip("Contrast of the ERα colouring: nuclear ERα "
                                     "(background-corrected) at the left end is dark, at "
                                     "the right end bright (viridis)")
        self.colour_range.setEnabled(False)
        self._range_for: Any = None
        self.table = QTableWidget(0, len(_SUMMARY_COLUMNS))
        self.table.setHorizontalHeaderLabels([c[0] for c in _SUMMARY_COLUMNS])
        self.table.verticalHeader().setVisible(False)
        self.table.setToolTip("One row per ROI and the whole field (ERα: nuclear, "
                              "background-corrected); click a ROI to select it, "
                              "double-click its name to rename it")
        self.refresh_button = QPushButton("Update ROIs")
        self.refresh_button.setToolTip("Recompute the ROI table from the current shapes "
                                       "(no new segmentation)")
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Cells (CSV/Parquet), ROI summary and metadata JSON")
        lay = QVBoxLayout()
        for w in (self.source_box, self.header, self.qc_label, self.legend):
            lay.addWidget(w)
        crow = QHBoxLayout()
        crow.addWidget(QLabel("cells colour"))
        crow.addWidget(self.colour_mode)
        crow.addWidget(self.colour_range, 1)
        lay.addLayout(crow)
        lay.addWidget(self.table)
        row = QHBoxLayout()
        row.addWidget(self.refresh_button)
        row.addWidget(self.export_button)
        lay.addLayout(row)
        self.setLayout(lay)
        self.source_box.currentTextChanged.connect(self._on_source)
        self.colour_mode.currentTextChanged.connect(lambda _t: self.apply_colouring())
        self.colour_range.valueChanged.connect(lambda _v: self.apply_colouring())
        self.table.cellClicked.connect(self._on_click)
        self.table.itemChanged.connect(self._on_edit)
        self.refresh_button.clicked.connect(self.refresh_rois)
        self.export_button.clicked.connect(owner._save_dialog)

    def show_state(self, state: FieldState) -> None:
        self.state = state
        self._filling = True
        try:
            names = list(self.owner.states)
            if [self.source_box.itemText(i) for i in range(self.source_box.count())] != names:
                self.source_box.clear()
                self.source_box.addItems(names)
            self.source_box.setCurrentText(state.source)
            res = state.result
            info = res.info or {}
            bounds = state.table.attrs.get("er_class_bounds")
            parts = [f"<b>{state.source}</b>: {len(state.table)} cells"]
            if state.plane is not None and state.stack is not None:
                stk = state.stack
                idx = np.unravel_index(state.plane, stk.lead_shape)
                fld = stk.table.loc[stk.table["plane"] == state.plane, "field_name"] \
                    if "field_name" in stk.table else pd.Series([], dtype=object)
                parts[0] = (f"<b>{state.source}</b> plane {','.join(map(str, idx))}"
                            + (f" ({fld.iloc[0]})" if len(fld) else "")
                            + f": {len(state.table)} cells (all planes: {len(stk.table)} "
                            f"cells in {len(stk.planes)} of {stk.n_planes} planes)")
            if info.get("diameter"):
                parts.append(f"diameter {info['diameter']:.1f} px")
            parts.append("nuclei threshold "
                         + (f"{info['threshold']:.4g}" if isinstance(info.get("threshold"),
                                                                      int | float)
                            else "— (re-measured from labels)" if info.get("remeasured")
                            else str(info.get("threshold"))))
            if bounds is not None and np.isfinite(bounds[0]):
                parts.append(f"ERα+ ≥ {bounds[0]:.4g}")
            self.header.setText(" · ".join(parts))
            flags = list((res.qc or {}).get("flags", []))
            if state.stale:
                self.qc_label.setText(f"⚠ STALE — the last run failed ({state.error}); "
                                      "these results do not match the inputs")
                self.qc_label.setStyleSheet("color: #ff5050; font-weight: bold")
            elif flags:
                self.qc_label.setText("⚠ QC: " + ", ".join(flags))
                self.qc_label.setStyleSheet("color: #ffa500; font-weight: bold")
            else:
                self.qc_label.setText("QC: ok")
                self.qc_label.setStyleSheet("color: #60c060")
            summ = state.summary
            self.table.setRowCount(len(summ))
            for r, (_, row) in enumerate(summ.iterrows()):
                for c, (_h, col, fmt) in enumerate(_SUMMARY_COLUMNS):
                    item = QTableWidgetItem(_fmt(fmt, row.get(col)))
                    editable = col == "roi_name" and int(row["roi"]) >= 0
                    flags_ = item.flags() if editable else item.flags() & ~Qt.ItemIsEditable
                    item.setFlags(flags_)
                    self.table.setItem(r, c, item)
            self.table.resizeColumnsToContents()
            self._set_colour_range()
        finally:
            self._filling = False
        self.apply_colouring()

    def _colour_target(self) -> tuple[Any, pd.DataFrame, str] | None:
        """(cells layer, its table, label column) of the shown state, or None."""
        st = self.state
        if st is None:
            return None
        names = layer_names(st.source)
        if st.stack is not None:
            name, table, key = names["cells"] + STACK_SUFFIX, st.stack.table, "stack_label"
        else:
            name, table, key = names["cells"], st.table, "label"
        layers = self.owner.viewer.layers
        return (layers[name], table, key) if name in layers else None

    def _set_colour_range(self) -> None:
        target = self._colour_target()
        col = "nucleus_er_mean_bgcorr"
        if target is None or col not in target[1] or not len(target[1]):
            return
        vals = target[1][col].to_numpy(dtype=float)
        vals = vals[np.isfinite(vals)]
        if not vals.size or self._range_for is target[1]:
            return  # same table (e.g. another plane of a stack): keep the user's range
        self._range_for = target[1]
        lo, hi = float(vals.min()), float(vals.max())
        p1, p99 = (float(v) for v in np.percentile(vals, [1, 99]))
        self.colour_range.blockSignals(True)
        try:
            self.colour_range.setRange(lo, max(hi, lo + 1e-6))
            self.colour_range.setValue((p1, max(p99, p1 + 1e-6)))
        finally:
            self.colour_range.blockSignals(False)

    def set_colouring(self, mode: str, bounds: tuple[float, float] | None = None) -> None:
        """Colour cells by ``"ERα class"`` or ``"ERα level"`` (optionally in *bounds*)."""
        self.colour_mode.setCurrentText(mode)
        if bounds is not None:
            self.colour_range.setValue(tuple(float(b) for b in bounds))
        self.apply_colouring()

    def apply_colouring(self) -> None:
        """Re-colour the shown image's cells layer by class or by ERα level in the range."""
        level = self.colour_mode.currentText() == COLOUR_MODES[1]
        self.colour_range.setEnabled(level)
        target = self._colour_target()
        if target is None or self._filling:
            return
        layer, table, key = target
        bounds = tuple(self.colour_range.value()) if level else None
        applied = (id(layer), id(table), bounds)
        if getattr(layer, "_erquant_colouring", None) != applied:  # not on every plane step
            layer.colormap = class_colormap(table, key=key, bounds=bounds)
            layer._erquant_colouring = applied
        if level:
            lo, hi = bounds
            self.legend.setText(f"cells by nuclear ERα (bg-corrected): "
                                f"<span style='color:#440154'>■</span> ≤ {lo:.4g} … "
                                f"<span style='color:#fde725'>■</span> ≥ {hi:.4g} (viridis)")
        else:
            self.legend.setText(legend_html())

    def rows(self) -> list[dict[str, str]]:
        """The table as shown (header → text), for tests and copy-paste."""
        heads = [c[0] for c in _SUMMARY_COLUMNS]
        return [{h: self.table.item(r, c).text() for c, h in enumerate(heads)}
                for r in range(self.table.rowCount())]

    def _on_source(self, name: str) -> None:
        if not self._filling and name in self.owner.states:
            self.owner.current_source = name
            self.show_state(self.owner.states[name])

    def _shape_index(self, roi: int) -> int | None:
        st = self.state
        if st is None or st.roi_layer is None:
            return None
        from ._rois import _area_shapes

        idx = _area_shapes(st.roi_layer)
        return idx[roi] if roi < len(idx) else None

    def _on_click(self, row: int, _col: int) -> None:
        st = self.state
        if st is None or row >= len(st.summary):
            return
        k = self._shape_index(int(st.summary.iloc[row]["roi"]))
        if k is not None and st.roi_layer in self.owner.viewer.layers:
            self.owner.viewer.layers.selection.active = st.roi_layer
            st.roi_layer.mode = "select"
            st.roi_layer.selected_data = {k}

    def _on_edit(self, item: QTableWidgetItem) -> None:
        st = self.state
        if self._filling or st is None or item.column() != 0 or item.row() >= len(st.summary):
            return
        roi = int(st.summary.iloc[item.row()]["roi"])
        k = self._shape_index(roi)
        new = item.text().strip()
        if k is None or not new:
            return
        feats = st.roi_layer.features.copy()
        feats.loc[k, "name"] = new
        st.roi_layer.features = feats
        st.roi_layer.refresh_text()
        self.refresh_rois()

    def refresh_rois(self) -> None:
        """Recompute ROI membership and the summary from the current shapes."""
        st = self.state
        if st is None:
            return
        if st.stack is not None:  # every plane of the stack, same 2-D ROIs
            self._refresh_stack(st)
            return
        ctx = {"source": st.source, "path": st.source_path, "roi_layer": st.roi_layer,
               "image": st.image_layer, "shape": st.shape, "polys": None, "roi_names": [],
               "scale": tuple(st.image_layer.scale[-2:]) if st.image_layer else None,
               "translate": tuple(st.image_layer.translate[-2:]) if st.image_layer else None,
               "keep": layer_names(st.source)["nuclei"]}
        if st.roi_layer is not None and st.roi_layer in self.owner.viewer.layers:
            ctx["polys"] = shapes_to_polygons(st.roi_layer, st.image_layer) or None
            ctx["roi_names"] = roi_names(st.roi_layer) if ctx["polys"] else []
        stale, err = st.stale, st.error
        new = self.owner.show_result(st.result, ctx)
        new.stale, new.error = stale, err
        self.show_state(new)


    def _refresh_stack(self, st: FieldState) -> None:
        stk, lay = st.stack, st.image_layer
        if st.roi_layer is None:  # none when it ran: the widget's ROI layer now
            st.roi_layer = self.owner.roi_layer.value
        ctx = {"source": st.source, "path": st.source_path, "roi_layer": st.roi_layer,
               "image": lay, "shape": st.shape, "polys": None, "roi_names": [],
               "lead": stk.lead_shape, "stack": True,
               "fields": (lay.metadata or {}).get("fields") if lay is not None else None,
               "scale": tuple(lay.scale) if lay is not None else None,
               "translate": tuple(lay.translate) if lay is not None else None}
        if ctx["fields"] is not None:
            ctx["fields"] = list(ctx["fields"]) if len(stk.lead_shape) == 1 else None
        if st.roi_layer is not None and st.roi_layer in self.owner.viewer.layers:
            ctx["polys"] = shapes_to_polygons(st.roi_layer, lay) or None
            ctx["roi_names"] = roi_names(st.roi_layer) if ctx["polys"] else []
        self.owner.show_stack({k: p.result for k, p in stk.planes.items()}, ctx)


class QuantifyError(Exception):
    """A RuntimeError raised by the core, re-raised under a type the worker reports."""


def _core_gen(name: str, *args: Any, **kwargs: Any):
    """Run the core generator ``erquant.pipeline.<name>`` (looked up at call time).

    superqt's GeneratorWorker takes a RuntimeError from the generator for "worker
    deleted" and stops without emitting ``errored`` or ``finished``, which would leave
    the widget busy forever; such errors are re-raised as :class:`QuantifyError`.
    """
    import erquant.pipeline

    try:
        result = yield from getattr(erquant.pipeline, name)(*args, **kwargs)
    except RuntimeError as exc:
        raise QuantifyError(f"{type(exc).__name__}: {exc}") from exc
    return result


def _stack_gen(datas: list, lead: tuple[int, ...], done: dict[int, Any], **kwargs: Any):
    """Quantify every plane of the (…, Y, X) stacks *datas* (nuclei, then ERα) with
    :func:`erquant.pipeline.quantify_iter`, one plane at a time (each read when its turn
    comes); progress over all planes; finished planes go into *done* (kept on Cancel).
    Returns *done* (flat plane index → FieldResult)."""
    import erquant.pipeline

    n = int(np.prod(lead))
    for k, idx in enumerate(np.ndindex(*lead)):
        planes = [np.asarray(d[idx]) for d in datas]
        field = np.stack(planes) if len(planes) > 1 else planes[0]
        try:
            gen = erquant.pipeline.quantify_iter(field, **kwargs)
            while True:
                try:
                    p = next(gen)
                except StopIteration as stop:
                    done[k] = stop.value
                    break
                yield erquant.pipeline.Progress(f"plane {k + 1} of {n}: {p.stage}",
                                                (k + float(p.fraction)) / n)
        except RuntimeError as exc:
            raise QuantifyError(f"plane {idx}: {type(exc).__name__}: {exc}") from exc
        except ValueError as exc:
            raise ValueError(f"plane {idx}: {exc}") from exc
    return done
