"""The "Batch run (plate)" dock widget: :func:`erquant.batch.run_batch` in the background,
then a plate heatmap of ``wells.csv``.

The widget gathers an input (plate folder or OME-TIFF stack), an optional plate map and
ROI file, an output folder and the number of worker processes, and runs the batch
engine (the same function as ``erquant run``) in a ``thread_worker``. The engine's
``on_result`` callback counts finished fields (progress bar, via a Qt signal) and stops
the run on Cancel (the engine keeps finished fields and resumes on the next run).
When it is done, ``wells.csv`` is shown as a plate heatmap (nuclei count, ERα, %
positive, H-score, QC-flagged / failed fields; wells with QC flags marked ⚠); clicking a well opens the plate as
stacks (:func:`._reader.read_plate`) at that well's first field.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

if TYPE_CHECKING:
    import napari

#: heatmap readouts: (label, wells.csv column)
READOUTS = (("nuclei count", "n_nuclei"), ("ERα (nuclear, bg-corrected)", "er_mean"),
            ("% ER-positive", "pct_er_positive"), ("H-score", "h_score"),
            ("QC: fields flagged", "n_fields_flagged"), ("fields failed", "n_fields_failed"))


def plate_grid(wells: pd.DataFrame, column: str) -> tuple[list[str], list[int], np.ndarray]:
    """Rows (letters), columns (numbers) and the (rows × cols) grid of *column* from a
    ``wells.csv`` table (mean over time points / plates sharing a well; NaN where empty).

    Examples
    --------
    >>> w = pd.DataFrame({"well": ["A01", "B03"], "n_nuclei": [10, 30]})
    >>> rows, cols, grid = plate_grid(w, "n_nuclei")
    >>> rows, cols, grid.tolist()
    (['A', 'B'], [1, 2, 3], [[10.0, nan, nan], [nan, nan, 30.0]])
    """
    from erquant.io.plate import parse_well, well_name

    rc = [parse_well(str(w)) for w in wells["well"]]
    nrow = max((r for r, _ in rc), default=0)
    ncol = max((c for _, c in rc), default=0)
    grid = np.full((nrow, ncol), np.nan)
    vals = pd.to_numeric(wells[column], errors="coerce") if column in wells else \
        pd.Series(np.nan, index=wells.index)
    sums: dict[tuple[int, int], list[float]] = {}
    for (r, c), v in zip(rc, vals, strict=True):
        if np.isfinite(v):
            sums.setdefault((r, c), []).append(float(v))
    for (r, c), vs in sums.items():
        grid[r - 1, c - 1] = float(np.mean(vs))
    rows = [well_name(r, 1).rstrip("0123456789") for r in range(1, nrow + 1)]
    return rows, list(range(1, ncol + 1)), grid


class _Relay(QObject):
    """Carries progress from the worker thread to the UI thread (queued signal)."""

    field_done = Signal(int, int, str)


class BatchWidget(QWidget):
    """Dock widget: run a whole plate with the batch engine, then show a plate heatmap.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        Injected by napari (npe2 widget contribution).
    """

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker: Any = None
        self.result: Any = None
        self.wells: pd.DataFrame | None = None
        self.report_path: Path | None = None
        self.n_done = 0
        self.n_total = 0
        self._cancel = False
        self._relay = _Relay()
        self._relay.field_done.connect(self._on_field)

        self.input = FileEdit(label="input (plate folder / stack)", mode="d",
                              tooltip="MetaXpress folder, a folder `erquant run` reads, or "
                                      "type the path of an OME-TIFF stack")
        self.plate_map = FileEdit(label="plate map (optional)", mode="r", nullable=True,
                                  filter="*.csv", tooltip="Plate map CSV; default: "
                                  "plate_map.csv in the input folder")
        self.roi_file = FileEdit(label="ROIs (optional)", mode="r", nullable=True,
                                 filter="*.geojson *.json",
                                 tooltip="GeoJSON saved by the Quantify widget (Save ROIs…)")
        self.outdir = FileEdit(label="output folder", mode="d",
                               tooltip="Tables, report; rerunning into it resumes")
        self.workers = SpinBox(label="worker processes (0 = here)", min=0, max=64, value=0,
                               tooltip="0 runs in this process; more start a local dask "
                                       "cluster of processes")
        self.method = ComboBox(label="segmenter", choices=["auto", "learned", "classical"],
                               value="auto", tooltip="Nuclei segmenter (auto = the shipped "
                                                     "learned network; classical is faster)")
        self.save_labels = CheckBox(text="save labels (to open wells with their cells)",
                                    value=True)
        self.run_button = PushButton(text="Run plate")
        self.cancel_button = PushButton(text="Cancel", enabled=False,
                                        tooltip="Stop after the field in progress (finished "
                                                "fields are kept; run again to resume)")
        self.progress = ProgressBar(min=0, max=100, value=0, label="fields")
        self.status = Label(value="")
        self.readout = ComboBox(label="heatmap", choices=[r[0] for r in READOUTS],
                                value=READOUTS[0][0])
        self.report = Label(value="")
        self.container = Container(widgets=[
            self.input, self.plate_map, self.roi_file, self.outdir, self.workers,
            self.method, self.save_labels, Container(widgets=[self.run_button, self.cancel_button], layout="horizontal",
                      labels=False),
            self.progress, self.status, self.readout,
        ])
        self.heatmap = QTableWidget(0, 0)
        self.heatmap.setToolTip("Click a well to open its fields")
        self.setLayout(QVBoxLayout())
        self.layout().addWidget(self.container.native)
        self.layout().addWidget(self.heatmap)
        self.layout().addWidget(self.report.native)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.readout.changed.connect(lambda _v: self.show_heatmap())
        self.heatmap.cellClicked.connect(self._on_well_clicked)

    # ------------------------------------------------------------------ running
    def run(self) -> Any:
        """Plan and start the batch run in a worker thread; return the worker (or None)."""
        if self.worker is not None:
            return self.worker
        try:
            kwargs = self._inputs()
        except Exception as exc:  # noqa: BLE001 - shown, nothing started
            show_error(f"erquant: {exc}")
            return None
        self._cancel = False
        self.n_done = 0
        self.worker = create_worker(self._run_batch, kwargs, _start_thread=False,
                                    _connect={"errored": self._on_errored})
        self.worker.returned.connect(self._on_returned)
        self.worker.finished.connect(self._on_finished)
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.progress.value = 0
        self.status.value = f"0 of {self.n_total} fields"
        self.worker.start()
        return self.worker

    def _inputs(self) -> dict[str, Any]:
        from erquant.io.items import open_input
        from erquant.params import Params

        src = str(self.input.value or "").strip()
        out = str(self.outdir.value or "").strip()
        if not src or src == ".":
            raise ValueError("choose an input plate folder or stack")
        if not out or out == ".":
            raise ValueError("choose an output folder")
        if Path(out).resolve() == Path(src).resolve():
            raise ValueError("the output folder must not be the input folder")
        self.n_total = len(open_input(src).items())  # plans only (no pixels): fails early
        pm = self.plate_map.value
        roi = self.roi_file.value
        return {"input_path": src, "outdir": out,
                "plate_map": str(pm) if pm and str(pm) not in ("", ".") else None,
                "roi": str(roi) if roi and str(roi) not in ("", ".") else None,
                "workers": int(self.workers.value), "save_labels": bool(self.save_labels.value),
                "params": Params().replace(**{"segment.method": self.method.value})}

    def _run_batch(self, kwargs: dict[str, Any]) -> Any:
        from erquant.batch import run_batch

        def on_result(row: dict) -> None:
            self.n_done += 1
            self._relay.field_done.emit(self.n_done, self.n_total, str(row.get("id", "")))
            if self._cancel:
                raise KeyboardInterrupt  # the engine stops and keeps finished fields

        ip, od = kwargs.pop("input_path"), kwargs.pop("outdir")
        return run_batch(ip, od, progress=False, on_result=on_result, **kwargs)

    def cancel(self) -> None:
        """Stop after the field in progress."""
        if self.worker is not None:
            self._cancel = True
            self.status.value = "cancelling after this field…"

    def _on_field(self, done: int, total: int, fid: str) -> None:
        self.progress.value = round(100 * done / max(total, 1))
        self.status.value = f"{done} of {total} fields ({fid})"

    def _on_returned(self, result: Any) -> None:
        self.result = result
        if result.interrupted:
            self.status.value = (f"cancelled: {result.n_ok} of {result.n_fields} fields kept; "
                                 "Run again to resume")
            return
        self.progress.value = 100
        self.status.value = (f"done: {result.n_ok} of {result.n_fields} fields"
                             + (f", {result.n_failed} failed" if result.n_failed else ""))
        wells = result.outputs.get("wells")
        if wells is not None and Path(wells).exists():
            self.wells = pd.read_csv(wells)
            self.show_heatmap()
        rep = (result.analysis or {}).get("report") if result.analysis else None
        self.report_path = Path(rep) if rep else None
        self.report.value = (f"report: {self.report_path}" if self.report_path
                             else f"tables: {result.outdir}")
        if result.n_failed:
            show_info(f"erquant: {result.n_failed} field(s) failed: "
                      + "; ".join(f"{i}: {e}" for i, e in result.failures[:3]))

    def _on_errored(self, exc: BaseException) -> None:
        self.status.value = "error"
        show_error(f"erquant run failed: {exc}")

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False

    # ------------------------------------------------------------------ heatmap
    def _column(self) -> str:
        return dict(READOUTS)[self.readout.value]

    def show_heatmap(self, wells: pd.DataFrame | None = None) -> None:
        """Fill the plate heatmap from ``wells.csv`` (the current readout)."""
        if wells is not None:
            self.wells = wells
        if self.wells is None or not len(self.wells):
            return
        from napari.utils.colormaps import ensure_colormap

        col = self._column()
        rows, cols, grid = plate_grid(self.wells, col)
        flagged = set()
        if "qc_flags" in self.wells:
            flagged = {str(w) for w, f in zip(self.wells["well"], self.wells["qc_flags"],
                                              strict=True)
                       if isinstance(f, str) and f.strip()}
        self.heatmap.clear()
        self.heatmap.setRowCount(len(rows))
        self.heatmap.setColumnCount(len(cols))
        self.heatmap.setVerticalHeaderLabels(rows)
        self.heatmap.setHorizontalHeaderLabels([str(c) for c in cols])
        finite = grid[np.isfinite(grid)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        cmap = ensure_colormap("viridis")
        for r in range(len(rows)):
            for c in range(len(cols)):
                v = grid[r, c]
                well = f"{rows[r]}{cols[c]:02d}"
                item = QTableWidgetItem("" if not np.isfinite(v) else _short(v))
                if np.isfinite(v):
                    rgba = cmap.map(np.array([(v - lo) / max(hi - lo, 1e-12)]))[0]
                    item.setBackground(QColor.fromRgbF(*map(float, rgba)))
                    item.setForeground(QColor("black" if rgba[:3].mean() > 0.5 else "white"))
                    tip = f"{well}: {col} = {v:.4g}"
                    if well in flagged:
                        item.setText("⚠ " + item.text())
                        tip += " (QC flags)"
                    item.setToolTip(tip)
                self.heatmap.setItem(r, c, item)
        self.heatmap.resizeColumnsToContents()

    def cell_value(self, well: str) -> str:
        """Text shown for *well* (e.g. ``"A01"``) in the heatmap."""
        from erquant.io.plate import parse_well

        r, c = parse_well(well)
        item = self.heatmap.item(r - 1, c - 1)
        return item.text() if item is not None else ""

    def _on_well_clicked(self, row: int, col: int) -> None:
        with contextlib.suppress(Exception):
            self.open_well(f"{self.heatmap.verticalHeaderItem(row).text()}{col + 1:02d}")

    def open_well(self, well: str) -> None:
        """Show *well*'s first field: open the plate as stacks (once) with the run's label
        stacks when it saved them, and move the slider there."""
        from ._reader import read_plate, run_labels

        src = str(Path(str(self.input.value)))
        layers = [lay for lay in self.viewer.layers
                  if (lay.metadata or {}).get("path") == src and "fields" in lay.metadata]
        if not layers:
            for data, meta, _ in read_plate(src):
                layers.append(self.viewer.add_image(data, **meta))
            md = layers[0].metadata
            if self.result is not None:
                for data, meta, kind in run_labels(str(self.result.outdir), md["items"],
                                                   layers[0].data.shape[-2:], md["source"],
                                                   fields=md.get("fields")):
                    getattr(self.viewer, f"add_{kind}")(data, **meta)
        fields = layers[0].metadata["fields"]
        idx = next((i for i, f in enumerate(fields) if well in f.split()), None)
        if idx is None:
            show_info(f"erquant: no field of well {well} in {src}")
            return
        self.viewer.dims.set_current_step(0, idx)
        if self.wells is not None and "well" in self.wells:
            row = self.wells[self.wells["well"] == well]
            if len(row):
                r = row.iloc[0]
                self.status.value = f"{well}: " + ", ".join(
                    f"{lab} {_short(float(r[col]))}" for lab, col in READOUTS[:3]
                    if col in r and pd.notna(r[col]))


def _short(v: float) -> str:
    if not math.isfinite(v):
        return ""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"
