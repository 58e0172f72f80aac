"""The epsilon-sweep recipe, run for real (dvc exp queue, run-all, exp show) on a toy DVC project
whose single stage maps privacy.epsilon to the metrics files the real pipeline writes."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpinstruct import cli
from dpinstruct.tools import sweep

TOY = '''
import json, math, yaml
value = yaml.safe_load(open("params.yaml"))["privacy"]["epsilon"]
eps = float(value.lstrip(".") if isinstance(value, str) else value)  # dvc exp -S writes the string '.inf'

finite = math.isfinite(eps)
mauve = {s: round(b * eps / (1 + eps), 6) if finite else b
         for s, b in {"release": 0.8, "pool": 0.7, "train": 0.97, "public": 0.04}.items()} | {"base": 0.6}
json.dump({"mauve": {s: {"mauve": m, "mauve_std": 0.01, "lo": m - 0.02, "hi": m + 0.02, "per_draw": [m - 0.01, m + 0.01]}
                     for s, m in mauve.items()},
           "differences": {"release-pool": {"mean": mauve["release"] - mauve["pool"], "lo": 0.0, "hi": 0.2}},
           "yield": {"pool": {"mean": 0.25, "lo": 0.21, "hi": 0.29}, "base": {"mean": 0.13, "lo": 0.11, "hi": 0.15}}},
          open("metrics/eval.json", "w"))
val = 3.0 + (1.0 / eps if finite else 0.0)
json.dump({"dp": {"mean": val, "lo": val - 0.01, "hi": val + 0.01}, "base": {"mean": 4.5, "lo": 4.4, "hi": 4.6}},
          open("metrics/val_nll.json", "w"))
json.dump({"epsilon": {"instructions": eps}}, open("metrics/summary.json", "w"))
import os, pandas as pd
os.makedirs("data/eval", exist_ok=True)  # per-record val NLL: record i costs (i % 5) + 1/eps more than at inf
pd.DataFrame({"dp_nll": [(i % 5 + 1) * 3.0 + (i % 5 + 1) * (1.0 / eps if finite else 0.0) for i in range(40)],
              "base_nll": [4.5] * 40, "tokens": [i % 5 + 1 for i in range(40)]}).to_parquet("data/eval/val_nll.parquet")
json.dump({"released": int(10 * min(eps, 100))}, open("metrics/resample.json", "w"))
json.dump({"kept": 100, "sampled": 400}, open("metrics/generate.json", "w"))
rl_value = yaml.safe_load(open("params.yaml"))["rl"]["privacy"]["epsilon"]
rl_eps = float(rl_value.lstrip(".") if isinstance(rl_value, str) else rl_value)
rl_finite = math.isfinite(rl_eps)
json.dump({"epsilon": eps * 0.99 if finite else "inf", "epsilon_prv": eps if finite else "inf",
           "stages": {"train_generator": {"noise_multiplier": 1 / eps if finite else 0.0}},
           "datasets": {"imdb": {"epsilon": rl_eps * 0.98 if rl_finite else "inf",
                                 "epsilon_prv": rl_eps if rl_finite else "inf"}}}, open("metrics/privacy.json", "w"))
names = {"dp_sft": "dp_sft", "dp_ppo": "dp_ppo"} if rl_finite else {"dp_sft": "sft", "dp_ppo": "ppo"}
gain = 1.0 - (1.0 / rl_eps if rl_finite else 0.0)
json.dump({"mean_reward": {"base": {"mean": 0.1, "lo": 0.0, "hi": 0.2}, names["dp_sft"]: {"mean": 0.2, "lo": 0.1, "hi": 0.3},
                           names["dp_ppo"]: {"mean": 0.2 + gain, "lo": 0.1 + gain, "hi": 0.3 + gain}},
           "reward_diff": {names["dp_ppo"] + "-" + names["dp_sft"]: {"mean": gain, "lo": gain - 0.1, "hi": gain + 0.1}}},
          open("metrics/rl.json", "w"))
nll = 1.0 + (1.0 / eps if finite else 0.0)
json.dump({"nll": {s: {"mean": nll + d, "lo": nll + d - 0.05, "hi": nll + d + 0.05}
                   for s, d in {"release": 0.0, "pool": 0.1, "train": -0.1, "public": 0.3, "bare": 0.5}.items()},
           "win_rate": {"release": {"win_rate": 0.6, "lo": 0.5, "hi": 0.7}}}, open("metrics/alignment.json", "w"))
'''


def expected_mauve(base, eps):
    return round(base * eps / (1 + eps), 6) if math.isfinite(eps) else base


@pytest.fixture
def toy_repo(tmp_path, monkeypatch):
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # stage commands run `python`: this interpreter's (the toy writes Parquet with pandas, as val_nll does)
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    monkeypatch.chdir(tmp_path)
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    Path("toy.py").write_text(TOY)
    Path("metrics").mkdir()
    Path("params.yaml").write_text(yaml.safe_dump({"privacy": {"epsilon": 6.0, "delta": 1e-5},
                                                   "rl": {"privacy": {"epsilon": 4.0, "delta": 1e-5}}}))
    reports = ["metrics/privacy.json", "metrics/eval.json", "metrics/resample.json", "metrics/generate.json",
               "metrics/alignment.json", "metrics/rl.json", "metrics/val_nll.json"]
    # As the real pipeline: the release, its annotation (an alignment stage), and reports of which only
    # metrics/summary.json is a DVC metric; the others are git-tracked outputs.
    Path("dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "resample": {"cmd": "python -c \"import yaml,os; os.makedirs('data/release', exist_ok=True); "
                            "open('data/release/instructions.parquet', 'w').write(str(yaml.safe_load("
                            "open('params.yaml'))['privacy']['epsilon']))\"",
                     "params": ["privacy"], "outs": ["data/release/instructions.parquet"]},
        "annotate": {"foreach": ["release"], "do": {
            "cmd": "python -c \"import shutil,os; os.makedirs('data/annotated', exist_ok=True); "
                   "shutil.copy('data/release/instructions.parquet', 'data/annotated/release')\"",
            "deps": ["data/release/instructions.parquet"], "outs": ["data/annotated/${item}"]}},
        "toy": {"cmd": "python toy.py", "deps": ["toy.py", "data/release/instructions.parquet"],
                "params": ["privacy", "rl.privacy"],
                "outs": ["data/eval/val_nll.parquet", *({m: {"cache": False}} for m in reports)],
                "metrics": [{"metrics/summary.json": {"cache": False}}]}}}))
    run(sys.executable, "-m", "dvc", "repro", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "toy")
    return tmp_path


def test_sweep_queues_runs_and_tabulates_each_epsilon(toy_repo, capsys):
    assert cli.main(["sweep", "--epsilons", "1", "3", "inf"]) == 0
    printed = capsys.readouterr().out
    rows = sweep.collect(json.loads(sweep.dvc("exp", "show", "--json", capture=True)))
    assert [r["experiment"] for r in rows] == ["eps-1", "eps-3", "eps-inf"]
    for r, eps in zip(rows, (1.0, 3.0, math.inf)):
        assert r["mauve_release"] == pytest.approx(expected_mauve(0.8, eps))
        assert r["mauve_pool"] == pytest.approx(expected_mauve(0.7, eps))
        assert r["released"] == int(10 * min(eps, 100)) and not r["failed"]
        assert (r["epsilon"] == "inf") if math.isinf(eps) else r["epsilon"] == pytest.approx(0.99 * eps)
        assert f"| {r['experiment']} |" in printed and r["sampled"] == 400
        assert (r["epsilon_prv"] == "inf") if math.isinf(eps) else r["epsilon_prv"] == pytest.approx(eps)
    assert "| 0.250 [0.210, 0.290] (100 / 400) |" in printed and "| 0.990 (1.000) |" in printed
    assert rows[0]["val_nll"]["mean"] == pytest.approx(4.0) and "| 4.000 [3.990, 4.010] |" in printed
    assert "| base (no fine-tuning) | - | - | - | 0.130 [0.110, 0.150] | - | 4.500 [4.400, 4.600] | 0.600 [0.580, 0.620] |" \
        in printed
    assert rows[0]["nll_release"]["mean"] == pytest.approx(2.0) and "| 2.000 [1.950, 2.050] |" in printed
    assert "| 0.600 [0.500, 0.700] |" in printed  # the release's win rate against the bare student
    with open(sweep.PLOT) as f:
        plot = list(csv.DictReader(f))
    assert [p["experiment"] for p in plot] == ["eps-1", "eps-3"]  # the non-private run is the reference column
    assert all(float(p["mauve_release_nonprivate"]) == pytest.approx(0.8) for p in plot)
    assert float(plot[0]["epsilon"]) == pytest.approx(0.99)
    assert float(plot[0]["val_nll"]) == pytest.approx(4.0) and float(plot[0]["mauve_base"]) == pytest.approx(0.6)
    # adjacent epsilons paired on the same val records (from the DVC cache) and the same MAUVE draws
    pairs = sweep.comparisons(rows)
    assert [(p["a"], p["b"]) for p in pairs] == [("eps-1", "eps-3"), ("eps-3", "eps-inf")]
    assert pairs[0]["val_nll"]["mean"] == pytest.approx(1 - 1 / 3)  # every record: the same per-token gap
    assert pairs[0]["val_nll"]["lo"] == pytest.approx(2 / 3) and pairs[0]["val_nll"]["hi"] == pytest.approx(2 / 3)
    assert pairs[1]["mauve_release"]["mean"] == pytest.approx(expected_mauve(0.8, 3.0) - 0.8)
    assert "| eps-1 - eps-3 | 0.667 [0.667, 0.667] * |" in printed
    # the workspace itself is left as committed
    assert yaml.safe_load(Path("params.yaml").read_text())["privacy"]["epsilon"] == 6.0


def test_a_sweep_until_the_summary_leaves_the_alignment_columns_empty(toy_repo, capsys):
    """`--until toy` runs the release but not its annotation: the alignment figures in the experiment
    commit are the baseline's, about another release, and must not be reported."""
    assert cli.main(["sweep", "--epsilons", "2", "--until", "toy"]) == 0
    rows = sweep.collect(json.loads(sweep.dvc("exp", "show", "--json", capture=True)))
    assert [r["experiment"] for r in rows] == ["eps-2"]
    assert rows[0]["val_nll"]["mean"] == pytest.approx(3.5) and rows[0]["nll_release"] is None
    assert rows[0]["win_release"] is None


