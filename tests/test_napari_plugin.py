"""Tests of the napari plugin ``napari_erquant`` (run under ``xvfb-run -a`` on Linux).

Reader / layer-conversion tests need napari importable; widget and screenshot tests
also need a display (X server, e.g. xvfb) and are skipped without one.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("qtpy")
pytest.importorskip("pytestqt")
npe2 = pytest.importorskip("npe2")
da = pytest.importorskip("dask.array")
tifffile = pytest.importorskip("tifffile")

from napari_erquant import _layers, _reader, _sample_data

pytestmark = pytest.mark.napari

_HAS_DISPLAY = (
    not sys.platform.startswith("linux")
    or bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    or os.environ.get("QT_QPA_PLATFORM") == "offscreen"
)
needs_display = pytest.mark.skipif(not _HAS_DISPLAY, reason="no display: run under xvfb-run -a")

MANIFEST = Path(_layers.__file__).with_name("napari.yaml")
SHAPE = (256, 256)
N_NUCLEI = 30


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def field():
    """Synthetic 2-channel field (2, Y, X) uint16 and its ground-truth nuclei labels."""
    from erquant.synthetic import make_field

    f = make_field(shape=SHAPE, n_nuclei=N_NUCLEI, seed=3)
    return np.asarray(f.image), np.asarray(f.nuclei)


@pytest.fixture(scope="module")
def result(field):
    from erquant.pipeline import quantify

    image, _ = field
    return quantify(image, nuclei_channel=0, marker_channels={"er": 1})


def _n_labels(labels: np.ndarray) -> int:
    return int(np.count_nonzero(np.unique(labels)))


# ----------------------------------------------------------------------------- manifest
def test_manifest_validates_and_commands_import():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "erquant"
    ids = {c.id for c in manifest.contributions.commands}
    assert {"erquant.quantify_widget", "erquant.get_reader", "erquant.sample_field"} <= ids
    for cmd in manifest.contributions.commands:  # every python_name resolves
        module, attr = cmd.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), attr))
    patterns = manifest.contributions.readers[0].filename_patterns
    assert {"*.tif", "*.tiff", "*.ome.tif", "*.zarr"} <= set(patterns)


# ----------------------------------------------------------------------------- reader
def test_reader_ome_tiff_is_lazy_and_split(tmp_path):
    data = np.arange(2 * 3 * 40 * 50, dtype=np.uint16).reshape(3, 2, 40, 50)  # Z C Y X
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "ZCYX"})
    reader = _reader.get_reader(str(path))
    assert reader is not None
    layers = reader(str(path))
    assert [m["name"] for _, m, _ in layers] == ["stack nuclei", "stack er"]
    assert all(t == "image" for _, _, t in layers)
    for c, (arr, _meta, _) in enumerate(layers):
        assert isinstance(arr, da.Array)  # lazy
        assert arr.shape == (3, 40, 50)
        np.testing.assert_array_equal(arr[1].compute(), data[1, c])
    assert layers[0][1]["colormap"] != layers[1][1]["colormap"]


def test_reader_plain_multichannel_tiff_and_zarr(tmp_path):
    zarr = pytest.importorskip("zarr")
    data = np.random.default_rng(0).integers(0, 4000, (2, 32, 48), dtype=np.uint16)
    tif = tmp_path / "field.tif"
    tifffile.imwrite(tif, data)  # no axes metadata: short leading axis = channels
    layers = _reader.read_layers(str(tif))
    assert [m["name"] for _, m, _ in layers] == ["field nuclei", "field er"]
    np.testing.assert_array_equal(layers[1][0].compute(), data[1])

    zpath = tmp_path / "field.zarr"
    group = zarr.open_group(str(zpath), mode="w")
    group.create_array("0", shape=data.shape, dtype=data.dtype)[:] = data
    group.attrs["multiscales"] = [{
        "axes": [{"name": "c", "type": "channel"}, {"name": "y"}, {"name": "x"}],
        "datasets": [{"path": "0"}],
    }]
    assert _reader.get_reader(str(zpath)) is not None
    zl = _reader.read_layers(str(zpath))
    assert isinstance(zl[0][0], da.Array)
    np.testing.assert_array_equal(zl[0][0].compute(), data[0])

    assert _reader.get_reader(str(tmp_path / "image.gif")) is None
    assert _reader.get_reader(str(tmp_path)) is None  # a folder of no plate
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, data[0])
    (arr, meta, _), = _reader.read_layers(str(single))
    assert arr.shape == (32, 48) and meta["name"] == "one"


# ----------------------------------------------------------------------------- layers
def test_result_layer_data(result):
    tuples = _layers.result_layer_data(result, source="A01_s1", scale=(0.5, 0.5))
    assert [(m["name"], t) for _, m, t in tuples] == [
        ("A01_s1 nuclei", "labels"), ("A01_s1 cells", "labels")]
    (nuc, nmeta, _), (cells, cmeta, _) = tuples
    assert nuc.shape == cells.shape == SHAPE
    ids = np.unique(nuc[nuc > 0])
    for meta in (nmeta, cmeta):
        feats = meta["features"]
        assert set(feats["label"]) == set(ids)
        np.testing.assert_array_equal(feats["index"], feats["label"])  # napari's key
        assert meta["scale"] == (0.5, 0.5)
    # the cells' features are short (hover status); the nuclei layer has the full row
    assert len(cmeta["features"].columns) <= 6 and "nucleus_er_mean_bgcorr" in cmeta["features"]
    assert set(result.table.columns) <= set(nmeta["features"].columns)
    # cells are coloured by ERα class
    cmap = cmeta["colormap"]
    row = result.table.iloc[0]
    order = _layers._class_order(result.table["er_class"])[0]
    np.testing.assert_allclose(cmap.color_dict[int(row["label"])], _layers.CLASS_COLORS[order])


def test_point_colors_by_class_and_intensity():
    cls = _layers.point_colors(pd.DataFrame({"er_class": ["2+", "0", "3+", "0"]}))
    np.testing.assert_array_equal(cls[1], _layers.CLASS_COLORS[0])
    np.testing.assert_array_equal(cls[2], _layers.CLASS_COLORS[3])
    np.testing.assert_array_equal(cls[0], _layers.CLASS_COLORS[2])
    inten = _layers.point_colors(pd.DataFrame({"nucleus_er_mean": [0.0, 10.0, 5.0]}))
    assert inten.shape == (3, 4) and not np.allclose(inten[0], inten[1])


def test_save_table_roundtrip(tmp_path, result):
    feats = _layers.labels_features(result.table)
    csv = _layers.save_table(feats, tmp_path / "cells.csv")
    pq = _layers.save_table(feats, tmp_path / "cells.parquet")
    for back in (pd.read_csv(csv), pd.read_parquet(pq)):
        assert "index" not in back.columns
        np.testing.assert_array_equal(back["label"], result.table["label"])
    assert _layers.save_table(feats, tmp_path / "cells").suffix == ".csv"


def test_reader_png_jpeg_and_channel_last(tmp_path):
    from PIL import Image as PILImage

    gray = (np.arange(40 * 30) % 251).astype(np.uint8).reshape(40, 30)
    PILImage.fromarray(gray).save(tmp_path / "g.png")
    rgb = np.stack([gray, gray // 2, 255 - gray], -1)
    PILImage.fromarray(rgb).save(tmp_path / "c.png")
    PILImage.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    assert _reader.get_reader(str(tmp_path / "g.png")) is _reader.read_layers
    (arr, meta, _), = _reader.read_layers(str(tmp_path / "g.png"))
    np.testing.assert_array_equal(np.asarray(arr), gray)
    layers = _reader.read_layers(str(tmp_path / "c.png"))
    assert [m["name"] for _, m, _ in layers] == ["c red", "c green", "c blue"]
    np.testing.assert_array_equal(np.asarray(layers[2][0]), 255 - gray)
    assert len(_reader.read_layers(str(tmp_path / "c.jpg"))) == 3
    # channel-last TIFF (Y, X, C) splits into channels
    cl = np.random.default_rng(2).integers(0, 999, (40, 30, 2), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "cl.tif", cl, photometric="minisblack", planarconfig="contig")
    layers = _reader.read_layers(str(tmp_path / "cl.tif"))
    assert [m["name"] for _, m, _ in layers] == ["cl nuclei", "cl er"]
    np.testing.assert_array_equal(np.asarray(layers[1][0]), cl[..., 1])
    # OME channel names are used (and guessed by the widget)
    tifffile.imwrite(tmp_path / "n.ome.tif", cl.transpose(2, 0, 1), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["ESR1", "DAPI"]}})
    layers = _reader.read_layers(str(tmp_path / "n.ome.tif"))
    assert [m["name"] for _, m, _ in layers] == ["n ESR1", "n DAPI"]
    assert [m["colormap"] for _, m, _ in layers] == ["green", "blue"]


def test_reader_plate_folder_is_one_lazy_stack_per_channel(tmp_path):
    from erquant.io.items import load_item, open_input
    from erquant.synthetic import PlateSpec, write_plate

    plate = tmp_path / "plate"
    write_plate(PlateSpec(shape=(128, 128), fields_per_well=2, n_nuclei=10), plate,
                wells=["A01", "A02"], progress=False)
    assert _reader.get_reader(str(plate)) is _reader.read_layers
    layers = _reader.read_layers(str(plate))
    assert len(layers) == 2
    (nuc, nmeta, _), (er, emeta, _) = layers
    assert nmeta["name"].endswith("nuclei") and emeta["name"].endswith("er")
    assert (nmeta["colormap"], emeta["colormap"]) == ("blue", "green")
    assert nmeta["blending"] == emeta["blending"] == "additive"
    assert isinstance(nuc, da.Array) and nuc.shape == (4, 128, 128)
    assert nmeta["metadata"]["fields"] == ["A01 s1", "A01 s2", "A02 s1", "A02 s2"]
    items = open_input(plate).items()
    img, _ = load_item(items[3])
    np.testing.assert_array_equal(er[3].compute(), img[1])
    np.testing.assert_array_equal(nuc[0].compute(), load_item(items[0])[0][0])


def test_reader_multiseries_ome_tiff_is_a_stack(tmp_path):
    rng = np.random.default_rng(4)
    series = [rng.integers(0, 4000, (2, 48, 40), dtype=np.uint16) for _ in range(3)]
    path = tmp_path / "fields.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        for s in series:
            tw.write(s, metadata={"axes": "CYX"})
    layers = _reader.read_layers(str(path))
    assert len(layers) == 2
    nuc, meta, _ = layers[0]
    assert isinstance(nuc, da.Array) and nuc.shape == (3, 48, 40)
    assert len(meta["metadata"]["fields"]) == 3
    for k in range(3):
        np.testing.assert_array_equal(layers[1][0][k].compute(), series[k][1])


def test_sample_data():
    layers = _sample_data.make_sample_field(shape=(96, 96), n_nuclei=5, seed=1)
    names = [m["name"] for _, m, _ in layers]
    assert names == ["nuclei", "er", "ground truth"]
    assert layers[0][0].shape == layers[1][0].shape == layers[2][0].shape == (96, 96)
    assert _n_labels(layers[2][0]) > 0


# ----------------------------------------------------------------------------- GUI
SOURCE = "field3"


@pytest.fixture
def widget_viewer(make_napari_viewer, field):
    from napari_erquant._widgets import QuantifyWidget

    image, truth = field
    viewer = make_napari_viewer()
    md = {"source": SOURCE}
    viewer.add_image(image[0], name="nuclei", colormap="blue", blending="additive", metadata=md)
    viewer.add_image(image[1], name="er", colormap="green", blending="additive",
                     metadata=dict(md))
    widget = QuantifyWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget, truth


def _run(qtbot, widget, method="run"):
    worker = getattr(widget, method)()
    assert worker is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)


def _rect(y0, x0, y1, x1):
    return np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], float)


@needs_display
def test_widget_rois_results_dock_equal_core(widget_viewer, qtbot, result):
    from erquant.pipeline import assign_rois, roi_summary

    viewer, widget, truth = widget_viewer
    assert widget.nuclei_layer.value is viewer.layers["nuclei"]  # guessed from names
    assert widget.er_layer.value is viewer.layers["er"]
    rois = widget.add_roi_layer()
    assert widget.roi_layer.value is rois  # picked automatically
    left, right = _rect(0, 0, SHAPE[0], 100), _rect(0, 140, SHAPE[0], SHAPE[1])
    rois.add([left, right], shape_type="rectangle")
    assert rois.features["name"].tolist() == ["roi1", "roi2"]  # named on drawing
    rois.features = pd.DataFrame({"name": ["left", "right"]})
    _run(qtbot, widget)
    assert widget.last_result is not None, widget.status.value
    assert widget.progress.value == 100

    names = _layers.layer_names(SOURCE)
    labels = viewer.layers[names["nuclei"]]
    n_found, n_true = _n_labels(labels.data), _n_labels(truth)
    assert abs(n_found - n_true) <= max(2, 0.15 * n_true)
    assert set(labels.features["label"]) == set(np.unique(labels.data[labels.data > 0]))
    cells = viewer.layers[names["cells"]]
    assert len(cells.features.columns) <= 6  # short hover status
    y, x = result.table[["centroid_y", "centroid_x"]].iloc[0]
    hover = cells.get_status((y, x), world=True)["coordinates"]
    assert "nucleus_er_mean_bgcorr" in hover and "er_class" in hover and "roi_name" in hover
    assert "cyto_er_mean" not in hover and len(hover) < 200

    # the dock's numbers are the core's on the same cells
    core = roi_summary(assign_rois(result.table, [left, right], SHAPE), ["left", "right"])
    state = widget.states[SOURCE]
    pd.testing.assert_frame_equal(state.summary, core)
    rows = widget.results.rows()
    assert [r["ROI"] for r in rows] == ["left", "right", "whole field"]
    for r, (_, c) in zip(rows, core.iterrows()):
        assert int(r["cells"]) == c["n_cells"]
        assert r["H-score"] == f"{c['h_score']:.0f}" and r["Allred"] == f"{c['allred']:.0f}"
    assert 0 < core["n_cells"][0] < core["n_cells"][2]
    assert set(state.table.loc[state.table["roi_name"] == "left", "label"]) == set(
        result.table.loc[result.table["centroid_x"].round() <= 100, "label"])
    assert "diameter" in widget.results.header.text()
    assert widget.results.qc_label.text().startswith(("QC", "⚠"))

    # clicking a ROI row selects that shape; renaming it in the table renames the ROI
    widget.results.table.cellClicked.emit(1, 0)
    assert rois.selected_data == {1}
    widget.results.table.item(0, 0).setText("tumour")
    assert rois.features["name"][0] == "tumour"
    assert widget.states[SOURCE].summary["roi_name"][0] == "tumour"

    # re-run updates in place: no extra layers
    n_layers = len(viewer.layers)
    _run(qtbot, widget)
    assert len(viewer.layers) == n_layers


@needs_display
def test_widget_remeasure_keeps_the_edit(widget_viewer, qtbot):
    viewer, widget, _ = widget_viewer
    _run(qtbot, widget)
    names = _layers.layer_names(SOURCE)
    labels = viewer.layers[names["nuclei"]]
    n0 = len(widget.states[SOURCE].table)
    gone = int(labels.features["label"].iloc[5])
    yx = np.argwhere(labels.data == gone)[0]
    labels.fill(tuple(yx), 0)  # the bucket tool: erase one nucleus
    assert not (labels.data == gone).any()
    assert widget.remeasure_button.enabled
    widget.remeasure_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=60_000)
    state = widget.states[SOURCE]
    assert state.result.info.get("remeasured"), widget.status.value
    assert len(state.table) == n0 - 1
    assert gone not in set(state.table["label"])
    assert not (viewer.layers[names["nuclei"]].data == gone).any()  # the edit stays
    assert not (viewer.layers[names["cells"]].data == gone).any()
    assert widget.results.rows()[-1]["cells"] == str(n0 - 1)
    assert "re-measured" in widget.status.value


@needs_display
def test_two_images_results_coexist(widget_viewer, qtbot):
    from erquant.synthetic import make_field

    viewer, widget, _ = widget_viewer
    _run(qtbot, widget)
    other = np.asarray(make_field(shape=(128, 160), n_nuclei=8, seed=9).image)
    nuc2 = viewer.add_image(other[0], name="f2 DAPI")
    er2 = viewer.add_image(other[1], name="f2 ESR1")
    widget.nuclei_layer.value, widget.er_layer.value = nuc2, er2
    _run(qtbot, widget)
    for src, shape in ((SOURCE, SHAPE), ("f2", (128, 160))):
        for name in _layers.layer_names(src).values():
            assert viewer.layers[name].data.shape == shape
    assert set(widget.states) == {SOURCE, "f2"}
    assert widget.results.source_box.count() == 2
    widget.results.source_box.setCurrentText(SOURCE)
    assert widget.current_source == SOURCE
    # the user's choice is remembered when layers change
    viewer.add_image(other[0], name="more DAPI")
    assert widget.nuclei_layer.value is nuc2


@needs_display
def test_channels_guessed_by_name_not_order(make_napari_viewer, field):
    from napari_erquant._widgets import QuantifyWidget

    image, _ = field
    viewer = make_napari_viewer()
    widget = QuantifyWidget(viewer)
    er = viewer.add_image(image[1], name="ESR1 AF488")  # marker first
    assert widget.nuclei_layer.value is None and widget.er_layer.value is er
    dapi = viewer.add_image(image[0], name="DAPI")
    assert widget.nuclei_layer.value is dapi and widget.er_layer.value is er
    viewer2 = make_napari_viewer()
    w2 = QuantifyWidget(viewer2)
    b = viewer2.add_image(image[1], name="A01_s1_w2")
    a = viewer2.add_image(image[0], name="A01_s1_w1")
    assert (w2.nuclei_layer.value, w2.er_layer.value) == (a, b)


@needs_display
def test_layers_of_different_fields_refused(make_napari_viewer, field, monkeypatch):
    import napari_erquant._widgets as w

    image, _ = field
    viewer = make_napari_viewer()
    widget = w.QuantifyWidget(viewer)
    errors: list[str] = []
    monkeypatch.setattr(w, "show_error", errors.append)
    viewer.add_image(image[0], name="A01_s1_w1")
    viewer.add_image(image[1], name="A02_s1_w2")
    assert widget.run() is None and "different fields" in errors[-1]
    widget.er_layer.value = viewer.add_image(image[1], name="A01_s1_w2", scale=(2, 2))
    assert widget.run() is None and "pixel grid" in errors[-1]
    assert widget.remeasure() is None  # nothing to re-measure yet


@needs_display
def test_widget_cancel_and_empty_field(widget_viewer, qtbot):
    viewer, widget, _ = widget_viewer
    widget.run_button.native.click()
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert widget.last_result is None and widget.status.value == "cancelled"
    assert _layers.layer_names(SOURCE)["nuclei"] not in viewer.layers

    # nuclei-only run with a manual threshold above everything: an empty, valid result
    widget.threshold.value = "manual"
    widget.threshold_value.value = 1e9
    widget.max_distance.value = 5
    widget.er_layer.value = None
    _run(qtbot, widget)
    assert widget.last_result is not None and len(widget.last_result.table) == 0
    assert _n_labels(viewer.layers[_layers.layer_names(SOURCE)["nuclei"]].data) == 0
    assert widget.results.rows()[-1]["cells"] == "0"


@needs_display
def test_failed_run_marks_results_stale_and_export(widget_viewer, qtbot, monkeypatch, tmp_path):
    import json

    import napari_erquant._widgets as w

    import erquant
    import erquant.pipeline

    viewer, widget, _ = widget_viewer
    errors: list[str] = []
    monkeypatch.setattr(w, "show_error", errors.append)
    # bad input: planes of different shapes are refused before any thread starts
    widget.er_layer.value = viewer.add_image(np.zeros((10, 10)), name="small",
                                             metadata={"source": SOURCE})
    assert widget.run() is None and "differ in shape" in errors[-1]
    widget.er_layer.value = viewer.layers["er"]
    _run(qtbot, widget)
    written = widget.export(tmp_path / "cells.parquet")
    assert written is not None
    back = pd.read_parquet(written["cells"])
    assert len(back) == len(widget.states[SOURCE].table) and "roi_name" in back
    meta = json.loads(written["metadata"].read_text())
    assert meta["erquant_version"] == erquant.__version__ and meta["source"] == SOURCE
    # the default segmenter is the learned one: no intensity threshold of its own
    assert meta["segmenter"] == "learned" and meta["parameters"]["segment"]["method"] == "auto"
    assert meta["thresholds"]["nuclei"] is None and "er_class_bounds" in meta["thresholds"]
    assert meta["parameters"]["segment"]["threshold"] == "otsu"
    assert pd.read_csv(written["summary"])["roi_name"].tolist() == ["whole field"]

    def broken(field, **kwargs):
        yield erquant.pipeline.Progress("segment", 0.1)
        raise RuntimeError("boom")

    monkeypatch.setattr(erquant.pipeline, "quantify_iter", broken)
    _run(qtbot, widget)
    assert "boom" in errors[-1] and widget.status.value == "error"
    assert widget.states[SOURCE].stale
    assert viewer.layers[_layers.layer_names(SOURCE)["cells"]].metadata["erquant_stale"]
    assert "STALE" in widget.results.qc_label.text()
    assert widget.export(tmp_path / "again.csv") is None and "stale" in errors[-1]
    assert not (tmp_path / "again.csv").exists()
    assert widget.run_button.enabled


@needs_display
def test_roi_geojson_roundtrip_restricts_batch_to_same_cells(make_napari_viewer, qtbot,
                                                             tmp_path):
    import json

    from napari_erquant._widgets import QuantifyWidget

    from erquant.batch import run_batch
    from erquant.io.roi import read_roi_geojson
    from erquant.synthetic import PlateSpec, write_plate

    plate = tmp_path / "plate"
    write_plate(PlateSpec(shape=(128, 128), fields_per_well=1, n_nuclei=12), plate,
                wells=["A01"], progress=False)
    (plate / "plate_map.csv").unlink()  # a one-well map has no vehicle: run_batch refuses it
    files = sorted(plate.rglob("A01_s1_w*.tif"))
    assert len(files) == 2, files
    viewer = make_napari_viewer()
    widget = QuantifyWidget(viewer)
    for f in files:
        viewer.open(str(f), plugin="erquant")
    assert widget.nuclei_layer.value.name == "A01_s1_w1"
    assert widget.er_layer.value.name == "A01_s1_w2"
    rois = widget.add_roi_layer()
    rois.add([_rect(5, 5, 90, 70), _rect(60, 80, 120, 125)], shape_type="rectangle")
    rois.features = pd.DataFrame({"name": ["top left", "right"]})
    _run(qtbot, widget)
    state = widget.states["A01_s1"]
    inside = set(state.table.loc[state.table["roi"] >= 0, "label"])
    assert 0 < len(inside) < len(state.table)

    path = widget.save_rois(tmp_path / "rois.geojson")
    feats = json.loads(path.read_text())["features"]
    assert [f["properties"]["name"] for f in feats] == ["top left", "right"]
    assert feats[0]["properties"]["image"] == "A01_s1_w1.tif"
    assert feats[0]["geometry"]["coordinates"][0][0] == [5.0, 5.0]  # [x, y] pixels
    loaded = widget.load_rois(path)
    assert loaded is not None and widget.roi_layer.value is loaded
    assert loaded.features["name"].tolist() == ["top left", "right"]
    for a, b in zip(loaded.data, rois.data):
        np.testing.assert_allclose(a, b)
    assert [r.name for r in read_roi_geojson(path)] == ["top left", "right"]

    res = run_batch(plate, tmp_path / "out", roi=path, workers=0, progress=False,
                    analysis=False)
    assert res.n_ok == 1, res.failures
    cells = pd.read_parquet(res.outputs["cells"])
    assert set(cells["label"]) == inside
    by_name = state.table[state.table["roi"] >= 0].set_index("label")["roi_name"]
    assert (cells.set_index("label")["roi_name"].sort_index() == by_name.sort_index()).all()


@needs_display
def test_bad_inputs_are_notifications(widget_viewer, monkeypatch, tmp_path):
    import napari_erquant._widgets as w

    viewer, widget, _ = widget_viewer
    errors: list[str] = []
    monkeypatch.setattr(w, "show_error", errors.append)
    assert widget.export(tmp_path / "x.csv") is None and "run first" in errors[-1]
    assert widget.remeasure() is None and "labels" in errors[-1]
    assert widget.save_rois(tmp_path / "r.geojson") is None and "no ROI" in errors[-1]
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    assert widget.load_rois(bad) is None and "bad.geojson" in errors[-1]
    assert widget.load_rois(tmp_path / "missing.geojson") is None
    widget.nuclei_layer.value = None
    assert widget.run() is None and "nuclei image" in errors[-1]


@needs_display
def test_current_plane_follows_dims(make_napari_viewer):
    from napari_erquant._widgets import current_plane

    viewer = make_napari_viewer()
    stack = da.from_array(np.arange(4 * 8 * 9).reshape(4, 8, 9), chunks=(1, 8, 9))
    layer = viewer.add_image(stack)
    viewer.dims.set_current_step(0, 2)
    plane = current_plane(layer, viewer)
    assert isinstance(plane, np.ndarray)
    np.testing.assert_array_equal(plane, np.asarray(stack[2]))


@needs_display
def test_screenshot_renders(make_napari_viewer, field):
    viewer = make_napari_viewer(show=True)  # a hidden canvas is never drawn (all zeros)
    viewer.add_image(field[0][0], colormap="gray")
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.ndim == 3 and shot.shape[0] > 0 and shot.shape[1] > 0
    assert shot[..., :3].std() > 0  # something was drawn, not a blank canvas


@needs_display
def test_contributions_through_napari(make_napari_viewer, tmp_path):
    """The installed manifest wires reader, sample data and widget into napari."""
    from napari_erquant._widgets import QuantifyWidget

    pm = npe2.PluginManager.instance()
    if "erquant" not in pm:  # not installed (e.g. plain checkout): register the file
        pm.register(npe2.PluginManifest.from_file(MANIFEST))
    viewer = make_napari_viewer()
    data = np.random.default_rng(1).integers(0, 999, (2, 24, 24), dtype=np.uint16)
    path = tmp_path / "two.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "CYX"})
    viewer.open(str(path), plugin="erquant")
    assert [lay.name for lay in viewer.layers] == ["two nuclei", "two er"]
    assert isinstance(viewer.layers["two er"].data, da.Array)
    viewer.open_sample("erquant", "er_field")
    assert "ground truth" in viewer.layers
    _, widget = viewer.window.add_plugin_dock_widget("erquant", "Quantify ERα")
    assert isinstance(widget, QuantifyWidget)


def test_build_params_maps_widget_values():
    from napari_erquant._widgets import build_params

    from erquant.params import Params

    p = build_params(diameter=12, threshold="li", threshold_value=5.0, max_distance=0)
    assert isinstance(p, Params)
    assert (p.segment.diameter, p.segment.threshold, p.segment.threshold_value) == (12.0, "li", None)
    assert p.cells.max_distance == Params().cells.max_distance  # 0 keeps the default
    q = build_params(diameter=0, threshold="manual", threshold_value=300, max_distance=8)
    assert (q.segment.diameter, q.segment.threshold_value, q.cells.max_distance) == (None, 300, 8)
    with pytest.raises(ValueError, match="threshold"):
        build_params(threshold="magic")


# ----------------------------------------------------------------------------- batch widget
@pytest.fixture(scope="module")
def small_plate(tmp_path_factory):
    from erquant.synthetic import PlateSpec, write_plate

    plate = tmp_path_factory.mktemp("plate") / "P1"
    write_plate(PlateSpec(shape=(128, 128), fields_per_well=2, n_nuclei=10), plate,
                wells=["A01", "A02"], progress=False)
    (plate / "plate_map.csv").unlink()  # two treated wells, no vehicle: no dose-response
    return plate


@needs_display
def test_batch_widget_runs_plate_then_heatmap(make_napari_viewer, qtbot, small_plate,
                                              tmp_path):
    from napari_erquant._batch import BatchWidget

    viewer = make_napari_viewer()
    widget = BatchWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.input.value = small_plate
    widget.outdir.value = tmp_path / "out"
    widget.workers.value = 0
    seen: list[int] = []
    widget._relay.field_done.connect(lambda done, total, _id: seen.append(done))
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
    assert widget.result is not None and widget.result.n_ok == 4, widget.status.value
    assert seen == [1, 2, 3, 4] and widget.progress.value == 100
    assert widget.status.value.startswith("done: 4 of 4")
    wells = pd.read_csv(tmp_path / "out" / "wells.csv").set_index("well")
    assert widget.cell_value("A01").lstrip("⚠ ") == f"{wells.loc['A01', 'n_nuclei']:.0f}"
    widget.readout.value = "% ER-positive"
    v = wells.loc["A02", "pct_er_positive"]
    assert widget.cell_value("A02").lstrip("⚠ ") == (f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}")
    assert str(tmp_path / "out") in widget.report.value
    widget.readout.value = "QC: fields flagged"
    assert widget.cell_value("A01").lstrip("⚠ ") == f"{wells.loc['A01', 'n_fields_flagged']:.3g}"
    # clicking a well opens the plate as stacks at that well's first field
    widget.heatmap.cellClicked.emit(0, 1)
    stack = next(lay for lay in viewer.layers if "fields" in lay.metadata)
    assert stack.data.shape[0] == 4
    assert viewer.dims.current_step[0] == 2  # A02 s1
    assert widget.status.value.startswith("A02: nuclei count")
    # with the run's labels, aligned field by field
    labels = next(lay for lay in viewer.layers if lay.name.endswith("nuclei (run)"))
    saved = sorted((tmp_path / "out" / "labels").glob("*A02__s001_nuclei.tif"))
    assert labels.data.shape == (4, 128, 128) and len(saved) == 1
    stride = labels.metadata["label_stride"]  # plane k's labels are shifted by k * stride
    lab2, saved2 = labels.data[2].compute(), tifffile.imread(saved[0])
    np.testing.assert_array_equal(np.where(lab2 > 0, lab2 - 2 * stride, 0), saved2)
    assert set(labels.features.loc[labels.features["plane"] == 2, "index"]) == \
        set(np.unique(lab2[lab2 > 0]))
    n = len(viewer.layers)
    widget.open_well("A01")
    assert len(viewer.layers) == n and viewer.dims.current_step[0] == 0


@needs_display
def test_batch_widget_cancel_and_bad_input(make_napari_viewer, qtbot, small_plate, tmp_path,
                                           monkeypatch):
    import napari_erquant._batch as b

    viewer = make_napari_viewer()
    widget = b.BatchWidget(viewer)
    errors: list[str] = []
    monkeypatch.setattr(b, "show_error", errors.append)
    assert widget.run() is None and "input" in errors[-1]
    widget.input.value = tmp_path / "nothing here"
    widget.outdir.value = tmp_path / "out"
    assert widget.run() is None and "not found" in errors[-1]
    widget.input.value = small_plate
    assert widget.run() is not None
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=180_000)
    assert widget.result.interrupted and widget.result.n_ok < 4
    assert widget.status.value.startswith("cancelled") and widget.run_button.enabled


@needs_display
def test_plate_folder_opens_through_napari(make_napari_viewer, small_plate):
    pm = npe2.PluginManager.instance()
    if "erquant" not in pm:
        pm.register(npe2.PluginManifest.from_file(MANIFEST))
    viewer = make_napari_viewer()
    viewer.open(str(small_plate), plugin="erquant")
    names = [lay.name for lay in viewer.layers]
    assert len(names) == 2 and names[0].endswith("nuclei") and names[1].endswith("er")
    assert viewer.layers[0].data.shape == (4, 128, 128)
    assert isinstance(viewer.layers[0].data, da.Array)
    assert viewer.dims.axis_labels[0] == "field"


@needs_display
def test_quantify_current_field_of_a_plate_stack(make_napari_viewer, qtbot, small_plate):
    from napari_erquant._widgets import QuantifyWidget

    from erquant.io.items import load_item, open_input
    from erquant.pipeline import quantify

    viewer = make_napari_viewer()
    widget = QuantifyWidget(viewer)
    for data, meta, _ in _reader.read_plate(str(small_plate)):
        viewer.add_image(data, **meta)
    viewer.dims.set_current_step(0, 3)
    _run(qtbot, widget)
    assert set(widget.states) == {"A02 s2"}, widget.status.value
    img, _ = load_item(open_input(small_plate).items()[3])
    core = quantify(img)
    pd.testing.assert_frame_equal(widget.states["A02 s2"].result.table, core.table)
    assert viewer.layers["A02 s2 nuclei"].data.shape == (128, 128)


def test_reader_ome_zarr_hcs_plate_is_a_stack(tmp_path, small_plate):
    pytest.importorskip("ome_zarr")
    from erquant.io.items import load_item, open_input
    from erquant.io.omezarr import write_hcs_plate

    items = open_input(small_plate).items()
    fields = {(it.well, it.field): load_item(it)[0] for it in items}
    store = write_hcs_plate(tmp_path / "plate.zarr", fields, version="0.4")
    assert _reader.get_reader(str(store)) is _reader.read_layers
    layers = _reader.read_layers(str(store))
    assert [m["colormap"] for _, m, _ in layers] == ["blue", "green"]  # Hoechst, ERa
    nuc, meta, _ = layers[0]
    assert isinstance(nuc, da.Array) and nuc.shape == (4, 128, 128)
    assert meta["metadata"]["fields"] == ["A01 s1", "A01 s2", "A02 s1", "A02 s2"]
    np.testing.assert_array_equal(layers[1][0][2].compute(), fields[("A02", 1)][1])


# ----------------------------------------------------------------------------- stacks
@pytest.fixture(scope="module")
def zstack():
    """(3, 2, Y, X): three different synthetic fields as the planes of one stack."""
    from erquant.synthetic import make_field

    return np.stack([np.asarray(make_field(shape=(128, 128), n_nuclei=8 + 4 * k,
                                           seed=10 + k).image) for k in range(3)])


def _stack_viewer(make_napari_viewer, zstack):
    from napari_erquant._widgets import QuantifyWidget

    viewer = make_napari_viewer()
    for c, name in enumerate(("nuclei", "er")):
        viewer.add_image(zstack[:, c], name=f"zs {name}", metadata={"source": "zs"},
                         scale=(1.0, 0.5, 0.5))
    widget = QuantifyWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget


@needs_display
def test_quantify_all_planes_of_a_stack(make_napari_viewer, qtbot, zstack, tmp_path):
    from erquant.pipeline import quantify

    viewer, widget = _stack_viewer(make_napari_viewer, zstack)
    widget.scope.value = "all planes"
    steps: list[float] = []
    _run_ok = widget.run()
    assert _run_ok is not None
    _run_ok.yielded.connect(lambda p: steps.append(p.fraction))
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    stack = widget.stacks["zs"]
    assert len(stack.planes) == 3 and widget.progress.value == 100, widget.status.value
    nuc, cells = viewer.layers["zs nuclei (stack)"], viewer.layers["zs cells (stack)"]
    assert nuc.data.shape == cells.data.shape == (3, 128, 128)  # aligned with the data
    assert tuple(nuc.scale) == (1.0, 0.5, 0.5)
    table = stack.table
    assert sorted(table["plane"].unique()) == [0, 1, 2]
    for k in range(3):  # every plane is the core's quantify of that plane
        core = quantify(zstack[k])
        rows = table[table["plane"] == k]
        assert rows["label"].tolist() == core.table["label"].tolist()
        np.testing.assert_allclose(rows["nucleus_er_mean_bgcorr"],
                                   core.table["nucleus_er_mean_bgcorr"])
        lab = nuc.data[k]
        assert set(np.unique(lab[lab > 0])) == set(rows["stack_label"])
        np.testing.assert_array_equal(lab > 0, core.nuclei > 0)
    assert set(nuc.features["index"]) == set(table["stack_label"])  # hover on any plane
    assert steps and steps == sorted(steps) and steps[-1] > 2 / 3
    # the dock follows the current plane
    viewer.dims.set_current_step(0, 2)
    assert widget.states["zs"].plane == 2
    n2 = int((table["plane"] == 2).sum())
    assert widget.results.rows()[-1]["cells"] == str(n2)
    assert "plane 2" in widget.results.header.text()
    viewer.dims.set_current_step(0, 0)
    assert widget.results.rows()[-1]["cells"] == str(int((table["plane"] == 0).sum()))
    # contrast control over the whole stack; stepping planes keeps the range
    er = table["nucleus_er_mean_bgcorr"]
    lo, hi = float(er.quantile(0.1)), float(er.quantile(0.9))
    widget.results.set_colouring("ERα level", (lo, hi))
    viewer.dims.set_current_step(0, 1)
    assert np.allclose(widget.results.colour_range.value(), (lo, hi))
    top = table.loc[er.idxmax()]
    np.testing.assert_allclose(cells.colormap.color_dict[int(top["stack_label"])][:3],
                               [0.993248, 0.906157, 0.143936], atol=1e-5)  # viridis top
    widget.results.set_colouring("ERα class")
    # export: one table, rows record their plane
    out = widget.export(tmp_path / "zs.csv")
    saved = pd.read_csv(out["cells"])
    assert len(saved) == len(table) and saved["plane"].tolist() == table["plane"].tolist()
    assert set(pd.read_csv(out["summary"])["plane"]) == {0, 1, 2}
    # ROIs apply to every plane; re-running updates the stacks in place
    rois = widget.add_roi_layer()
    rois.add([_rect(0, 0, 128, 64)], shape_type="rectangle")
    n_layers = len(viewer.layers)
    widget.results.refresh_rois()
    assert len(viewer.layers) == n_layers and viewer.layers["zs nuclei (stack)"].data.ndim == 3
    t = widget.stacks["zs"].table
    assert set(t["roi_name"]) <= {"roi1", ""} and (t["roi_name"] == "roi1").any()


@needs_display
def test_all_planes_cancel_keeps_finished_planes_and_2d_refused(make_napari_viewer, qtbot,
                                                                zstack, monkeypatch):
    import napari_erquant._widgets as w

    import erquant.pipeline

    viewer, widget = _stack_viewer(make_napari_viewer, zstack)
    widget.scope.value = "all planes"
    real, calls = erquant.pipeline.quantify_iter, []

    def quantify_iter(*args, **kwargs):  # Cancel pressed while the third plane starts
        calls.append(1)
        if len(calls) == 3:
            widget.worker.quit()
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(erquant.pipeline, "quantify_iter", quantify_iter)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget.worker is None, timeout=120_000)
    stack = widget.stacks["zs"]
    assert 1 <= len(stack.planes) < 3 and 0 in stack.planes
    assert widget.status.value.startswith("cancelled: ")
    assert viewer.layers["zs nuclei (stack)"].data.shape == (3, 128, 128)
    assert not viewer.layers["zs nuclei (stack)"].data[2].any()  # not quantified: empty
    # a 2-D image has no planes to step through: a notification, nothing started
    errors: list[str] = []
    monkeypatch.setattr(w, "show_error", errors.append)
    viewer2 = make_napari_viewer()
    viewer2.add_image(zstack[0, 0], name="flat nuclei")
    w2 = w.QuantifyWidget(viewer2)
    w2.scope.value = "all planes"
    assert w2.run() is None and "current plane" in errors[-1]


# ----------------------------------------------------------------------------- run output
@pytest.fixture(scope="module")
def run_outputs(small_plate, tmp_path_factory):
    from erquant.batch import run_batch

    base = tmp_path_factory.mktemp("runs")
    run_batch(str(small_plate), str(base / "with"), progress=False, save_labels=True)
    run_batch(str(small_plate), str(base / "without"), progress=False, save_labels=False)
    return base / "with", base / "without"


@needs_display
def test_erquant_output_folder_opens_with_labels_and_table(make_napari_viewer, run_outputs,
                                                           small_plate):
    from erquant.io.items import open_input

    out, _ = run_outputs
    assert _reader.get_reader(str(out)) is _reader.read_layers
    pm = npe2.PluginManager.instance()
    if "erquant" not in pm:
        pm.register(npe2.PluginManifest.from_file(MANIFEST))
    viewer = make_napari_viewer()
    viewer.open(str(out), plugin="erquant")
    names = [lay.name for lay in viewer.layers]
    assert names == ["P1 nuclei", "P1 er", "P1 nuclei (run)", "P1 cells (run)"], names
    img, nuc, cells = viewer.layers[0], viewer.layers[2], viewer.layers[3]
    assert img.data.shape == nuc.data.shape == (4, 128, 128)
    assert viewer.dims.axis_labels[0] == "field"
    items = open_input(small_plate).items()
    assert img.metadata["items"] == [it.id for it in items]
    stride = nuc.metadata["label_stride"]
    for k, it in enumerate(items):  # saved labels and the field's table, plane by plane
        saved = tifffile.imread(out / "labels" / f"{it.id}_nuclei.tif")
        lab = nuc.data[k].compute()
        np.testing.assert_array_equal(np.where(lab > 0, lab - k * stride, 0), saved)
        part = pd.read_parquet(out / "parts" / f"{it.id}.parquet")
        rows = nuc.features[nuc.features["plane"] == k]
        assert rows["label"].tolist() == part["label"].tolist()
        assert set(rows["index"]) == set(np.unique(lab[lab > 0]))
    assert {"plane", "field_name", "nucleus_er_mean_bgcorr", "er_class"} <= set(cells.features)
    assert nuc.features["field_name"].iloc[0] == "A01 s1"
    # the merged table's rows (plate-level flat field and ER reference), not the raw parts
    merged = pd.read_parquet(out / "cells.parquet")
    assert "flatfield_gain" in nuc.features
    first = merged[(merged["well"] == items[0].well) & (merged["field"] == items[0].field)]
    rows = nuc.features[nuc.features["plane"] == 0]
    np.testing.assert_allclose(rows["nucleus_er_mean_bgcorr"], first["nucleus_er_mean_bgcorr"])
    assert rows["er_class"].tolist() == first["er_class"].tolist()


@needs_display
def test_erquant_output_folder_without_labels_says_so(make_napari_viewer, run_outputs,
                                                      monkeypatch, tmp_path):
    import napari.utils.notifications as nn

    _, out = run_outputs
    warned: list[str] = []
    monkeypatch.setattr(nn, "show_warning", warned.append)
    layers = _reader.read_layers(str(out))
    assert [t for _, _, t in layers] == ["image", "image"]
    assert warned and "saved no labels" in warned[-1] and "--save-labels" in warned[-1]
    # a run whose input moved: a clear error
    import json
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    info = json.loads((moved / "run.json").read_text())
    info["input"] = str(tmp_path / "gone")
    (moved / "run.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="not here any more"):
        _reader.read_layers(str(moved))


# ----------------------------------------------------------------------------- contrast, ROIs
@needs_display
def test_contrast_control_colours_cells_by_er_level(widget_viewer, qtbot):
    from napari.utils.colormaps import ensure_colormap

    viewer, widget, _ = widget_viewer
    _run(qtbot, widget)
    cells = viewer.layers[_layers.layer_names(SOURCE)["cells"]]
    table = widget.states[SOURCE].table
    er = table.set_index("label")["nucleus_er_mean_bgcorr"]
    dock = widget.results
    assert not dock.colour_range.isEnabled()  # class colouring by default
    lo_lab, hi_lab = int(er.idxmin()), int(er.idxmax())
    assert np.allclose(cells.colormap.color_dict[lo_lab], _layers.CLASS_COLORS[0])
    lo, hi = float(er.quantile(0.25)), float(er.quantile(0.75))
    dock.set_colouring("ERα level", (lo, hi))
    assert dock.colour_range.isEnabled()
    assert np.allclose(dock.colour_range.value(), (lo, hi))
    vir = ensure_colormap("viridis")
    np.testing.assert_allclose(cells.colormap.color_dict[lo_lab], vir.map(np.array([0.0]))[0])
    np.testing.assert_allclose(cells.colormap.color_dict[hi_lab], vir.map(np.array([1.0]))[0])
    mid = int((er - (lo + hi) / 2).abs().idxmin())
    expect = vir.map(np.array([np.clip((er[mid] - lo) / (hi - lo), 0, 1)]))[0]
    np.testing.assert_allclose(cells.colormap.color_dict[mid], expect, atol=1e-6)
    assert "viridis" in dock.legend.text()
    dock.colour_range.setValue((float(er.min()), float(er.max())))  # dragging re-colours
    assert not np.allclose(cells.colormap.color_dict[mid], expect)
    dock.set_colouring("ERα class")
    assert np.allclose(cells.colormap.color_dict[lo_lab], _layers.CLASS_COLORS[0])


@needs_display
def test_loaded_rois_of_another_image_are_notified(widget_viewer, monkeypatch, tmp_path):
    import napari_erquant._widgets as w

    from erquant.io.roi import Roi, write_roi_geojson

    viewer, widget, _ = widget_viewer
    warned: list[str] = []
    monkeypatch.setattr(w, "show_warning", warned.append)
    square = [(0.0, 0.0), (0.0, 50.0), (50.0, 50.0), (50.0, 0.0)]
    same = write_roi_geojson(tmp_path / "same.geojson",
                             [Roi("a", square, properties={"source": SOURCE})])
    assert widget.load_rois(same) is not None and not warned
    other = write_roi_geojson(tmp_path / "other.geojson",
                              [Roi("a", square, properties={"source": SOURCE}),
                               Roi("b", square, image="B02_s1_w1.tif")])
    layer = widget.load_rois(other)
    assert layer is not None and len(layer.data) == 2  # still loaded
    assert warned and "1 of 2" in warned[-1] and "B02_s1_w1.tif" in warned[-1]


@needs_display
def test_quantify_all_fields_of_a_plate_stack(make_napari_viewer, qtbot, small_plate):
    from napari_erquant._widgets import QuantifyWidget

    from erquant.io.items import load_item, open_input
    from erquant.pipeline import quantify

    viewer = make_napari_viewer()
    widget = QuantifyWidget(viewer)
    for data, meta, _ in _reader.read_plate(str(small_plate)):
        viewer.add_image(data, **meta)
    widget.scope.value = "all planes"
    _run(qtbot, widget)
    stack = widget.stacks["P1"]
    table = stack.table
    assert table.groupby("plane")["field_name"].first().tolist() == \
        ["A01 s1", "A01 s2", "A02 s1", "A02 s2"]
    items = open_input(small_plate).items()
    img, _ = load_item(items[3])
    core = quantify(img)
    rows = table[table["plane"] == 3].drop(
        columns=["plane", "field_name", "stack_label", "roi_name", "roi"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(rows, core.table.drop(columns=["roi"]), check_dtype=False)
    assert viewer.layers["P1 nuclei (stack)"].data.shape == (4, 128, 128)
    viewer.dims.set_current_step(0, 3)
    assert "(A02 s2)" in widget.results.header.text()
