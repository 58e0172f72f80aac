"""IMDb data: cleaning, the partition rule (a unit's part depends on its own key only), set semantics on the
cleaned text, and bad input. The stability of the whole private preparation: test_stability.py."""
from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpinstruct.io.errors import InputError
from dpinstruct.rl.data import check_reviews, clean_review, read_reviews, unique_reviews
from dpinstruct.text.splits import partition_of

SHARES = {"sft": 0.5, "ppo": 0.5}


def test_clean_review_turns_br_tags_into_newlines():
    assert clean_review("Great film.<br /><br />Loved  it.<br/>Really") == "Great film.\n\nLoved it.\nReally"
    assert clean_review("a<br /><br /><br /><br />b") == "a\n\nb" and clean_review(None) == ""


def test_a_units_part_depends_on_its_key_alone():
    ids = [f"train_pos_{i}" for i in range(4000)]
    parts = {i: partition_of(i, 0, SHARES) for i in ids}
    # adding or removing other records never moves a record: the rule reads one id
    assert all(partition_of(i, 0, SHARES) == parts[i] for i in ids[::7])
    share = sum(p == "sft" for p in parts.values()) / len(ids)
    assert abs(share - 0.5) < 0.03
    assert sum(partition_of(i, 1, SHARES) != parts[i] for i in ids) > 1500  # the seed reshuffles
    assert {partition_of(i, 0, {"a": 0.2, "b": 0.8}) for i in ids} == {"a", "b"}


def test_copies_of_a_review_are_one_review_kept_under_the_smallest_id():
    raw = pd.DataFrame({"id": ["b", "c", "a", "d", "b"], "label": [1, 0, 0, 1, 1],
                        "text": ["Fine<br />film", "Other", "Fine\n film ", "Fine film.", "Fine<br />film"]})
    reviews = check_reviews(raw, "mem")  # the repeated row (id b, same text) is a copy, not a clash
    unique = unique_reviews(reviews)
    assert unique.id.tolist() == ["a", "c", "d"] and unique.text.tolist() == ["Fine\nfilm", "Other", "Fine film."]
    # neither the file order nor which copy comes first matters
    assert unique_reviews(reviews.iloc[::-1]).equals(unique)


def write(path, **columns):
    pq.write_table(pa.table(columns), path)


@pytest.mark.parametrize("columns, message", [
    ({"id": ["a"], "label": [1]}, r"no \['text'\] column"),
    ({"id": ["a", "b"], "label": [1, 0], "text": ["CANARY1", None]}, r"row 2, field 'text': expected a string"),
    ({"id": ["a", "b"], "label": [1, 7], "text": ["CANARY1", "CANARY2"]}, r"row 2, field 'label': expected an integer 0 or 1"),
    ({"id": ["a", "a"], "label": [1, 0], "text": ["CANARY1", "CANARY2"]}, r"row 2, field 'id': duplicate id"),
])
def test_bad_input_names_the_file_row_and_field(tmp_path, columns, message):
    path = tmp_path / "reviews.parquet"
    write(path, **columns)
    with pytest.raises(InputError, match=message) as err:
        read_reviews(path)
    assert "CANARY" not in str(err.value)  # never the text


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "reviews.parquet"
    path.write_text("id,text\n")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        read_reviews(path)
