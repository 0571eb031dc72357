"""``erquant.params``: dict / TOML round trips, dotted replace, unknown keys."""

from __future__ import annotations

import pytest

from erquant.params import Params


def _custom() -> Params:
    return Params.from_dict({
        "nuclei_name": "dapi",
        "segment": {"diameter": 18.5, "threshold": "manual", "threshold_value": 420.0,
                    "fill_holes": False},
        "cells": {"max_distance": 7.0, "use_marker": True},
        "measure": {"background": "field", "tile": 64},
        "classify": {"class_bounds": [100.0, 200.0, 400.0], "compartment": "cell"},
        "qc": {"saturation_value": 4095.0},
    })


def test_defaults():
    p = Params()
    assert p.segment.diameter is None and p.segment.threshold == "otsu"
    assert p.nuclei_name == "nuclei"


def test_from_dict_to_dict_round_trip():
    p = _custom()
    assert p.segment.diameter == 18.5 and p.cells.use_marker is True
    assert p.classify.class_bounds == (100.0, 200.0, 400.0)  # lists become tuples
    assert Params.from_dict(p.to_dict()) == p
    assert Params.from_dict(Params().to_dict()) == Params()
    assert Params.from_dict(None) == Params() == Params.from_dict({})


def test_toml_round_trip(tmp_path):
    p = _custom()
    path = tmp_path / "params.toml"
    text = p.to_toml(path)
    assert path.read_text() == text
    assert "[segment]" in text and "diameter = 18.5" in text
    q = Params.from_toml(path)
    # None values are omitted from TOML and come back as their defaults
    assert q == p
    assert q.measure.tile == 64 and q.segment.threshold_value == 420.0


@pytest.mark.parametrize("key", ["measure.tile", "measure.background"])
def test_toml_round_trip_keeps_a_non_default_none(tmp_path, key):
    # None is meaningful here (tile=None: one background for the whole field;
    # background=None: no background subtraction) and differs from the default
    p = Params().replace(**{key: None})
    path = tmp_path / "params.toml"
    p.to_toml(path)
    assert Params.from_toml(path) == p, f"{key}=None does not survive the TOML round trip"


def test_partial_toml_takes_defaults(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[segment]\ndiameter = 30\n")
    q = Params.from_toml(path)
    assert q.segment.diameter == 30
    assert q.segment.threshold == "otsu" and q.cells == Params().cells


def test_invalid_toml_raises(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[segment\ndiameter = ")
    with pytest.raises(ValueError, match="bad.toml"):
        Params.from_toml(path)


@pytest.mark.parametrize("data, name", [
    ({"segmnt": {"diameter": 3}}, "segmnt"),
    ({"segment": {"diamter": 3}}, "diamter"),
    ({"qc": {"focus": 0.1}}, "focus"),
])
def test_unknown_key_raises_naming_it(data, name):
    with pytest.raises(ValueError, match=name):
        Params.from_dict(data)


def test_replace_dotted():
    p = Params()
    q = p.replace(**{"segment.diameter": 20, "nuclei_name": "hoechst"})
    assert q.segment.diameter == 20 and q.nuclei_name == "hoechst"
    assert p.segment.diameter is None  # the original is unchanged (frozen)
    assert q.segment.threshold == p.segment.threshold and q.cells == p.cells
    with pytest.raises(ValueError, match="segment.diamter"):
        p.replace(**{"segment.diamter": 20})
    with pytest.raises(ValueError, match="nope"):
        p.replace(**{"nope.diameter": 20})


def test_params_are_frozen():
    p = Params()
    with pytest.raises(AttributeError):
        p.segment.diameter = 3  # type: ignore[misc]
