"""Splits by a seeded hash of each unit's key: shares are met in expectation, a unit's split never
depends on the other units, and a split that comes out empty is refused by file."""
from __future__ import annotations

import pandas as pd
import pytest

from dpinstruct.io.errors import InputError
from dpinstruct.text.splits import partition_of, split, split_shares, unit_interval

SHARES = split_shares(0.1, 0.05)


def test_shares_are_met_in_expectation():
    labels = pd.Series([partition_of(f"text:{i}", 0, SHARES) for i in range(20_000)])
    freq = labels.value_counts(normalize=True)
    for name, share in SHARES.items():  # 4 standard errors of a binomial share at n = 20,000
        assert abs(freq[name] - share) < 4 * (share * (1 - share) / 20_000) ** 0.5, name


def test_a_units_split_depends_on_its_key_and_the_seed_only():
    df = pd.DataFrame({"id": [str(i) for i in range(300)], "instruction": ["t"] * 300,
                       "unit": [f"text:{i}" for i in range(300)]})
    before = split(df, seed=3, test_share=0.1, val_share=0.05, path="f.jsonl")
    more = pd.concat([df.iloc[:120], pd.DataFrame({"id": ["new"], "instruction": ["t"], "unit": ["text:new"]}),
                      df.iloc[120:]])
    after = split(more, seed=3, test_share=0.1, val_share=0.05, path="f.jsonl")
    for name in before:  # one unit added: every other unit keeps its split
        assert set(after[name].id) - {"new"} == set(before[name].id)
    other_seed = split(df, seed=4, test_share=0.1, val_share=0.05, path="f.jsonl")
    assert set(other_seed["test"].id) != set(before["test"].id)
    assert 0 <= unit_interval("text:1", 3) < 1 and unit_interval("text:1", 3) == unit_interval("text:1", 3)


def test_an_empty_split_is_refused_by_file():
    df = pd.DataFrame({"id": ["1", "2"], "instruction": ["a", "b"], "unit": ["text:a", "text:b"]})
    with pytest.raises(InputError, match=r"mine\.jsonl: only 2 instructions after filtering"):
        split(df, seed=0, test_share=0.1, val_share=0.05, path="mine.jsonl")
