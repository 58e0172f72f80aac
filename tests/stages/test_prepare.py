"""`prepare` on the shipped data and on bad inputs."""
from __future__ import annotations

import hashlib
import json

import pandas as pd
import pyarrow.parquet as pq
import pytest

from dpinstruct.io.artifacts import Outputs, read_metadata
from dpinstruct.io.errors import PipelineError
from stages import prepare as stage

PRIVATE_SPLITS = ("train", "val", "test")


def run(project):
    project.save()
    with Outputs() as out:
        return stage.prepare(project.params, out)


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_shipped_data_counts_and_disjoint_splits(project):
    metrics = run(project)
    priv = metrics["private"]
    assert priv["read"] == 5000
    dropped = sum(priv[k] for k in ("empty", "too_short", "too_long", "exact_duplicate", "ngram_duplicate"))
    assert priv["read"] - dropped == priv["kept"]
    assert priv["exact_duplicate"] > 0  # the shipped set has case/whitespace near-duplicates
    cfg = project.params["prepare"]
    assert (priv["test"], priv["val"]) == (cfg["test_size"], cfg["val_size"])
    assert priv["train"] == priv["kept"] - cfg["test_size"] - cfg["val_size"]

    tables = {s: pd.read_parquet(stage.OUT[s]) for s in PRIVATE_SPLITS}
    for s in PRIVATE_SPLITS:
        assert len(tables[s]) == priv[s]
        assert tables[s].n_tokens.between(cfg["min_tokens"], cfg["max_tokens"]).all()
    ids = [set(tables[s].id) for s in PRIVATE_SPLITS]
    texts = [set(tables[s].instruction.str.casefold()) for s in PRIVATE_SPLITS]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not ids[i] & ids[j] and not texts[i] & texts[j]

    meta = read_metadata(stage.OUT["train"])
    assert meta["stage"] == "prepare" and meta["privacy"] == "private" and len(meta["params_hash"]) == 16
    assert pq.read_schema(stage.OUT["train"]).field("n_tokens").type == "int32"
    report = json.loads(open("metrics/quality/prepare/train.json").read())
    assert report["success"] and report["rows"] == priv["train"]


def test_deterministic_bytes_and_seed_changes_split(project):
    run(project)
    first = {s: digest(stage.OUT[s]) for s in stage.OUT}
    run(project)
    assert {s: digest(stage.OUT[s]) for s in stage.OUT} == first
    project.params["prepare"]["seed"] = 1
    run(project)
    assert digest(stage.OUT["train"]) != first["train"]


def test_public_set_has_its_own_stage_that_never_reads_the_private_file(project):
    from stages import prepare_public

    project.params["data"]["private_path"] = "does/not/exist.jsonl"  # proves the private file is not read
    project.params["prepare_public"]["size"] = None
    project.save()
    with Outputs() as out:
        metrics = prepare_public.prepare_public(project.params, out)
    public = pd.read_parquet(prepare_public.OUT)
    assert len(public) == metrics["written"] == metrics["kept"] > 10_000
    assert read_metadata(prepare_public.OUT)["privacy"] == "public"
    assert read_metadata(prepare_public.OUT)["stage"] == "prepare_public"
    first = digest(prepare_public.OUT)
    project.params["prepare_public"]["size"] = 100
    with Outputs() as out:
        prepare_public.prepare_public(project.params, out)
    sample = pd.read_parquet(prepare_public.OUT)
    assert len(sample) == 100 and set(sample.id) <= set(public.id) and digest(prepare_public.OUT) != first


def test_user_level_split_keeps_a_user_in_one_split(project):
    rows = [{"id": f"r{i}", "user_id": f"u{i % 7}", "instruction": f"Question number {i} about topic {i * 13}?"}
            for i in range(60)]
    path = project.root / "users.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    project.params["data"]["private_path"] = str(path)
    project.params["prepare"].update(test_size=10, val_size=10)
    run(project)
    users = {s: set(pd.read_parquet(stage.OUT[s]).user_id) for s in PRIVATE_SPLITS}
    assert not (users["train"] & users["val"]) and not (users["train"] & users["test"]) and not (users["val"] & users["test"])
    assert sum(len(pd.read_parquet(stage.OUT[s])) for s in PRIVATE_SPLITS) == 60


GOOD = '{"id": "a", "instruction": "How do I bake bread at home?"}\n'
BAD_INPUTS = {
    "malformed_jsonl": ("x.jsonl", (GOOD + '{"id": "b", "instruction": \n').encode(), r"x\.jsonl, line 2: malformed JSON"),
    "missing_column_jsonl": ("x.jsonl", (GOOD + '{"id": "b", "text": "hello"}\n').encode(),
                             r"x\.jsonl, line 2, field 'instruction': missing required field"),
    "missing_column_csv": ("x.csv", b"id,text\n1,hello there\n", r"x\.csv, line 1, field 'instruction'"),
    "non_utf8": ("x.jsonl", GOOD.encode() + b'{"id": "b", "instruction": "caf\xe9"}\n', r"x\.jsonl, line 2: not valid UTF-8"),
    "empty_file": ("x.jsonl", b"", r"x\.jsonl: file is empty"),
    "wrong_type": ("x.jsonl", GOOD.encode() + b'{"id": "b", "instruction": 42}\n', r"line 2, field 'instruction': expected a string"),
    "duplicate_id": ("x.jsonl", (GOOD + GOOD).encode(), r"line 2, field 'id': duplicate id \(first at line 1\)"),
    "all_filtered": ("x.jsonl", b'{"instruction": "   "}\n{"instruction": ""}\n{"instruction": null}\n',
                     r"x\.jsonl: no instruction left after filtering"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_the_spot_and_leaves_no_output(project, case):
    name, content, message = BAD_INPUTS[case]
    path = project.root / name
    path.write_bytes(content)
    project.params["data"]["private_path"] = str(path)
    with pytest.raises(PipelineError, match=message) as err:
        run(project)
    assert "bread" not in str(err.value) and "hello" not in str(err.value)  # no private text in errors
    assert project.files("data/prepared") == [] and project.files("metrics") == []


def test_too_few_rows_for_the_split_is_refused(project):
    path = project.root / "small.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Distinct question {i} on subject {i}"}) + "\n" for i in range(20)))
    project.params["data"]["private_path"] = str(path)
    with pytest.raises(PipelineError, match="not enough for the split sizes"):
        run(project)
    assert project.files("data/prepared") == []


def test_main_exits_cleanly_on_bad_input(project, capsys):
    (project.root / "x.jsonl").write_bytes(b"")
    project.params["data"]["private_path"] = "x.jsonl"
    project.save()
    with pytest.raises(SystemExit) as exit_info:
        stage.main()
    assert exit_info.value.code == 2
    assert "ERROR [prepare] x.jsonl: file is empty" in capsys.readouterr().err
