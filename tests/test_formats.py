"""Z stacks (``--z max | best | all``) through every reader with Z, generic OME-TIFF files
(multi-series, T/Z/C axes in any order, OME Plate/Well metadata) and ``--layout``.

The images are those of a small MetaXpress plate (conftest); each layout is built from
them and must give the same cells as the plate itself (or as its sharp plane)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import small_metaxpress_plate
from scipy.ndimage import gaussian_filter

from erquant.cli import main
from erquant.io.items import InputError, load_item, open_input
from erquant.io.plate import parse_well
from erquant.io.zstack import apply_z_mode

PLATE = "FMT"
# the sharp plane is the second of three; the others are blurred, noisy copies
BLUR = (2.5, None, 5.0)


@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Path:
    return small_metaxpress_plate(tmp_path_factory, PLATE, seed=6)


def _run(src, out, *extra) -> int:
    return main(["run", str(src), "-o", str(out), "--workers", "0", "-q", "--no-report",
                 "--method", "classical", *map(str, extra)])


@pytest.fixture(scope="module")
def reference(plate, tmp_path_factory) -> pd.DataFrame:
    """cells.parquet of the MetaXpress plate (the sharp plane of every stack below)."""
    out = tmp_path_factory.mktemp("ref") / "out"
    assert _run(plate, out, "--plate-map", plate / "plate_map.csv") == 0
    return pd.read_parquet(out / "cells.parquet")


@pytest.fixture(scope="module")
def fields(plate) -> dict:
    """(well, field) → (C, Y, X) images of the plate."""
    out = {}
    for p in sorted((plate / "TimePoint_1").glob("*_w1.tif")):
        well, s, _ = p.stem.split("_")
        out[(well, int(s[1:]))] = np.stack([tifffile.imread(p),
                                            tifffile.imread(str(p).replace("_w1", "_w2"))])
    assert len(out) == 8
    return out


def _blurred(plane: np.ndarray, sigma: float, rng) -> np.ndarray:
    """Out of focus as a camera sees it: the optics blur, the camera noise does not
    (twice the plane's own background noise, so the fine band is not empty)."""
    f = plane.astype(np.float32)
    noise = 1.4826 * np.median(np.abs(f - np.median(f)))
    out = gaussian_filter(f, sigma) + rng.normal(0.0, 2 * noise, f.shape)
    return np.clip(np.round(out), 0, np.iinfo(plane.dtype).max).astype(plane.dtype)


def _stack(img: np.ndarray) -> np.ndarray:
    """(C, Y, X) → (C, Z, Y, X): plane 2 is ``img``, planes 1 and 3 blurred noisy copies."""
    rng = np.random.default_rng(int(img[0, 0, 0]))
    planes = [img if s is None else np.stack([_blurred(c, s, rng) for c in img])
              for s in BLUR]
    return np.stack(planes, axis=1)


def _comparable(cells: pd.DataFrame) -> pd.DataFrame:
    drop = [c for c in cells.columns if c in ("time_h", "z") or c.endswith("_um2")]
    return cells.drop(columns=drop).reset_index(drop=True)


# --------------------------------------------------------------------------- writers
def write_metaxpress(stacks: dict, root: Path) -> Path:
    src = root / PLATE
    for (well, fld), st in stacks.items():
        for z in range(st.shape[1]):
            d = src / "TimePoint_1" / f"ZStep_{z + 1}"
            d.mkdir(parents=True, exist_ok=True)
            for c in range(st.shape[0]):
                tifffile.imwrite(d / f"{well}_s{fld}_w{c + 1}.tif", st[c, z])
    return src


def write_cellvoyager(stacks: dict, root: Path) -> Path:
    src = root / "cv"
    src.mkdir()
    for (well, fld), st in stacks.items():
        for z in range(st.shape[1]):
            for c in range(st.shape[0]):
                tifffile.imwrite(src / f"{PLATE}_{well}_T0001F{fld:03d}L01A01Z{z + 1:02d}"
                                 f"C{c + 1:02d}.tif", st[c, z])
    return src


def write_operetta(stacks: dict, root: Path) -> Path:
    src = root / PLATE
    (src / "Images").mkdir(parents=True)
    for (well, fld), st in stacks.items():
        r, col = parse_well(well)
        for z in range(st.shape[1]):
            for c in range(st.shape[0]):
                tifffile.imwrite(src / "Images" / f"r{r:02d}c{col:02d}f{fld:02d}p{z + 1:02d}"
                                 f"-ch{c + 1}sk1fk1fl1.tiff", st[c, z])
    return src


def write_omezarr(stacks: dict, root: Path) -> Path:
    from erquant.io.omezarr import write_hcs_plate

    return write_hcs_plate(root / "plate.zarr", stacks, version="0.5", name=PLATE)


def write_ometiff(stacks: dict, root: Path) -> Path:
    """One series per field (ZCYX), named after the well and field."""
    path = root / f"{PLATE}.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        for (well, fld), st in stacks.items():
            tw.write(np.ascontiguousarray(st.transpose(1, 0, 2, 3)), metadata={
                "axes": "ZCYX", "Name": f"{well}_s{fld}", "PhysicalSizeX": 0.325,
                "PhysicalSizeY": 0.325, "Channel": {"Name": ["Hoechst", "ERa"]}})
    return path


WRITERS = {"metaxpress": write_metaxpress, "cellvoyager": write_cellvoyager,
           "operetta": write_operetta, "ome-zarr": write_omezarr, "ome-tiff": write_ometiff}
READERS = {"metaxpress": "MetaXpressReader", "cellvoyager": "CellVoyagerReader",
           "operetta": "OperettaReader", "ome-zarr": "OmeZarrReader",
           "ome-tiff": "OmeTiffReader"}
CHANNELS = {"operetta": "ch1=nuclei,ch2=er"}


# --------------------------------------------------------------------------- Z modes
@pytest.mark.parametrize("layout", list(WRITERS))
def test_z_best_picks_the_sharp_plane_in_every_layout(layout, plate, fields, reference,
                                                      tmp_path):
    src = WRITERS[layout]({k: _stack(v) for k, v in fields.items()}, tmp_path)
    channels = CHANNELS.get(layout, "w1=nuclei,w2=er")
    reader = open_input(src, channels=channels)
    assert type(reader).__name__ == READERS[layout]
    items = reader.items()
    assert len(items) == 8
    assert {(it.well, it.field) for it in items} == set(fields)
    # the default projection is the maximum over the planes
    it = next(i for i in items if (i.well, i.field) == ("A01", 1))
    img, names = load_item(it)
    assert names == ["nuclei", "er"]
    assert np.array_equal(img, _stack(fields[("A01", 1)]).max(axis=1))
    info: dict = {}
    img, _ = load_item(apply_z_mode([it], "best")[0], info=info)
    assert info["z"] == 2 and np.array_equal(img, fields[("A01", 1)])
    out = tmp_path / "out"
    assert _run(src, out, "--z", "best", "--channels", channels, "--layout", layout,
                "--plate-map", plate / "plate_map.csv") == 0
    fcsv = pd.read_csv(out / "fields.csv")
    assert len(fcsv) == 8 and (fcsv["z"] == 2).all()
    scores = fcsv["z_focus"].str.split(";", expand=True).astype(float)
    assert scores.shape[1] == 3 and (scores[1] > scores[0]).all() and \
        (scores[1] > scores[2]).all()
    cells = pd.read_parquet(out / "cells.parquet")
    assert (cells["z"] == 2).all()
    pd.testing.assert_frame_equal(_comparable(reference), _comparable(cells))
    assert json.loads((out / "run.json").read_text())["z"] == "best"


@pytest.mark.parametrize("layout", ["metaxpress", "ome-tiff", "ome-zarr"])
def test_z_all_gives_one_item_and_table_per_plane(layout, plate, fields, reference, tmp_path):
    stacks = {k: _stack(v) for k, v in fields.items()}
    src = WRITERS[layout](stacks, tmp_path)
    items = apply_z_mode(open_input(src).items(), "all")
    assert len(items) == 8 * 3 and len({it.id for it in items}) == 24
    assert {(it.well, it.field, it.z) for it in items} == {
        (w, f, z) for (w, f) in fields for z in (1, 2, 3)}
    for it in items[:3]:  # each item reads its own plane
        img, _ = load_item(it)
        assert np.array_equal(img, stacks[(it.well, it.field)][:, it.z - 1])
    out = tmp_path / "out"
    assert _run(src, out, "--z", "all", "--plate-map", plate / "plate_map.csv") == 0
    fcsv = pd.read_csv(out / "fields.csv")
    assert len(fcsv) == 24 and sorted(fcsv["z"].unique()) == [1, 2, 3]
    assert fcsv["id"].str.endswith(("__z01", "__z02", "__z03")).all()
    wells = pd.read_csv(out / "wells.csv")
    assert len(wells) == 4 * 3 and (wells.groupby("z")["n_fields"].sum() == 8).all()
    cells = pd.read_parquet(out / "cells.parquet")
    assert sorted(cells["z"].unique()) == [1, 2, 3]
    # each plane is reduced on its own: the sharp plane's rows are the plate's own run
    sharp = cells[cells["z"] == 2]
    pd.testing.assert_frame_equal(_comparable(reference), _comparable(sharp))
    # blurred planes give other (fewer or blurrier) cells
    assert not cells[cells["z"] == 3]["nucleus_area_px"].equals(sharp["nucleus_area_px"])


def test_z_mode_is_part_of_the_fingerprint(plate, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(plate, out, "--plate-map", plate / "plate_map.csv") == 0
    assert json.loads((out / "run.json").read_text())["z"] == "max"
    capsys.readouterr()
    assert _run(plate, out, "--z", "best", "--plate-map", plate / "plate_map.csv") == 2
    err = capsys.readouterr().err
    assert "Z mode (--z)" in err and "--overwrite" in err
    assert _run(plate, out, "--plate-map", plate / "plate_map.csv") == 0  # same mode: resume


def test_z_stack_with_channels_of_different_depths_is_refused(fields, tmp_path):
    src = write_metaxpress({("A01", 1): _stack(fields[("A01", 1)])}, tmp_path)
    shutil.rmtree(src / "TimePoint_1" / "ZStep_3")
    (src / "TimePoint_1" / "ZStep_3").mkdir()
    tifffile.imwrite(src / "TimePoint_1" / "ZStep_3" / "A01_s1_w1.tif", fields[("A01", 1)][0])
    items = open_input(src).items()
    assert len(items[0].channels[0][1].z_paths) == 2 and len(items[0].channels[1][1].z_paths) == 1
    with pytest.raises(InputError, match=r"A01 field 1.*different numbers of Z planes.*"
                                         r"nuclei: 3, er: 2"):
        apply_z_mode(items, "all")


# --------------------------------------------------------------------------- OME-TIFF
def _shuffled(fields: dict) -> list:
    keys = sorted(fields)
    return [keys[i] for i in (5, 0, 7, 2, 1, 6, 3, 4)]


def test_ome_tiff_series_mapped_by_ome_plate_metadata(plate, fields, reference, tmp_path):
    """Series in another order than the wells, names that say nothing: the OME Plate /
    Well / WellSample elements put each series in its well and field."""
    order = _shuffled(fields)
    path = tmp_path / "export.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        for k in order:
            tw.write(fields[k], metadata={"axes": "CYX", "Name": "Image",
                                          "Channel": {"Name": ["DAPI", "ESR1"]}})
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    wells: dict = {}
    for s, (well, fld) in enumerate(order):
        wells.setdefault(well, []).append((fld, s))
    plate_xml = f'<Plate ID="Plate:0" Name="{PLATE}">'
    for w, samples in wells.items():
        r, c = parse_well(w)
        plate_xml += f'<Well ID="Well:{w}" Row="{r - 1}" Column="{c - 1}">'
        for fld, s in sorted(samples):
            index = 10 * len(plate_xml) + fld  # the field order within the well
            plate_xml += (f'<WellSample ID="WellSample:{w}:{fld}" Index="{index}">'
                          f'<ImageRef ID="Image:{s}"/></WellSample>')
        plate_xml += "</Well>"
    plate_xml += "</Plate>"
    tifffile.tiffcomment(path, xml.replace("<Image ", plate_xml + "<Image ", 1).encode())
    reader = open_input(path, channels="DAPI=nuclei,ESR1=er")
    items = reader.items()
    assert [(it.plate, it.well, it.field) for it in items] == [
        (PLATE, w, f) for w, f in sorted(fields, key=lambda k: (parse_well(k[0]), k[1]))]
    for it in items:
        img, _ = load_item(it)
        assert np.array_equal(img, fields[(it.well, it.field)])
    out = tmp_path / "out"
    assert _run(path, out, "--channels", "DAPI=nuclei,ESR1=er",
                "--plate-map", plate / "plate_map.csv") == 0
    pd.testing.assert_frame_equal(_comparable(reference),
                                  _comparable(pd.read_parquet(out / "cells.parquet")))


@pytest.mark.parametrize("axes", ["TZCYX", "TCZYX", "CTZYX", "ZTCYX"])
def test_ome_tiff_every_t_z_c_plane_is_found(axes, tmp_path):
    """One series with T, Z and C in any storage order: every plane is where the OME
    metadata says, DeltaT gives the hours, PhysicalSizeX the pixel size."""
    nt, nz, nc = 2, 3, 2
    rng = np.random.default_rng(1)
    tzc = rng.integers(0, 60000, (nt, nz, nc, 12, 10), dtype=np.uint16)
    data = np.ascontiguousarray(tzc.transpose(["TZC".index(a) for a in axes[:3]] + [3, 4]))
    planes = [(t, z, c) for t in range(nt) for z in range(nz) for c in range(nc)]
    order = sorted(planes, key=lambda p: tuple(p["TZC".index(a)] for a in axes[:3]))
    path = tmp_path / "tl.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": axes, "Name": "Well C05 field 3", "PhysicalSizeX": 650.0,
        "PhysicalSizeXUnit": "nm", "Channel": {"Name": ["H33342", "ERa-488"]},
        "Plane": {"DeltaT": [6 * 3600.0 * p[0] + 5 * p[1] for p in order],
                  "DeltaTUnit": ["s"] * len(order)}})
    reader = open_input(path, channels="H33342=nuclei,ERa-488=er")
    assert type(reader).__name__ == "OmeTiffReader"
    items = reader.items()
    assert [(it.well, it.field, it.timepoint, it.time_h) for it in items] == [
        ("C05", 3, 1, 0.0), ("C05", 3, 2, 6.0)]
    assert all(it.pixel_size_um == pytest.approx(0.65) for it in items)
    for it in items:  # maximum projection over Z by default
        img, names = load_item(it)
        assert names == ["nuclei", "er"]
        assert np.array_equal(img, tzc[it.timepoint - 1].max(axis=0))
    per_plane = apply_z_mode(items, "all")
    assert len(per_plane) == nt * nz
    for it in per_plane:
        img, _ = load_item(it)
        assert np.array_equal(img, tzc[it.timepoint - 1, it.z - 1])
    # w3 does not exist: the error names the channels there are
    with pytest.raises(InputError, match="'w3'.*not found.*'w1', 'w2'"):
        open_input(path, channels="w1=nuclei,w3=er").items()


