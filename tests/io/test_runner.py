"""run_stage: a PipelineError ends the stage with exit code 2 and one line, and leaves no output
(neither a new one nor a half-written one over the old); a clean run publishes every output."""
from __future__ import annotations

import json

import pytest

from dpinstruct.io.errors import InputError
from dpinstruct.io.runner import run_stage


def test_a_failed_stage_exits_2_with_one_line_and_publishes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/old.json").write_text('{"kept": 1}\n')
    with pytest.raises(SystemExit) as stop:
        with run_stage("demo") as out:
            out.write_json({"kept": 2}, "metrics/old.json")
            out.write_json({"new": True}, "metrics/new.json")
            raise InputError("data/x.jsonl", "bad row", line=3, field="instruction")
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "ERROR [demo] data/x.jsonl, line 3, field 'instruction': bad row"
    assert "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["old.json"]  # no temporary left
    assert json.loads((tmp_path / "metrics/old.json").read_text()) == {"kept": 1}


def test_a_clean_stage_publishes_every_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with run_stage("demo") as out:
        out.write_json({"a": 1}, "metrics/a.json")
        out.write_json({"b": 2}, "metrics/sub/b.json")
    assert json.loads((tmp_path / "metrics/a.json").read_text()) == {"a": 1}
    assert json.loads((tmp_path / "metrics/sub/b.json").read_text()) == {"b": 2}
    assert not list(tmp_path.rglob(".*.tmp-*"))
