"""Task (ii) end to end at toy size on shipped preference pairs and the real models: prepare, the
embedder's features, the DP reward model (ledger entry of its own dataset), the non-private reference
and gold models, RLHF-PPO on each prompt source, account across datasets, the evaluation; and the
inputs and settings the stages refuse."""
from __future__ import annotations

import gzip
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml

from dpinstruct.io.artifacts import Outputs, table_metadata, write_parquet
from dpinstruct.io.errors import ConfigError, InputError, PrivacyConfigError
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger
from dpinstruct.rl import bradley_terry as bt
from stages import account, dp_reward_model, evaluate_rlhf, hh_prepare, preference_features, reward_models, rlhf_ppo

REPO = Path(__file__).resolve().parents[2]
INSTRUCTIONS = pa.schema([pa.field("id", pa.string()), pa.field("instruction", pa.string())])


def run(fn, *args):
    with Outputs() as out:
        return fn(*args, out)


def instruction_set(path: str, texts: list[str], privacy: str) -> None:
    table = pa.table({"id": [f"{Path(path).stem}-{i}" for i in range(len(texts))], "instruction": texts},
                     schema=INSTRUCTIONS)
    write_parquet(table, path, INSTRUCTIONS, table_metadata("test", "0", privacy))


@pytest.fixture
def project(tmp_path, monkeypatch, generator_dir, embedder_dir, repo_params):
    monkeypatch.chdir(tmp_path)
    Path("data/models").mkdir(parents=True)
    os.symlink(generator_dir, "data/models/generator")
    os.symlink(embedder_dir, "data/models/embedder")
    Path("data/raw/hh_rlhf").mkdir(parents=True)
    with gzip.open(REPO / "data/raw/hh_rlhf/pairs.jsonl.gz", "rt") as f, \
            gzip.open("data/raw/hh_rlhf/pairs.jsonl.gz", "wt") as g:
        g.writelines(line for _, line in zip(range(90), f))
    flan = [json.loads(line)["instruction"] for line in (REPO / "data/raw/flan_v2_cot/instructions.jsonl").open()][:40]
    flan = [t for t in flan if len(t) < 200]
    for path, texts, privacy in (("data/release/instructions.parquet", flan[0:6], "dp"),
                                 ("data/prepared/train.parquet", flan[6:12], "private"),
                                 ("data/prepared/public.parquet", flan[12:18], "public"),
                                 ("data/prepared/test.parquet", flan[18:24], "private")):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        instruction_set(path, texts, privacy)
    params = yaml.safe_load(yaml.safe_dump(repo_params))
    rlhf = params["rlhf"]
    rlhf["privacy"].update(epsilon=8.0, delta=1e-3)
    rlhf["dp_reward_model"].update(sampling_rate=0.2, steps=6, expected_batch_size=14, checkpoint_every=2)
    rlhf["rlhf_ppo"].update(steps=1, prompts_per_step=2, new_tokens=4, max_prompt_tokens=128)
    rlhf["evaluate_rlhf"].update(rows=4, bootstrap=100)
    return params


def other_datasets_ledger():
    for name, dataset, part in (("train_generator", "instructions", "all"), ("histogram", "instructions", "all"),
                                ("dp_sft", "imdb", "sft"), ("dp_ppo", "imdb", "ppo")):
        entry = ledger.make_entry(stage=name, mechanism="m", dataset=dataset, partition=part, noise_multiplier=1.0,
                                  sampling_rate=0.05, steps=10, sensitivity=1.0, delta=1e-5,
                                  event=acct.dp_sgd_event(1.0, 0.05, 10))
        Path(ledger.entry_path(name)).write_text(json.dumps(entry))


