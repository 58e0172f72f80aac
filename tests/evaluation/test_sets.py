"""Reading the instruction sets `evaluate` compares (texts row-aligned with their embeddings by id)
and its seeded samples of them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from dpinstruct.embeddings import embedding_io
from dpinstruct.evaluation import sets
from dpinstruct.io.errors import InputError


def write_set(tmp_path, ids, texts, embedded_ids, vectors):
    text_path, embedding_path = tmp_path / "set.parquet", tmp_path / "set.emb.parquet"
    pd.DataFrame({"id": ids, "instruction": texts, "other": range(len(ids))}).to_parquet(text_path)
    pq.write_table(embedding_io.to_table(embedded_ids, np.asarray(vectors, dtype=np.float32)), embedding_path)
    return str(text_path), str(embedding_path)


def test_texts_and_embeddings_are_aligned_by_id_not_by_position(tmp_path):
    ids = ["a", "b", "c", "d"]
    # the embedding table lists the ids in another order, and one more id the text file lacks
    embedded = ["c", "zz", "a", "d", "b"]
    vectors = [[3.0, 0.0], [9.0, 9.0], [1.0, 0.0], [4.0, 0.0], [2.0, 0.0]]
    texts, got = sets.load(*write_set(tmp_path, ids, ["t-a", "t-b", "t-c", "t-d"], embedded, vectors))
    assert texts == ["t-a", "t-b", "t-c", "t-d"]  # the text file's order
    np.testing.assert_array_equal(got, np.array([[1, 0], [2, 0], [3, 0], [4, 0]], dtype=np.float32))
    assert got.dtype == np.float32 and got.shape == (4, 2)


def test_a_row_without_embedding_names_the_files_the_count_and_the_first_id(tmp_path):
    text_path, embedding_path = write_set(tmp_path, ["a", "b", "c"], ["x", "y", "z"], ["b"], [[1.0, 2.0]])
    with pytest.raises(InputError) as err:
        sets.load(text_path, embedding_path)
    message = str(err.value)
    assert message.startswith(f"{embedding_path}, field 'id': ")
    assert f"no embedding for 2 rows of {text_path} (first id 'a')" in message
    assert "re-run its embed stage" in message
    assert not any(f"'{t}'" in message for t in ("x", "y", "z"))  # ids are named, texts never


def test_a_repeated_id_in_the_embeddings_is_refused_not_misaligned(tmp_path):
    text_path, embedding_path = write_set(tmp_path, ["a", "b"], ["x", "y"], ["a", "a", "b"],
                                          [[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    with pytest.raises(InputError, match=r"field 'id': id 'a' appears more than once"):
        sets.load(text_path, embedding_path)


def test_sample_is_sorted_distinct_and_at_most_size():
    idx = sets.sample(100, 10, seed=0, name="dp")
    assert len(idx) == 10 and len(set(idx)) == 10 and (np.diff(idx) > 0).all()
    assert idx.min() >= 0 and idx.max() < 100
    # a set smaller than the sample size is taken whole
    np.testing.assert_array_equal(sets.sample(7, 10, seed=0, name="dp"), np.arange(7))


def test_sample_is_seeded_per_set_and_sets_do_not_interact():
    a = sets.sample(1000, 50, seed=3, name="dp")
    np.testing.assert_array_equal(a, sets.sample(1000, 50, seed=3, name="dp"))  # replayable
    assert not np.array_equal(a, sets.sample(1000, 50, seed=4, name="dp"))     # the seed matters
    assert not np.array_equal(a, sets.sample(1000, 50, seed=3, name="base"))   # one generator per set
    # drawing another set's sample first does not move this one (no shared generator state)
    sets.sample(1000, 50, seed=3, name="base")
    np.testing.assert_array_equal(a, sets.sample(1000, 50, seed=3, name="dp"))


def test_shares_cover_every_bucket_and_sum_to_one():
    shares = sets.shares(np.array([0, 2, 2, 2]), k=5)
    np.testing.assert_allclose(shares, [0.25, 0.0, 0.75, 0.0, 0.0])
    assert shares.sum() == pytest.approx(1.0)
