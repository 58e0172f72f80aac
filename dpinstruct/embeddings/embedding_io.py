"""Embedding tables: Parquet with ``id`` and ``embedding`` (fixed-size list of float32).

The fixed size is the embedder's dimension; the table's metadata names the embedder, so a
consumer can refuse to compare embeddings from two different models.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dpinstruct.io.errors import InputError


def schema(dim: int) -> pa.Schema:
    return pa.schema([pa.field("id", pa.string(), nullable=False),
                      pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False)])


def to_table(ids: list[str], vectors: np.ndarray) -> pa.Table:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.table({"id": pa.array(ids, pa.string()),
                     "embedding": pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])}, schema=schema(vectors.shape[1]))


def read(path: Path | str) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(path)
    if "embedding" not in table.schema.names or not pa.types.is_fixed_size_list(table.schema.field("embedding").type):
        raise InputError(path, "not an embedding table (needs a fixed-size list column 'embedding')", field="embedding")
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    vectors = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    return table.column("id").to_pylist(), vectors
