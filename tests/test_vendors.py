"""Vendor layouts (CellVoyager, Opera/Operetta) through the work-item readers and
`erquant run`: the same fields as the MetaXpress plate they were copied from give the
same cells; Z planes are maximum-projected."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import reference_cells, small_metaxpress_plate

from erquant.cli import main
from erquant.io.items import InputError, load_item, open_input

@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Path:
    return small_metaxpress_plate(tmp_path_factory, "VEN", seed=2)


@pytest.fixture(scope="module")
def reference(plate, tmp_path_factory) -> pd.DataFrame:
    return reference_cells(plate, tmp_path_factory)


def _metaxpress_files(plate: Path):
    for p in sorted((plate / "TimePoint_1").glob("*.tif")):
        well, s, w = p.stem.split("_")
        yield p, well, int(s[1:]), int(w[1:])


def _same_cells(a: pd.DataFrame, b: pd.DataFrame):
    drop = ["plate", "time_h"]
    pd.testing.assert_frame_equal(a.drop(columns=drop), b.drop(columns=drop))


def test_cellvoyager_folder_with_z_planes(plate, reference, tmp_path):
    src = tmp_path / "cv"
    src.mkdir()
    for p, well, fld, ch in _metaxpress_files(plate):
        img = tifffile.imread(p)
        base = f"VEN_{well}_T0001F{fld:03d}L01A01Z01C{ch:02d}.tif"
        tifffile.imwrite(src / base, img)
        dim = (img.astype(np.float32) * 0.5).astype(img.dtype)  # a dimmer plane above
        tifffile.imwrite(src / base.replace("Z01", "Z02"), dim)
    (src / "VEN_A01_T0001F001L01A01Z01C01_thumb.jpg").write_bytes(b"not an image")
    shutil.copy(plate / "plate_map.csv", src)
    reader = open_input(src)
    assert type(reader).__name__ == "CellVoyagerReader"
    items = reader.items()
    assert len(items) == 8 and {it.well for it in items} == {"A01", "A02", "A11", "B11"}
    img, names = load_item(items[0])
    mx = tifffile.imread(plate / "TimePoint_1" / "A01_s1_w1.tif")
    assert names == ["nuclei", "er"] and np.array_equal(img[0], mx)  # max of Z01, Z02
    out = tmp_path / "out"
    assert main(["run", str(src), "-o", str(out), "--workers", "0", "-q", "--no-report"]) == 0
    _same_cells(reference, pd.read_parquet(out / "cells.parquet"))


INDEX = """<?xml version="1.0" encoding="utf-8"?>
<EvaluationInputData xmlns="http://www.perkinelmer.com/PEHH/HarmonyV5" Version="2">
  <Plates><Plate><PlateID>VEN-OP</PlateID><Name>VEN op</Name></Plate></Plates>
  <Images>
{images}
  </Images>
