"""Catalog spec files and the selection cuts."""

from __future__ import annotations

import nested_pandas as npd
import numpy as np
import pytest
from hats.catalog import TableProperties
from hats.search.region_search import cone_filter

from galmock.errors import InputError
from galmock.selection import (
    SelectionSpec,
    cone_mask,
    find_catalog_spec,
    load_catalog_spec,
    selection_mask,
)


def test_the_papers_window_loads_by_name():
    spec = load_catalog_spec("galaxyflow-window")
    assert spec.name == "galaxyflow-window"
    assert spec.selection.cone is not None and spec.selection.cone.radius_deg == 15.0
    assert spec.selection.max_distance_kpc == 3.5
    assert spec.selection.columns == ("ra", "dec", "distance")


def test_bad_specs_name_file_key_value_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("selection:\n  cone:\n    ra_deg: 10\n    dec_deg: 0\n    radius_deg: -1\n")
    with pytest.raises(InputError) as err:
        load_catalog_spec(str(path))
    assert f"{path}: invalid catalog spec" in str(err.value)
    expected = "selection.cone.radius_deg = -1 (line 5): Input should be greater than 0"
    assert expected in str(err.value)

    path.write_text("selection:\n  max_distance_kpc: 3\n  colour: red\n")
    with pytest.raises(InputError, match=r"selection.colour = 'red' \(line 3\): unknown key"):
        load_catalog_spec(str(path))

    path.write_text("selection:\n  min_distance_kpc: 3\n  max_distance_kpc: 1\n")
    with pytest.raises(InputError, match=r"min_distance_kpc \(3\.0\) must be below"):
        load_catalog_spec(str(path))

    path.write_text("name: bad name\nselection: {max_distance_kpc: 1}\n")
    with pytest.raises(InputError, match="name = 'bad name'"):
        load_catalog_spec(str(path))

    with pytest.raises(InputError, match=r"catalog spec 'nope' not found \(looked for .*nope.yaml"):
        find_catalog_spec("nope")


def test_cone_matches_hats_cone_filter_bit_for_bit():
    rng = np.random.default_rng(3)
    n = 200_000
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    frame = npd.NestedFrame({"ra": ra, "dec": dec, "i": np.arange(n)})
    meta = TableProperties(
        catalog_name="t", catalog_type="object", ra_column="ra", dec_column="dec"
    )
    for ra0, dec0, radius in [(167.47, -4.2, 15.0), (359.0, 89.0, 3.3), (0.5, -30.0, 0.7)]:
        ours = np.nonzero(cone_mask(ra, dec, ra0, dec0, radius))[0]
        theirs = cone_filter(frame, ra0, dec0, radius * 3600, meta)["i"].to_numpy()
        assert len(ours) > 0
        np.testing.assert_array_equal(ours, theirs)


def test_distance_cuts_are_half_open():
    spec = SelectionSpec(min_distance_kpc=1.0, max_distance_kpc=2.0)
    d = np.array([0.5, 1.0, 1.5, 2.0])
    assert selection_mask(spec, {"distance": d}).tolist() == [False, True, True, False]
