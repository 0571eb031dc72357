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


def test_synth_clumps_writes_an_mcf7_like_plate(tmp_path, capsys):
    """``--clumps 20``: the fields hold compact islands of touching nuclei (issue 14's
    preset), the truth counts them exactly; a negative value is a usage error."""
    from scipy import ndimage as ndi

    out = tmp_path / "plate"
    rc = main(["synth", str(out), "--size", "384", "--fields", "1", "--doses", "2",
               "--wells", "A11", "--clumps", "20", "--nuclei", "60", "--no-progress",
               "--format", "metaxpress"])
    assert rc == 0
    img = tifffile.imread(next(out.rglob("A11_s1_w1.tif"))).astype(float)
    bg = np.median(img)
    fg = ndi.binary_opening(img > bg + 0.25 * (np.percentile(img, 99) - bg), iterations=2)
    lab, islands = ndi.label(fg)
    n = int(pd.read_csv(out / "truth" / "wells.csv").set_index("well").loc["A11", "true_count"])
    assert 45 <= n <= 75, n  # ~60 vehicle nuclei (the count is sampled)
    # compact islands: ~n/20 clumps hold most of the stained area (a few nuclei apart)
    sizes = np.sort(np.bincount(lab.ravel())[1:])[::-1]
    assert islands <= 12 and sizes[:4].sum() >= 0.8 * sizes.sum(), (islands, sizes)
    assert main(["synth", str(tmp_path / "p2"), "--clumps", "-1"]) == 2
    assert "--clumps -1" in capsys.readouterr().err


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


