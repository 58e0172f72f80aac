"""Task (ii) end to end at toy size on shipped preference pairs and the real models: prepare, the
embedder's features, the reward part's DP count, the DP reward model (ledger entry of its own
dataset), the non-private reference and gold models, RLHF-PPO on each prompt source, account across
datasets, the evaluation; the part's size reaching the ledger only through its DP count; the one
randomness setting (privacy.secure_mode / key) reaching the DP reward model; and the inputs and
settings the stages refuse."""
from __future__ import annotations

import gzip
import json
import os
import re
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
from dpinstruct.privacy import dp_count, ledger
from dpinstruct.rl import bradley_terry as bt
from stages import account, dp_reward_model, evaluate_rlhf, hh_prepare, preference_features, reward_models, rlhf_ppo
from tests.conftest import run_dp_count
from tests.spies import record_reads, record_streams, unbound_reads

REPO = Path(__file__).resolve().parents[2]
COUNT = "hh_rlhf"  # the DP count of the reward part (stage dp_count@hh_rlhf)
COUNT_SIGMA = 4.0  # dp_count.sigma here: N~ stays near the ~70 reward comparisons, so q x N~ is a real batch
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
    """The real generator: the end-to-end test."""
    return rlhf_project(tmp_path, monkeypatch, generator_dir, embedder_dir, repo_params)


@pytest.fixture
def tiny(tmp_path, monkeypatch, tiny_generator_dir, embedder_dir, repo_params):
    """The tiny random generator (conftest): the mechanics tests (keys, sizes, refusals)."""
    return rlhf_project(tmp_path, monkeypatch, tiny_generator_dir, embedder_dir, repo_params)


def rlhf_project(tmp_path, monkeypatch, generator_dir, embedder_dir, repo_params):
    monkeypatch.chdir(tmp_path)
    Path("data/models").mkdir(parents=True)
    os.symlink(generator_dir, "data/models/generator")
    os.symlink(embedder_dir, "data/models/embedder")
    Path("data/raw/hh_rlhf").mkdir(parents=True)
    raw_pairs(90)
    flan = [json.loads(line)["instruction"] for line in (REPO / "data/raw/flan_v2_cot/instructions.jsonl").open()][:40]
    flan = [t for t in flan if len(t) < 200]
    for path, texts, privacy in (("data/release/instructions.parquet", flan[0:6], "dp"),
                                 ("data/prepared/train.parquet", flan[6:12], "private"),
                                 ("data/prepared/public.parquet", flan[12:18], "public"),
                                 ("data/prepared/test.parquet", flan[18:24], "private")):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        instruction_set(path, texts, privacy)
    params = yaml.safe_load(yaml.safe_dump(repo_params))
    params["dp_count"]["sigma"] = COUNT_SIGMA
    rlhf = params["rlhf"]
    rlhf["privacy"].update(epsilon=8.0, delta=1e-3)
    # no batch size: the divisor of each step's noisy sum is q x N~ of the reward part's DP count
    rlhf["dp_reward_model"].update(sampling_rate=0.2, steps=6, checkpoint_every=2)
    rlhf["rlhf_ppo"].update(steps=1, prompts_per_step=2, new_tokens=4, max_prompt_tokens=128)
    rlhf["evaluate_rlhf"].update(rows=4, bootstrap=100)
    return params


def raw_pairs(n: int) -> None:
    """The first n shipped preference pairs as this project's raw file."""
    with gzip.open(REPO / "data/raw/hh_rlhf/pairs.jsonl.gz", "rt") as f, \
            gzip.open("data/raw/hh_rlhf/pairs.jsonl.gz", "wt") as g:
        g.writelines(line for _, line in zip(range(n), f))


def features(params) -> dict:
    """hh_prepare, preference_features and the reward part's DP count (dp_count@hh_rlhf), as dvc
    repro runs them before the DP reward model: the count's entry."""
    run(hh_prepare.hh_prepare, params)
    run(preference_features.preference_features, params)
    return run_dp_count(COUNT, params)


def reward_part_size() -> int:
    """The exact number of comparisons in the reward part (private: what the ledger must not reveal)."""
    return int((pd.read_parquet(preference_features.OUT, columns=["partition"]).partition == "reward").sum())


