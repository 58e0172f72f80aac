"""Seeded train / val / test splits that keep each user's rows together.

A unit is a ``user_id`` (rows without one are their own unit); units are shuffled with a public
seed (splitting is not a DP mechanism) and test, then val, then train take whole units until their
size is reached, so no user's instructions straddle two splits.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from dpinstruct.io.errors import InputError

SPLITS = ("train", "val", "test")


def split(df: pd.DataFrame, *, seed: int, test_size: int, val_size: int, train_size: int | None,
          path) -> dict[str, pd.DataFrame]:
    """{"train", "val", "test"} -> rows; ``train_size`` None = every remaining row. Raises
    InputError naming ``path`` when too few rows are left for the requested sizes."""
    unit = df.user_id.where(df.user_id.notna(), "row:" + df.id)
    units = np.array(sorted(unit.unique()))
    order = units[np.random.default_rng(seed).permutation(len(units))]
    sizes = {"test": test_size, "val": val_size, "train": train_size or len(df)}
    rows_per_unit = unit.value_counts()
    assigned, filled, current = {}, dict.fromkeys(sizes, 0), iter(("test", "val", "train"))
    name = next(current)
    for u in order:
        while name is not None and filled[name] >= sizes[name]:
            name = next(current, None)
        if name is None:
            break
        assigned[u] = name
        filled[name] += int(rows_per_unit[u])
    label = unit.map(assigned)
    parts = {s: df[label == s].reset_index(drop=True) for s in SPLITS}
    short = {s: (len(parts[s]), sizes[s]) for s in ("val", "test") if len(parts[s]) < sizes[s]}
    if short or parts["train"].empty:
        raise InputError(path, f"only {len(df)} instructions after filtering: not enough for the split sizes "
                               f"(have, want) = {short or {'train': (0, 'at least 1')}}")
    return parts