def test_ome_tiff_positions_without_well_names_are_fields_of_one_well(tmp_path):
    rng = np.random.default_rng(2)
    pos = [rng.integers(0, 999, (2, 16, 16), dtype=np.uint16) for _ in range(3)]
    path = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        for k, p in enumerate(pos):
            tw.write(p, metadata={"axes": "CYX", "Name": f"Position {k + 1}"})
    items = open_input(path).items()
    assert [(it.well, it.field) for it in items] == [("A01", 1), ("A01", 2), ("A01", 3)]
    assert all(np.array_equal(load_item(it)[0], p) for it, p in zip(items, pos))


def test_ome_tiff_two_series_claiming_one_field_is_a_clear_error(tmp_path):
    path = tmp_path / "dup.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tw:
        for _ in range(2):
            tw.write(np.zeros((2, 8, 8), np.uint16), metadata={"axes": "CYX", "Name": "B02"})
    with pytest.raises(InputError, match=r"dup\.ome\.tif: series 0 and 1 are both B02 field 1"):
        open_input(path).items()


# --------------------------------------------------------------------------- --layout
def test_forced_layouts_read_and_misfits_are_clear_errors(plate, fields, tmp_path, capsys):
    assert type(open_input(plate, layout="metaxpress")).__name__ == "MetaXpressReader"
    # a TIFF without the .ome name is read as OME-TIFF only when forced
    tif = tmp_path / "stack.tif"
    tifffile.imwrite(tif, fields[("A01", 1)], ome=True, metadata={"axes": "CYX",
                                                                 "Name": "A01"})
    with pytest.raises(InputError, match="must be an OME-TIFF"):
        open_input(tif)
    items = open_input(tif, layout="ome-tiff").items()
    assert len(items) == 1 and np.array_equal(load_item(items[0])[0], fields[("A01", 1)])
    for layout, why in [("cellvoyager", "no CellVoyager image"),
                        ("operetta", "no Opera/Operetta image"),
                        ("ome-zarr", "not an OME-Zarr group"),
                        ("ome-tiff", "a folder with 0 OME-TIFF files"),
                        ("pattern", "needs --pattern")]:
        with pytest.raises(InputError, match=f"--layout {layout}: .*{PLATE}: {why}"):
            open_input(plate, layout=layout)
    with pytest.raises(InputError, match="is a file; this layout is a folder"):
        open_input(tif, layout="metaxpress")
    with pytest.raises(InputError, match="--layout must be one of auto, metaxpress"):
        open_input(plate, layout="nikon")
    # through the command line: exit 2 and one line naming the input and the layout
    capsys.readouterr()
    assert _run(plate, tmp_path / "o1", "--layout", "operetta") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --layout operetta: ") and \
        str(plate) in err[0]
    assert _run(tif, tmp_path / "o2", "--layout", "ome-tiff") == 0
    # an ImageJ hyperstack (no OME-XML: tifffile's ImageJ axes) read as --layout ome-tiff
    hyper = np.stack([_stack(fields[("A01", 1)]).transpose(1, 0, 2, 3)] * 2)  # TZCYX
    ij = tmp_path / "hyper.tif"
    tifffile.imwrite(ij, hyper, imagej=True, metadata={"axes": "TZCYX"})
    items = apply_z_mode(open_input(ij, layout="ome-tiff").items(), "all")
    assert [(it.timepoint, it.z) for it in items] == [(t, z) for t in (1, 2) for z in (1, 2, 3)]
    assert all(np.array_equal(load_item(it)[0], hyper[it.timepoint - 1, it.z - 1])
               for it in items)


