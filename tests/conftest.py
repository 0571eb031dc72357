"""Shared fixtures: array backends, the real annotated data set, cached synthetic fields.

- ``backend``: runs a test once per array backend (``numpy`` always, ``cupy`` only
  with a usable CUDA device; that parameter is marked ``gpu``). Tests move their
  inputs with ``bk.asarray`` and compare ``to_numpy`` results.
- ``real_data``: the folder ``../shared/data/real`` beside the clone (skipped with a
  reason when its ``manifest.csv`` is absent).
- ``synthetic_field(shape, n_nuclei, seed, **kw)``: a session-wide cache of
  :func:`erquant.synthetic.make_field` results (a 1024² field costs ~0.3 s).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from erquant.backend import cupy_available, get_backend

REPO = Path(__file__).resolve().parents[1]
SAMPLE_REAL = REPO / "sample_data" / "real"
REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend(request):
    """The array backend under test (``erquant.backend.Backend``)."""
    if request.param == "cupy" and not cupy_available():
        pytest.skip("CuPy / CUDA not available")
    return get_backend(request.param)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data/real`` (the real annotated nuclei set); skip when absent."""
    if not (REAL_DATA / "manifest.csv").exists():
        pytest.skip(f"real data set not found: {REAL_DATA / 'manifest.csv'} is absent "
                    "(CI has ../shared beside the clone)")
    return REAL_DATA


class _FieldCache:
    """Memoised :func:`erquant.synthetic.make_field` (fields are read-only by convention)."""

    def __init__(self) -> None:
        self._fields: dict = {}

    def __call__(self, shape=(1024, 1024), n_nuclei: int = 300, seed: int = 0, **kw):
        from erquant.synthetic import make_field

        key = (tuple(shape), int(n_nuclei), int(seed), tuple(sorted(kw.items())))
        if key not in self._fields:
            f = make_field(shape=tuple(shape), n_nuclei=n_nuclei, seed=seed, **kw)
            for a in (f.image, f.nuclei, f.cells, f.illumination):
                a.flags.writeable = False  # shared across tests: no accidental edits
            self._fields[key] = f
        return self._fields[key]


@pytest.fixture(scope="session")
def synthetic_field():
    """Callable ``(shape=(1024, 1024), n_nuclei=300, seed=0, **kw) -> SyntheticField``, cached."""
    return _FieldCache()


# seeds of the in-focus 1024² fields used for the accuracy bars
ACCURACY_SEEDS = (1, 2, 3, 4)


@pytest.fixture(scope="session")
def accuracy_fields(synthetic_field):
    """Four in-focus 1024² fields with 300 nuclei each (different seeds)."""
    fields = [synthetic_field((1024, 1024), 300, s, in_focus=True) for s in ACCURACY_SEEDS]
    assert all(f.in_focus for f in fields)
    return fields


def disc_image(shape, centres, radii, *, value=1000.0, background=100.0, dtype=np.float32):
    """Discs of given centres/radii on a flat background (helper for exact-count tests)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = np.full(shape, background, np.float64)
    if np.isscalar(radii):
        radii = [radii] * len(centres)
    for (cy, cx), r in zip(centres, radii):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value
    return img.astype(dtype)


@pytest.fixture(scope="session",
                params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def accuracy_results(request, accuracy_fields):
    """Quantify the accuracy fields once per backend.

    Returns a dict with ``backend``; ``counts`` {seed: (n_pred, n_true)};
    ``er_ratio`` {seed: measured / true nuclear ERα of matched cells, with the TRUE
    flat field}; ``raw_tables`` {seed: per-cell table of the same labels measured
    WITHOUT a flat field} and ``pairs`` {seed: (true ids, pred ids)}.
    """
    from erquant.measure import measure_cells
    from erquant.metrics import matched_pairs
    from erquant.pipeline import quantify

    if request.param == "cupy" and not cupy_available():
        pytest.skip("CuPy / CUDA not available")
    out = {"backend": request.param, "counts": {}, "er_ratio": {}, "raw_tables": {},
           "pairs": {}, "fields": {}}
    for seed, f in zip(ACCURACY_SEEDS, accuracy_fields):
        res = quantify(f.image, backend=request.param, flatfield=f.illumination)
        out["counts"][seed] = (res.n_nuclei, len(f.truth))
        tl, pl = matched_pairs(f.nuclei, res.nuclei)
        truth = f.truth.set_index("label").loc[tl]
        tab = res.table.set_index("label").loc[pl]
        out["er_ratio"][seed] = (tab["nucleus_er_mean_bgcorr"].to_numpy()
                                 / truth["true_er"].to_numpy())
        out["pairs"][seed] = (tl, pl)
        out["fields"][seed] = f
        out["raw_tables"][seed] = measure_cells(
            res.nuclei, res.cells, {"nuclei": f.image[0], "er": f.image[1]})
    return out


def small_metaxpress_plate(tmp_path_factory, name: str, seed: int) -> Path:
    """A 4-well × 2-field MetaXpress plate of 160² fields (layout tests compare other
    layouts of the same images with it)."""
    from erquant.synthetic import CompoundSpec, PlateSpec, write_plate

    spec = PlateSpec(name=name, shape=(160, 160), fields_per_well=2, n_nuclei=16,
                     compounds=(CompoundSpec("cpdA"),), doses_nM=(1.0, 100.0), n_vehicle=2,
                     n_reference=0, reference=None, time_points_h=(24.0,),
                     out_of_focus_fraction=0.0, seed=seed)
    return write_plate(spec, tmp_path_factory.mktemp(name.lower()) / name, progress=False,
                       formats=("metaxpress",))


def reference_cells(plate: Path, tmp_path_factory):
    """``cells.parquet`` of an in-process `erquant run` of ``plate`` (no report)."""
    import pandas as pd

    from erquant.cli import main

    out = tmp_path_factory.mktemp("ref") / "out"
    assert main(["run", str(plate), "-o", str(out), "--workers", "0", "-q", "--no-report"]) == 0
    return pd.read_parquet(out / "cells.parquet")
