"""Hostile inputs for every stage that reads user data (prepare, prepare_public, imdb_prepare,
hh_prepare): a 1 MB instruction, NUL bytes, NaN / None in text or ids, Parquet files of another
schema, symlinked and dangling inputs, and wrong param types. Each bad case stops the stage with an
error naming the file, row and field (or the param), quotes no text, and leaves no output behind.
The "Hostile inputs" table of docs/own-data.md lists the same cases; the 1,000,000-row file is a benchmark
(tests/benchmarks/bench_prepare_scale.py)."""
from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dpinstruct.io.artifacts import Outputs
from dpinstruct.io.errors import ConfigError, InputError, PipelineError
from stages import hh_prepare, imdb_prepare, prepare, prepare_public

SECRET = "bread"  # every private row below mentions it: no error may quote it


def rows(n=40):
    return [{"id": f"r{i}", "instruction": f"How do I bake {SECRET} number {i} with seeds of kind {i * 7}?"}
            for i in range(n)]


def jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def parquet(path, columns: dict):
    pq.write_table(pa.table(columns), path)
    return path


def small_splits(project, private_path):
    project.params["data"]["private_path"] = str(private_path)
    project.params["prepare"].update(test_share=0.2, val_share=0.2)  # 40 rows: every split gets some
    project.save()


def run_prepare(project):
    with Outputs() as out:
        return prepare.prepare(project.params, out)


def assert_refused(project, pattern, outputs=("data/prepared", "metrics")):
    with pytest.raises(PipelineError, match=pattern) as err:
        run_prepare(project)
    assert SECRET not in str(err.value)
    for folder in outputs:
        assert project.files(folder) == [], folder


def test_a_1mb_instruction_is_dropped_as_too_long_without_tokenising_it(project, monkeypatch):
    huge = {"id": "huge", "instruction": ("tell me about " + SECRET + " ") * 60_000}  # ~1.1 MB
    assert len(huge["instruction"]) > 1_000_000
    small_splits(project, jsonl(project.root / "x.jsonl", rows() + [huge]))
    real, seen = prepare.load_tokenizer, []

    def recording(path):  # the real tokenizer, noting the longest text it is asked to tokenise
        tokenizer = real(path)
        call = tokenizer.__class__.__call__
        monkeypatch.setattr(tokenizer.__class__, "__call__",
                            lambda self, texts, **kw: seen.append(max(map(len, texts))) or call(self, texts, **kw))
        return tokenizer

    monkeypatch.setattr(prepare, "load_tokenizer", recording)
    metrics = run_prepare(project)["private"]
    assert metrics["too_long"] == 1 and metrics["kept"] == 40
    assert seen and max(seen) < 1000  # the 1 MB row never reached the tokenizer


