"""Reading the instruction sets that ``evaluate`` compares, and its seeded samples of them."""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from dpinstruct.embeddings import embedding_io
from dpinstruct.io.errors import InputError


def load(text_path: str, embedding_path: str) -> tuple[list[str], np.ndarray]:
    """Texts and their embeddings, row-aligned by id."""
    df = pd.read_parquet(text_path, columns=["id", "instruction"])
    ids, vectors = embedding_io.read(embedding_path)
    position = pd.Series(np.arange(len(ids)), index=ids)
    if position.index.has_duplicates:  # a lookup by id would return several rows and break the alignment
        first = position.index[position.index.duplicated()][0]
        raise InputError(embedding_path, f"id {first!r} appears more than once: re-run its embed stage", field="id")
    missing = ~df.id.isin(position.index)
    if missing.any():
        raise InputError(embedding_path, f"no embedding for {int(missing.sum())} rows of {text_path} "
                                         f"(first id {df.id[missing].iloc[0]!r}): re-run its embed stage", field="id")
    return df.instruction.tolist(), vectors[position[df.id].to_numpy()]


def sample(n: int, size: int, seed: int, name: str) -> np.ndarray:
    """Seeded sample of at most `size` row indices; one generator per set, so sets do not interact."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return np.sort(rng.choice(n, size=min(n, size), replace=False))


def shares(labels: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels, minlength=k) / len(labels)