def test_napari_opens_a_z_all_run_plane_by_plane(fields, tmp_path):
    """The napari reader plans a run folder as the run did (layout and Z mode from
    run.json): one plane per field and Z plane, each with its own labels and cells."""
    pytest.importorskip("napari")
    from napari_erquant import _reader

    two = {k: _stack(fields[k]) for k in sorted(fields)[:2]}
    src = write_ometiff(two, tmp_path)
    out = tmp_path / "out"
    assert _run(src, out, "--z", "all", "--layout", "ome-tiff", "--save-labels",
                "--no-flatfield") == 0
    layers = _reader.read_layers(str(out))
    images = [(d, m) for d, m, kind in layers if kind == "image"]
    labels = {m["metadata"]["kind"]: (d, m) for d, m, kind in layers if kind == "labels"}
    assert len(images) == 2 and images[0][0].shape == (6, 160, 160)
    assert images[0][1]["metadata"]["fields"] == [
        f"{w} s{f} z{z}" for w, f in sorted(two) for z in (1, 2, 3)]
    k = 4  # the second field's sharp plane
    assert np.array_equal(images[1][0][k].compute(), two[sorted(two)[1]][1, 1])
    nuc, meta = labels["nuclei"]
    item = images[0][1]["metadata"]["items"][k]
    assert item.endswith("__s002__z02")
    saved = tifffile.imread(out / "labels" / f"{item}_nuclei.tif")
    plane = nuc[k].compute()
    assert np.array_equal(plane > 0, saved > 0)
    cells = pd.read_parquet(out / "cells.parquet")
    assert len(meta["features"]) == len(cells)


