"""`prepare` on the shipped data and on bad inputs."""
from __future__ import annotations

import hashlib
import json
import math

import pandas as pd
import pyarrow.parquet as pq
import pytest

from dpinstruct.io.artifacts import Outputs, read_metadata
from dpinstruct.io.errors import PipelineError
from dpinstruct.text import splits
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
    # the shipped rows name no user: only identical texts merge, case variants are rows of their own
    assert priv["exact_duplicate"] == 0 and priv["kept"] > 4000
    cfg = project.params["prepare"]
    assert priv["train"] + priv["val"] + priv["test"] == priv["kept"]  # every kept row lands in one split
    # Splits are expected shares of the units (here every unit is one row): each within 4 binomial sds.
    for name, share in (("test", cfg["test_share"]), ("val", cfg["val_share"]),
                        ("train", 1 - cfg["test_share"] - cfg["val_share"])):
        assert abs(priv[name] - share * priv["kept"]) <= 4 * math.sqrt(priv["kept"] * share * (1 - share)), name

    tables = {s: pd.read_parquet(stage.OUT[s]) for s in PRIVATE_SPLITS}
    for s in PRIVATE_SPLITS:
        assert len(tables[s]) == priv[s]
        assert tables[s].n_tokens.between(cfg["min_tokens"], cfg["max_tokens"]).all()
    ids = [set(tables[s].id) for s in PRIVATE_SPLITS]
    texts = [set(tables[s].instruction) for s in PRIVATE_SPLITS]  # a text is one unit: one split (case variants are not)
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
    rows = [{"id": f"r{i}", "user_id": f"u{i % 30}", "instruction": f"Question number {i} about topic {i * 13}?"}
            for i in range(120)]
    path = project.root / "users.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    project.params["data"]["private_path"] = str(path)
    project.params["prepare"].update(test_share=0.25, val_share=0.25)
    project.params["user_level"]["enabled"] = True
    run(project)
    tables = {s: pd.read_parquet(stage.OUT[s]) for s in PRIVATE_SPLITS}
    users = {s: set(tables[s].user_id) for s in PRIVATE_SPLITS}
    assert not (users["train"] & users["val"]) and not (users["train"] & users["test"]) and not (users["val"] & users["test"])
    assert sum(len(t) for t in tables.values()) == 120
    # each user goes by the hash of its key alone: all 4 rows of every user, in the split of its unit
    for s, table in tables.items():
        assert (table.groupby("user_id").size() == 4).all()
        assert {splits.partition_of(f"user:{u}", 0, splits.split_shares(0.25, 0.25)) for u in users[s]} == {s}


def jsonl_rows(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def splits_by_id(project) -> dict[str, set]:
    run(project)
    return {s: set(pd.read_parquet(stage.OUT[s]).id) for s in PRIVATE_SPLITS}


def test_one_row_more_or_less_moves_that_row_only(project):
    # 1-stability (dpinstruct.privacy): the splits of a file with one row removed are the splits of
    # the full file minus that row, whatever its position (a permutation filling fixed sizes moved
    # hundreds of others), and the same for one user removed with all their rows.
    lines = (project.root / "data/raw/chatbot_arena/instructions.jsonl").read_text().splitlines(keepends=True)[:300]
    path = project.root / "data/private/part.jsonl"
    path.parent.mkdir(parents=True)
    project.params["data"]["private_path"] = str(path)
    project.params["prepare"].update(test_share=0.3, val_share=0.3)  # 25 users below fill every split
    path.write_text("".join(lines))
    full = splits_by_id(project)
    assert all(len(full[s]) >= 10 for s in PRIVATE_SPLITS)
    for drop in (0, 150, 299):
        removed = json.loads(lines[drop])["id"]
        path.write_text("".join(lines[:drop] + lines[drop + 1:]))
        assert splits_by_id(project) == {s: full[s] - {removed} for s in PRIVATE_SPLITS}
    # users: removing user u3's rows removes exactly them from the one split they were in
    records = [{"id": f"r{i}", "user_id": f"u{i % 25}", "instruction": f"Ask {i} things about item {i * 7} now"}
               for i in range(100)]
    project.params["user_level"]["enabled"] = True
    jsonl_rows(path, records)
    full = splits_by_id(project)
    jsonl_rows(path, [r for r in records if r["user_id"] != "u3"])
    gone = {r["id"] for r in records if r["user_id"] == "u3"}
    assert splits_by_id(project) == {s: full[s] - gone for s in PRIVATE_SPLITS}


def test_dedup_is_per_unit_on_the_private_file(project):
    same = "Please explain in simple words how the moon changes its shape every single month for kids"
    records = [
        # rows without a user: identical texts are one unit (a set), kept as the smallest id, wherever it
        # sits; a case variant is a unit of its own (adding it must never replace the row already there)
        {"id": "b", "instruction": "What is a good name for a cat?"},
        {"id": "a", "instruction": "What is  a good name for a cat?"},
        {"id": "e", "instruction": "what is a GOOD name for a cat?"},
        # ... but rows of different units sharing a 10-gram are all kept (the cross-row rule is not stable)
        {"id": "c", "instruction": same + " please"},
        {"id": "d", "instruction": same + " today"},
        # one user's rows are deduplicated within the user, exact and by n-gram, in content order
        # (" again" sorts before " now": u2 survives whatever the ids)
        {"id": "u1", "user_id": "x", "instruction": same + " now"},
        {"id": "u2", "user_id": "x", "instruction": same + " again"},
        {"id": "u3", "user_id": "x", "instruction": "Completely unrelated question about trains?"},
        # another user's copy of x's row is that user's own unit: kept
        {"id": "v1", "user_id": "y", "instruction": same + " now"},
    ] + [{"id": f"z{i}", "instruction": f"Filler question {i} about subject {i * 3}?"} for i in range(60)]
    jsonl_rows(project.root / "dedup.jsonl", records)
    project.params["data"]["private_path"] = str(project.root / "dedup.jsonl")
    project.params["prepare"].update(test_share=0.2, val_share=0.2)
    project.params["user_level"]["enabled"] = True
    priv = run(project)["private"]
    assert (priv["exact_duplicate"], priv["ngram_duplicate"], priv["kept"]) == (1, 1, 67)
    kept = set().union(*(pd.read_parquet(stage.OUT[s]).id for s in PRIVATE_SPLITS))
    assert {"a", "c", "d", "e", "u2", "u3", "v1"} <= kept and not {"b", "u1"} & kept
    # the row kept for a text is the smallest id whatever the file order
    jsonl_rows(project.root / "dedup.jsonl", records[1::-1] + records[2:])
    run(project)
    assert set().union(*(pd.read_parquet(stage.OUT[s]).id for s in PRIVATE_SPLITS)) == kept


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
    # two units cannot fill three splits: one comes out empty, whatever the hash does
    path = project.root / "small.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"Distinct question {i} on subject {i}"}) + "\n" for i in range(2)))
    project.params["data"]["private_path"] = str(path)
    with pytest.raises(PipelineError, match=r"only 2 instructions after filtering: the \[.*\] split\(s\) came out empty"):
        run(project)
    assert project.files("data/prepared") == [] and project.files("metrics") == []


def test_main_exits_cleanly_on_bad_input(project, capsys):
    (project.root / "x.jsonl").write_bytes(b"")
    project.params["data"]["private_path"] = "x.jsonl"
    project.save()
    with pytest.raises(SystemExit) as exit_info:
        stage.main()
    assert exit_info.value.code == 2
    assert "ERROR [prepare] x.jsonl: file is empty" in capsys.readouterr().err
