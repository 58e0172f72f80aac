"""User-level DP: users sampled whole, the per-step cap, one clipped gradient per user, and one
shared vote per user in the histogram (L2 sensitivity 1 when a whole user is added or removed)."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from dpinstruct.io.errors import ConfigError
from dpinstruct.io.settings.privacy import Randomness, UserLevel
from dpinstruct.privacy import user_level as U
from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.training import dp_adam as D
from tests.training.test_dp_adam import TEXTS, batch_of, lora, per_example_grads  # noqa: F401  (fixture)


def keyed(purpose):
    return DPRandom.for_purpose(purpose, "user-level-test", privacy=Randomness(secure_mode=False))


def synthetic_users(n_users=40, seed=0):
    """Users with 1 to 12 records each; a few rows without a user (each its own unit)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 13, size=n_users)
    users = np.repeat([f"u{i}" for i in range(n_users)], sizes).astype(object)
    users[rng.choice(len(users), 5, replace=False)] = None
    ids = [f"r{i}" for i in range(len(users))]
    return users, ids


def test_units_group_rows_by_user_and_rows_without_one_stand_alone():
    users, ids = synthetic_users()
    units = U.unit_index(users, ids)
    frame = pd.DataFrame({"user": users, "unit": units})
    assert frame.dropna().groupby("user").unit.nunique().eq(1).all()
    assert frame[frame.user.isna()].unit.is_unique
    assert units.max() + 1 == frame.user.nunique() + frame.user.isna().sum()
    assert U.units(users, ids, False) is None
    assert (U.units(users, ids, True) == units).all()


@pytest.mark.parametrize("value", [None, "yes", 1])
def test_the_unit_is_a_param_never_inferred(value):
    with pytest.raises(ConfigError, match=rf"user_level\.enabled: must be true or false, got {value!r}"):
        UserLevel.read({"user_level": {"enabled": value}}, "enabled")


def test_users_are_sampled_whole_at_rate_q_and_capped():
    users, ids = synthetic_users(200)
    units = U.unit_index(users, ids)
    n_units, q, cap = units.max() + 1, 0.2, 3
    random, per_unit, picked = keyed("poisson"), np.bincount(units), np.zeros(n_units)
    for _ in range(200):
        rows = U.sample_users(random, units, n_units, q, cap)
        got = np.bincount(units[rows], minlength=n_units)
        assert (got <= np.minimum(per_unit, cap)).all()
        sampled = got > 0
        assert (got[sampled] == np.minimum(per_unit, cap)[sampled]).all()  # a sampled user contributes its capped share
        assert len(np.unique(rows)) == len(rows)
        picked += sampled
    assert abs(picked.mean() / 200 - q) < 0.02  # each user with probability q, whatever its size
    assert abs(picked[per_unit >= 10].mean() - picked[per_unit == 1].mean()) / 200 < 0.05


def test_capped_rows_are_a_random_subset_not_always_the_first():
    units = np.zeros(10, dtype=np.int64)  # one user with 10 records
    random = keyed("poisson")
    seen = {tuple(sorted(U.sample_users(random, units, 1, 1.0, 2))) for _ in range(50)}
    assert len(seen) > 10


def test_micro_batches_keep_each_user_together_within_the_budget():
    users, ids = synthetic_users(30)
    units = U.unit_index(users, ids)
    lengths = np.random.default_rng(1).integers(5, 60, size=len(units))
    rows = U.sample_users(keyed("poisson"), units, units.max() + 1, 0.5, 8)
    batches = U.micro_batches_by_unit(rows, units, lengths, 256)
    assert sorted(np.concatenate(batches).tolist()) == sorted(rows.tolist())
    owner = {}
    for i, b in enumerate(batches):
        for u in units[b]:
            assert owner.setdefault(u, i) == i  # never split across micro-batches
        alone = len(np.unique(units[b])) == 1
        assert alone or len(b) * lengths[b].max() <= 256


def test_each_user_spreads_one_vote_so_removing_a_user_moves_counts_by_at_most_one():
    rng = np.random.default_rng(0)
    users, ids = synthetic_users(50)
    units = U.unit_index(users, ids)
    labels = rng.integers(0, 6, size=len(units))
    full = U.user_votes(labels, units, 6)
    assert full.sum() == pytest.approx(units.max() + 1)
    for u in range(units.max() + 1):
        keep = units != u
        without = U.user_votes(labels[keep], U.unit_index(users[keep], np.array(ids)[keep]), 6)
        assert np.linalg.norm(full - without) <= 1 + 1e-9
    # record-level counting would move by up to the user's record count
    big = np.bincount(units).argmax()
    assert np.linalg.norm(np.bincount(labels, minlength=6) - np.bincount(labels[units != big], minlength=6)) > 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, "8", True, None])
def test_max_records_per_user_must_be_a_positive_integer(bad):
    with pytest.raises(ConfigError, match=r"user_level\.max_records_per_user: must be an integer >= 1"):
        UserLevel.read({"user_level": {"max_records_per_user": bad}}, "max_records_per_user")


def test_a_users_records_are_averaged_then_clipped_as_one_gradient(lora):  # noqa: F811  (the fixture)
    # user 0 has two records, user 1 one: the step must be clip(mean(g0, g1)) + clip(g2), divided
    # by the expected batch; clipping each record alone would give a different sum.
    model, tokenizer = lora
    texts = TEXTS[:3]
    singles = per_example_grads(copy.deepcopy(model), tokenizer, texts)
    user0 = singles[:2].mean(0)
    clip = float(min(user0.norm(), singles[2].norm())) / 2  # both users above C

    def clipped(g):
        return g * min(1.0, clip / float(g.norm()))

    want = (clipped(user0) + clipped(singles[2])) / 4.0
    per_record = (clipped(singles[0]) + clipped(singles[1]) + clipped(singles[2])) / 4.0
    dp = D.DPAdam(copy.deepcopy(model), lr=1e-3, noise_multiplier=0.0, clip_norm=clip, expected_batch_size=4.0,
                  noise=keyed("noise"))
    seen = []
    dp.optimizer.attach_step_hook(lambda o: seen.append(torch.cat([p.grad.flatten() for p in o.params])))
    batch = dict(batch_of(tokenizer, texts), unit=torch.tensor([0, 0, 1]))
    assert dp.step([batch]).batch_size == 2  # two users, not three records
    assert (seen[0] - want).norm() / want.norm() < 1e-3
    assert (seen[0] - per_record).norm() / per_record.norm() > 1e-2


def test_a_user_named_like_a_row_is_not_that_rows_unit():
    # a user id "row:x1" and the user-less row of id x1 are two units: adding the user must add a
    # unit, not grow an existing one (that would double the sensitivity)
    from dpinstruct.privacy.user_level import unit_index

    units = unit_index(["row:x1", None, "u", "u"], ["y", "x1", "z1", "z2"])
    assert len(set(units)) == 3 and units[0] != units[1] and units[2] == units[3]