# ------------------------------------------------------------------ user errors
def _error_line(err: str, *parts: str) -> str:
    """The one ``error:`` line of ``err`` (no traceback), holding every part."""
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    for part in parts:
        assert part in lines[0], (part, lines[0])
    return lines[0]


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if segmentation or quantification starts (usage errors come first)."""
    import erquant.pipeline
    import erquant.segment

    def forbidden(*a, **k):
        raise AssertionError("work started before the usage error was reported")

    monkeypatch.setattr(erquant.segment, "segment_nuclei", forbidden)
    monkeypatch.setattr(erquant.pipeline, "quantify", forbidden)


def _noise_u16(seed=0, shape=(128, 128)):
    rng = np.random.default_rng(seed)
    return (100 + rng.normal(0, 3, shape)).astype(np.uint16)


def test_segment_constant_image_is_a_failed_input_empty_field_is_zero_nuclei(tmp_path, capsys):
    """All-zero / constant = failed input (as in quantify); background-only field = 0 nuclei."""
    zero, const, empty = tmp_path / "zero.tif", tmp_path / "const.tif", tmp_path / "empty.tif"
    tifffile.imwrite(zero, np.zeros((64, 64), np.uint16))
    tifffile.imwrite(const, np.full((64, 64), 7, np.uint16))
    tifffile.imwrite(empty, _noise_u16())
    out = tmp_path / "out"
    rc = main(["segment", str(zero), str(const), str(empty), "-o", str(out), "-q",
               "--backend", "numpy"])
    cap = capsys.readouterr()
    assert rc == 1
    assert "Traceback" not in cap.err
    assert f"error: {zero}: nuclei image is constant (all pixels = 0)" in cap.err
    assert f"error: {const}: nuclei image is constant (all pixels = 7)" in cap.err
    assert f"{empty}\t0 nuclei" in cap.out
    assert int(tifffile.imread(out / "empty_nuclei.tif").max()) == 0
    assert not (out / "zero_nuclei.tif").exists()
    assert "2 input(s) failed" in cap.out
    # the same image alone through quantify: the same reason, naming the file
    rc = main(["quantify", str(zero), "-o", str(tmp_path / "q"), "--backend", "numpy"])
    assert rc == 1
    _error_line(capsys.readouterr().err, f"{zero}: nuclei image is constant (all pixels = 0)")


def test_quantify_nan_and_constant_images_name_the_file(tmp_path, capsys):
    nuc, nan_er, const_er = (tmp_path / n for n in ("nuc.tif", "er_nan.tif", "er_const.tif"))
    tifffile.imwrite(nuc, _noise_u16())
    bad = np.full((128, 128), 5.0, np.float32)
    bad[3, 4] = np.nan
    tifffile.imwrite(nan_er, bad)
    tifffile.imwrite(const_er, np.full((128, 128), 9, np.uint16))
    for marker, problem in ((nan_er, "er image contains NaN"),
                            (const_er, "er image is constant (all pixels = 9)")):
        rc = main(["quantify", str(nuc), "--marker", f"er={marker}", "-o", str(tmp_path / "o"),
                   "--backend", "numpy"])
        assert rc == 1
        _error_line(capsys.readouterr().err, f"error: {marker}: {problem}")


@pytest.mark.parametrize("command", ["segment", "quantify", "synth", "demo", "bench"])
def test_output_path_problems_are_usage_errors_before_any_work(tmp_path, capsys, no_work,
                                                               command):
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, _noise_u16())
    afile = tmp_path / "notes.txt"
    afile.write_text("my notes\n")
    flag = "--out" if command == "bench" else "-o"
    for outdir, problem in ((afile / "out", f"{afile} is a file, not a folder"),
                            (afile, f"{afile}: exists and is a file, not a folder")):
        argv = {"segment": ["segment", str(img), "-o", str(outdir), "-q"],
                "quantify": ["quantify", str(img), "-o", str(outdir)],
                "synth": ["synth", str(outdir), "--no-progress"],
                "demo": ["demo", "-o", str(outdir)],
                "bench": ["bench", "--quick", "--out", str(outdir)]}[command]
        assert main(argv) == 2
        line = _error_line(capsys.readouterr().err, problem)
        if outdir == afile and command != "synth":
            assert f"({flag} needs a folder)" in line
        assert afile.read_text() == "my notes\n"


def test_read_only_output_folder_is_a_usage_error(tmp_path, capsys, no_work):
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, _noise_u16())
    if not Path("/proc/self").is_dir():
        pytest.skip("needs /proc (a location nobody, not even root, can write)")
    # under /proc nothing can be created, not even by root
    assert main(["segment", str(img), "-o", "/proc/erquant_test_out", "-q"]) == 2
    _error_line(capsys.readouterr().err, "/proc/erquant_test_out: cannot create the output folder")
    # an existing folder whose files cannot be created: the probe file finds out
    assert main(["quantify", str(img), "-o", "/proc/self"]) == 2
    _error_line(capsys.readouterr().err, "/proc/self: output folder is not writable")


def test_read_only_output_folder_by_permissions(tmp_path, capsys, no_work):
    import os

    if os.geteuid() == 0:
        pytest.skip("running as root: root ignores folder permissions (covered under /proc)")
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, _noise_u16())
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["segment", str(img), "-o", str(ro), "-q"]) == 2
        _error_line(capsys.readouterr().err, f"{ro}: output folder is not writable")
    finally:
        ro.chmod(0o755)


def test_params_file_problems_are_usage_errors(tmp_path, capsys, no_work):
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, _noise_u16())
    syntax, unknown, wrong = tmp_path / "syntax.toml", tmp_path / "unknown.toml", tmp_path / "w.toml"
    syntax.write_text("[segment\ndiameter = 3\n")
    unknown.write_text("[segment]\ndiamter = 20\n")
    wrong.write_text("[segment]\ndownsample = 0.5\n")
    cases = [(tmp_path / "missing.toml", "missing.toml: parameter file not found"),
             (tmp_path, f"{tmp_path}: is a folder, not a parameter file"),
             (syntax, f"{syntax}: not a valid TOML parameter file"),
             (unknown, "unknown parameter(s) in params.segment: diamter"),
             (wrong, f"{wrong}: segment.downsample: must be 0 (automatic) or >= 1, got 0.5")]
    for params, problem in cases:
        for cmd in (["segment", str(img), "-q"], ["quantify", str(img)]):
            out = tmp_path / "out"
            assert main([*cmd, "-o", str(out), "--params", str(params)]) == 2
            line = _error_line(capsys.readouterr().err, problem)
            assert str(params) in line
    # invalid option values: the option is named, nothing is segmented
    for opts, problem in ((["--downsample", "0.5"], "--downsample: must be 0 (automatic) or >= 1"),
                          (["--diameter", "-3"], "--diameter: must be > 0 px, got -3"),
                          (["--threshold", "manual"], "--threshold: 'manual' needs a threshold")):
        assert main(["segment", str(img), "-o", str(tmp_path / "o2"), "-q", *opts]) == 2
        _error_line(capsys.readouterr().err, problem)


def test_threshold_option_overrides_the_params_file(tmp_path, capsys):
    """``--threshold`` given with ``--params`` wins (it used to be silently ignored)."""
    from argparse import Namespace

    from erquant.cli import _segment_params
    from erquant.params import Params

    toml = tmp_path / "p.toml"
    Params().replace(**{"segment.threshold": "li"}).to_toml(toml)
    args = Namespace(method=None, diameter=None, threshold=None, threshold_value=None,
                     downsample=None, params=toml)
    assert _segment_params(args).segment.threshold == "li"
    args.threshold = "triangle"
    assert _segment_params(args).segment.threshold == "triangle"
    args.method = "classical"
    assert _segment_params(args).segment.method == "classical"


def test_folder_given_as_an_image_says_so(tmp_path, capsys):
    good = tmp_path / "img.tif"
    tifffile.imwrite(good, disc_image((128, 128), [(40, 40), (90, 90)], 10, dtype=np.uint16))
    folder = tmp_path / "images"
    folder.mkdir()
    out = tmp_path / "out"
    assert main(["segment", str(folder), str(good), "-o", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    _error_line(err, str(folder), "is a folder, not an image file")
    assert "extension" not in err
    assert (out / "img_nuclei.tif").exists()  # the other input is still processed
    assert main(["quantify", str(good), "--marker", f"er={folder}", "-o", str(out)]) == 1
    _error_line(capsys.readouterr().err, str(folder), "is a folder, not an image file")


def test_channel_messages_name_the_option_not_the_python_keyword(tmp_path, capsys):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([_noise_u16(k) for k in range(3)]), photometric="minisblack")
    grey = tmp_path / "grey.tif"
    tifffile.imwrite(grey, _noise_u16())
    out = str(tmp_path / "out")
    cases = [(["segment", str(stack), "-o", out, "-q"],
              f"{stack}: holds 3 channels of shape (128, 128); pick one with --channel N (0–2)"),
             (["segment", str(stack), "--channel", "5", "-o", out, "-q"],
              f"{stack}: has 3 channels; --channel 5 is out of range (0–2)"),
             (["segment", str(grey), "--channel", "1", "-o", out, "-q"],
              f"{grey}: is a 2-D grey image without channels; --channel 1 does not apply"),
             (["quantify", str(stack), "-o", out],
              f"{stack}: holds 3 channels of shape (128, 128); this command reads one 2-D image")]
    for argv, message in cases:
        assert main(argv) == 1
        err = capsys.readouterr().err
        _error_line(err, message)
        assert "channel=" not in err


def test_synth_and_demo_never_overwrite_user_data(tmp_path, capsys):
    user = tmp_path / "my_plate"
    user.mkdir()
    mine = user / "A01_s1_w1.tif"
    tifffile.imwrite(mine, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    before = mine.read_bytes()
    assert main(["synth", str(user), "--size", "64", "--no-progress"]) == 2
    _error_line(capsys.readouterr().err, str(user), "not a plate written by erquant synth",
                "A01_s1_w1.tif")
    assert main(["demo", "--plate", str(user), "-o", str(tmp_path / "demo_out")]) == 2
    _error_line(capsys.readouterr().err, str(user), "A01_s1_w1.tif")
    assert mine.read_bytes() == before
    assert sorted(p.name for p in user.iterdir()) == ["A01_s1_w1.tif"]


def test_unusable_backend_and_malformed_marker_are_usage_errors(tmp_path, capsys, no_work):
    from erquant.backend import cupy_available

    img = tmp_path / "img.tif"
    tifffile.imwrite(img, _noise_u16())
    out = str(tmp_path / "out")
    for spec in ("er=", "=x.tif"):
        assert main(["quantify", str(img), "--marker", spec, "-o", out]) == 2
        _error_line(capsys.readouterr().err, f"--marker '{spec}': expected NAME=PATH")
    if cupy_available():
        pytest.skip("CuPy is usable here: --backend cupy is not an error")
    for cmd in (["segment", str(img), "-q"], ["quantify", str(img)]):
        assert main([*cmd, "-o", out, "--backend", "cupy"]) == 2
        _error_line(capsys.readouterr().err, "--backend cupy:", "CuPy is not installed")


def test_bench_argument_errors_before_timing(tmp_path, capsys, no_work):
    assert main(["bench", "--quick", "--backends", "numpy,tpu", "--out", str(tmp_path)]) == 2
    _error_line(capsys.readouterr().err, "--backends: unknown backend(s) 'tpu'")


def test_bad_files_fail_cleanly_and_name_the_file(tmp_path, capsys):
    """Not-a-PNG, a truncated TIFF and a TIFF declaring 100000² pixels: one line each."""
    fake_png = tmp_path / "fake.png"
    fake_png.write_bytes(b"this is not a PNG")
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, _noise_u16(shape=(256, 256)))
    half = tmp_path / "half.tif"
    half.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    huge = tmp_path / "huge.tif"
    tifffile.imwrite(huge, _noise_u16(shape=(64, 64)))
    with tifffile.TiffFile(huge, mode="r+") as tif:
        tif.pages[0].tags["ImageWidth"].overwrite(100000)
        tif.pages[0].tags["ImageLength"].overwrite(100000)
    good = tmp_path / "good.tif"
    tifffile.imwrite(good, disc_image((128, 128), [(40, 40), (90, 90)], 10, dtype=np.uint16))
    out = tmp_path / "out"
    rc = main(["segment", str(fake_png), str(half), str(huge), str(good), "-o", str(out), "-q"])
    cap = capsys.readouterr()
    assert rc == 1 and "Traceback" not in cap.err
    errors = [ln for ln in cap.err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 3 and len(cap.err.splitlines()) == 3, cap.err
    assert "fake.png" in errors[0] and "not a valid PNG image" in errors[0]
    assert "half.tif" in errors[1] and "truncated or corrupt" in errors[1]
    assert "huge.tif" in errors[2] and "100000×100000 uint16 pixels (18.6 GiB)" in errors[2]
    assert (out / "good_nuclei.tif").exists()
    assert "3 input(s) failed" in cap.out


def test_unexpected_errors_are_one_line_unless_verbose(tmp_path, capsys, monkeypatch):
    import erquant.segment

    def boom(*a, **k):
        raise RuntimeError("internal failure\nsecond line")

    monkeypatch.setattr(erquant.segment, "segment_nuclei", boom)
    img = tmp_path / "img.tif"
    tifffile.imwrite(img, _noise_u16())
    argv = ["segment", str(img), "-o", str(tmp_path / "out"), "-q"]
    assert main(argv) == 1
    _error_line(capsys.readouterr().err,
                "error: RuntimeError: internal failure (run with -v for the traceback)")
    with pytest.raises(RuntimeError, match="internal failure"):
        main(["-v", *argv])


@pytest.mark.parametrize("method", ["classical", "learned"])
def test_segment_explain_writes_numbers_and_overlay(tmp_path, capsys, method):
    img = _discs_u8()
    src = tmp_path / "discs.tif"
    tifffile.imwrite(src, img)
    out = tmp_path / "out"
    rc = main(["segment", str(src), "-o", str(out), "-q", "--backend", "numpy",
               "--method", method, "--explain"])
    assert rc == 0, capsys.readouterr().err
    import json

    e = json.loads((out / "discs_explain.json").read_text())
    assert e["method"] == method
    assert e["n_nuclei"] == int(tifffile.imread(out / "discs_nuclei.tif").max()) == 16
    assert 18 <= e["diameter"] <= 30  # discs of radius 12 px
    assert 0.8 <= e["median_object_vs_estimate"] <= 1.25
    if method == "classical":
        assert 0 < e["threshold"] < 1 and e["noise_sigma"] >= 0
    else:
        from erquant.models.learned import WORK_DIAMETER

        assert e["scale"] == pytest.approx(WORK_DIAMETER / e["diameter"])
    png = Image.open(out / "discs_explain.png")
    assert png.size[0] >= 256
    rgb = np.asarray(png.convert("RGB")).astype(int)
    yellow = (rgb[..., 0] > 200) & (rgb[..., 1] > 170) & (rgb[..., 2] < 80)
    assert yellow.sum() > 16 * 20  # the outlines are drawn


def test_method_option_errors(tmp_path, capsys):
    src = tmp_path / "discs.tif"
    tifffile.imwrite(src, _discs_u8())
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(src), "-o", str(tmp_path / "o"), "--method", "unet"])
    assert exc.value.code == 2
    assert "--method" in capsys.readouterr().err
    bad = tmp_path / "p.toml"
    bad.write_text('[segment]\nmethod = "unet"\n')
    rc = main(["segment", str(src), "-o", str(tmp_path / "o"), "--params", str(bad)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "segment.method" in err and "unet" in err
