"""``erquant.cli``: the command line, run in-process (``main([...])``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import SAMPLE_REAL, disc_image
from PIL import Image

from erquant import __version__
from erquant.cli import main
from erquant.io import read_image

REAL_IMAGES = sorted(SAMPLE_REAL.glob("*_image.*"))
GRID = [(32 + 64 * i, 32 + 64 * j) for i in range(4) for j in range(4)]


def _stem(p: Path) -> str:
    return p.name.rsplit(".", 1)[0]


def _discs_u8(seed=0):
    rng = np.random.default_rng(seed)
    img = disc_image((256, 256), GRID, 12, value=180.0, background=20.0)
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_segment_real_sample_images(tmp_path, capsys):
    assert len(REAL_IMAGES) == 3
    rc = main(["segment", *map(str, REAL_IMAGES), "-o", str(tmp_path), "-q",
               "--backend", "numpy"])
    out = capsys.readouterr().out
    assert rc == 0
    for p in REAL_IMAGES:
        dest = tmp_path / f"{_stem(p)}_nuclei.tif"
        assert dest.exists(), dest
        lab = tifffile.imread(dest)
        assert lab.dtype == np.uint32
        assert lab.shape == read_image(p).shape
        m = re.search(re.escape(str(p)) + r"\t(\d+) nuclei", out)
        assert m, f"no count printed for {p}:\n{out}"
        assert int(m.group(1)) == int(lab.max()) > 10
    assert "wrote 3 label image(s)" in out


def test_segment_rgb_png_gives_2d_labels(tmp_path, capsys):
    grey = _discs_u8()
    rgb = np.stack([grey // 4, grey, grey // 2], axis=-1)  # brightest = green
    src = tmp_path / "rgb.png"
    Image.fromarray(rgb, mode="RGB").save(src)
    assert main(["segment", str(src), "-o", str(tmp_path / "out"), "-q"]) == 0
    lab = tifffile.imread(tmp_path / "out" / "rgb_nuclei.tif")
    assert lab.shape == grey.shape and lab.dtype == np.uint32
    assert int(lab.max()) == len(GRID)


def test_segment_multichannel_tiff_channel(tmp_path, capsys):
    rng = np.random.default_rng(1)
    nuc = _discs_u8().astype(np.uint16) * 10
    stack = np.stack([rng.integers(90, 110, nuc.shape), nuc,
                      rng.integers(0, 3000, nuc.shape)]).astype(np.uint16)
    out = tmp_path / "out"
    # tifffile's old default wrote a 3-plane uint16 stack as planar RGB; both must work
    for photometric in ("rgb", "minisblack"):
        src = tmp_path / f"stack_{photometric}.tif"
        tifffile.imwrite(src, stack, photometric=photometric,
                         planarconfig="separate" if photometric == "rgb" else None)
        assert main(["segment", str(src), "--channel", "1", "-o", str(out), "-q"]) == 0
        lab = tifffile.imread(out / f"stack_{photometric}_nuclei.tif")
        assert lab.shape == nuc.shape and int(lab.max()) == len(GRID)
    # without --channel a grey (C, Y, X) stack is an error naming the file, rc 1
    capsys.readouterr()
    assert main(["segment", str(src), "-o", str(tmp_path / "out2"), "-q"]) == 1
    assert "stack_minisblack.tif" in capsys.readouterr().err


def test_segment_missing_and_corrupt_files_do_not_stop_the_rest(tmp_path, capsys):
    missing = tmp_path / "nope_missing.tif"
    corrupt = tmp_path / "broken_corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x17" * 100)  # TIFF magic, garbage after
    good = REAL_IMAGES[0]
    out = tmp_path / "out"
    rc = main(["segment", str(missing), str(corrupt), str(good), "-o", str(out), "-q"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "nope_missing.tif" in cap.err and "broken_corrupt.tif" in cap.err
    assert (out / f"{_stem(good)}_nuclei.tif").exists()
    assert not (out / "nope_missing_nuclei.tif").exists()
    assert "2 input(s) failed" in cap.out


def test_quantify_writes_csv_and_labels(tmp_path, synthetic_field, capsys):
    f = synthetic_field((256, 256), 20, 5, in_focus=True)
    nuc, er = tmp_path / "A01_s1_w1.tif", tmp_path / "A01_s1_w2.tif"
    tifffile.imwrite(nuc, f.image[0])
    tifffile.imwrite(er, f.image[1])
    out = tmp_path / "out"
    rc = main(["quantify", str(nuc), "--marker", f"er={er}", "-o", str(out), "--backend", "numpy"])
    assert rc == 0
    table = pd.read_csv(out / "A01_s1_w1_cells.csv")
    assert {"label", "nucleus_er_mean_bgcorr", "er_positive"} <= set(table.columns)
    assert abs(len(table) - 20) <= 3
    lab = tifffile.imread(out / "A01_s1_w1_nuclei.tif")
    assert lab.dtype == np.uint32 and int((np.unique(lab) > 0).sum()) == len(table)
    assert f"{len(table)} cells" in capsys.readouterr().out


def test_quantify_shape_mismatch_is_an_error(tmp_path, capsys):
    nuc, er = tmp_path / "n.tif", tmp_path / "e.tif"
    tifffile.imwrite(nuc, np.zeros((64, 64), np.uint16))
    tifffile.imwrite(er, np.zeros((32, 64), np.uint16))
    assert main(["quantify", str(nuc), "--marker", f"er={er}", "-o", str(tmp_path / "o")]) == 1
    assert "e.tif" in capsys.readouterr().err


def test_synth_writes_a_plate(tmp_path, capsys):
    out = tmp_path / "plate"
    rc = main(["synth", str(out), "--size", "128", "--fields", "1", "--doses", "2",
               "--wells", "A01", "A11", "--no-progress", "--format", "metaxpress"])
    assert rc == 0
    imgs = sorted(p.name for p in out.rglob("*_w[12].tif"))
    assert imgs == ["A01_s1_w1.tif", "A01_s1_w2.tif", "A11_s1_w1.tif", "A11_s1_w2.tif"]
    assert tifffile.imread(next(out.rglob("A01_s1_w1.tif"))).shape == (128, 128)
    pmap = pd.read_csv(out / "plate_map.csv")
    assert {"A01", "A11"} <= set(pmap["well"])
    assert (out / "truth" / "wells.csv").exists()


def test_segment_same_names_from_two_folders_keep_both(tmp_path, capsys):
    imgs = []
    for k, folder in enumerate(("a", "b")):
        d = tmp_path / folder
        d.mkdir()
        centres = [(30, 30), (30, 90)] if k == 0 else [(30, 30), (90, 90), (90, 30)]
        img = disc_image((128, 128), centres, 10, dtype=np.uint16)
        tifffile.imwrite(d / "field.tif", img)
        imgs.append(str(d / "field.tif"))
    out = tmp_path / "out"
    assert main(["segment", *imgs, "-o", str(out), "-q"]) == 0
    assert tifffile.imread(out / "field_nuclei.tif").max() == 2
    assert tifffile.imread(out / "b_field_nuclei.tif").max() == 3
    assert "shares its name" in capsys.readouterr().err


def test_segment_honours_downsample_and_the_params_file(tmp_path, capsys):
    """``--downsample`` reaches segment_nuclei, and so does every field of --params."""
    from erquant.params import Params

    img_path = tmp_path / "discs.tif"
    big = disc_image((512, 512), [(64 + 128 * i, 64 + 128 * j) for i in range(4)
                                  for j in range(4)], 30, value=1000.0, background=100.0)
    tifffile.imwrite(img_path, big.astype(np.uint16))
    for ds in ("1", "0"):
        out = tmp_path / f"out{ds}"
        assert main(["segment", str(img_path), "-o", str(out), "-q", "--downsample", ds]) == 0
        lab = tifffile.imread(out / "discs_nuclei.tif")
        assert int(lab.max()) == 16 and lab.shape == big.shape
    capsys.readouterr()
    # a parameter file that drops every object (min area > the discs): honoured
    toml = tmp_path / "p.toml"
    Params().replace(**{"segment.min_area_fraction": 5.0}).to_toml(toml)
    out = tmp_path / "outp"
    assert main(["segment", str(img_path), "-o", str(out), "-q", "--params", str(toml)]) == 0
    assert int(tifffile.imread(out / "discs_nuclei.tif").max()) == 0
