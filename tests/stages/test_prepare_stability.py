"""`prepare` end to end on D and D+x: the train split changes by x's own rows only.

D is a slice of the shipped private file with one row taken out; x is, in turn, that row put back,
an exact duplicate of another row placed first, a near-duplicate (shares a word 10-gram) placed
first, a row whose id sorts first, and, on a user-level copy of the file, a new user and a row of an
existing user. Before the split and dedup were made stable, the same experiment on the whole file
changed 793, 68 and 70 of 3,828 train rows for the first three; ``test_on_the_whole_shipped_file``
(``pytest -m benchmark``) measures it on the whole file again.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from dpinstruct.io.artifacts import Outputs
from stages import prepare as stage

SHIPPED = Path(__file__).resolve().parents[2] / "data/raw/chatbot_arena/instructions.jsonl"
ROWS = 600


def shipped_rows(n: int | None = ROWS) -> list[dict]:
    lines = SHIPPED.read_text().splitlines()
    return [json.loads(line) for line in (lines if n is None else lines[:n])]


def train_multiset(project, rows: list[dict], name: str) -> Counter:
    path = project.root / f"data/private/{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    project.params["data"]["private_path"] = str(path.relative_to(project.root))
    project.save()
    with Outputs() as out:
        stage.prepare(project.params, out)
    train = pd.read_parquet(project.root / stage.OUT["train"])
    return Counter(zip(train.user_id.fillna(""), train.instruction))


def changed_train_rows(before: Counter, after: Counter) -> int:
    return sum(((before - after) + (after - before)).values())


def neighbours(rows: list[dict], removed: int) -> dict[str, list[dict]]:
    """D + x for each kind of x; D = rows without ``rows[removed]``."""
    d = rows[:removed] + rows[removed + 1:]
    other = next(r for r in d if len(r["instruction"].split()) >= 12)
    words = other["instruction"].split()
    return {
        "removed_row_put_back": rows,
        "exact_duplicate_first": [{**other, "id": "dup-first"}] + d,
        "near_duplicate_first": [{"id": "near-first", "instruction": " ".join(words[:11]) + " and explain why"}] + d,
        "row_whose_id_sorts_first": d + [{"id": "!first", "instruction": "Write a haiku about a quiet harbour"}],
    }


def test_adding_one_row_changes_the_train_split_by_that_row_only(project):
    rows = shipped_rows()
    base = train_multiset(project, rows[:7] + rows[8:], "d")
    for kind, d_plus_x in neighbours(rows, 7).items():
        changed = changed_train_rows(base, train_multiset(project, d_plus_x, kind))
        assert changed <= 1, f"{kind}: {changed} train rows changed"


def test_adding_one_user_changes_that_users_rows_only(project):
    rows = [{**r, "user_id": f"user{i % 97}"} for i, r in enumerate(shipped_rows())]
    project.params["user_level"]["enabled"] = True
    base = train_multiset(project, rows, "users")
    new_user = [{"id": f"new{i}", "user_id": "user-new", "instruction": f"Plan a {w} trip for a family of four"}
                for i, w in enumerate(("two-day", "week-long", "rainy"))]
    existing = [{"id": "extra", "user_id": "user5", "instruction": "Summarise the plot of Hamlet in two lines"}]
    for kind, x in (("new_user", new_user), ("row_of_an_existing_user", existing)):
        after = train_multiset(project, x + rows, kind)
        changed = (base - after) + (after - base)
        assert {user for user, _ in changed} <= {x[0]["user_id"]}, f"{kind}: rows of other users changed"


def test_the_old_split_fails_this_check(project, monkeypatch):
    """The check has power: a seeded permutation that fills fixed sizes (the old split) moves many
    rows when one row is put back."""
    import numpy as np

    from dpinstruct.text import splits

    def permutation_split(df, *, seed, test_share, val_share, path):
        order = np.random.default_rng(seed).permutation(len(df))
        n_test, n_val = 50, 25
        label = np.array(["train"] * len(df), dtype=object)
        label[order[:n_test]], label[order[n_test:n_test + n_val]] = "test", "val"
        return {s: df[label == s].drop(columns="unit").reset_index(drop=True) for s in splits.SPLITS}

    monkeypatch.setattr(stage, "split", permutation_split)
    rows = shipped_rows()
    before = train_multiset(project, rows[:7] + rows[8:], "old-d")
    after = train_multiset(project, rows, "old-dx")
    assert changed_train_rows(before, after) > 10


@pytest.mark.benchmark
def test_on_the_whole_shipped_file(project):
    """The figures of the closing note: every kind of x on the whole shipped file (pytest -m benchmark)."""
    rows = shipped_rows(None)
    base = train_multiset(project, rows[:7] + rows[8:], "d")
    report = {kind: changed_train_rows(base, train_multiset(project, dx, kind))
              for kind, dx in neighbours(rows, 7).items()}
    print("train rows changed by D+x:", report, "train rows of D:", sum(base.values()))
    assert max(report.values()) <= 1
