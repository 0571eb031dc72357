"""Reference recipes timed by :mod:`erquant.bench` (what people write today).

* :func:`skimage_recipe`: Gaussian, Otsu, distance transform, ``peak_local_max``,
  ``watershed``, ``expand_labels``, ``regionprops_table``;
* :func:`pyclesperanto_recipe`: ``voronoi_otsu_labeling`` +
  ``statistics_of_labelled_pixels`` on an OpenCL device.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

#: Mean nucleus diameter of the benchmark fields (px) and the cell growth distance.
NUCLEUS_DIAMETER = 24.0
CELL_DISTANCE = NUCLEUS_DIAMETER / 2


def skimage_recipe(nuclei_img: np.ndarray, er_img: np.ndarray, *,
                   diameter: float = NUCLEUS_DIAMETER, cell_distance: float = CELL_DISTANCE):
    """The scikit-image recipe: Gaussian, Otsu, distance transform, peaks, watershed.

    Parameters
    ----------
    nuclei_img, er_img : (Y, X) arrays
        Nuclear stain and ERα channel.
    diameter : float
        Nucleus diameter (px); ``peak_local_max`` uses ``min_distance = diameter / 2``.
    cell_distance : float
        ``expand_labels`` distance for the cells.

    Returns
    -------
    nuclei, cells : (Y, X) int arrays
    table : dict of columns ``label, area, centroid-0, centroid-1, intensity_mean``

    Examples
    --------
    >>> import numpy as np
    >>> img = np.zeros((64, 64)); img[10:30, 10:30] = 100; img[40:60, 35:55] = 100
    >>> nuc, cells, tab = skimage_recipe(img, img, diameter=20)
    >>> int(nuc.max()), len(tab["label"])
    (2, 2)
    """
    from scipy import ndimage as ndi
    from skimage import feature, filters, measure, segmentation

    smooth = filters.gaussian(nuclei_img, sigma=2, preserve_range=True)
    mask = smooth > filters.threshold_otsu(smooth)
    dist = ndi.distance_transform_edt(mask)
    coords = feature.peak_local_max(dist, min_distance=max(1, int(diameter / 2)),
                                    labels=measure.label(mask), exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(coords.T)] = np.arange(1, len(coords) + 1, dtype=np.int32)
    nuclei = segmentation.watershed(-dist, markers, mask=mask)
    cells = segmentation.expand_labels(nuclei, distance=cell_distance)
    table = measure.regionprops_table(nuclei, intensity_image=er_img,
                                      properties=("label", "area", "centroid", "intensity_mean"))
    return nuclei, cells, table


def _pyclesperanto() -> tuple[Any, str]:
    """(module, device name) or (None, reason it is skipped)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pyclesperanto as cle
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
        return None, f"pyclesperanto not installed ({type(exc).__name__}: {exc})"
    if not getattr(cle, "_backend_available", True) or not hasattr(cle, "voronoi_otsu_labeling"):
        return None, ("pyclesperanto found no usable backend/OpenCL device (install an OpenCL "
                      "driver, e.g. Debian's pocl-opencl-icd for the CPU, and "
                      "pyclesperanto[opencl])")
    try:
        devices = cle.list_available_devices()
    except Exception as exc:  # noqa: BLE001 - OpenCL runtime errors vary by driver
        return None, f"no OpenCL device found ({type(exc).__name__}: {exc})"
    if not devices:
        return None, ("no OpenCL device found (install an OpenCL driver, e.g. Debian's "
                      "pocl-opencl-icd for the CPU)")
    try:
        dev = cle.select_device()
        name = str(getattr(dev, "name", devices[0]))
    except Exception as exc:  # noqa: BLE001 - OpenCL runtime errors vary by driver
        return None, f"pyclesperanto cannot select an OpenCL device ({exc})"
    return cle, name


def pyclesperanto_recipe(cle: Any, nuclei_img: np.ndarray, er_img: np.ndarray, *,
                         diameter: float = NUCLEUS_DIAMETER):
    """pyclesperanto's ``voronoi_otsu_labeling`` + ``statistics_of_labelled_pixels``.

    ``spot_sigma = diameter / 6`` (the usual choice for nuclei), ``outline_sigma = 1``.
    Pushing the images and pulling the labels back to the host are included.

    Returns
    -------
    nuclei : (Y, X) array on the host
    table : dict of columns ``label, area, centroid_x, centroid_y, mean_intensity``

    Examples
    --------
    >>> cle, _ = _pyclesperanto()  # doctest: +SKIP
    >>> labels, table = pyclesperanto_recipe(cle, img, er)  # doctest: +SKIP
    """
    nuc = cle.push(nuclei_img.astype(np.float32, copy=False))
    labels = cle.voronoi_otsu_labeling(nuc, spot_sigma=diameter / 6, outline_sigma=1)
    er = cle.push(er_img.astype(np.float32, copy=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        stats = cle.statistics_of_labelled_pixels(er, labels)
    table = {k: np.asarray(stats[k]) for k in
             ("label", "area", "centroid_x", "centroid_y", "mean_intensity") if k in stats}
    return np.asarray(cle.pull(labels)), table
