"""params.yaml type checks: a wrong type stops a stage naming the key, never a silent coercion."""
from __future__ import annotations

import math

import pytest

from dpinstruct.io import config_checks as C
from dpinstruct.io.errors import ConfigError


def test_whole_floats_are_integers_and_everything_else_is_refused():
    assert C.integer({"n": 500.0}, "n", "s") == 500 and isinstance(C.integer({"n": 500.0}, "n", "s"), int)
    assert C.integer({"n": None}, "n", "s", nullable=True) is None
    for bad in (2.7, True, "3", None, -1):
        with pytest.raises(ConfigError, match=r"params.yaml, s.n: must be an integer >= 0"):
            C.integer({"n": bad}, "n", "s")


@pytest.mark.parametrize("bad", [math.nan, math.inf, "0.1", True, None])
def test_numbers_must_be_finite(bad):
    with pytest.raises(ConfigError, match=r"s.x: must be a finite number"):
        C.number({"x": bad}, "x", "s")


def test_booleans_paths_and_the_cleaning_rules():
    assert C.boolean({"b": False}, "b", "s") is False
    with pytest.raises(ConfigError, match="s.b: must be true or false"):
        C.boolean({"b": "false"}, "b", "s")
    with pytest.raises(ConfigError, match="s.p: must be a file path"):
        C.path({"p": "  "}, "p", "s")
    rules = {"min_tokens": 2.0, "max_tokens": 128, "dedup_casefold": True, "ngram_dedup_n": 10}
    assert C.cleaning(rules, "prepare") == {**rules, "min_tokens": 2}
    with pytest.raises(ConfigError, match=r"prepare.min_tokens: 200 exceeds prepare.max_tokens 128"):
        C.cleaning({**rules, "min_tokens": 200}, "prepare")