BAD = {
    "nul_in_instruction": (lambda d: jsonl(d / "x.jsonl", rows(3) + [{"id": "n", "instruction": "a\x00b"}]),
                           r"x\.jsonl, line 4, field 'instruction': contains a NUL character at offset 1"),
    "nul_in_id": (lambda d: jsonl(d / "x.jsonl", [{"id": "a\x00", "instruction": "hi there"}] + rows(3)),
                  r"x\.jsonl, line 1, field 'id': contains a NUL character"),
    "nul_in_user_id": (lambda d: jsonl(d / "x.jsonl", rows(2) + [{"instruction": "x y", "user_id": "\x00"}]),
                       r"line 3, field 'user_id': contains a NUL character"),
    "nan_id_parquet": (lambda d: parquet(d / "x.parquet", {"id": [1.5, float("nan")], "instruction": ["a b", "c d"]}),
                       r"x\.parquet, row 1, field 'id': expected a string, got float"),
    "nan_instruction_parquet": (lambda d: parquet(d / "x.parquet", {"instruction": [float("nan"), 1.0]}),
                                r"x\.parquet, row 1, field 'instruction': expected a string, got float"),
    "other_schema_parquet": (lambda d: parquet(d / "x.parquet", {"text": ["a b"], "label": [1]}),
                             r"x\.parquet, field 'instruction': no 'instruction' column \(found \['text', 'label'\]\)"),
    "int_instruction_parquet": (lambda d: parquet(d / "x.parquet", {"instruction": [1, 2]}),
                                r"row 1, field 'instruction': expected a string, got int"),
    "not_parquet": (lambda d: (d / "x.parquet").write_bytes(b"PAR1 but not really") and d / "x.parquet",
                    r"x\.parquet: not a readable Parquet file"),
    "dangling_symlink": (lambda d: (d / "x.jsonl").symlink_to(d / "gone.jsonl") or d / "x.jsonl",
                         r"x\.jsonl: a symbolic link to .*gone\.jsonl, which does not exist"),
    "directory": (lambda d: (d / "x.jsonl").mkdir() or d / "x.jsonl", r"x\.jsonl: not a regular file"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_private_file_is_refused_by_file_row_and_field(project, case):
    make, pattern = BAD[case]
    small_splits(project, make(project.root))
    assert_refused(project, pattern)


def test_none_text_is_dropped_as_empty_and_counted(project):
    records = rows() + [{"id": "none", "instruction": None}]
    small_splits(project, parquet(project.root / "x.parquet", {
        "id": [r["id"] for r in records], "instruction": [r["instruction"] for r in records]}))
    assert run_prepare(project)["private"]["empty"] == 1


def test_a_symlinked_input_gives_the_same_outputs_as_the_file(project):
    real = jsonl(project.root / "real.jsonl", rows())
    small_splits(project, real)
    run_prepare(project)
    direct = {p: (project.root / p).read_bytes() for p in prepare.OUT.values()}
    (project.root / "link.jsonl").symlink_to(real)
    project.params["data"]["private_path"] = "link.jsonl"
    run_prepare(project)
    for p, content in direct.items():
        # same rows; only the recorded source path differs in the metadata
        assert pq.read_table(project.root / p).to_pylist() == pq.read_table(pa.BufferReader(content)).to_pylist()


SHARE_RANGE = r"prepare: test_share and val_share must be > 0 with a sum below 1 \(the rest is train\), got "
PARAMS = {
    ("prepare", "test_share", "0.1"): r"prepare\.test_share: must be a finite number, got '0\.1'",
    ("prepare", "val_share", None): r"prepare\.val_share: must be a finite number, got None",
    ("prepare", "test_share", True): r"prepare\.test_share: must be a finite number, got True",
    ("prepare", "test_share", 0): SHARE_RANGE + r"\[0\.0, 0\.2\]",
    ("prepare", "val_share", -0.1): SHARE_RANGE + r"\[0\.2, -0\.1\]",
    ("prepare", "test_share", 0.8): SHARE_RANGE + r"\[0\.8, 0\.2\]",  # nothing left for train
    ("prepare", "val_share", 5): SHARE_RANGE + r"\[0\.2, 5\.0\]",  # a count where a share belongs
    ("prepare", "min_tokens", None): r"prepare\.min_tokens: must be an integer >= 1, got None",
    ("prepare", "max_tokens", 1): r"prepare\.min_tokens: 2 exceeds prepare\.max_tokens 1",
    ("prepare", "dedup_casefold", "yes"): r"prepare\.dedup_casefold: must be true or false, got 'yes'",
    ("prepare", "ngram_dedup_n", True): r"prepare\.ngram_dedup_n: must be an integer >= 0, got True",
    ("prepare", "seed", "0"): r"prepare\.seed: must be an integer >= 0, got '0'",
    ("data", "private_path", 5): r"data\.private_path: must be a file path, got 5",
}


@pytest.mark.parametrize("section,key,value", sorted(PARAMS, key=str))
def test_wrong_param_types_are_refused_by_name_before_reading(project, section, key, value):
    small_splits(project, jsonl(project.root / "x.jsonl", rows()))
    project.params[section][key] = value
    with pytest.raises(ConfigError, match=PARAMS[(section, key, value)]):
        run_prepare(project)
    assert project.files("data/prepared") == []


@pytest.mark.parametrize("key", ["test_share", "val_share"])
def test_a_nan_share_is_refused_by_name(project, key):
    small_splits(project, jsonl(project.root / "x.jsonl", rows()))
    project.params["prepare"][key] = float("nan")  # YAML `.nan`
    with pytest.raises(ConfigError, match=rf"prepare\.{key}: must be a finite number, got nan"):
        run_prepare(project)
    assert project.files("data/prepared") == []


OLD_KEY = r"prepare\.{}: is no longer a param: splits take expected shares \(prepare\.test_share, prepare\.val_share\)"


@pytest.mark.parametrize("key,value", [("test_size", 500), ("val_size", 250), ("train_size", None), ("train_size", 24)])
def test_the_old_split_sizes_are_refused_with_a_clear_message(project, key, value):
    # counts would need N (private) and made the split unstable: even a valid old value is refused,
    # never silently ignored, so a params.yaml written for the old split cannot run unnoticed
    small_splits(project, jsonl(project.root / "x.jsonl", rows()))
    project.params["prepare"][key] = value
    with pytest.raises(ConfigError, match=OLD_KEY.format(key)):
        run_prepare(project)
    assert project.files("data/prepared") == [] and project.files("metrics") == []


def test_an_old_style_prepare_section_is_told_what_replaced_it(project):
    small_splits(project, jsonl(project.root / "x.jsonl", rows()))
    cfg = project.params["prepare"]
    del cfg["test_share"], cfg["val_share"]
    cfg.update(test_size=500, val_size=250, train_size=None)  # params.yaml as it was before shares
    with pytest.raises(ConfigError, match=OLD_KEY.format("test_size")):
        run_prepare(project)


@pytest.mark.parametrize("changes", [{"min_tokens": 2.0, "max_tokens": 128.0},
                                     {"seed": 0.0}, {"ngram_dedup_n": 10.0}],
                         ids=["token_bounds", "seed", "ngram_dedup_n"])
def test_whole_floats_are_accepted_as_integers(project, changes):
    # `dvc exp run -S` may write 2.0 for an integer param: the same run as with the int (users of two
    # rows each, so that the per-user dedup, and with it ngram_dedup_n, really runs)
    project.params["user_level"]["enabled"] = True
    small_splits(project, jsonl(project.root / "x.jsonl", [dict(r, user_id=f"u{i // 2}") for i, r in enumerate(rows())]))
    as_ints = run_prepare(project)["private"]
    split_ids = {name: pq.read_table(project.root / path).column("id").to_pylist() for name, path in prepare.OUT.items()}
    assert min(as_ints[s] for s in ("train", "val", "test")) > 0
    project.params["prepare"].update(changes)
    assert run_prepare(project)["private"] == as_ints
    assert {name: pq.read_table(project.root / path).column("id").to_pylist()
            for name, path in prepare.OUT.items()} == split_ids


def test_prepare_public_refuses_the_same_cases(project):
    project.params["data"]["public_path"] = str(jsonl(project.root / "p.jsonl", rows(3) + [{"instruction": "\x00"}]))
    with pytest.raises(InputError, match=r"p\.jsonl, line 4, field 'instruction': contains a NUL"), Outputs() as out:
        prepare_public.prepare_public(project.params, out)
    project.params["data"]["public_path"] = str(jsonl(project.root / "p.jsonl", rows(3)))
    project.params["prepare_public"]["size"] = "all"
    with pytest.raises(ConfigError, match=r"prepare_public\.size: must be an integer >= 1 or null"), Outputs() as out:
        prepare_public.prepare_public(project.params, out)
    assert project.files("data/prepared") == [] and project.files("metrics") == []


def pair(chosen_answer, rejected_answer):
    return {"chosen": f"\n\nHuman: how do I bake {SECRET}?\n\nAssistant: {chosen_answer}",
            "rejected": f"\n\nHuman: how do I bake {SECRET}?\n\nAssistant: {rejected_answer}"}


def test_hh_prepare_refuses_nul_wrong_types_and_bad_params(project):
    cfg = project.params["rlhf"]["data"]
    path = project.root / "pairs.jsonl.gz"
    for bad, pattern in (({"chosen": 5, "rejected": "x"}, r"line 2, field 'chosen': expected a string, got int"),
                         (pair("a\x00", "b"), r"line 2, field 'chosen': contains a NUL character"),
                         ({"chosen": None, "rejected": "x"}, r"line 2, field 'chosen': missing")):
        with gzip.open(path, "wt") as f:
            f.write(json.dumps(pair("yes", "no")) + "\n" + json.dumps(bad) + "\n")
        cfg["private_path"] = str(path)
        with pytest.raises(InputError, match=pattern) as err, Outputs() as out:
            hh_prepare.hh_prepare(project.params, out)
        assert SECRET not in str(err.value)
    for key, value, pattern in (("heldout_share", "0.2", r"rlhf\.data\.heldout_share: must be a finite number"),
                                ("partition_seed", 1.5, r"rlhf\.data\.partition_seed: must be an integer"),
                                ("private_path", None, r"rlhf\.data\.private_path: must be a file path")):
        broken = {**cfg, key: value}
        with pytest.raises(ConfigError, match=pattern), Outputs() as out:
            hh_prepare.hh_prepare({**project.params, "rlhf": {**project.params["rlhf"], "data": broken}}, out)
    assert project.files("data/rlhf") == [] and project.files("metrics") == []


def test_imdb_prepare_refuses_nul_other_schemas_and_bad_params(project):
    cfg = project.params["rl"]["data"]
    cases = (({"id": ["a", "b"], "label": [0, 1], "text": ["fine film", "bad\x00film"]},
              r"x\.parquet, row 2, field 'text': contains a NUL character"),
             ({"id": ["a", None], "label": [0, 1], "text": ["fine film", "bad film"]},
              r"x\.parquet, row 2, field 'id': expected a string"),
             ({"id": ["a", "b"], "label": [0, 5], "text": ["fine film", "bad film"]},
              r"x\.parquet, row 2, field 'label'"),
             ({"review": ["x"]}, r"x\.parquet, field 'id': no \['id', 'label', 'text'\] column"))
    for columns, pattern in cases:
        cfg["private_path"] = str(parquet(project.root / "x.parquet", columns))
        with pytest.raises(InputError, match=pattern), Outputs() as out:
            imdb_prepare.imdb_prepare(project.params, out)
    for key, value in (("min_tokens", "64"), ("prompt_tokens", 0), ("partitions", [0.5, 0.5])):
        broken = {**cfg, key: value}
        with pytest.raises(ConfigError, match=rf"rl\.data\.{key}"), Outputs() as out:
            imdb_prepare.imdb_prepare({**project.params, "rl": {**project.params["rl"], "data": broken}}, out)
    assert project.files("data/rl") == [] and project.files("metrics") == []
