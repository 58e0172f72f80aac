"""Data-quality checks run by every stage that writes a table, with Great Expectations 1.x.

Rules cover column presence, nulls, uniqueness (the id column always), numeric bounds, disjointness
from another split (no train/val/test leakage) and column types. All rules of a table run as one
expectation suite on one batch; a failed hard rule raises QualityError, a failed soft rule is only
reported. Reports and error messages name failing rows by their id (or row number) and never carry
any other cell value: the tables hold private user text, and reports are committed and logged.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

import great_expectations as gx
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from dpinstruct.io.errors import QualityError

REPORT_DIR = Path("metrics/quality")
MAX_EXAMPLES = 5
# GX lists every failing row, so a duplicated id shows up twice: fetch more, de-duplicate, keep 5.
_PARTIAL = 4 * MAX_EXAMPLES

_EXPECTATIONS = {
    "column_exists": lambda r: gx.expectations.ExpectColumnToExist(column=r.column),
    "not_null": lambda r: gx.expectations.ExpectColumnValuesToNotBeNull(column=r.column),
    "unique": lambda r: gx.expectations.ExpectColumnValuesToBeUnique(column=r.column),
    "between": lambda r: gx.expectations.ExpectColumnValuesToBeBetween(
        column=r.column, min_value=r.args.get("min"), max_value=r.args.get("max")),
    "not_in_set": lambda r: gx.expectations.ExpectColumnValuesToNotBeInSet(
        column=r.column, value_set=list(r.args["values"])),
    "type": lambda r: gx.expectations.ExpectColumnValuesToBeOfType(column=r.column, type_=r.args["type"]),
}


@dataclass(frozen=True)
class Rule:
    kind: str
    column: str
    args: dict = field(default_factory=dict)
    hard: bool = True

    def detail(self) -> str | None:
        # Never the not_in_set values themselves: they are the other split's private text.
        a = self.args
        return {"between": f"min={a.get('min')}, max={a.get('max')}", "type": f"type={a.get('type')}",
                "not_in_set": f"disjoint from {a.get('label', 'another table')}"}.get(self.kind)


def table_rules(*, columns: list[str], id_column: str = "id", non_null=(), unique=(),
                between: dict[str, tuple] = {}, disjoint_from: dict[str, dict[str, list]] = {}) -> list[Rule]:
    rules = [Rule("column_exists", c) for c in columns]
    rules += [Rule("not_null", c) for c in non_null]
    rules += [Rule("unique", c) for c in dict.fromkeys([id_column, *unique])]
    for column, (lo, hi) in between.items():
        if lo is not None or hi is not None:  # GX rejects a range open at both ends
            rules.append(Rule("between", column, {"min": lo, "max": hi}))
    for label, by_column in disjoint_from.items():
        rules += [Rule("not_in_set", c, {"values": list(v), "label": label}) for c, v in by_column.items()]
    return rules


_datasource = None


def _source():
    # Creating a context costs far more than a validation, so one ephemeral (in-memory, nothing
    # written to disk) context is shared; each validate() gets its own asset and removes it after.
    global _datasource
    if _datasource is None:
        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        _datasource = context.data_sources.add_pandas(f"quality-{uuid.uuid4().hex}")
    return _datasource


def _example_ids(result: dict, id_column: str | None) -> list:
    ids = []
    for entry in result.get("partial_unexpected_index_list") or []:
        # With unexpected_index_column_names each entry is {id_column: id, <checked column>: value};
        # only the id is kept. Without an id column GX gives the positional row index.
        ident = entry.get(id_column) if isinstance(entry, dict) else f"row {entry}"
        ident = None if pd.isna(ident) else getattr(ident, "item", lambda: ident)()  # numpy -> JSON-able
        if ident not in ids:
            ids.append(ident)
    return ids[:MAX_EXAMPLES]


def _narrow(rule: Rule, df: pd.DataFrame) -> Rule:
    # GX re-serialises every expectation's kwargs ~100 times per validation, so a value_set of 20k
    # texts costs seconds. Only values present in the column can match, so pass just the overlap.
    if rule.kind != "not_in_set" or rule.column not in df.columns:
        return rule
    column = df[rule.column].dropna()
    overlap = column[column.isin(list(rule.args["values"]))].drop_duplicates().tolist()
    return replace(rule, args={**rule.args, "values": overlap})


def _raised(res) -> bool:
    # exception_info is flat ({"raised_exception": ...}) or keyed by metric id when a metric failed.
    info = res.exception_info or {}
    return bool(info.get("raised_exception")) or any(
        v.get("raised_exception") for v in info.values() if isinstance(v, dict))


def _message(artifact: str, failed: list[dict], id_column: str | None) -> str:
    lines = [f"{artifact}: {len(failed)} hard quality rule(s) failed:"]
    for r in failed:
        what = f"{r['expectation']} on column '{r['column']}'" + (f" ({r['detail']})" if r["detail"] else "")
        examples = (f", e.g. {id_column}={r['example_ids']}" if id_column else
                    f", e.g. {', '.join(r['example_ids'])}") if r["example_ids"] else ""
        lines.append(f"  - {what}: {r['error'] or str(r['unexpected_count']) + ' unexpected row(s)'}{examples}")
    return "\n".join(lines)


def validate(df: pd.DataFrame, artifact: str, rules: list[Rule], *, id_column: str = "id") -> dict:
    unknown = sorted({r.kind for r in rules} - _EXPECTATIONS.keys())
    if unknown:
        raise ValueError(f"unknown rule kind(s) {unknown} for {artifact}")
    df = df.reset_index(drop=True)  # fallback "row N" is then the 0-based position, whatever the caller's index
    ids = id_column if id_column in df.columns else None
    expectations = [_EXPECTATIONS[r.kind](_narrow(r, df)) for r in rules]
    results = [{"rule": r.kind, "expectation": e.expectation_type, "column": r.column, "hard": r.hard,
                "detail": r.detail(), "success": False, "unexpected_count": 0, "example_ids": [],
                "error": None} for r, e in zip(rules, expectations)]

    source = _source()  # before the suite: add_expectation looks up the current GX context
    suite = gx.ExpectationSuite(name=f"quality-{artifact}")
    first_of, same_as = {}, {}
    for i, (rule, exp) in enumerate(zip(rules, expectations)):
        if rule.kind != "column_exists" and rule.column not in df.columns:
            # On a missing column GX fails with a metric traceback; column_exists reports it plainly.
            results[i]["error"] = "column missing: rule not evaluated"
            continue
        key = (exp.expectation_type, repr(sorted(exp.configuration.kwargs.items())))
        if key in first_of:  # GX drops an expectation equal to one already in the suite
            same_as[i] = first_of[key]
            continue
        first_of[key] = i
        exp.meta = {"rule_index": i}  # GX returns results in its own order, not the suite's
        suite.add_expectation(exp)

    if suite.expectations:
        result_format = {"result_format": "SUMMARY", "partial_unexpected_count": _PARTIAL}
        if ids:
            result_format["unexpected_index_column_names"] = [ids]
        asset_name = f"{artifact}-{uuid.uuid4().hex}"
        asset = source.add_dataframe_asset(asset_name)
        try:
            batch = asset.add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": df})
            outcome = batch.validate(suite, result_format=result_format)
        finally:
            source.delete_asset(asset_name)
        # Only counts and ids are copied: GX's result also holds partial_unexpected_list/_counts and
        # the checked column's values inside each index entry, i.e. private text.
        for res in outcome.results:
            entry = results[res.expectation_config.meta["rule_index"]]
            entry.update(success=bool(res.success), unexpected_count=int(res.result.get("unexpected_count") or 0),
                         example_ids=_example_ids(res.result, ids))
            if _raised(res):  # GX's own exception text can quote cell values, so it is not copied
                entry["error"] = "Great Expectations raised an exception while evaluating this rule"
            elif entry["rule"] == "column_exists" and not entry["success"]:
                entry["error"] = "column missing from the table"

    for i, j in same_as.items():
        results[i].update({k: results[j][k] for k in ("success", "unexpected_count", "example_ids", "error")})
    failed = [r for r in results if r["hard"] and not r["success"]]
    report = {"artifact": artifact, "rows": len(df), "success": not failed,
              "great_expectations": gx.__version__, "results": results}
    if failed:
        error = QualityError(_message(artifact, failed, ids))
        error.report = report  # lets a stage still write the report before it exits non-zero
        raise error
    return report


def check(df: pd.DataFrame, artifact: str, rules: list[Rule], *, id_column: str = "id") -> dict:
    """Validate a stage's table; raises QualityError on a failed hard rule, else returns the report."""
    return validate(df, artifact, rules, id_column=id_column)


def report_path(artifact: str) -> Path:
    """metrics/quality/<artifact>.json, e.g. prepare/train -> metrics/quality/prepare/train.json."""
    if Path(artifact).is_absolute() or ".." in Path(artifact).parts:
        raise ValueError(f"artifact name must be a relative path inside {REPORT_DIR}: {artifact!r}")
    return REPORT_DIR / f"{artifact}.json"
