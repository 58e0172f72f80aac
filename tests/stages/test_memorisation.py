"""The memorisation gate: copies and n-gram overlaps of private train rows in the release and pool,
the optional threshold that stops the pipeline, and refused settings."""
from __future__ import annotations

import json

import pyarrow as pa
import pytest

from dpinstruct.io.artifacts import Outputs, write_parquet
from dpinstruct.io.errors import ConfigError, QualityError
from dpinstruct.text.memorisation import PrivateIndex
from stages import memorisation as stage

PRIVATE = ["How do I bake sourdough bread at home without a proper starter culture or a scale?",
           "What is the capital of France?"]


def test_exact_copies_fold_case_and_whitespace_and_ngrams_need_n_words():
    index = PrivateIndex(PRIVATE, 10)
    got = index.matches([
        "what is the   CAPITAL of france?",                     # exact after folding
        "Tell me: how do I bake sourdough bread at home without a proper oven?",  # shares a 10-gram
        "How do I bake sourdough bread at the bakery?",         # 7 shared words only
        "What is the capital of Spain?",                        # short, not a copy
    ])
    assert got == {"rows": 4, "exact": 1, "ngram": 1, "any": 2}
    assert PrivateIndex(PRIVATE, 3).matches(["the capital of Spain"])["ngram"] == 1


def write(path, texts, privacy):
    table = pa.table({"id": [f"{path}-{i}" for i in range(len(texts))], "instruction": texts})
    write_parquet(table, path, table.schema, {"dpinstruct.privacy": privacy})


@pytest.fixture
def sets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/release").mkdir(parents=True)
    (tmp_path / "data/generated").mkdir(parents=True)
    write(stage.TRAIN, PRIVATE, "private")
    write(stage.SETS["pool"], ["What is the capital of France?", "Name three rivers.", "Write a poem about rain."],
          "dp")
    write(stage.SETS["release"], ["What is the capital of France?", "Write a poem about rain."], "dp")
    return tmp_path


def run(limit=None, n=10):
    with Outputs() as out:
        return stage.memorisation({"memorisation": {"ngram_n": n, "max_release_matches": limit}}, out)


def test_counts_are_written_as_private_metrics(sets):
    metrics = run()
    assert metrics["release"] == {"rows": 2, "exact": 1, "ngram": 0, "any": 1}
    assert metrics["pool"]["exact"] == 1 and metrics["pool"]["rows"] == 3
    saved = json.loads((sets / stage.METRICS).read_text())
    assert saved == metrics and "capital" not in (sets / stage.METRICS).read_text()


def test_a_release_over_the_limit_fails_and_writes_nothing(sets):
    assert run(limit=1)["release"]["any"] == 1  # at the limit: passes
    (sets / stage.METRICS).unlink()
    with pytest.raises(QualityError, match=r"1 rows copy .*max_release_matches=0") as err:
        run(limit=0)
    assert "capital" not in str(err.value).lower() and not (sets / stage.METRICS).exists()


@pytest.mark.parametrize("key,value", [("ngram_n", 0), ("ngram_n", "10"), ("ngram_n", 2.5),
                                       ("max_release_matches", -1), ("max_release_matches", "5"),
                                       ("max_release_matches", True)])
def test_bad_settings_are_refused_by_name(sets, key, value):
    cfg = {"ngram_n": 10, "max_release_matches": None, key: value}
    with pytest.raises(ConfigError, match=f"memorisation.{key}"), Outputs() as out:
        stage.memorisation({"memorisation": cfg}, out)


def test_an_empty_release_counts_zero_and_passes_a_zero_limit(sets):
    write(stage.SETS["release"], [], "dp")
    assert run(limit=0)["release"] == {"rows": 0, "exact": 0, "ngram": 0, "any": 0}