def test_ome_tiff_planning_reads_no_pixels_and_a_corrupt_plane_fails_its_field(tmp_path,
                                                                               capsys):
    """Every page of series 1 is overwritten with junk: planning (metadata only) lists
    both fields; loading reads only the pages a field needs, so field A01 is quantified
    and A02 fails with its file and series named."""
    from erquant.synthetic import make_field

    path = tmp_path / "bad.ome.tif"
    img = make_field(shape=(96, 96), n_nuclei=8, seed=5).image
    with tifffile.TiffWriter(path, ome=True) as tw:
        for k in range(2):
            tw.write(img, compression="zlib", metadata={"axes": "CYX", "Name": f"A0{k + 1}"})
    with tifffile.TiffFile(path) as tif:
        spans = [(o, n) for pg in tif.series[1].pages
                 for o, n in zip(pg.dataoffsets, pg.databytecounts)]
    with open(path, "r+b") as fh:
        for o, n in spans:
            fh.seek(o)
            fh.write(b"\xff" * n)
    items = open_input(path).items()
    assert [it.well for it in items] == ["A01", "A02"]
    assert np.array_equal(load_item(items[0])[0], img)
    with pytest.raises(ValueError, match=r"cannot read series 1 of .*bad\.ome\.tif"):
        load_item(items[1])
    out = tmp_path / "out"
    assert _run(path, out) == 1
    fcsv = pd.read_csv(out / "fields.csv").set_index("well")
    assert fcsv.loc["A01", "status"] == "ok" and fcsv.loc["A02", "status"] == "failed"
    assert "bad.ome.tif" in fcsv.loc["A02", "error"]


