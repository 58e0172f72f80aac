"""Staged outputs: a stage's files appear together on success and not at all on failure; Parquet
carries its lineage metadata and the same table gives the same bytes."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from dpinstruct.io.artifacts import Outputs, file_digest, read_metadata, table_metadata, write_parquet

TABLE = pa.table({"id": ["a", "b"], "instruction": ["x", "y"]})


def test_every_output_appears_on_success_and_none_on_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Outputs() as out:
        out.write_json({"n": 1}, "metrics/m.json")
        out.write_parquet(TABLE, "data/t.parquet", TABLE.schema, table_metadata("s", "h", "dp"))
        assert not (tmp_path / "metrics/m.json").exists()  # staged, not yet published
    assert json.loads((tmp_path / "metrics/m.json").read_text()) == {"n": 1}
    with pytest.raises(RuntimeError), Outputs() as out:
        out.write_json({"n": 2}, "metrics/m.json")
        out.write_json({"n": 2}, "metrics/other.json")
        raise RuntimeError("the stage fails after writing")
    # the failed run published nothing and left no temporary file behind
    assert json.loads((tmp_path / "metrics/m.json").read_text()) == {"n": 1}
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["m.json"]


def test_json_outputs_are_strict(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError), Outputs() as out:
        out.write_json({"epsilon": float("inf")}, "m.json")  # a ledger writes "inf" as a string instead
    assert list(tmp_path.iterdir()) == []


def test_parquet_carries_lineage_and_is_deterministic(tmp_path):
    meta = table_metadata("prepare", "abc", "private", split="train")
    write_parquet(TABLE, tmp_path / "a.parquet", TABLE.schema, meta)
    write_parquet(TABLE, tmp_path / "b.parquet", TABLE.schema, meta)
    assert file_digest(tmp_path / "a.parquet") == file_digest(tmp_path / "b.parquet")
    read = read_metadata(tmp_path / "a.parquet")
    assert (read["stage"], read["privacy"], read["split"]) == ("prepare", "private", "train")
    with pytest.raises(ValueError, match="privacy class must be one of"):
        table_metadata("s", "h", "secret")
