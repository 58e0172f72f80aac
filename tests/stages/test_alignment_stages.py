"""The sft and evaluate_alignment stages end to end at toy size, on the tiny random student."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import yaml

from dpinstruct.io.artifacts import Outputs, table_metadata, write_parquet
from dpinstruct.io.errors import PrivacyConfigError
from stages import annotate, evaluate_alignment, sft

PAIRS = [("What is 2+2?", "2+2 is 4."), ("Name a primary colour.", "Red is a primary colour."),
         ("Say hello in French.", "Bonjour!"), ("What is the capital of Italy?", "The capital of Italy is Rome."),
         ("Count to three.", "One, two, three."), ("What day follows Monday?", "Tuesday follows Monday."),
         ("Is ice cold?", "Yes, ice is cold."), ("Give a word that rhymes with cat.", "Hat rhymes with cat.")]


def write_annotated(name: str, privacy: str) -> None:
    df = pd.DataFrame({"id": [f"{name}{i}" for i in range(len(PAIRS))], "instruction": [p[0] for p in PAIRS],
                       "response": [p[1] for p in PAIRS], "response_tokens": [8] * len(PAIRS),
                       "finish_reason": ["stop"] * len(PAIRS)})
    path = annotate.output(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(pa.Table.from_pandas(df, preserve_index=False), path, annotate.SCHEMA,
                  table_metadata("annotate", "x", privacy))


@pytest.fixture
def project(tmp_path, monkeypatch, tiny_generator_dir, repo_params):
    """The mechanics of SFT and of scoring (files, intervals, judging both orders) on the tiny random
    generator (conftest); what the students learn is measured by `dvc repro` (docs/alignment.md)."""
    monkeypatch.chdir(tmp_path)
    Path("data/models").mkdir(parents=True)
    os.symlink(tiny_generator_dir, "data/models/generator")
    params = yaml.safe_load(yaml.safe_dump(repo_params))
    params["sft"].update(examples=6, steps=2, batch_size=3, max_length=96)
    params["evaluate_alignment"].update(rows=6, max_new_tokens=8, batch_size=4, bootstrap=200)
    params["evaluate_alignment"]["judge"].update(rows=4)
    return params


def test_sft_stage_writes_a_peft_adapter_and_its_loss_curve(project):
    write_annotated("release", "dp")
    with Outputs() as out:
        sft.sft("release", project, out)
    assert (sft.adapter_dir("release") / "adapter_config.json").exists()
    loss = pd.read_csv(sft.live_dir("release") / "plots/metrics/loss.tsv", sep="\t")
    assert len(loss) == 2 and (loss.loss > 0).all()
    assert json.loads((sft.live_dir("release") / "metrics.json").read_text())["pairs"] == 6


def test_evaluate_alignment_scores_every_adapter_against_the_bare_student(project):
    project["evaluate_alignment"]["judge"]["backend"] = "local"  # the mechanics of judging, with the tiny local judge
    write_annotated("release", "dp")
    with Outputs() as out:
        sft.sft("release", project, out)
    for name in ("train", "public", "pool"):  # the same adapter under every name: the mechanics, not the ranking
        shutil.copytree(sft.adapter_dir("release"), sft.adapter_dir(name))
    write_annotated("test", "private")
    with Outputs() as out:
        result = evaluate_alignment.evaluate_alignment(project, out)
    saved = json.loads(Path(evaluate_alignment.METRICS).read_text())
    assert saved == json.loads(json.dumps(result)) and saved["rows"] == 6
    for name in ("bare", "train", "public", "pool", "release"):
        nll = saved["nll"][name]
        assert nll["lo"] <= nll["mean"] <= nll["hi"] and nll["n"] == 6
    assert saved["nll"]["release"]["mean"] == pytest.approx(saved["nll"]["pool"]["mean"])  # same adapter, same score
    assert saved["nll"]["release"]["mean"] != saved["nll"]["bare"]["mean"]
    for name in ("train", "public", "pool", "release"):
        w = saved["win_rate"][name]
        assert w["wins"] + w["ties"] + w["losses"] == 4 == saved["judged_rows"] and 0 <= w["win_rate"] <= 1
    assert set(saved["nll_diff"]) >= {"release-bare", "train-release", "release-pool", "pool-public"}
    assert 0 <= saved["judge"]["position_consistency"] <= 1 and "sanity_win_rate" in saved["judge"]
    # a judge that fails its own checks is marked so (the rule, recomputed from what it reports)
    j = saved["judge"]
    assert j["trusted"] == (j["position_consistency"] >= evaluate_alignment.MIN_CONSISTENCY
                            and j["sanity_win_rate"]["lo"] > 0.5)
    plot = pd.read_csv(evaluate_alignment.NLL_PLOT)
    assert list(plot.model) == ["bare", "train", "public", "pool", "release"]
    assert list(pd.read_csv(evaluate_alignment.WIN_PLOT).set) == ["train", "public", "pool", "release"]


def test_without_a_judge_no_win_rate_is_reported_and_the_metrics_say_why(project, monkeypatch):
    assert project["evaluate_alignment"]["judge"]["backend"] == "none"  # the default
    monkeypatch.setattr(evaluate_alignment, "answers", lambda *a: pytest.fail("answers generated for no judge"))
    write_annotated("release", "dp")
    with Outputs() as out:
        sft.sft("release", project, out)
    for name in ("train", "public", "pool"):
        shutil.copytree(sft.adapter_dir("release"), sft.adapter_dir(name))
    write_annotated("test", "private")
    with Outputs() as out:
        evaluate_alignment.evaluate_alignment(project, out)
    saved = json.loads(Path(evaluate_alignment.METRICS).read_text())
    assert saved["win_rate"] == {} and saved["judged_rows"] == 0 and "position consistency" in saved["judge"]["note"]
    assert set(saved["nll"]) == {"bare", "train", "public", "pool", "release"}
    assert list(pd.read_csv(evaluate_alignment.WIN_PLOT).columns) == ["set", "win_rate", "lo", "hi"]


def test_a_remote_judge_never_sees_the_private_test_split_without_the_opt_in(project):
    project["evaluate_alignment"]["judge"]["backend"] = "openai"
    with pytest.raises(PrivacyConfigError, match="evaluate_alignment.judge.allow_remote_private"):
        with Outputs() as out:
            evaluate_alignment.evaluate_alignment(project, out)
    assert not Path(evaluate_alignment.METRICS).exists()