def test_the_rlhf_pipeline_end_to_end(project, monkeypatch):
    counts = run(hh_prepare.hh_prepare, project)
    assert counts["read"] == 90 and counts["reward"] + counts["heldout"] + counts["context_differs"] \
        + counts["empty_answer"] == 90
    assert run(preference_features.preference_features, project) == counts["reward"] + counts["heldout"]
    features = pd.read_parquet(preference_features.OUT)
    assert np.allclose(np.linalg.norm(np.stack(features.chosen.to_numpy()), axis=1), 1, atol=1e-5)
    seen = []
    real = bt.train_head
    monkeypatch.setattr(bt, "train_head", lambda dp, deltas, *a, **k: seen.append(len(deltas)) or real(dp, deltas, *a, **k))
    entry = run(dp_reward_model.dp_reward_model, project)
    assert seen == [counts["reward"]]  # the DP model reads the reward part only, never the held-out pairs
    assert entry["dataset"] == "hh_rlhf" and entry["partition"] == "reward" and entry["private"]
    assert entry["privacy_unit"].startswith("one comparison") and entry["epsilon"] <= 8.0
    assert entry["sampling_rate"] == 0.2 and entry["steps"] == 6
    run(reward_models.reward_models, project)
    for source in ("release", "real", "flan"):
        run(rlhf_ppo.rlhf_ppo, source, project)
        assert Path(f"data/adapters/rlhf/{source}/adapter_model.safetensors").exists()
        assert json.loads(Path(f"dvclive/rlhf_ppo/{source}/metrics.json").read_text())["step"] == 0
    other_datasets_ledger()
    project["privacy"].update(epsilon=10.0, delta=1e-5)
    project["rl"]["privacy"].update(epsilon=10.0, delta=1e-5)
    privacy = run(account.account, project)
    assert privacy["datasets"]["hh_rlhf"]["epsilon"] == entry["epsilon"]
    assert privacy["datasets"]["hh_rlhf"]["partitions"]["reward"]["stages"] == ["dp_reward_model"]
    result = run(evaluate_rlhf.evaluate_rlhf, project)
    saved = json.loads(Path(evaluate_rlhf.METRICS).read_text())
    assert set(saved["gold_reward"]) == {"base", "release", "real", "flan"}
    for name in ("release", "real", "flan"):
        g = saved["gold_reward"][name]
        assert g["lo"] <= g["mean"] <= g["hi"] and g["n"] == 4
        assert 0 <= g["win_rate_vs_base"]["mean"] <= 1
        assert g["minus_base"]["mean"] == pytest.approx(g["mean"] - saved["gold_reward"]["base"]["mean"], abs=1e-9)
    for name in ("dp_reward_model", "reward_model", "gold_reward_model"):
        assert 0 <= saved[name]["accuracy"] <= 1
        assert saved[name]["interval"]["n"] == counts["heldout"]
    assert saved["epsilon"]["hh_rlhf"]["epsilon"] == entry["epsilon"] and result["rows"] == 4
    assert pd.read_csv(evaluate_rlhf.PLOT).policy.tolist() == ["base", "release", "real", "flan"]


def test_bad_pairs_stop_the_stage_and_leave_no_output(project):
    with gzip.open("data/raw/hh_rlhf/pairs.jsonl.gz", "at") as f:
        f.write('{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: a", "rejected": ""}\n')
    with pytest.raises(InputError, match=r"pairs.jsonl.gz, line 91, field 'rejected': empty text"):
        run(hh_prepare.hh_prepare, project)
    assert not Path(hh_prepare.OUT).exists() and not Path(hh_prepare.METRICS).exists()


def test_unsafe_or_unusable_settings_are_refused(project):
    with pytest.raises(ConfigError, match="rlhf.data.heldout_share"):
        run(hh_prepare.hh_prepare, {**project, "rlhf": {**project["rlhf"], "data": {**project["rlhf"]["data"],
                                                                                    "heldout_share": 1.0}}})
    run(hh_prepare.hh_prepare, project)
    run(preference_features.preference_features, project)
    project["rlhf"]["privacy"].update(delta=0.5)  # delta >= 1/N would allow releasing a comparison in the clear
    with pytest.raises(PrivacyConfigError, match=r"rlhf.privacy.delta=0.5 must be in \(0, 1/N\)"):
        run(dp_reward_model.dp_reward_model, project)
    assert not Path(dp_reward_model.MODEL_DIR).exists()
    with pytest.raises(ConfigError, match="unknown prompt source 'judge'"):
        run(rlhf_ppo.rlhf_ppo, "judge", project)
    project["rlhf"]["rlhf_ppo"].update(rollouts=1)
    with pytest.raises(ConfigError, match="rollouts >= 2"):
        run(rlhf_ppo.rlhf_ppo, "release", project)


def test_the_dp_reward_model_replays_with_the_key_and_not_without_it(project, monkeypatch, tmp_path):
    # An attacker holds the features' digest, params.yaml and the code; without the key the model's
    # Poisson draws and noise cannot be replayed (so they cannot be subtracted from the weights).
    run(hh_prepare.hh_prepare, project)
    run(preference_features.preference_features, project)
    weights = []
    for key in ("a", "a", "b"):
        monkeypatch.setenv("DPINSTRUCT_KEY_FILE", str(tmp_path / f"key-{key}"))
        shutil.rmtree(dp_reward_model.CHECKPOINT_DIR, ignore_errors=True)
        run(dp_reward_model.dp_reward_model, project)
        weights.append(json.loads((dp_reward_model.MODEL_DIR / "reward_model.json").read_text())["weight"])
        shutil.rmtree(dp_reward_model.MODEL_DIR)
    assert weights[0] == weights[1] and weights[0] != weights[2]
