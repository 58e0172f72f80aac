"""params.yaml reading: equal values hash equally whatever their YAML spelling (`dvc exp run -S`
writes 6 where the file has 6.0), different values never."""
from __future__ import annotations

import math

import pytest

from dpinstruct.io import params as P


@pytest.mark.parametrize("a,b", [({"epsilon": 6}, {"epsilon": 6.0}), ({"epsilon": "inf"}, {"epsilon": math.inf}),
                                 ({"x": [1, 2]}, {"x": (1.0, 2.0)})])
def test_equal_values_hash_equally(a, b):
    assert P.params_hash(a) == P.params_hash(b)


@pytest.mark.parametrize("a,b", [({"epsilon": 6}, {"epsilon": 6.5}), ({"flag": True}, {"flag": 1}),
                                 ({"a": 1}, {"b": 1})])
def test_different_values_hash_differently(a, b):
    assert P.params_hash(a) != P.params_hash(b)


def test_as_float_reads_the_spellings_of_infinity():
    assert P.as_float(".inf") == P.as_float("Infinity") == P.as_float(float("inf")) == math.inf
    assert P.as_float(3) == 3.0

