"""dpinstruct.io.quality against real Great Expectations (one shared ephemeral context, small tables)."""
import json
from pathlib import Path

import pandas as pd
import pytest

from dpinstruct.io.errors import QualityError
from dpinstruct.io.quality import Rule, check, report_path, table_rules, validate

SECRET = "my bank PIN is 4711 zxq-secret"
COLUMNS = ["id", "instruction", "n_tokens"]


def table(ids=("a", "b", "c", "d"), instructions=None, n_tokens=None):
    instructions = instructions or [f"instruction {i}" for i in ids]
    n_tokens = n_tokens or [10] * len(ids)
    return pd.DataFrame({"id": list(ids), "instruction": instructions, "n_tokens": n_tokens})


def rules(**kw):
    return table_rules(columns=COLUMNS, non_null=("instruction",), between={"n_tokens": (1, 100)}, **kw)


def failure(df, artifact="prepare/train", rule_list=None, **kw):
    with pytest.raises(QualityError) as info:
        validate(df, artifact, rule_list if rule_list is not None else rules(), **kw)
    message = str(info.value)
    assert artifact in message
    return message, info.value.report


def assert_private(secret, message, report):
    assert secret not in message
    assert secret not in json.dumps(report)


def test_clean_table_passes_with_documented_report():
    report = check(table(), "prepare/train", rules() + [Rule("type", "instruction", {"type": "str"})])
    assert set(report) == {"artifact", "rows", "success", "great_expectations", "results"}
    assert report["artifact"] == "prepare/train" and report["rows"] == 4 and report["success"] is True
    assert report["great_expectations"].startswith("1.")
    assert all(r["success"] for r in report["results"])
    first = report["results"][0]
    assert {"rule", "expectation", "column", "hard", "success", "unexpected_count", "example_ids"} <= set(first)
    kinds = {(r["rule"], r["column"]) for r in report["results"]}
    assert ("unique", "id") in kinds and ("column_exists", "n_tokens") in kinds
    json.loads(json.dumps(report))


def test_duplicate_ids_fail_naming_expectation_and_ids():
    message, report = failure(table(ids=("a", "b", "b", "c")))
    assert "expect_column_values_to_be_unique" in message and "'id'" in message
    assert "'b'" in message and "'a'" not in message
    (dup,) = [r for r in report["results"] if r["rule"] == "unique"]
    assert dup["success"] is False and dup["unexpected_count"] == 2 and dup["example_ids"] == ["b"]
    assert report["success"] is False


def test_null_instruction_fails_without_leaking_neighbours():
    df = table(instructions=[SECRET, None, SECRET + " 2", "ok"])
    message, report = failure(df)
    assert "expect_column_values_to_not_be_null" in message and "'b'" in message
    assert_private(SECRET, message, report)


def test_out_of_bounds_tokens_name_offending_rows():
    message, report = failure(table(n_tokens=[10, 0, 500, 10]))
    assert "expect_column_values_to_be_between" in message and "n_tokens" in message
    (bounds,) = [r for r in report["results"] if r["rule"] == "between"]
    assert bounds["unexpected_count"] == 2 and bounds["example_ids"] == ["b", "c"]


def test_missing_column_fails_clearly_and_other_rules_still_run():
    df = table(ids=("a", "a", "b")).drop(columns="n_tokens")
    message, report = failure(df)
    assert "expect_column_to_exist on column 'n_tokens'" in message
    by_rule = {(r["rule"], r["column"]): r for r in report["results"]}
    assert by_rule[("column_exists", "n_tokens")]["success"] is False
    assert "column missing" in by_rule[("between", "n_tokens")]["error"]
    assert by_rule[("unique", "id")]["example_ids"] == ["a"]  # evaluated despite the missing column


def test_missing_id_column_falls_back_to_row_numbers():
    df = table(n_tokens=[10, 10, 10, 999]).drop(columns="id")
    message, report = failure(df)
    assert "row 3" in message
    (bounds,) = [r for r in report["results"] if r["rule"] == "between"]
    assert bounds["example_ids"] == ["row 3"]


def test_overlap_with_other_split_names_it_and_hides_text():
    df = table(instructions=["fine", SECRET, "also fine", "x"])
    other = {"val split": {"id": ["z", "c"], "instruction": [SECRET, "unrelated"]}}
    message, report = failure(df, "prepare/train", rules(disjoint_from=other))
    assert "val split" in message and "expect_column_values_to_not_be_in_set" in message
    overlaps = {r["column"]: r for r in report["results"] if r["rule"] == "not_in_set"}
    assert overlaps["id"]["example_ids"] == ["c"] and overlaps["instruction"]["example_ids"] == ["b"]
    assert_private(SECRET, message, report)


def test_duplicate_private_instruction_is_reported_by_id_only():
    df = table(instructions=[SECRET, "x", SECRET, "y"])
    message, report = failure(df, rule_list=rules(unique=("instruction",)))
    assert "id=['a', 'c']" in message
    assert_private(SECRET, message, report)


def test_soft_rule_failure_is_reported_but_passes():
    soft = Rule("unique", "instruction", hard=False)
    report = check(table(instructions=["same"] * 4), "generate/synthetic", rules() + [soft])
    assert report["success"] is True
    (res,) = [r for r in report["results"] if r["rule"] == "unique" and r["column"] == "instruction"]
    assert res["success"] is False and res["hard"] is False and res["unexpected_count"] == 4


def test_report_path():
    assert report_path("prepare/train") == Path("metrics/quality/prepare/train.json")
    with pytest.raises(ValueError):
        report_path("../escape")


def test_identical_rules_each_get_a_result():
    # Two disjointness rules that narrow to the same (empty) value set are equal expectations;
    # GX keeps only one in a suite, and both rules must still be reported as passed.
    df = pd.DataFrame({"id": ["a", "b"], "instruction": ["x", "y"], "n_tokens": [1, 2]})
    rules = table_rules(columns=["id"], disjoint_from={"val": {"id": ["c"]}, "test": {"id": ["d"]}})
    report = check(df, "dup-rules", rules)
    assert report["success"] and all(r["success"] for r in report["results"])