def other_datasets_ledger():
    """The other datasets' entries, their DP counts included, keyed like the reward model of the test."""
    for name, dataset, part in (("train_generator", "instructions", "all"), ("histogram", "instructions", "all"),
                                ("dp_count@instructions", "instructions", "all"), ("dp_sft", "imdb", "sft"),
                                ("dp_ppo", "imdb", "ppo"), ("dp_count@imdb_sft", "imdb", "sft"),
                                ("dp_count@imdb_ppo", "imdb", "ppo")):
        entry = ledger.make_entry(stage=name, mechanism="m", dataset=dataset, partition=part, sensitivity=1.0, delta=1e-5,
                                  event=acct.dp_sgd_event(1.0, 0.05, 10), secure_mode=False)
        Path(ledger.entry_path(name)).write_text(json.dumps(entry))


def test_the_rlhf_pipeline_end_to_end(project, monkeypatch):
    counts = run(hh_prepare.hh_prepare, project)
    assert counts["read"] == 90 and counts["reward"] + counts["heldout"] + counts["context_differs"] \
        + counts["empty_answer"] == 90
    assert run(preference_features.preference_features, project) == counts["reward"] + counts["heldout"]
    table = pd.read_parquet(preference_features.OUT)
    assert np.allclose(np.linalg.norm(np.stack(table.chosen.to_numpy()), axis=1), 1, atol=1e-5)
    count = run_dp_count(COUNT, project)
    assert count["dataset"] == "hh_rlhf" and count["partition"] == "reward" and count["noise_multiplier"] == COUNT_SIGMA
    seen = []
    real = bt.train_head
    monkeypatch.setattr(bt, "train_head", lambda dp, deltas, *a, **k: seen.append(len(deltas)) or real(dp, deltas, *a, **k))
    entry = run(dp_reward_model.dp_reward_model, project)
    assert seen == [counts["reward"]]  # the DP model reads the reward part only, never the held-out pairs
    assert entry["dataset"] == "hh_rlhf" and entry["partition"] == "reward" and entry["private"]
    assert entry["privacy_unit"].startswith("one comparison") and entry["epsilon"] <= 8.0
    assert entry["sampling_rate"] == 0.2 and entry["steps"] == 6
    assert entry["plan"]["expected_batch_size"] == pytest.approx(0.2 * count["noisy_count"])  # q x N~
    run(reward_models.reward_models, project)
    for source in ("release", "real", "flan"):
        run(rlhf_ppo.rlhf_ppo, source, project)
        assert Path(f"data/adapters/rlhf/{source}/adapter_model.safetensors").exists()
        assert json.loads(Path(f"dvclive/rlhf_ppo/{source}/metrics.json").read_text())["step"] == 0
    other_datasets_ledger()
    project["privacy"].update(epsilon=10.0, delta=1e-5)
    project["rl"]["privacy"].update(epsilon=10.0, delta=1e-5)
    privacy = run(account.account, project)
    hh = privacy["datasets"]["hh_rlhf"]
    # the part composes its count with the model, which was calibrated with the count as its prior
    assert hh["partitions"]["reward"]["stages"] == ["dp_count@hh_rlhf", "dp_reward_model"]
    assert hh["epsilon"] == pytest.approx(entry["plan"]["composed_epsilon"], abs=1e-6)
    assert entry["epsilon"] < hh["epsilon"] <= 8.0
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
    assert saved["epsilon"]["hh_rlhf"]["epsilon"] == hh["epsilon"] and result["rows"] == 4
    assert pd.read_csv(evaluate_rlhf.PLOT).policy.tolist() == ["base", "release", "real", "flan"]


def test_bad_pairs_stop_the_stage_and_leave_no_output(tiny):
    with gzip.open("data/raw/hh_rlhf/pairs.jsonl.gz", "at") as f:
        f.write('{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: a", "rejected": ""}\n')
    with pytest.raises(InputError, match=r"pairs.jsonl.gz, line 91, field 'rejected': empty text"):
        run(hh_prepare.hh_prepare, tiny)
    assert not Path(hh_prepare.OUT).exists() and not Path(hh_prepare.METRICS).exists()


