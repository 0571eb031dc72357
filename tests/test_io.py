"""Image readers/writers: plate folders, OME-TIFF stacks, single images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from erquant.io import (
    lazy_fields,
    load_field,
    parse_well,
    read_image,
    read_image_stack,
    read_ome_stack,
    scan_plate_folder,
    well_name,
    write_ome_stack,
    write_tiff,
)
from erquant.synthetic import PlateSpec, make_plate, write_plate

SPEC = PlateSpec(
    name="P7", shape=(80, 96), n_nuclei=8, fields_per_well=2, time_points_h=(6.0, 24.0)
)
WELLS = ["A01", "B08", "A11"]


@pytest.fixture(scope="module")
def plate_dir(tmp_path_factory) -> Path:
    return write_plate(SPEC, tmp_path_factory.mktemp("plates") / "P7", wells=WELLS, progress=False)


def test_roundtrip_write_scan_load(plate_dir):
    df = scan_plate_folder(plate_dir)
    assert len(df) == len(WELLS) * 2 * 2  # wells × fields × time points
    assert list(df.columns[:7]) == ["plate", "well", "row", "col", "field", "timepoint", "time_h"]
    assert {"path_w1", "path_w2"} <= set(df.columns)
    assert set(df.well) == set(WELLS) and set(df.plate) == {"P7"}
    assert sorted(df.time_h.unique()) == [6.0, 24.0]
    b08 = df[df.well == "B08"].iloc[0]
    assert (b08.row, b08.col) == (2, 8)
    plate = make_plate(SPEC)
    for _, row in df.iloc[[0, 5, 11]].iterrows():
        img = load_field(row)
        expected = plate.field(row.well, int(row.field), row.time_h).image
        assert img.dtype == np.uint16 and np.array_equal(img, expected)
    lazy = lazy_fields(df)
    assert lazy.shape == (len(df), 2, 80, 96)
    assert np.array_equal(lazy[7].compute(), load_field(df.iloc[7]))


def test_ome_stack_matches_folder(plate_dir):
    arr, index = read_ome_stack(plate_dir / "plate.ome.tif")
    assert arr.shape == (len(WELLS) * 4, 2, 80, 96)
    assert {"series", "well", "field", "time_h"} <= set(index.columns)
    df = scan_plate_folder(plate_dir).set_index(["well", "field", "time_h"])
    for i in (0, 3, len(index) - 1):
        r = index.iloc[i]
        row = df.loc[(r.well, r.field, r.time_h)]
        assert np.array_equal(arr[i].compute(), load_field(row))


def test_scan_prefix_guid_and_flat_folder(tmp_path):
    img = np.arange(20, dtype=np.uint16).reshape(4, 5)
    write_tiff(tmp_path / "MyPlate_C03_s2_w1.tif", img)
    write_tiff(tmp_path / "MyPlate_C03_s2_w2ABCDEF01-2345-6789-ABCD-0123456789AB.tif", img + 1)
    write_tiff(tmp_path / "MyPlate_C03_s2_w1_thumb.tif", img)
    write_tiff(tmp_path / "notes.tif", img)
    df = scan_plate_folder(tmp_path)
    assert len(df) == 1
    r = df.iloc[0]
    assert (r.plate, r.well, r.row, r.col, r.field, r.timepoint) == ("MyPlate", "C03", 3, 3, 2, 1)
    assert np.isnan(r.time_h)
    assert np.array_equal(load_field(r)[1], img + 1)
    with pytest.raises(ValueError, match="w3"):
        load_field(r, channels=("w1", "w3"))


def test_scan_errors_name_the_folder(tmp_path):
    (tmp_path / "x.txt").write_text("nothing")
    with pytest.raises(ValueError, match=str(tmp_path.name)):
        scan_plate_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        scan_plate_folder(tmp_path / "missing")


def test_bad_files_give_errors_naming_the_file(tmp_path):
    bad = tmp_path / "broken_A01.tif"
    bad.write_bytes(b"this is not a tiff at all")
    with pytest.raises(ValueError, match="broken_A01.tif"):
        read_image(bad)
    badpng = tmp_path / "broken.png"
    badpng.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="broken.png"):
        read_image(badpng)
    weird = tmp_path / "weird.xyz"
    weird.write_bytes(b"123")
    with pytest.raises(ValueError, match="weird.xyz"):
        read_image(weird)
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        read_image(tmp_path / "nope.tif")
    four_d = tmp_path / "four_d.tif"
    tifffile.imwrite(four_d, np.zeros((2, 3, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(ValueError, match="four_d.tif"):
        read_image(four_d)


def test_stack_channels(tmp_path):
    stack = np.stack([np.full((6, 7), v, np.uint16) for v in (1, 2, 3)])
    p = tmp_path / "cyx.tif"
    tifffile.imwrite(p, stack, photometric="minisblack")
    with pytest.raises(ValueError, match="cyx.tif.*channel"):
        read_image(p)
    assert np.array_equal(read_image(p, channel=2), stack[2])
    with pytest.raises(ValueError, match="out of range"):
        read_image(p, channel=5)
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, stack[0])
    assert read_image(grey).shape == (6, 7)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("bright", [0, 1, 2])
def test_rgb_gives_brightest_channel(tmp_path, suffix, bright):
    rng = np.random.default_rng(bright)
    rgb = rng.integers(0, 40, (32, 48, 3)).astype(np.uint8)
    rgb[..., bright] += 150  # the stained channel
    p = tmp_path / f"rgb{suffix}"
    if suffix == ".png":
        rgba = np.dstack([rgb, np.full((32, 48), 255, np.uint8)])  # alpha must be ignored
        cv2.imwrite(str(p), rgba[..., [2, 1, 0, 3]])  # OpenCV writes BGRA
    else:
        tifffile.imwrite(p, rgb, photometric="rgb")
    out = read_image(p)
    assert out.shape == (32, 48)
    assert np.array_equal(out, rgb[..., bright])
    assert np.array_equal(read_image(p, channel=(bright + 1) % 3), rgb[..., (bright + 1) % 3])


def test_well_names():
    assert parse_well("a1") == (1, 1) and parse_well("P24") == (16, 24)
    assert well_name(16, 24) == "P24" and well_name(1, 1) == "A01"
    assert parse_well(well_name(27, 3)) == (27, 3)
    with pytest.raises(ValueError):
        parse_well("1A")


SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "real"


@pytest.mark.parametrize(
    ("stem", "n"),
    [("stardist_dsb2018", 125), ("dsb2018_ed8c31b0", 91), ("dsb2018_b24ea5c2", 50)],
)
def test_sample_data_reads_as_grey_with_labels(stem, n):
    img_path = next(SAMPLE.glob(f"{stem}_image.*"))
    img = read_image(img_path)
    labels = read_image(SAMPLE / f"{stem}_labels.tif")
    assert img.ndim == 2 and img.shape == labels.shape
    assert len(np.unique(labels)) - 1 == n
    # nuclei are brighter than the background
    assert img[labels > 0].mean() > 2 * img[labels == 0].mean()


def _declare_size(path: Path, width: int, length: int) -> None:
    """Patch a TIFF's ImageWidth / ImageLength tags in place (pixel data unchanged)."""
    with tifffile.TiffFile(path, mode="r+") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(width)
        tif.pages[0].tags["ImageLength"].overwrite(length)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_header_declaring_more_pixels_than_the_file_holds(tmp_path, compression):
    """Refused from the header, before any allocation (the data would be 18.6 GiB)."""
    p = tmp_path / f"huge_{compression}.tif"
    tifffile.imwrite(p, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64),
                     compression=compression)
    _declare_size(p, 100000, 100000)
    size = p.stat().st_size
    with pytest.raises(ValueError) as exc:
        read_image(p)
    msg = str(exc.value)
    assert str(p) in msg
    assert "declares 100000×100000 uint16 pixels (18.6 GiB)" in msg
    assert f"the file holds only {size / 1000:.1f} kB: truncated or corrupt" in msg


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_tiff_is_a_clean_error_naming_the_file(tmp_path, compression):
    full = tmp_path / "full.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(full, rng.integers(0, 4000, (256, 256)).astype(np.uint16),
                     compression=compression)
    half = tmp_path / "half.tif"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"half\.tif.*truncated or corrupt"):
        read_image(half)
    with pytest.raises(ValueError, match=r"half\.tif.*truncated or corrupt"):
        read_image_stack(half)


