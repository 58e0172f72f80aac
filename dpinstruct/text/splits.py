"""Stable splits and partitions: a unit goes to a part by a seeded hash of its key ALONE.

Why not a seeded permutation that fills fixed sizes (what this module did before): adding one row
to the file shifts every later unit of that permutation into another split (793 of 3,828 train rows
changed on the shipped file), so "add or remove one instruction" would hold for the train split,
not for the data owner's file. With a hash, a unit's part depends on nothing but its own key and
the (public) seed, so adding or removing a unit moves that unit's rows and no other: the split is
*1-stable* (the privacy package docstring, ``dpinstruct.privacy``). Shares are expected fractions,
never counts: a count would need N, which is private.

The key of a unit is its ``user_id`` when the row has one (all of a user's rows land together),
else the row's dedup key (its normalised text, ``filters.dedup_key``): NOT its id, since an id a
reader generated from a line number shifts when a row is inserted above it.
"""
from __future__ import annotations

import hashlib

import pandas as pd

from dpinstruct.io.errors import InputError

SPLITS = ("train", "val", "test")


def unit_interval(key: str, seed: int) -> float:
    """A uniform draw in [0, 1) fixed by (seed, key) alone: sha256 of both, first 8 bytes."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def partition_of(key: str, seed: int, shares: dict[str, float]) -> str:
    """The part of a unit: cumulative ``shares`` (summing to 1) cut [0, 1); by its key alone."""
    u, edge = unit_interval(key, seed), 0.0
    for name, share in shares.items():
        edge += share
        if u < edge:
            return name
    return list(shares)[-1]  # u within rounding of 1


def split_shares(test_share: float, val_share: float) -> dict[str, float]:
    return {"test": test_share, "val": val_share, "train": 1.0 - test_share - val_share}


def split(df: pd.DataFrame, *, seed: int, test_share: float, val_share: float, path) -> dict[str, pd.DataFrame]:
    """{"train", "val", "test"} -> rows, by ``partition_of(df.unit, ...)``; rows keep their order.
    ``df`` has a ``unit`` column (``cleaning.unit_keys``). Raises InputError naming ``path`` when a
    split comes out empty (the file is too small for the shares)."""
    shares = split_shares(test_share, val_share)
    label = df.unit.map(lambda u: partition_of(u, seed, shares))
    parts = {s: df[label == s].drop(columns="unit").reset_index(drop=True) for s in SPLITS}
    empty = [s for s in SPLITS if parts[s].empty]
    if empty:
        raise InputError(path, f"only {len(df)} instructions after filtering: the {empty} split(s) came out empty "
                               f"at shares {shares}")
    return parts
