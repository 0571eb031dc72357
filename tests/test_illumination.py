"""``erquant.illumination``: fitting a known vignetting gain from per-cell tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from erquant.illumination import fit_illumination

SHAPE = (600, 800)


def _gain(y, x):
    """A known quadratic gain, 1.0 at (250, 450), 0.65 at the far corner region."""
    yy = (y - 250.0) / SHAPE[0]
    xx = (x - 450.0) / SHAPE[1]
    return 1.0 - 0.8 * (yy ** 2 + xx ** 2) - 0.15 * yy * xx


def _tables(n_fields=6, n=400, cv=0.2, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_fields):
        y = rng.uniform(0, SHAPE[0] - 1, n)
        x = rng.uniform(0, SHAPE[1] - 1, n)
        level = 500.0 * (1 + k)  # fields of different brightness are pooled
        v = level * _gain(y, x) * rng.lognormal(0, cv, n)
        er = 800.0 * _gain(y, x)
        out.append(pd.DataFrame({"label": np.arange(1, n + 1), "centroid_y": y, "centroid_x": x,
                                 "nucleus_nuclei_mean_bgcorr": v,
                                 "nucleus_er_mean_bgcorr": er}))
    # outliers (debris, mitoses) must not pull the fit
    out[0].loc[:19, "nucleus_nuclei_mean_bgcorr"] *= 8
    return out


def test_recovers_known_quadratic_gain_within_3_percent():
    ill = fit_illumination(_tables(), SHAPE, model="quadratic")  # anisotropic gain
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    true = _gain(yy, xx)
    true = true / true.max()
    gmap = ill.gain_map()
    assert gmap.shape == SHAPE
    rel = np.abs(gmap / true - 1)
    assert rel.max() <= 0.03, f"max relative gain error {rel.max():.3f}"
    assert ill.n_cells > 0.9 * 6 * 400


def test_correct_table_flattens_the_er_column():
    tables = _tables()
    ill = fit_illumination(tables, SHAPE, model="quadratic")
    corr = ill.correct_table(tables[1], ["er"])
    ratio = corr["nucleus_er_mean_bgcorr"].to_numpy() / 800.0
    true_peak = _gain(np.mgrid[0:SHAPE[0], 0:SHAPE[1]][0], np.mgrid[0:SHAPE[0], 0:SHAPE[1]][1]).max()
    # after correction every cell reads the peak-illumination level (within 3 %)
    assert np.abs(ratio / true_peak - 1).max() <= 0.03
    assert "flatfield_gain" in corr
    # the nuclei column was not asked for: unchanged
    np.testing.assert_array_equal(corr["nucleus_nuclei_mean_bgcorr"],
                                  tables[1]["nucleus_nuclei_mean_bgcorr"])
    assert len(ill.correct_table(tables[1].iloc[:0], ["er"])) == 0


def test_too_few_cells_raises():
    t = _tables(n_fields=1, n=30)
    with pytest.raises(ValueError, match="at least 50 cells"):
        fit_illumination(t, SHAPE)
    with pytest.raises(ValueError):
        fit_illumination([], SHAPE)