def test_z_best_with_fields_segmented_together(plate, fields, tmp_path):
    """--fields-per-task: the batched path records each field's chosen plane too."""
    src = write_omezarr({k: _stack(v) for k, v in fields.items()}, tmp_path)
    out = tmp_path / "out"
    assert _run(src, out, "--z", "best", "--fields-per-task", "4") == 0
    fcsv = pd.read_csv(out / "fields.csv")
    assert len(fcsv) == 8 and (fcsv["status"] == "ok").all() and (fcsv["z"] == 2).all()
    cells = pd.read_parquet(out / "cells.parquet")
    assert len(cells) == fcsv["n_nuclei"].sum() and (cells["z"] == 2).all()


def test_ome_tiff_time_lapse_equals_metaxpress_timepoints(plate, fields, tmp_path):
    """One series per field with a T axis (TCYX) gives the same cells as a MetaXpress
    plate with those images in TimePoint_1/ and TimePoint_2/."""
    later = {k: np.ascontiguousarray(v[:, ::-1]) for k, v in fields.items()}  # other images
    mx = tmp_path / "mx" / PLATE
    for t, imgs in ((1, fields), (2, later)):
        d = mx / f"TimePoint_{t}"
        d.mkdir(parents=True)
        for (well, fld), img in imgs.items():
            for c in range(2):
                tifffile.imwrite(d / f"{well}_s{fld}_w{c + 1}.tif", img[c])
    ome = tmp_path / f"{PLATE}.ome.tif"
    with tifffile.TiffWriter(ome, ome=True) as tw:
        for k in fields:
            tw.write(np.stack([fields[k], later[k]]), metadata={
                "axes": "TCYX", "Name": f"{k[0]} site {k[1]}",
                "Plane": {"DeltaT": [0.0, 0.0, 86400.0, 86400.0]}})
    items = open_input(ome).items()
    assert len(items) == 16 and {it.timepoint for it in items} == {1, 2}
    assert sorted({it.time_h for it in items}) == [0.0, 24.0]
    # no plate map: its rows are matched by time_h, which only the OME-TIFF knows here
    assert _run(mx, tmp_path / "a") == 0
    assert _run(ome, tmp_path / "b") == 0
    a, b = (pd.read_parquet(tmp_path / o / "cells.parquet") for o in "ab")
    assert sorted(b["timepoint"].unique()) == [1, 2]
    assert sorted(b["time_h"].unique()) == [0.0, 24.0]
    pd.testing.assert_frame_equal(_comparable(a), _comparable(b))