def test_unsafe_or_unusable_settings_are_refused(tiny):
    with pytest.raises(ConfigError, match="rlhf.data.heldout_share"):
        run(hh_prepare.hh_prepare, {**tiny, "rlhf": {**tiny["rlhf"], "data": {**tiny["rlhf"]["data"],
                                                                                    "heldout_share": 1.0}}})
    noisy = features(tiny)["noisy_count"]
    tiny["rlhf"]["privacy"].update(delta=0.5)  # delta >= 1/N would allow releasing a comparison in the clear
    # refused by the DP count N~ (an exact N would make the refusal itself depend on N)
    with pytest.raises(PrivacyConfigError, match=r"rlhf.privacy.delta=0.5 must be in \(0, 1/N\) .* for the DP count "
                                                 + re.escape(f"N~={noisy:.1f} ")):
        run(dp_reward_model.dp_reward_model, tiny)
    assert not Path(dp_reward_model.MODEL_DIR).exists()
    tiny["rlhf"]["privacy"].update(delta=1e-3)
    Path(dp_count.entry_path(COUNT)).unlink()  # without the part's DP count the stage does not run (it would need N)
    with pytest.raises(FileNotFoundError, match=r"dp_count@hh_rlhf.json: the DP count of hh_rlhf is missing"):
        run(dp_reward_model.dp_reward_model, tiny)
    assert not Path(dp_reward_model.MODEL_DIR).exists()
    with pytest.raises(ConfigError, match="unknown prompt source 'judge'"):
        run(rlhf_ppo.rlhf_ppo, "judge", tiny)
    tiny["rlhf"]["rlhf_ppo"].update(rollouts=1)
    with pytest.raises(ConfigError, match=r"rlhf\.rlhf_ppo\.rollouts: must be an integer >= 2, got 1"):
        run(rlhf_ppo.rlhf_ppo, "release", tiny)


def test_the_dp_reward_model_replays_with_the_key_and_not_without_it(tiny, monkeypatch, tmp_path):
    # An attacker holds the features' digest, params.yaml and the code; without the key the model's
    # Poisson draws and noise cannot be replayed (so they cannot be subtracted from the weights).
    features(tiny)
    weights = []
    for key in ("a", "a", "b"):
        monkeypatch.setenv("DPINSTRUCT_KEY_FILE", str(tmp_path / f"key-{key}"))
        shutil.rmtree(dp_reward_model.CHECKPOINT_DIR, ignore_errors=True)
        run(dp_reward_model.dp_reward_model, tiny)
        weights.append(json.loads((dp_reward_model.MODEL_DIR / "reward_model.json").read_text())["weight"])
        shutil.rmtree(dp_reward_model.MODEL_DIR)
    assert weights[0] == weights[1] and weights[0] != weights[2]


def test_the_reward_parts_size_reaches_the_ledger_only_through_its_dp_count(tiny):
    # Two preference files whose reward parts differ in size, but whose DP counts came out equal
    # (the first run's count entry written before the second run): the entries must be identical,
    # since q, T and sigma are params and the only size in the entry is the divisor q x N~
    # (plan.expected_batch_size), which must be the DP count's and not the part's size N.
    saved, sizes, ledgers = None, [], []
    for n in (90, 120):
        raw_pairs(n)
        if saved is None:
            count = features(tiny)
            saved = Path(dp_count.entry_path(COUNT)).read_text()
        else:
            run(hh_prepare.hh_prepare, tiny)
            run(preference_features.preference_features, tiny)
            Path(dp_count.entry_path(COUNT)).write_text(saved)  # as if N~ had come out the same
        sizes.append(reward_part_size())
        run(dp_reward_model.dp_reward_model, tiny)
        ledgers.append(Path(ledger.entry_path("dp_reward_model")).read_text())
        shutil.rmtree("data/checkpoints")
    assert sizes[0] < sizes[1] and ledgers[0] == ledgers[1]
    entry = json.loads(ledgers[0])
    assert "n_records" not in entry and entry["sampling_rate"] == 0.2
    batch_over_q = entry["plan"]["expected_batch_size"] / entry["sampling_rate"]
    assert batch_over_q == pytest.approx(count["noisy_count"], rel=1e-12) and batch_over_q not in sizes  # N~, never N


