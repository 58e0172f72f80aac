"""User-level DP for the release: the privacy unit is a user, not an instruction.

Used when the param ``user_level.enabled`` is true (rows without a ``user_id`` are then their own
user, as in the splits). The mode is a PARAM, never read off the data: were it decided by whether any
row names a user, one added row would switch the mechanism (and the published neighbouring
relation). With ``enabled: false`` the ``user_id`` column is ignored from ``prepare`` on (record-level
DP: every row is a unit, whatever user wrote it). Neighbouring relation: add or remove ONE USER with all of their instructions
(``NEIGHBOURING``). The mechanisms change as follows, so that each sensitivity bound holds per user:

* DP-Adam (Algorithm 1): each step Poisson-samples USERS, each independently with probability q. Of a
  sampled user, at most ``max_records_per_user`` records take part, drawn uniformly without
  replacement from the same secret stream (the cap bounds the work of one step, not the privacy:
  clipping does that). The user's records are averaged into ONE gradient
  (``dpinstruct.training.dp_adam.group_by_unit``), which opacus clips to C: adding or removing a user moves the summed
  gradient by at most C. The event is the same PoissonSampled(q, Gaussian(sigma)) per step, over users.
* Histogram (Algorithm 2): a user with n records spreads ONE vote over the clusters, 1/n per record
  (``user_votes``). The user's vote vector has L1 norm 1, so its L2 norm is at most 1: adding or
  removing a user changes the counts by at most 1 in L2, the record-level sensitivity.
* delta must be below 1/(number of users); q, T, sigma stay params, so the ledger publishes neither
  the number of users nor of records.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dpinstruct.privacy.randomness import DPRandom

NEIGHBOURING = "add_or_remove_one_user"


def units(user_ids, ids, by_user: bool) -> np.ndarray | None:
    """``unit_index`` under user-level DP (``by_user``: the param ``user_level.enabled``, checked by
    ``dpinstruct.io.settings.privacy.UserLevel``), None (every row its own unit) under record-level DP."""
    return unit_index(user_ids, ids) if by_user else None


def neighbouring(by_user: bool, record_level: str) -> str:
    return NEIGHBOURING if by_user else record_level


def unit_index(user_ids, ids) -> np.ndarray:
    """A dense int per row: rows sharing a user_id share a unit; a row without one is its own."""
    users = pd.Series(user_ids, dtype=object)
    # prefixed both ways: a user named "row:x1" must never share a unit with the row of id x1
    key = ("user:" + users.astype(str)).where(users.notna(), "row:" + pd.Series(ids, dtype=object).astype(str))
    return pd.factorize(key, sort=True)[0].astype(np.int64)


def sample_users(random: DPRandom, units: np.ndarray, n_units: int, q: float, cap: int) -> np.ndarray:
    """Row indices of one step: every unit included with probability q, then at most ``cap`` of an
    included unit's rows, uniformly without replacement; rows of one unit are adjacent."""
    included = np.flatnonzero(random.bernoulli(n_units, q))
    if not len(included):
        return np.zeros(0, dtype=np.int64)
    rows = np.flatnonzero(np.isin(units, included))
    keys = random.uniform(len(rows))  # a random order of each unit's rows
    order = np.lexsort((keys, units[rows]))
    rows, unit_of = rows[order], units[rows[order]]
    rank = np.arange(len(rows)) - np.searchsorted(unit_of, unit_of, side="left")
    return rows[rank < cap]


def micro_batches_by_unit(rows: np.ndarray, units: np.ndarray, lengths: np.ndarray,
                          token_budget: int) -> list[np.ndarray]:
    """Pack sampled rows into micro-batches (rows x longest <= budget) keeping each unit's rows in
    one micro-batch, since a unit's gradient is formed within one; a unit larger than the budget
    gets a micro-batch of its own."""
    groups = [rows[units[rows] == u] for u in pd.unique(units[rows])]
    groups.sort(key=lambda g: -int(lengths[g].max()))  # longest first, as the record-level packer
    batches, current, filled = [], [], 0
    for g in groups:
        # groups come longest first, so the first group of a micro-batch sets its width
        if current and (filled + len(g)) * int(lengths[current[0]].max()) > token_budget:
            batches.append(np.concatenate(current))
            current, filled = [], 0
        current.append(g)
        filled += len(g)
    if current:
        batches.append(np.concatenate(current))
    return batches


def user_votes(labels: np.ndarray, units: np.ndarray, k: int) -> np.ndarray:
    """Cluster counts where each unit's records share one vote: weight 1/n_unit each. Private."""
    per_unit = np.bincount(units)
    return np.bincount(labels, weights=1.0 / per_unit[units], minlength=k).astype(np.float64)
