"""1-stability of the private preprocessing (clean + split), property-tested with hypothesis.

The privacy guarantee is about the RAW private file: for any file D and any unit x (one row, or one
user with their rows), the train split of D+x must differ from that of D by x's own rows only, so
that the DP mechanisms downstream see neighbouring inputs. Each example writes D and D+x as JSONL,
runs the same cleaning and split the `prepare` stage runs (real tokenizer), and compares the train
splits as multisets. The adversarial x are those a review found to move many rows under the old
rules: an exact duplicate, a near-duplicate (shares a word 10-gram), a row placed first in the
file, a row whose id sorts first, a new user, a row of an existing user.
"""
from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpinstruct.io.settings.data import Cleaning
from dpinstruct.models.loading import load_tokenizer
from dpinstruct.text.cleaning import clean
from dpinstruct.text.splits import partition_of, split_shares

CFG = Cleaning(min_tokens=2, max_tokens=128, dedup_casefold=True, ngram_dedup_n=10)
WORDS = ["alpha", "beta", "gamma", "delta", "omega", "write", "poem", "code", "about", "the", "cat", "sea"]


@pytest.fixture(scope="module")
def tokenizer(generator_dir):
    return load_tokenizer(generator_dir)


def train_split(rows: list[dict], tokenizer, tmp_path, name: str, users: bool = True) -> Counter:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df, _ = clean(path, tokenizer, CFG, per_unit=True, users=users)
    # split()'s own rule, without its refusal of an empty split (tiny files here)
    train = df[df.unit.map(lambda u: partition_of(u, 0, split_shares(0.2, 0.1))) == "train"]
    return Counter(zip(train.user_id.fillna(""), train.instruction))


def unit_of(row: dict) -> str:
    return row.get("user_id") or ""


LONG = " ".join(WORDS)  # 12 words: two texts that both hold it share word 10-grams
short_texts = st.lists(st.sampled_from(WORDS), min_size=3, max_size=14).map(" ".join)
texts = st.one_of(short_texts, short_texts.map(lambda t: LONG + " " + t))
users = st.one_of(st.none(), st.sampled_from(["u1", "u2", "u3", "u4"]))


@st.composite
def files(draw):
    n = draw(st.integers(min_value=8, max_value=30))
    with_users = draw(st.booleans())
    rows = [{"id": f"r{i:03d}", "instruction": draw(texts), **({"user_id": draw(users)} if with_users else {})}
            for i in range(n)]
    return rows


