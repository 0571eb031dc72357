"""OME-Zarr HCS plates (NGFF 0.4 / Zarr v2 and 0.5 / Zarr v3) through `erquant run`:
the same fields as a MetaXpress plate give the same cells; --save-labels writes NGFF
labels into each field that ome-zarr-py reads back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import reference_cells, small_metaxpress_plate
import zarr

from erquant.cli import main
from erquant.io.items import load_item, open_input
from erquant.io.omezarr import write_hcs_plate

@pytest.fixture(scope="module")
def plate(tmp_path_factory) -> Path:
    return small_metaxpress_plate(tmp_path_factory, "ZRR", seed=4)


@pytest.fixture(scope="module")
def reference(plate, tmp_path_factory) -> pd.DataFrame:
    return reference_cells(plate, tmp_path_factory)


def _fields(plate: Path) -> dict:
    out = {}
    for p in sorted((plate / "TimePoint_1").glob("*_w1.tif")):
        well, s, _ = p.stem.split("_")
        out[(well, int(s[1:]))] = np.stack([tifffile.imread(p),
                                            tifffile.imread(str(p).replace("_w1", "_w2"))])
    return out


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_hcs_plate_same_cells_and_labels_written_back(plate, reference, tmp_path, version):
    store = write_hcs_plate(tmp_path / "plate.zarr", _fields(plate), version=version,
                            channel_names=("Hoechst 33342", "ERa AF488"), name="ZRR")
    assert (store / ("zarr.json" if version == "0.5" else ".zattrs")).exists()
    reader = open_input(store)
    assert type(reader).__name__ == "OmeZarrReader"
    items = reader.items()
    assert len(items) == 8 and {it.plate for it in items} == {"ZRR"}
    img, names = load_item(items[0])
    assert img.shape == (2, 160, 160) and names == ["nuclei", "er"]
    out = tmp_path / "out"
    (tmp_path / "plate_map.csv").write_bytes((plate / "plate_map.csv").read_bytes())
    rc = main(["run", str(store), "-o", str(out), "--workers", "0", "-q", "--no-report",
               "--save-labels", "--plate-map", str(tmp_path / "plate_map.csv"),
               "--channels", "Hoechst 33342=nuclei,ERa AF488=er"])
    assert rc == 0
    cells = pd.read_parquet(out / "cells.parquet")
    pd.testing.assert_frame_equal(reference.drop(columns=["time_h"]),
                                  cells.drop(columns=["time_h"]))
    # NGFF labels of every field, equal to the TIFFs beside the tables
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    root = zarr.open_group(str(store), mode="r")
    for it in items:
        group = it.image_group.split("::")[1]
        for name in ("nuclei", "cells"):
            lg = root[f"{group}/labels/{name}"]
            attrs = dict(lg.attrs)
            ome = attrs.get("ome", attrs)
            assert "image-label" in ome
            lab = np.asarray(lg[ome["multiscales"][0]["datasets"][0]["path"]])
            tif = tifffile.imread(out / "labels" / f"{it.id}_{name}.tif")
            assert np.array_equal(lab.reshape(tif.shape), tif)
    nodes = list(Reader(parse_url(str(store / items[0].image_group.split("::")[1])))())
    assert any("labels" in str(n.zarr) for n in nodes)


def test_opening_a_384_well_plate_reads_no_pixels(tmp_path):
    """Planning reads metadata only: with every chunk file deleted the fields still list."""
    from erquant.io.plate import well_name

    fields = {(well_name(r, c), 1): np.ones((2, 8, 8), np.uint16)  # zeros: no chunks
              for r in range(1, 17) for c in range(1, 25)}
    store = write_hcs_plate(tmp_path / "p384.zarr", fields, version="0.5")
    meta = {"zarr.json", ".zattrs", ".zgroup", ".zarray"}
    chunks = [p for p in store.rglob("*") if p.is_file() and p.name not in meta]
    assert len(chunks) >= 384
    for p in chunks:
        p.unlink()
    items = open_input(store).items()
    assert len(items) == 384 and items[-1].well == "P24"
    img, _ = load_item(items[0])  # pixels are read only when a field is loaded: the chunks
    assert not img.any()          # are gone, so zarr gives its fill value (0), not the ones
