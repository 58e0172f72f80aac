"""Algorithm 2's resampling: quotas from the noisy shares, draws without replacement."""
from __future__ import annotations

import numpy as np

from dpinstruct.embeddings import resampling


def test_quotas_are_floors_of_the_noisy_shares():
    noisy = np.array([0.0, 10.0, 30.0, 60.0])
    assert resampling.quotas(noisy, 55).tolist() == [0, 5, 16, 33]
    assert resampling.quotas(np.zeros(3), 100).tolist() == [0, 0, 0]


def test_draw_is_without_replacement_and_takes_all_of_a_short_cluster():
    members = {0: np.arange(0, 10), 1: np.arange(10, 13), 2: np.arange(13, 40)}
    rows, got = resampling.draw(members, np.array([4, 7, 0]), np.random.default_rng(0))
    assert got.tolist() == [4, 3, 0] and len(rows) == len(set(rows)) == 7
    assert set(rows[4:]) == {10, 11, 12} and set(rows[:4]) <= set(range(10))


def test_members_lists_each_bucket_in_ascending_row_order():
    by_bucket = resampling.members(np.array([2, 0, 2, 1, 0]))
    assert {k: v.tolist() for k, v in by_bucket.items()} == {0: [1, 4], 1: [3], 2: [0, 2]}
