"""Which layer is which: channel roles from layer names, and the field a layer shows.

No Qt here. Roles come from names only (never from the order layers were added):
``DAPI``, ``Hoechst``, ``nuclei``, ``DNA``, ``w1`` → nuclei; ``ER``, ``ESR1``, ``ERα``,
``ERa``, ``w2`` → marker. A layer's *source* names the field it shows (metadata
``source`` set by the reader, the per-field names of a plate stack, or the layer name
without channel and dye words): result layers are named after it and nuclei / marker
layers of different sources are refused.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

_NUCLEI_WORDS = {"dapi", "hoechst", "dna", "w1", "nuclei", "nucleus", "nuc", "h33342",
                 "draq5", "nuclear"}
_NUCLEI_PREFIXES = ("nucle", "hoechst", "dapi")
_MARKER_WORDS = {"er", "era", "erα", "eralpha", "esr", "esr1", "w2", "marker", "alpha"}
_MARKER_PREFIXES = ("esr", "erα", "er-α")
_DYE_RE = re.compile(r"^(af|alexa|alexafluor|cf|atto|dy)?\d{3}$|^(fitc|tritc|cy[2357]|gfp|"
                     r"mcherry|texasred|ch\d+|c\d+)$")
_SPLIT = re.compile(r"([\s_\-.]+)")


def _tokens(name: str) -> list[str]:
    return [t for t in _SPLIT.split(name) if t and not _SPLIT.fullmatch(t)]


def channel_role(name: str) -> str | None:
    """``"nuclei"``, ``"marker"`` or None for a layer / channel name.

    Examples
    --------
    >>> [channel_role(n) for n in ("DAPI", "ESR1 AF488", "A01_s1_w2", "ERα", "Hoechst 33342",
    ...                            "brightfield", "ERa", "er", "nuclei")]
    ['nuclei', 'marker', 'marker', 'marker', 'nuclei', None, 'marker', 'marker', 'nuclei']
    """
    toks = [t.lower() for t in _tokens(name)]
    if any(t in _NUCLEI_WORDS or t.startswith(_NUCLEI_PREFIXES) for t in toks):
        return "nuclei"
    if any(t in _MARKER_WORDS or t.startswith(_MARKER_PREFIXES) for t in toks):
        return "marker"
    return None


def strip_channel_words(name: str) -> str:
    """The layer name without channel (DAPI, ER, w1 …) and dye (AF488 …) words.

    Examples
    --------
    >>> strip_channel_words("A01_s1_w1"), strip_channel_words("ESR1 AF488"), strip_channel_words("DAPI")
    ('A01_s1', '', '')
    """
    parts = _SPLIT.split(name)
    keep: list[str] = []
    for part in parts:
        if not part:
            continue
        if _SPLIT.fullmatch(part):
            keep.append(part)
            continue
        low = part.lower()
        if channel_role(part) is not None or _DYE_RE.match(low):
            if keep and _SPLIT.fullmatch(keep[-1]):
                keep.pop()
            continue
        keep.append(part)
    return "".join(keep).strip(" _-.")


def guess_channels(layers: list[Any]) -> tuple[Any, Any]:
    """(nuclei layer, marker layer) guessed from names; None where no name says so."""
    nuclei = next((lay for lay in layers if channel_role(lay.name) == "nuclei"), None)
    marker = next((lay for lay in layers
                   if lay is not nuclei and channel_role(lay.name) == "marker"), None)
    return nuclei, marker


def plane_index(layer: Any, viewer: Any = None) -> tuple[int, ...]:
    """Index of the plane of *layer* the viewer shows (its leading axes)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    lead = data.ndim - 2 - (1 if getattr(layer, "rgb", False) else 0)
    if lead <= 0:
        return ()
    if viewer is None:
        return (0,) * lead
    pos = np.asarray(layer.world_to_data(viewer.dims.point))[:lead]
    return tuple(int(np.clip(round(p), 0, n - 1)) for p, n in zip(pos, data.shape[:lead],
                                                                   strict=True))


def source_of(layer: Any, viewer: Any = None) -> str:
    """Name of the field *layer* shows (for a stack: of its current plane)."""
    md = layer.metadata or {}
    idx = plane_index(layer, viewer)
    fields = md.get("fields")
    if fields is not None and len(idx) == 1 and idx[0] < len(fields):
        return str(fields[idx[0]])
    base = md.get("source") or strip_channel_words(layer.name) or layer.name
    if idx:
        return f"{base} [{','.join(map(str, idx))}]"
    return str(base)


def check_same_field(nuclei: Any, marker: Any, viewer: Any = None) -> None:
    """ValueError unless the two layers show the same field (same source when both
    name one, same pixel grid, same plane)."""
    if marker is None:
        return
    md_n, md_m = nuclei.metadata or {}, marker.metadata or {}
    if md_n.get("source") and md_m.get("source"):
        a, b = source_of(nuclei, viewer), source_of(marker, viewer)
    else:
        a, b = strip_channel_words(nuclei.name), strip_channel_words(marker.name)
        if not (a and b):
            a = b = ""
    if a != b:
        raise ValueError(f"nuclei layer {nuclei.name!r} ({a}) and ERα layer {marker.name!r} "
                         f"({b}) belong to different fields; choose layers of one field")
    if (not np.allclose(nuclei.scale[-2:], marker.scale[-2:])
            or not np.allclose(nuclei.translate[-2:], marker.translate[-2:])):
        raise ValueError(f"nuclei layer {nuclei.name!r} and ERα layer {marker.name!r} are not "
                         "on the same pixel grid (scale / translate differ)")
