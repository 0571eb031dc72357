"""Plate maps: reading, units, roles, errors, and matching to image wells."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from erquant.analysis.platemap import PlateMapError, match_wells, read_plate_map
from erquant.synthetic import PlateSpec, make_plate


def _write(tmp_path, text: str, name: str = "map.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_synth_plate_map_reads_unchanged(tmp_path):
    spec = PlateSpec(shape=(64, 64), fields_per_well=1, time_points_h=(6.0, 24.0))
    truth = make_plate(spec).plate_map
    path = tmp_path / "plate_map.csv"
    truth.to_csv(path, index=False)
    pm = read_plate_map(path)
    assert len(pm) == len(truth) == 2 * 22
    cols = ["plate", "well", "row", "col", "compound", "concentration_nM", "role", "time_h",
            "cell_line"]
    pd.testing.assert_frame_equal(pm[cols], truth[cols], check_dtype=False)
    assert pm.attrs["path"] == str(path)


@pytest.mark.parametrize(
    ("header", "value", "nM"),
    [("concentration_nM", "5", 5.0), ("concentration_uM", "0.5", 500.0),
     ("concentration_µM", "2", 2000.0), ("concentration_M", "1e-9", 1.0),
     ("concentration (nM)", "7", 7.0), ("Concentration_pM", "250", 0.25)],
)
def test_concentration_units_are_converted_to_nM(tmp_path, header, value, nM):
    p = _write(tmp_path, f"Well,Compound,{header}\na1,x,{value}\nA02,DMSO,0\n")
    pm = read_plate_map(p)
    assert pm["concentration_nM"].tolist() == pytest.approx([nM, 0.0])
    assert pm["well"].tolist() == ["A01", "A02"]
    assert pm[["row", "col"]].to_numpy().tolist() == [[1, 1], [1, 2]]
    assert pm["role"].tolist() == ["sample", "vehicle"]  # inferred from the concentration


def test_roles_case_insensitive_and_extra_columns_kept(tmp_path):
    p = _write(tmp_path, "well,compound,concentration_nM,role,batch,note\n"
                         "A01,fulv,1000,Reference,7,lot A\nA02,DMSO,,VEHICLE,7,\n"
                         "A03,,,blank,8,edge\nA04,x,3,exclude,8,bubble\n")
    pm = read_plate_map(p)
    assert pm["role"].tolist() == ["reference", "vehicle", "blank", "exclude"]
    assert pm["concentration_nM"].tolist()[:2] == [1000.0, 0.0]
    assert math.isnan(pm["concentration_nM"][2])
    assert pm["batch"].tolist() == [7, 7, 8, 8]
    assert pm["note"].tolist()[0] == "lot A" and pm["note"].isna().tolist()[1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("well,compound,concentration\nA1,x,1\n", "column 'concentration' has no unit"),
        ("well,concentration_nM\nA1,1\n", "missing column 'compound'"),
        ("compound,concentration_nM\nx,1\n", "missing column 'well'"),
        ("well,compound,dmso_pct\nA1,x,1\n", "missing concentration column"),
        ("well,compound,concentration_nM\nA1,x,1\nA01,DMSO,0\n", "duplicate well(s) A01"),
        ("well,compound,concentration_nM\nA1,x,ten\nB1,DMSO,0\n",
         "well A01: concentration 'ten' in column 'concentration_nM' is not a number"),
        ("well,compound,concentration_nM\nA1,x,-3\nB1,DMSO,0\n",
         "well A01: negative concentration -3"),
        ("well,compound,concentration_nM,role\nA1,x,1,positive\nB1,DMSO,0,vehicle\n",
         "unknown role(s) ['positive']; allowed: vehicle, reference, sample, blank, exclude"),
        ("well,compound,concentration_nM\nA1,x,1\nB1,x,3\n", "no vehicle wells for the plate"),
        ("well,compound,concentration_nM,time_h\nA1,x,1,6\nB1,DMSO,0,6\nA1,x,1,24\n",
         "no vehicle wells for time_h=24.0"),
        ("well,compound,concentration_nM\nZZZ1,x,1\nB1,DMSO,0\n", "line 2: not a well name"),
        ("well,compound,concentration_nM\nA1,x,\nB1,DMSO,0\n", "no concentration for well(s) A01"),
    ],
)
def test_bad_plate_maps_raise_with_file_and_problem(tmp_path, text, message):
    p = _write(tmp_path, text)
    with pytest.raises(PlateMapError) as exc:
        read_plate_map(p)
    assert str(exc.value).startswith(f"{p}: ")
    assert message in str(exc.value)


def test_missing_file_and_same_well_on_two_time_points_is_fine(tmp_path):
    with pytest.raises(PlateMapError, match="plate map not found"):
        read_plate_map(tmp_path / "nope.csv")
    p = _write(tmp_path, "well,compound,concentration_nM,time_h\nA1,x,1,6\nB1,D,0,6\n"
                         "A1,x,1,24\nB1,D,0,24\n")
    assert len(read_plate_map(p)) == 4


def _map_and_images(tmp_path, plate_in_map="SYN01"):
    spec = PlateSpec(shape=(64, 64), fields_per_well=1, time_points_h=(6.0, 24.0))
    truth = make_plate(spec).plate_map.assign(plate=plate_in_map)
    path = tmp_path / "plate_map.csv"
    truth.to_csv(path, index=False)
    imgs = truth[["well", "time_h"]].assign(plate="SYN01", n_nuclei=np.arange(len(truth)))
    return read_plate_map(path), imgs


def test_match_wells_joins_on_plate_well_time(tmp_path):
    pm, imgs = _map_and_images(tmp_path)
    extra = pd.DataFrame({"well": ["H12"], "time_h": [24.0], "plate": ["SYN01"], "n_nuclei": [1]})
    out, warn = match_wells(pm, pd.concat([imgs, extra], ignore_index=True))
    assert len(out) == len(imgs) + 1
    a01 = out[(out.well == "A01") & (out.time_h == 6.0)].iloc[0]
    assert a01.compound == "imlunestrant-like" and a01.concentration_nM == 0.1
    assert pd.isna(out.iloc[-1]["role"])
    assert warn == ["1 well in the images is not in the plate map (plate SYN01, time_h 24.0) "
                    "(kept, role unknown): H12"]


def test_match_wells_with_differently_named_single_plate(tmp_path):
    pm, imgs = _map_and_images(tmp_path, plate_in_map="P1")
    out, warn = match_wells(pm, imgs)
    assert out["role"].notna().all() and (out["plate"] == "SYN01").all()
    assert warn == ["plate map plate 'P1' taken for the images of plate 'SYN01' (matched by well)"]


def test_map_wells_without_images_are_an_error(tmp_path):
    pm, imgs = _map_and_images(tmp_path)
    imgs = imgs[~imgs.well.isin(["A01", "A02"]) | (imgs.time_h == 6.0)]
    with pytest.raises(PlateMapError) as exc:
        match_wells(pm, imgs)
    msg = str(exc.value)
    assert msg.startswith(f"{tmp_path / 'plate_map.csv'}: 2 plate-map well(s) have no images")
    assert "A01 (plate SYN01, 24 h), A02 (plate SYN01, 24 h)" in msg


def test_map_without_time_applies_to_every_time_point():
    pm = pd.DataFrame({"well": ["A01", "B01"], "compound": ["x", "DMSO"],
                       "concentration_nM": [10.0, 0.0], "role": ["sample", "vehicle"]})
    imgs = pd.DataFrame({"plate": "P", "well": ["A01", "B01"] * 2, "time_h": [6.0] * 2 + [24.0] * 2})
    out, warn = match_wells(pm, imgs)
    assert out["role"].tolist() == ["sample", "vehicle"] * 2 and warn == []
