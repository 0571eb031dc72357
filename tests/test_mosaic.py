"""Mosaics (issue 12): one image quantified in tiles equals it quantified whole.

Real files through ``erquant.run_batch`` (in-process, ``workers=0``): a generated
two-channel image with nuclei put on purpose on every tile seam and seam crossing,
quantified as one tile and in small tiles; the tables must agree cell for cell.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import tifffile

from erquant.batch import RunUsageError, run_batch
from erquant.io.items import InputError, open_input
from erquant.io.mosaic import MosaicReader
from erquant.params import Params
from erquant.synthetic import make_field

CLASSICAL = Params().replace(**{"segment.method": "classical"})


def seam_centres(shape, tile, per_seam=10, margin=40):
    """Nucleus centres on every seam (rows and columns) and on every seam crossing."""
    H, W = shape
    ys = [tile * k for k in range(1, -(-H // tile)) if tile * k < H]
    xs = [tile * k for k in range(1, -(-W // tile)) if tile * k < W]
    out = [(y, x) for y in ys for x in xs]  # corners: four tiles meet
    for y in ys:
        out += [(y + dy, x) for x, dy in zip(np.linspace(margin, W - margin, per_seam),
                                             (-3, 0, 2, -1, 4, 1, 0, -2, 3, 0) * 9)
                if all(abs(x - c) > 40 for c in xs)]
    for x in xs:
        out += [(y, x + dx) for y, dx in zip(np.linspace(margin, H - margin, per_seam),
                                             (2, 0, -3, 1, 0, -4, 3, 0, -1, 2) * 9)
                if all(abs(y - c) > 40 for c in ys)]
    return np.array(out, float)


def write_image(path, shape, tile, n, seed):
    cen = seam_centres(shape, tile)
    f = make_field(shape=shape, n_nuclei=n, seed=seed, centres=cen)
    tifffile.imwrite(path, f.image, tile=(256, 256), photometric="minisblack")
    return f, cen


def run(path, out, tile, params=CLASSICAL, **kw):
    res = run_batch(path, out, params=params, workers=0, tile=tile, progress=False,
                    analysis=False, **kw)
    assert res.n_failed == 0, res.failures
    return (pd.read_parquet(out / "cells.parquet"), pd.read_csv(out / "fields.csv"),
            json.loads((out / "run.json").read_text()))


def match(a: pd.DataFrame, b: pd.DataFrame, tol: float = 0.01):
    """Index into ``b`` of each row of ``a`` (nearest centroid) and its distance."""
    from scipy.spatial import cKDTree

    d, i = cKDTree(b[["centroid_y", "centroid_x"]].to_numpy()).query(
        a[["centroid_y", "centroid_x"]].to_numpy())
    return i, d


def assert_same_cells(whole: pd.DataFrame, tiled: pd.DataFrame, rtol: float = 1e-3):
    assert abs(len(tiled) - len(whole)) <= 0.005 * len(whole)
    i, d = match(whole, tiled)
    ok = d < 0.01
    assert ok.mean() >= 0.995, f"{(~ok).sum()} of {len(whole)} cells unmatched"
    assert len(set(i[ok])) == ok.sum()  # one tiled cell per untiled cell
    for col in ("nucleus_er_mean", "nucleus_er_mean_bgcorr", "nucleus_nuclei_mean",
                "cell_er_mean"):
        a, b = whole[col].to_numpy()[ok], tiled[col].to_numpy()[i[ok]]
        rel = np.abs(a - b) / np.maximum(np.abs(a), 1e-9)
        assert np.nanmax(rel) <= rtol, (col, np.nanmax(rel))
    # no nucleus cut at a seam: the same pixels, whole
    for col in ("nucleus_area_px", "cell_area_px"):
        np.testing.assert_array_equal(whole[col].to_numpy()[ok], tiled[col].to_numpy()[i[ok]])
    return i, ok


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def classical_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mosaic")
    shape, tile = (2100, 2400), 768
    f, cen = write_image(tmp / "mosaic.tif", shape, tile, n=1700, seed=5)
    whole = run(tmp / "mosaic.tif", tmp / "whole", tile=4096, save_labels=True)
    tiled = run(tmp / "mosaic.tif", tmp / "tiled", tile=tile, save_labels=True)
    return {"tmp": tmp, "field": f, "centres": cen, "shape": shape, "tile": tile,
            "whole": whole, "tiled": tiled}


# --------------------------------------------------------------------------- tests
def test_tiled_equals_untiled_classical(classical_runs):
    whole, fw, _ = classical_runs["whole"]
    tiled, ft, info = classical_runs["tiled"]
    assert len(fw) == 1 and len(ft) == 3 * 4  # 2100 x 2400 in tiles of 768
    assert_same_cells(whole, tiled)
    # counts against the generator's truth (1700 nuclei, some touching pairs merged)
    assert abs(len(tiled) - 1700) <= 0.03 * 1700
    assert info["mosaic"]["tile"] == 768 and info["mosaic"]["method"] == "classical"
    assert (ft["n_cut"] == 0).all()
    assert ft["n_nuclei"].sum() == len(tiled)


def test_seam_nuclei_counted_once_and_whole(classical_runs):
    """Every nucleus put on a seam or a seam crossing is found exactly once, whole."""
    whole = classical_runs["whole"][0]
    tiled = classical_runs["tiled"][0]
    f, cen = classical_runs["field"], classical_runs["centres"]
    truth = f.truth.iloc[:len(cen)]  # the first nuclei are the seam ones
    area_true = truth["area_px"].to_numpy()
    pts = truth[["centroid_y", "centroid_x"]]
    i, d = match(pts, tiled)
    found = d < 5
    assert found.mean() > 0.95, f"{(~found).sum()} of {len(cen)} seam nuclei not found"
    assert len(set(i[found])) == found.sum()  # never counted twice
    # ... and whole: the area the tiled run gives them is the untiled one, and close to
    # the true area (not half of it)
    j, dj = match(tiled.iloc[i[found]], whole)
    assert (dj < 0.01).all()
    np.testing.assert_array_equal(tiled["nucleus_area_px"].to_numpy()[i[found]],
                                  whole["nucleus_area_px"].to_numpy()[j])
    ratio = tiled["nucleus_area_px"].to_numpy()[i[found]] / area_true[found]
    assert np.median(ratio) > 0.8 and ratio.min() > 0.55
    # the seam nuclei really straddle seams (within a few px of a tile edge)
    T = classical_runs["tile"]
    off = np.minimum(cen % T, T - cen % T).min(axis=1)
    assert (off <= 4).all()


def test_global_labels_and_coordinates(classical_runs):
    tiled, ft, info = classical_runs["tiled"]
    H, W = classical_runs["shape"]
    assert tiled["label"].is_unique
    assert tiled["label"].min() == 1 and tiled["label"].max() == len(tiled)
    assert tiled["centroid_y"].between(0, H).all() and tiled["centroid_x"].between(0, W).all()
    # each cell lies in the core of the tile that owns it
    T = classical_runs["tile"]
    np.testing.assert_array_equal(tiled["tile_row"], (tiled["centroid_y"] // T).astype(int))
    np.testing.assert_array_equal(tiled["tile_col"], (tiled["centroid_x"] // T).astype(int))
    assert len(set(ft["id"])) == len(ft) and all("__t" in i for i in ft["id"])


def test_stitched_labels(classical_runs):
    import zarr

    tiled = classical_runs["tiled"][0]
    out = classical_runs["tmp"] / "tiled" / "labels"
    nuc = np.asarray(zarr.open_array(str(out / "mosaic_nuclei.zarr"), mode="r")[:])
    cells = np.asarray(zarr.open_array(str(out / "mosaic_cells.zarr"), mode="r")[:])
    assert nuc.shape == classical_runs["shape"]
    area = np.bincount(nuc.ravel(), minlength=len(tiled) + 1)
    t = tiled.set_index("label")
    np.testing.assert_array_equal(area[t.index.to_numpy()], t["nucleus_area_px"].to_numpy())
    assert area[1:].min() > 0 and len(area) == len(tiled) + 1  # every cell, nothing else
    np.testing.assert_array_equal(np.bincount(cells.ravel(), minlength=len(tiled) + 1)[
        t.index.to_numpy()], t["cell_area_px"].to_numpy())
    # the same partition as the untiled run's, pixel for pixel: no nucleus or cell cut
    # or changed at a seam
    whole = classical_runs["whole"][0]
    wdir = classical_runs["tmp"] / "whole" / "labels"
    i, d = match(whole, tiled)
    assert (d < 0.01).all()
    lut = np.zeros(int(whole["label"].max()) + 1, np.int64)
    lut[whole["label"].to_numpy()] = tiled["label"].to_numpy()[i]
    for kind, arr in (("nuclei", nuc), ("cells", cells)):
        w = np.asarray(zarr.open_array(str(wdir / f"mosaic_{kind}.zarr"), mode="r")[:])
        np.testing.assert_array_equal(lut[w], arr)


def test_whole_run_matches_quantify(classical_runs):
    """One tile is plain quantification with levels from a sample: close to quantify."""
    from erquant import quantify

    whole = classical_runs["whole"][0]
    f = classical_runs["field"]
    r = quantify(f.image, params=CLASSICAL, backend="numpy")
    assert abs(len(whole) - r.n_nuclei) <= 0.01 * r.n_nuclei


def test_resume_keeps_the_tables(classical_runs):
    tmp = classical_runs["tmp"]
    res = run_batch(tmp / "mosaic.tif", tmp / "tiled", params=CLASSICAL, workers=0,
                    tile=classical_runs["tile"], progress=False, analysis=False,
                    save_labels=True)
    assert res.n_skipped == res.n_fields == 12
    again = pd.read_parquet(tmp / "tiled" / "cells.parquet")
    pd.testing.assert_frame_equal(again, classical_runs["tiled"][0])


def test_small_tiles_off_period(tmp_path):
    """Tiles smaller than the halo and not a multiple of the grid period; OME-Zarr input."""
    import zarr

    shape, tile = (1100, 1000), 250
    f, _ = write_image(tmp_path / "m.tif", shape, tile, n=420, seed=8)
    whole = run(tmp_path / "m.tif", tmp_path / "whole", tile=2048)[0]
    tiled, ft, info = run(tmp_path / "m.tif", tmp_path / "tiled", tile=tile)
    assert len(ft) == 5 * 4 and info["mosaic"]["tile"] % info["mosaic"]["period"] != 0
    assert_same_cells(whole, tiled)
    # the same image as an OME-Zarr (NGFF 0.4) single image
    store = tmp_path / "m.ome.zarr"
    arr = zarr.create_array(store=str(store / "0"), shape=f.image.shape, chunks=(1, 256, 256),
                            dtype="uint16", zarr_format=2)
    arr[:] = f.image
    (store / ".zgroup").write_text('{"zarr_format": 2}')
    (store / ".zattrs").write_text(json.dumps({"multiscales": [{
        "version": "0.4", "axes": [{"name": "c", "type": "channel"},
                                   {"name": "y", "type": "space"},
                                   {"name": "x", "type": "space"}],
        "datasets": [{"path": "0"}]}]}))
    z = run(store, tmp_path / "zarr", tile=tile)[0]
    pd.testing.assert_frame_equal(z.drop(columns=["plate"]), tiled.drop(columns=["plate"]))
    # ... and as an untiled, uncompressed TIFF (one strip per plane: memory-mapped)
    tifffile.imwrite(tmp_path / "strip.tif", f.image, photometric="minisblack")
    st = run(tmp_path / "strip.tif", tmp_path / "strip", tile=tile)[0]
    pd.testing.assert_frame_equal(st.drop(columns=["plate"]), tiled.drop(columns=["plate"]))


def test_learned_tiled_equals_untiled(tmp_path):
    from erquant.models import learned

    if not learned.available():
        pytest.skip("learned weights not installed")
    shape, tile = (1024, 1152), 512
    write_image(tmp_path / "m.tif", shape, tile, n=300, seed=11)
    p = Params()  # default method: learned
    whole = run(tmp_path / "m.tif", tmp_path / "whole", tile=2048, params=p)
    tiled = run(tmp_path / "m.tif", tmp_path / "tiled", tile=tile, params=p)
    assert tiled[2]["mosaic"]["method"] == "learned"
    assert_same_cells(whole[0], tiled[0])


def test_layout_windows(classical_runs):
    """Windows start on the period grid, hold the core plus the halo, and ids are unique."""
    r = MosaicReader(classical_runs["tmp"] / "mosaic.tif", tile=768)
    lay = r.prepare(CLASSICAL)
    items = r.items()
    H, W = lay.shape
    P, h = lay.period, lay.halo
    assert h >= 2 * P and h >= 4 * lay.diameter
    cover = np.zeros((H, W), np.int32)
    for it in items:
        y0, y1, x0, x1 = it.channels[0][1].region
        cy0, cy1, cx0, cx1 = it.core
        cover[cy0:cy1, cx0:cx1] += 1
        assert y0 % P == 0 and x0 % P == 0
        assert y0 <= max(0, cy0 - h) and x0 <= max(0, cx0 - h)
        assert y1 >= min(H, cy1 + h) and x1 >= min(W, cx1 + h)
        assert (y1 - y0) % P == 0 or y1 == H
    assert (cover == 1).all()  # the cores tile the image exactly once
    assert len({it.id for it in items}) == len(items)
    assert math.isclose(lay.max_distance, classical_runs["tiled"][2]["params_tiles"]["cells"][
        "max_distance"])


def test_bad_inputs(tmp_path):
    multi = tmp_path / "multi.ome.tif"
    with tifffile.TiffWriter(multi, ome=True) as tw:
        for _ in range(2):
            tw.write(np.zeros((2, 64, 64), np.uint16), photometric="minisblack")
    with pytest.raises(InputError, match=r"multi\.ome\.tif.*one image series"):
        open_input(multi, tile=512)
    folder = tmp_path / "plate"
    folder.mkdir()
    with pytest.raises(InputError, match=r"plate: --tile needs one image"):
        open_input(folder, tile=512)
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((2, 256, 256), np.uint16),
                     photometric="minisblack")
    with pytest.raises(RunUsageError, match=r"small\.tif: no nuclei found"):
        run_batch(tmp_path / "small.tif", tmp_path / "out", params=CLASSICAL, workers=0,
                  tile=128, progress=False)
    with pytest.raises(RunUsageError, match="--tile must be"):
        run_batch(tmp_path / "small.tif", tmp_path / "out2", workers=0, tile=-1,
                  progress=False)
    # a small plain TIFF without --tile is not a mosaic (a clear error, as before)
    with pytest.raises(InputError, match=r"small\.tif: a single input file"):
        open_input(tmp_path / "small.tif")


def test_automatic_tiling_above_the_size_limit(tmp_path, monkeypatch):
    import erquant.io.mosaic as mosaic

    tifffile.imwrite(tmp_path / "img.tif", np.zeros((2, 300, 400), np.uint16),
                     photometric="minisblack")
    with pytest.raises(InputError):  # 120,000 px: not a mosaic, and not an OME stack
        open_input(tmp_path / "img.tif")
    monkeypatch.setattr(mosaic, "AUTO_TILE_PIXELS", 300 * 300)
    r = open_input(tmp_path / "img.tif")
    assert isinstance(r, MosaicReader) and r.tile is None and r.shape == (2, 300, 400)
    with pytest.raises(InputError, match="single input file"):  # --tile 0: never tile
        open_input(tmp_path / "img.tif", tile=0)


def test_local_cluster_equals_in_process(tmp_path):
    """With workers the sample is decided in a spawned process: the same decisions, the
    same tables as in-process."""
    write_image(tmp_path / "m.tif", (700, 640), 320, n=150, seed=4)
    a, _, ia = run(tmp_path / "m.tif", tmp_path / "a", tile=320)
    res = run_batch(tmp_path / "m.tif", tmp_path / "b", params=CLASSICAL, workers=1, tile=320,
                    progress=False, analysis=False)
    assert res.n_ok == res.n_fields == 6
    b = pd.read_parquet(tmp_path / "b" / "cells.parquet")
    ib = json.loads((tmp_path / "b" / "run.json").read_text())
    assert ia["mosaic"] == ib["mosaic"] and ia["fingerprint"] == ib["fingerprint"]
    pd.testing.assert_frame_equal(a, b)


def test_clumps_across_seams(tmp_path):
    """Confluent clumps of touching nuclei (the splitting's hardest case) over the seams."""
    shape, tile = (960, 900), 300
    f = make_field(shape=shape, n_nuclei=300, seed=21, clump_size=6)
    tifffile.imwrite(tmp_path / "c.tif", f.image, tile=(256, 256), photometric="minisblack")
    whole = run(tmp_path / "c.tif", tmp_path / "whole", tile=2048)[0]
    tiled, ft, _ = run(tmp_path / "c.tif", tmp_path / "tiled", tile=tile)
    assert len(ft) == 4 * 3 and (ft["n_cut"] == 0).all()
    # clumps really cross seams: nuclei of one clump owned by different tiles
    clump = np.arange(len(f.truth)) // 6
    tile_of = (f.truth["centroid_y"] // tile).astype(int) * 10 + \
        (f.truth["centroid_x"] // tile).astype(int)
    assert (pd.Series(tile_of.to_numpy()).groupby(clump).nunique() > 1).sum() >= 5
    assert_same_cells(whole, tiled)
