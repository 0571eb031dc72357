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
    assert [m["name"] for _, m, _ in layers] == ["nuclei", "er"]
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
    assert [m["name"] for _, m, _ in layers] == ["nuclei", "er"]
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

    assert _reader.get_reader(str(tmp_path / "image.png")) is None
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, data[0])
    (arr, meta, _), = _reader.read_layers(str(single))
    assert arr.shape == (32, 48) and meta["name"] == "one.tif"


# ----------------------------------------------------------------------------- layers
def test_result_layer_data(result):
    tuples = _layers.result_layer_data(result, scale=(0.5, 0.5))
    assert [(m["name"], t) for _, m, t in tuples] == [
        (_layers.NUCLEI_LAYER, "labels"), (_layers.CELLS_LAYER, "labels"),
        (_layers.POINTS_LAYER, "points")]
    (nuc, nmeta, _), (cells, cmeta, _), (pts, pmeta, _) = tuples
    assert nuc.shape == cells.shape == SHAPE
    ids = np.unique(nuc[nuc > 0])
    for meta in (nmeta, cmeta):
        feats = meta["features"]
        assert set(feats["label"]) == set(ids)
        np.testing.assert_array_equal(feats["index"], feats["label"])  # napari's key
        assert meta["scale"] == (0.5, 0.5)
    assert pts.shape == (len(result.table), 2)
    assert pmeta["face_color"].shape == (len(result.table), 4)
    # each centroid lies on its own nucleus
    yx = np.round(pts).astype(int)
    hit = nuc[yx[:, 0], yx[:, 1]]
    assert np.mean(hit == result.table["label"].to_numpy()) > 0.9


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


def test_sample_data():
    layers = _sample_data.make_sample_field(shape=(96, 96), n_nuclei=5, seed=1)
    names = [m["name"] for _, m, _ in layers]
    assert names == ["nuclei", "er", "ground truth"]
    assert layers[0][0].shape == layers[1][0].shape == layers[2][0].shape == (96, 96)
    assert _n_labels(layers[2][0]) > 0


# ----------------------------------------------------------------------------- GUI
@pytest.fixture
def widget_viewer(make_napari_viewer, field):
    from napari_erquant._widgets import QuantifyWidget

    image, truth = field
    viewer = make_napari_viewer()
    viewer.add_image(image[0], name="nuclei", colormap="blue", blending="additive")
    viewer.add_image(image[1], name="er", colormap="green", blending="additive")
    widget = QuantifyWidget(viewer)
    viewer.window.add_dock_widget(widget)
    return viewer, widget, truth


def _run(qtbot, widget):
    widget.run_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)


@needs_display
def test_widget_end_to_end(widget_viewer, qtbot):
    viewer, widget, truth = widget_viewer
    assert widget.nuclei_layer.value is viewer.layers["nuclei"]  # guessed from names
    assert widget.er_layer.value is viewer.layers["er"]
    _run(qtbot, widget)
    assert widget.last_result is not None, widget.status.value
    assert widget.progress.value == 100

    labels = viewer.layers[_layers.NUCLEI_LAYER]
    n_found, n_true = _n_labels(labels.data), _n_labels(truth)
    assert abs(n_found - n_true) <= max(2, 0.15 * n_true)
    feats = labels.features
    assert set(feats["label"]) == set(np.unique(labels.data[labels.data > 0]))
    assert len(viewer.layers[_layers.POINTS_LAYER].data) == len(feats)

    # re-run updates in place: no extra layers
    n_layers = len(viewer.layers)
    _run(qtbot, widget)
    assert len(viewer.layers) == n_layers

    # ROI: a rectangle over the left half keeps only cells centred there
    half = SHAPE[1] // 2
    rect = np.array([[0, 0], [0, half], [SHAPE[0], half], [SHAPE[0], 0]], float)
    roi = viewer.add_shapes([rect], shape_type="rectangle", name="roi")
    widget.roi_layer.value = roi
    _run(qtbot, widget)
    table = widget.last_result.table
    assert 0 < len(table) < len(feats)
    assert (table["centroid_x"] < half + 1).all()
    assert set(table["roi"]) == {0}
    assert set(viewer.layers[_layers.NUCLEI_LAYER].features["label"]) == set(table["label"])
    assert len(viewer.layers) == n_layers + 1  # only the shapes layer was added


@needs_display
def test_widget_cancel_and_empty_field(widget_viewer, qtbot):
    viewer, widget, _ = widget_viewer
    widget.run_button.native.click()
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert widget.last_result is None and widget.status.value == "cancelled"
    assert _layers.NUCLEI_LAYER not in viewer.layers

    # nuclei-only run with a manual threshold above everything: an empty, valid result
    widget.threshold.value = "manual"
    widget.threshold_value.value = 1e9
    widget.max_distance.value = 5
    widget.er_layer.value = None
    _run(qtbot, widget)
    assert widget.last_result is not None and len(widget.last_result.table) == 0
    assert len(viewer.layers[_layers.POINTS_LAYER].data) == 0
    assert _n_labels(viewer.layers[_layers.NUCLEI_LAYER].data) == 0


@needs_display
def test_widget_errors_become_notifications(widget_viewer, qtbot, monkeypatch):
    import napari_erquant._widgets as w

    import erquant.pipeline

    viewer, widget, _ = widget_viewer
    errors: list[str] = []
    monkeypatch.setattr(w, "show_error", errors.append)
    # bad input: planes of different shapes are refused before any thread starts
    widget.er_layer.value = viewer.add_image(np.zeros((10, 10)), name="small")
    assert widget.run() is None and "differ in shape" in errors[-1]
    # an exception raised inside the worker thread
    widget.er_layer.value = viewer.layers["er"]

    def broken(field, **kwargs):
        yield erquant.pipeline.Progress("segment", 0.1)
        raise RuntimeError("boom")

    monkeypatch.setattr(erquant.pipeline, "quantify_iter", broken)
    _run(qtbot, widget)
    assert "boom" in errors[-1] and widget.status.value == "error"
    assert widget.last_result is None and widget.run_button.enabled


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
    assert [lay.name for lay in viewer.layers] == ["nuclei", "er"]
    assert isinstance(viewer.layers["er"].data, da.Array)
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
