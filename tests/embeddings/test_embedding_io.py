"""Embedding tables round-trip exactly (float32, ids in order) and a wrong table is refused by name."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpinstruct.embeddings import embedding_io
from dpinstruct.io.errors import InputError


def test_round_trip_keeps_ids_order_and_float32_values(tmp_path):
    vectors = np.random.default_rng(0).normal(size=(5, 7))
    ids = ["e", "a", "c", "b", "d"]
    pq.write_table(embedding_io.to_table(ids, vectors), tmp_path / "e.parquet")
    read_ids, read = embedding_io.read(tmp_path / "e.parquet")
    assert read_ids == ids and read.shape == (5, 7) and read.dtype == np.float32
    assert np.array_equal(read, vectors.astype(np.float32))


def test_a_table_without_a_fixed_size_embedding_column_is_refused(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a"], "embedding": pa.array([[1.0, 2.0]], pa.list_(pa.float32()))}), path)
    with pytest.raises(InputError, match=r"bad\.parquet.*field 'embedding'"):
        embedding_io.read(path)
