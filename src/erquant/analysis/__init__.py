"""Dose-response analysis: plate maps, LL.4 fits (DC50 / Dmax / IC50), plate QC, report.

Works on the tables of ``erquant run`` (never on pixels, except the report's
thumbnails, which it asks a ``load_field`` callable for).

* :func:`read_plate_map`, :func:`match_wells`, :class:`PlateMapError` — plate maps
* :func:`fit_ll4`, :class:`Fit` — drc's LL.4 / LL.3 log-logistic fits
* :func:`normalise_wells` — % of vehicle (or of the reference's effect)
* :func:`plate_qc`, :func:`z_prime` — Z′, vehicle CV, signal window
* :func:`analyse_run` — all of it for one run folder, plus ``report.html``

Examples
--------
>>> f = fit_ll4([0.1, 0.3, 1, 3, 10, 30, 100], [99, 96, 84, 60, 36, 24, 21])
>>> round(f.ec50, 1), f.flag
(3.1, 'ok')
"""

from erquant.analysis.fit import Fit, fit_ll4
from erquant.analysis.normalise import AnalysisError, normalise_wells
from erquant.analysis.plate_qc import plate_qc, z_prime
from erquant.analysis.platemap import PlateMapError, match_wells, read_plate_map
from erquant.analysis.report import analyse_run

__all__ = [
    "AnalysisError",
    "Fit",
    "PlateMapError",
    "analyse_run",
    "fit_ll4",
    "match_wells",
    "normalise_wells",
    "plate_qc",
    "read_plate_map",
    "z_prime",
]
