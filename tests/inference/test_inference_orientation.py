"""Issue 23 class 6 at the reader and gate: Patient Orientation turns a film stored sideways or
upside down upright (the same pixels as the upright film); a film whose header is silent is
checked from its pixels and refused (not_upright) only when clearly turned. Through ``predict``
and the node: tests/reliability/test_reliability_film_faults.py; the measured confusion on
validation films: bench/orientation.py."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom import Dataset
from support.film_faults import nih_film, turned

from cxr_triage.contract.result import NotAssessable
from cxr_triage.contract.result import NotAssessableReason as R
from cxr_triage.inference import gate
from cxr_triage.inference.orientation import header_turn, pixel_turn
from cxr_triage.inference.reader import read_film


def _orientation(value) -> Dataset:
    ds = Dataset()
    if value is not None:
        ds.PatientOrientation = value
    return ds


@pytest.mark.parametrize("value,k", [(["L", "F"], 0), (["R", "F"], 0), (["H", "L"], 1), (["H", "R"], 1),
                                     (["R", "H"], 2), (["L", "H"], 2), (["F", "R"], 3), (["F", "L"], 3),
                                     (["LF", "FR"], 0), ("H\\L", 1), (["l", "f"], 0)])
def test_header_turn(value, k):
    assert header_turn(_orientation(value)) == k


@pytest.mark.parametrize("value", [None, "", ["A", "F"], ["P", "F"], ["L", "L"], ["L"], ["X", "F"],
                                   ["L", "R"]])
def test_header_silent_or_not_frontal(value):
    assert header_turn(_orientation(value)) is None


@pytest.fixture(scope="module")
def pngs(shared_data):
    return [nih_film(shared_data, i) for i in range(3)]


@pytest.mark.parametrize("k,orientation", [(-1, ["H", "L"]), (1, ["F", "R"]), (2, ["R", "H"])])
def test_the_reader_turns_the_film_upright(pngs, k, orientation):
    for png in pngs:
        upright = read_film(turned(png, 0, orientation=["L", "F"]))
        film = read_film(turned(png, k, orientation=orientation))
        np.testing.assert_array_equal(film.pixels, upright.pixels)
        gate.check_film(film)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("mirror", [False, True])
def test_silent_turned_films_are_refused(pngs, k, mirror):
    for png in pngs:
        film = read_film(turned(png, k, mirror=mirror))
        assert pixel_turn(film.pixels) == (4 - k) % 4
        with pytest.raises(NotAssessable) as err:
            gate.check_film(film)
        assert err.value.reason is R.NOT_UPRIGHT and "Patient Orientation" in err.value.detail


def test_silent_upright_and_mirrored_films_are_read(pngs):
    for png in pngs:
        for mirror in (False, True):
            gate.check_film(read_film(turned(png, 0, mirror=mirror)))
