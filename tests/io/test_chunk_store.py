"""ChunkStore: a killed run resumes from its own finished chunks, never from another run's."""
from __future__ import annotations

import pyarrow as pa

from dpinstruct.io.chunk_store import ChunkStore


def table(i: int) -> pa.Table:
    return pa.table({"x": [i, i + 1]})


def test_a_run_finds_its_own_chunks_and_another_runs_are_deleted(tmp_path):
    first = ChunkStore(tmp_path, "keyA")
    first.save(0, table(0))
    first.save(2, table(2))
    again = ChunkStore(tmp_path, "keyA")
    assert again.done(3) == {0, 2} and again.load(2).equals(table(2))
    other = ChunkStore(tmp_path, "keyB")  # params or inputs changed: nothing of keyA may be mixed in
    assert other.done(3) == set() and not list(tmp_path.glob("keyA-*"))


def test_a_chunk_exists_whole_or_not_at_all(tmp_path):
    store = ChunkStore(tmp_path, "k")
    store.save(1, table(1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k-00001.parquet"]  # no temporary left behind
    (tmp_path / "k-00003.tmp").write_bytes(b"half a write")  # a kill during save: not a finished chunk
    assert ChunkStore(tmp_path, "k").done(5) == {1}