@st.composite
def neighbour(draw, rows: list[dict]):
    """x (one row; a unit of its own or a row of an existing user) and where it goes in the file."""
    other = draw(st.sampled_from(rows))
    kind = draw(st.sampled_from(["duplicate", "near_duplicate", "new", "existing_user", "new_user"]))
    text = {"duplicate": other["instruction"], "near_duplicate": LONG + " zeta " + draw(short_texts),
            "new": draw(texts) + " zeta", "existing_user": draw(texts), "new_user": draw(texts)}[kind]
    x = {"id": draw(st.sampled_from(["000-first", "zzz-last", "r5000"])), "instruction": text}
    if kind == "existing_user" and other.get("user_id"):
        x["user_id"] = other["user_id"]
    elif kind == "new_user" and any("user_id" in r for r in rows):
        x["user_id"] = "u-new"
    at = draw(st.sampled_from([0, 0, len(rows) // 2, len(rows)]))
    return x, at


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_adding_one_unit_changes_the_train_split_by_that_units_rows_only(data, tokenizer, tmp_path):
    rows = data.draw(files())
    x, at = data.draw(neighbour(rows))
    users = data.draw(st.booleans())  # user_level.enabled
    with_x = rows[:at] + [x] + rows[at:]
    before = train_split(rows, tokenizer, tmp_path, "d", users)
    after = train_split(with_x, tokenizer, tmp_path, "dx", users)
    changed = (before - after) + (after - before)
    if users and unit_of(x):  # user-level: only the rows of x's user may change
        assert all(user == unit_of(x) for user, _ in changed), (x, changed)
    else:  # a row without a user is its own unit: at most that row appears or disappears
        assert sum(changed.values()) <= 1, (x, changed)
        assert all(user == "" for user, _ in changed)


def test_record_level_never_groups_a_users_rows(tokenizer, tmp_path):
    """Under record-level DP (user_level.enabled false) a row is the unit even when it names a user:
    a case variant added to a user's rows must not replace the row already there (two changes).
    Grouping by user (users=True, right under user-level DP only) does replace it: the check has power."""
    base = [{"id": "b", "user_id": "u", "instruction": "Hello world, how are you"},
            {"id": "c", "user_id": "v", "instruction": "tell me a joke"}]
    x = {"id": "a", "user_id": "u", "instruction": "HELLO WORLD, HOW ARE YOU"}
    for users, most in ((False, 1), (True, 2)):
        before = kept(base, tokenizer, tmp_path, f"d{users}", users)
        after = kept(base + [x], tokenizer, tmp_path, f"dx{users}", users)
        assert sum(((before - after) + (after - before)).values()) == most, users


def test_the_old_rules_fail_this_property(tokenizer, tmp_path):
    """The property has power: the paper's cross-row n-gram dedup (kept for public files) lets one
    added near-duplicate placed first remove rows of other units."""
    rows = [{"id": f"r{i}", "instruction": " ".join(WORDS) + f" variant {i}"} for i in range(10)]
    x = {"id": "000", "instruction": " ".join(WORDS)}

    def cross_row(rs, name):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rs))
        return Counter(clean(path, tokenizer, CFG, per_unit=False)[0].instruction)

    before, after = cross_row(rows, "old-d"), cross_row([x] + rows, "old-dx")
    assert sum(((before - after) + (after - before)).values()) > 1
    stable_before = Counter(clean_rows(rows, tokenizer, tmp_path, "new-d"))
    stable_after = Counter(clean_rows([x] + rows, tokenizer, tmp_path, "new-dx"))
    assert sum(((stable_before - stable_after) + (stable_after - stable_before)).values()) == 1


def clean_rows(rows, tokenizer, tmp_path, name):
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return clean(path, tokenizer, CFG, per_unit=True)[0].instruction


def kept(rows: list[dict], tokenizer, tmp_path, name: str, users: bool = True) -> Counter:
    """Every kept row (all splits) as (user, text): what the mechanisms downstream can see."""
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    df, _ = clean(path, tokenizer, CFG, per_unit=True, users=users)
    return Counter(zip(df.user_id.fillna(""), df.instruction))


def test_ids_made_from_line_numbers_never_decide_another_units_rows(tokenizer, tmp_path):
    # no id column: the reader numbers lines, and a row added on top turns "line9" into "line10",
    # which sorts before "line2". User a's near-duplicates must keep the same survivor anyway.
    a = [{"user_id": "a", "instruction": LONG + f" variant {w}"} for w in ("one", "two")]
    filler = [{"user_id": f"f{i}", "instruction": f"filler question number {w}"} for i, w in enumerate(WORDS[:8])]
    base = filler + a
    before = kept(base, tokenizer, tmp_path, "d")
    after = kept([{"user_id": "new", "instruction": "a brand new question"}] + base, tokenizer, tmp_path, "dx")
    assert after - before == Counter({("new", "a brand new question"): 1}) and not before - after


def test_a_case_variant_without_a_user_is_its_own_unit_and_replaces_nothing(tokenizer, tmp_path):
    base = [{"id": "b", "instruction": "Hello world, how are you"}, {"id": "c", "instruction": "tell me a joke"}]
    before = kept(base, tokenizer, tmp_path, "d")
    after = kept(base + [{"id": "a", "instruction": "HELLO WORLD, HOW ARE YOU"}], tokenizer, tmp_path, "dx")
    assert after - before == Counter({("", "HELLO WORLD, HOW ARE YOU"): 1}) and not before - after