</EvaluationInputData>
"""
IMAGE = """    <Image Version="1"><id>{id}</id><URL>{url}</URL><Row>{row}</Row><Col>{col}</Col>
      <FieldID>{field}</FieldID><PlaneID>1</PlaneID><TimepointID>0</TimepointID>
      <ChannelID>{ch}</ChannelID><ChannelName>{name}</ChannelName>
      <ImageResolutionX Unit="m">6.5E-07</ImageResolutionX></Image>"""


@pytest.mark.parametrize("with_index", [True, False])
def test_operetta_export(plate, reference, tmp_path, with_index):
    from erquant.io.plate import parse_well

    src = tmp_path / "op"
    (src / "Images").mkdir(parents=True)
    images = []
    for p, well, fld, ch in _metaxpress_files(plate):
        r, c = parse_well(well)
        url = f"r{r:02d}c{c:02d}f{fld:02d}p01-ch{ch}sk1fk1fl1.tiff"
        shutil.copy(p, src / "Images" / url)
        images.append(IMAGE.format(id=url[:-5], url=url, row=r, col=c, field=fld, ch=ch,
                                   name={1: "HOECHST 33342", 2: "Alexa 488"}[ch]))
    if with_index:
        (src / "Images" / "Index.idx.xml").write_text(INDEX.format(images="\n".join(images)))
    shutil.copy(plate / "plate_map.csv", src)
    channels = "HOECHST 33342=nuclei,Alexa 488=er" if with_index else "ch1=nuclei,ch2=er"
    reader = open_input(src, channels=channels)
    assert type(reader).__name__ == "OperettaReader"
    items = reader.items()
    assert len(items) == 8
    if with_index:
        assert {it.plate for it in items} == {"VEN-OP"}
        assert reader.pixel_size_um == pytest.approx(0.65)
    out = tmp_path / "out"
    assert main(["run", str(src), "-o", str(out), "--workers", "0", "-q", "--no-report",
                 "--channels", channels]) == 0
    cells = pd.read_parquet(out / "cells.parquet")
    um2 = {c: 0.0 for c in ("nucleus_area_um2", "cell_area_um2", "cyto_area_um2")}
    _same_cells(reference.assign(**um2), cells.assign(**um2))
    if with_index:  # 0.65 µm pixels from the XML: areas in µm² beside px
        assert np.allclose(cells["nucleus_area_um2"], cells["nucleus_area_px"] * 0.65**2)
        assert np.allclose(pd.read_csv(out / "fields.csv")["pixel_size_um"], 0.65)
    else:
        assert cells["nucleus_area_um2"].isna().all()


def test_operetta_index_naming_a_missing_file_is_a_clear_error(tmp_path):
    (tmp_path / "Images").mkdir()
    tifffile.imwrite(tmp_path / "Images" / "r01c01f01p01-ch1sk1fk1fl1.tiff",
                     np.zeros((8, 8), np.uint16))
    img = IMAGE.format(id="x", url="r01c01f02p01-ch1sk1fk1fl1.tiff", row=1, col=1, field=2,
                       ch=1, name="DAPI")
    (tmp_path / "Images" / "Index.xml").write_text(INDEX.format(images=img))
    with pytest.raises(InputError, match="r01c01f02p01-ch1sk1fk1fl1.tiff, which is not in"):
        open_input(tmp_path, channels="ch1=nuclei").items()


def test_metaxpress_z_steps_thumbnails_and_htd(plate, reference, tmp_path):
    src = tmp_path / "mx"
    for p, *_ in _metaxpress_files(plate):
        img = tifffile.imread(p)
        for z, scale in ((1, 1.0), (2, 0.6), (3, 0.3)):  # the in-focus plane is the brightest
            d = src / "TimePoint_1" / f"ZStep_{z}"
            d.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(d / p.name, (img.astype(np.float32) * scale).astype(img.dtype))
        tifffile.imwrite(src / "TimePoint_1" / f"{p.stem}_thumb.tif", img[::4, ::4])
    (src / "VEN.HTD").write_text('"HTSInfoFile", Version 1.0\n"XWells", 12\n"YWells", 8\n'
                                 '"NWavelengths", 2\n"WaveName1", "DAPI"\n'
                                 '"WaveName2", "FITC"\n')
    shutil.copy(plate / "plate_map.csv", src)
    reader = open_input(src, channels="DAPI=nuclei,FITC=er")
    assert type(reader).__name__ == "MetaXpressReader"
    items = reader.items()
    assert len(items) == 8  # thumbnails skipped, three Z steps = one field
    assert all(len(s.z_paths) == 2 for _, s in items[0].channels)
    out = tmp_path / "out"
    assert main(["run", str(src), "-o", str(out), "--workers", "0", "-q", "--no-report",
                 "--channels", "DAPI=nuclei,FITC=er"]) == 0
    _same_cells(reference, pd.read_parquet(out / "cells.parquet"))  # no timepoints.csv
    # a projection saved by the instrument beside the ZStep folders is used as it is
    first = next(_metaxpress_files(plate))[0]
    tifffile.imwrite(src / "TimePoint_1" / first.name, np.zeros((160, 160), np.uint16))
    it = [i for i in open_input(src, channels="DAPI=nuclei,FITC=er").items()
          if (i.well, i.field) == ("A01", 1)][0]
    src0 = dict(it.channels)["nuclei"]
    assert src0.path.endswith(f"TimePoint_1/{first.name}") and src0.z_paths == ()