def reward_model_run(project) -> dict:
    """The reward part's DP count and the DP reward model from scratch (no checkpoint to resume),
    recording the DP streams they ask for, the model's Poisson samples, its weights and the entries."""
    shutil.rmtree(dp_reward_model.CHECKPOINT_DIR, ignore_errors=True)
    samples, real_sample = [], bt.poisson_sample
    with pytest.MonkeyPatch.context() as mp:
        streams = record_streams(mp)
        mp.setattr(bt, "poisson_sample", lambda rng, n, q: samples.append(real_sample(rng, n, q)) or samples[-1])
        count = run_dp_count(COUNT, project)
        with record_reads() as reads:
            entry = run(dp_reward_model.dp_reward_model, project)
    weight = json.loads((dp_reward_model.MODEL_DIR / "reward_model.json").read_text())["weight"]
    return {"count": count, "entry": entry, "streams": streams, "samples": [s.tolist() for s in samples],
            # files the stage opened that its run key does not bind (from what it read, not its INPUTS)
            "unbound": unbound_reads(reads, Path.cwd(), own=("data/checkpoints", "dvclive", "keys")),
            "weight": weight}


def test_privacy_secure_mode_reaches_the_dp_reward_model_and_rlhf_privacy_does_not_decide(tiny, monkeypatch,
                                                                                          tmp_path):
    # The randomness setting is params' `privacy` section (key_file, secure_mode) for every DP stage;
    # rlhf.privacy holds the hh_rlhf budget only: a randomness key there is refused by name, before
    # any stage could read it.
    features(tiny)
    monkeypatch.delenv("DPINSTRUCT_KEY_FILE")  # the key comes from privacy.key_file, not the environment
    key, decoy = tmp_path / "keys/secret.key", tmp_path / "keys/rlhf.key"
    tiny["privacy"]["key_file"] = str(key)
    budget = dict(tiny["rlhf"]["privacy"])
    for misplaced in ({"secure_mode": True}, {"key_file": str(decoy)}):
        tiny["rlhf"]["privacy"] = {**budget, **misplaced}
        with pytest.raises(ConfigError, match=rf"rlhf\.privacy\.{next(iter(misplaced))}: unknown key"):
            run_dp_count(COUNT, tiny)
        with pytest.raises(ConfigError, match=rf"rlhf\.privacy\.{next(iter(misplaced))}: unknown key"):
            run(dp_reward_model.dp_reward_model, tiny)
    tiny["rlhf"]["privacy"] = budget
    tiny["privacy"]["secure_mode"] = True
    secure = [reward_model_run(tiny) for _ in range(2)]
    assert not key.exists() and not decoy.exists()  # no key read in secure mode
    purposes = {"dp_count/noise", "dp_reward_model/poisson", "dp_reward_model/noise"}
    for r in secure:
        assert set(r["streams"]) == purposes
        assert not any(s.replayable for streams in r["streams"].values() for s in streams)  # all from the OS
        assert r["entry"]["secure_mode"] is True and r["count"]["secure_mode"] is True
    a, b = secure
    assert a["count"]["noisy_count"] != b["count"]["noisy_count"]
    assert a["samples"] != b["samples"] and a["weight"] != b["weight"]
    # a ledger mixing these secure entries with keyed ones is refused: tests/stages/test_account_modes.py

    tiny["privacy"]["secure_mode"] = False
    keyed = [reward_model_run(tiny) for _ in range(2)]
    assert key.exists() and not decoy.exists()  # privacy.key_file's key, never rlhf.privacy's
    a, b = keyed
    assert set(a["streams"]) == purposes and all(s.replayable for streams in a["streams"].values() for s in streams)
    assert a["entry"]["secure_mode"] is False and a["count"]["secure_mode"] is False
    assert a["unbound"] == []
    # the same key, params and data replay every draw bit for bit
    assert a["count"] == b["count"] and a["samples"] == b["samples"] and a["weight"] == b["weight"]
    assert a["entry"] == b["entry"]