def test_valid_tiff_layouts_pass_the_size_check(tmp_path):
    """Tiles, multi-page stacks and planar RGB are not mistaken for truncation (OME-TIFF
    series: test_ome_stack_matches_folder)."""
    cases = {"tiled.tif": (np.ones((300, 300), np.uint16), {"tile": (128, 128),
                                                             "compression": "zlib"}),
             "pages.tif": (np.ones((3, 40, 50), np.uint16), {"photometric": "minisblack"}),
             "planar.tif": (np.ones((3, 40, 50), np.uint8), {"photometric": "rgb",
                                                             "planarconfig": "separate"})}
    for name, (data, kw) in cases.items():
        tifffile.imwrite(tmp_path / name, data, **kw)
        assert read_image_stack(tmp_path / name).size == data.size


def test_truncated_ome_stack_series_names_the_file(tmp_path):
    p = tmp_path / "p.ome.tif"
    rng = np.random.default_rng(1)
    imgs = [({"well": "A01", "field": f}, rng.integers(0, 4000, (2, 64, 64)).astype(np.uint16))
            for f in (1, 2)]
    write_ome_stack(p, imgs, compression=None)
    arr, _ = read_ome_stack(p)
    # cut inside the last series' pixels (the OME-XML at the end goes too, so tifffile
    # would see other series): each series fails cleanly, naming the file
    with tifffile.TiffFile(p) as tif:
        cut = int(tif.series[1].pages[-1].dataoffsets[0]) + 10
    p.write_bytes(p.read_bytes()[:cut])
    for i in (0, 1):
        with pytest.raises(ValueError, match=rf"series {i} of .*p\.ome\.tif.*truncated"):
            arr[i].compute()


def test_folder_given_as_an_image_file(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder, not an image file"):
        read_image(tmp_path)


def test_channel_errors_keep_the_python_wording_and_carry_the_facts(tmp_path):
    from erquant.io.tiff import ChannelError

    p = tmp_path / "cyx.tif"
    tifffile.imwrite(p, np.zeros((3, 6, 7), np.uint16), photometric="minisblack")
    with pytest.raises(ChannelError, match="pass channel=<index>") as exc:
        read_image(p)
    assert (exc.value.n_channels, exc.value.requested, tuple(exc.value.shape)) == (3, None, (6, 7))
    assert isinstance(exc.value, ValueError) and exc.value.path == p
