"""Resumable work in chunks: each finished chunk is one Parquet file named by the run's key.

A stage that produces its output chunk by chunk saves every finished chunk here; after a kill,
the same run (same key: params and input digests) finds them and skips that work. Files of any
other key are deleted on open, so a changed run never mixes in another run's chunks. A chunk file
is written under a temporary name and renamed, so it exists whole or not at all.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


class ChunkStore:
    def __init__(self, directory: Path | str, run_key: str):
        self.directory, self.run_key = Path(directory), run_key
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("*.parquet"):
            if not stale.name.startswith(f"{run_key}-"):
                stale.unlink()

    def path(self, chunk: int) -> Path:
        return self.directory / f"{self.run_key}-{chunk:05d}.parquet"

    def done(self, n_chunks: int) -> set[int]:
        return {c for c in range(n_chunks) if self.path(c).exists()}

    def save(self, chunk: int, table: pa.Table) -> None:
        tmp = self.path(chunk).with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.rename(self.path(chunk))

    def load(self, chunk: int) -> pa.Table:
        return pq.read_table(self.path(chunk))