def test_epsilon_is_written_as_a_float_like_the_committed_params():
    assert [sweep.param_value(e) for e in ("6", "0.5", "1e1", "inf")] == ["6.0", "0.5", "10.0", ".inf"]


def test_bad_epsilon_is_refused_before_anything_is_queued(toy_repo):
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        sweep.queue(["3", "0"])
    assert "eps-3" not in sweep.dvc("queue", "status", capture=True)


def test_collect_only_without_experiments_fails_clearly(toy_repo, capsys):
    assert cli.main(["sweep", "--collect-only"]) == 1
    assert "no experiments named eps-*" in capsys.readouterr().err
    assert not os.path.exists(sweep.PLOT)


def test_the_rl_sweep_varies_the_rl_budget_and_tabulates_the_rewards(toy_repo, capsys):
    assert cli.main(["sweep", "--param", "rl.privacy.epsilon", "--epsilons", "2", "inf"]) == 0
    printed = capsys.readouterr().out
    rows = sweep.collect(json.loads(sweep.dvc("exp", "show", "--json", capture=True)), "rl.privacy.epsilon")
    assert [r["experiment"] for r in rows] == ["rl-eps-2", "rl-eps-inf"]
    assert rows[0]["rl_epsilon"] == pytest.approx(1.96) and rows[1]["rl_epsilon"] == "inf"
    assert rows[0]["reward_ppo"]["mean"] == pytest.approx(0.7) and rows[1]["reward_ppo"]["mean"] == pytest.approx(1.2)
    assert "| rl-eps-2 | 2.00 | 1.960 (2.000) | 0.100 [0.000, 0.200] | 0.200 [0.100, 0.300] |" in printed
    assert "| 0.500 [0.400, 0.600] |" in printed  # PPO - SFT at epsilon 2
    # the release's sweep does not list the RL experiments
    assert sweep.collect(json.loads(sweep.dvc("exp", "show", "--json", capture=True))) == []
    with open(sweep.RL_PLOT) as f:
        plot = list(csv.DictReader(f))
    assert [p["experiment"] for p in plot] == ["rl-eps-2"] and float(plot[0]["reward_ppo_nonprivate"]) == 1.2
