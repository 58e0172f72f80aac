"""The RL pipeline (Wu et al. task (i)) end to end at toy size on shipped reviews and the real
models: prepare, public split, reward model, DP-SFT, DP-PPO (resumable bit for bit), account across
datasets, evaluation; and the settings it refuses."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from dpinstruct.io.artifacts import Outputs
from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_adam, ledger
from stages import account, dp_ppo, dp_sft, evaluate_rl, imdb_prepare, imdb_public, sentiment_reward

REPO = Path(__file__).resolve().parents[2]


def run(fn, params):
    with Outputs() as out:
        return fn(params, out)


@pytest.fixture
def project(tmp_path, monkeypatch, generator_dir, repo_params):
    monkeypatch.chdir(tmp_path)
    Path("data/models").mkdir(parents=True)
    os.symlink(generator_dir, "data/models/generator")
    Path("data/raw/imdb").mkdir(parents=True)
    for split, n in (("train", 160), ("test", 160)):
        table = pq.read_table(REPO / f"data/raw/imdb/{split}.parquet")
        pq.write_table(table.take(list(range(0, 25000, 25000 // n))[:n]), f"data/raw/imdb/{split}.parquet")
    params = yaml.safe_load(yaml.safe_dump(repo_params))
    rl = params["rl"]
    rl["privacy"].update(epsilon=4.0, delta=1e-3)
    rl["data"].update(sft_tokens=24)
    rl["sentiment_reward"].update(rows=60, heldout=20)
    small = {"sampling_rate": 0.15, "steps": 3, "expected_batch_size": 10, "checkpoint_every": 1,
             "lora": {**rl["dp_sft"]["lora"], "layers": [28, 29]}}
    rl["dp_sft"].update(small, micro_batch_tokens=512)
    rl["dp_ppo"].update(small, rollouts=2, new_tokens=6, prompts_per_micro=4)
    rl["evaluate_rl"].update(rows=8, bootstrap=100)
    return params


def prepare(params):
    run(imdb_prepare.imdb_prepare, params)
    run(imdb_public.imdb_public, params)
    run(sentiment_reward.sentiment_reward, params)


def digest(path) -> str:
    return hashlib.sha256(Path(path, "adapter_model.safetensors").read_bytes()).hexdigest()


def instructions_ledger():
    """The other datasets' entries (account wants every dataset's mechanisms)."""
    for name, sigma, q, steps in (("train_generator", 0.6, 0.03, 15), ("histogram", 10.0, 1.0, 1),
                                  ("dp_reward_model", 1.0, 0.05, 100)):
        dataset, part = ("hh_rlhf", "reward") if name == "dp_reward_model" else ("instructions", "all")
        entry = ledger.make_entry(stage=name, mechanism="m", dataset=dataset, partition=part,
                                  noise_multiplier=sigma, sampling_rate=q, steps=steps, sensitivity=1.0, delta=1e-5,
                                  event=acct.component_event(sigma, q, steps))
        Path(ledger.entry_path(name)).write_text(json.dumps(entry))


def test_the_rl_pipeline_end_to_end(project, monkeypatch):
    prepare(project)
    reward = json.loads(Path(sentiment_reward.METRICS).read_text())
    assert 0.5 < reward["accuracy"] <= 1 and reward["reward"] == "positive-class logit"
    parts = pq.read_table(imdb_prepare.PROMPTS).to_pandas()
    sft_ids = set(pq.read_table(imdb_prepare.SFT).column("id").to_pylist())
    assert sft_ids == set(parts[parts.partition == "sft"].id)  # SFT reads exactly its own part
    assert not sft_ids & set(parts[parts.partition == "ppo"].id)
    run(dp_sft.dp_sft, project)
    used = []
    real = dp_ppo.poisson_sample
    monkeypatch.setattr(dp_ppo, "poisson_sample", lambda rng, n, q: used.append(q) or real(rng, n, q))
    run(dp_ppo.dp_ppo, project)
    entries = {e["stage"]: e for e in ledger.read_entries()}
    assert entries["dp_sft"]["partition"] == "sft" and entries["dp_ppo"]["partition"] == "ppo"
    assert used == [entries["dp_ppo"]["sampling_rate"]] * 3 == [0.15] * 3  # the rate recorded is the rate used
    assert entries["dp_ppo"]["privacy_unit"].startswith("one prompt")
    instructions_ledger()
    project["privacy"].update(epsilon=10.0, delta=1e-5)
    imdb = run(account.account, project)["datasets"]["imdb"]
    assert imdb["epsilon"] == max(imdb["partitions"]["sft"]["epsilon"], imdb["partitions"]["ppo"]["epsilon"]) <= 4.0
    result = run(evaluate_rl.evaluate_rl, project)
    assert set(result["mean_reward"]) == {"base", "dp_sft", "dp_ppo"} and result["epsilon"] == imdb["epsilon"]
    for name, summary in result["mean_reward"].items():
        assert summary["lo"] <= summary["mean"] <= summary["hi"] and summary["n"] == 8
    assert result["kl_to_reference"]["dp_sft"]["mean"] == pytest.approx(0, abs=1e-5)  # the reference itself
    assert set(result["reward_diff"]) == {"dp_ppo-dp_sft", "dp_sft-base"}


def test_dp_ppo_resumes_after_a_kill_bit_for_bit_and_needs_the_key_to_replay(project, monkeypatch):
    prepare(project)
    run(dp_sft.dp_sft, project)
    run(dp_ppo.dp_ppo, project)
    whole, entry = digest(dp_ppo.ADAPTER_DIR), Path(ledger.entry_path("dp_ppo")).read_text()
    curves = {f.name: f.read_text() for f in Path("dvclive/dp_ppo/plots/metrics").glob("*.tsv")}
    for p in ("data/adapters/dp_ppo", "data/checkpoints/dp_ppo", "dvclive/dp_ppo"):
        shutil.rmtree(p)
    real_step, calls = dp_adam.DPAdam.step, []

    def dying(self, micro, loss_fn=None):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real_step(self, micro, loss_fn)

    monkeypatch.setattr(dp_adam.DPAdam, "step", dying)
    with pytest.raises(KeyboardInterrupt):
        run(dp_ppo.dp_ppo, project)
    assert not dp_ppo.ADAPTER_DIR.exists()
    monkeypatch.setattr(dp_adam.DPAdam, "step", real_step)
    run(dp_ppo.dp_ppo, project)
    assert digest(dp_ppo.ADAPTER_DIR) == whole and Path(ledger.entry_path("dp_ppo")).read_text() == entry
    # DVC deleted the curves with the other outputs; the resumed run rebuilds them whole from the checkpoint
    resumed = {f.name: f.read_text() for f in Path("dvclive/dp_ppo/plots/metrics").glob("*.tsv")}
    eps = [[float(x) for x in c["epsilon.tsv"].split()[2:]] for c in (resumed, curves)]
    assert eps[0] == pytest.approx(eps[1], rel=1e-9)  # the accountant composes 2 + 1 steps, not 3: rounding
    assert {k: v for k, v in resumed.items() if k != "epsilon.tsv"} == {k: v for k, v in curves.items() if k != "epsilon.tsv"}
    assert len(curves["reward.tsv"].splitlines()) == 1 + 3
    # The attacker's replay: same params, data and code, but not the key. Sampling, noise and
    # rollouts all change, so the committed adapter cannot be reproduced from the repository.
    monkeypatch.setenv("DPINSTRUCT_KEY_FILE", str(Path("other-key").absolute()))
    run(dp_ppo.dp_ppo, project)
    assert digest(dp_ppo.ADAPTER_DIR) != whole


def test_refused_settings(project):
    prepare(project)
    rl = project["rl"]
    rl["privacy"]["delta"] = 0.5
    with pytest.raises(PrivacyConfigError, match=r"rl.privacy.delta=0.5 must be in \(0, 1/N\)"):
        run(dp_sft.dp_sft, project)
    rl["privacy"] = {"delta": 1e-3}
    with pytest.raises(PrivacyConfigError, match="must set rl.privacy.epsilon"):
        run(dp_sft.dp_sft, project)
    # DP-PPO on DP-SFT's own part composes with it; an entry that already spends the budget is refused
    rl["privacy"] = {"epsilon": 4.0, "delta": 1e-3}
    Path("metrics/privacy").mkdir(parents=True)
    spent = ledger.make_entry(stage="dp_sft", mechanism="m", dataset="imdb", partition="sft", noise_multiplier=0.3,
                              sampling_rate=0.5, steps=50, sensitivity=1.0, delta=1e-3,
                              event=acct.dp_sgd_event(0.3, 0.5, 50))
    Path(ledger.entry_path("dp_sft")).write_text(json.dumps(spent))
    rl["dp_ppo"]["partition"] = "sft"
    with pytest.raises(PrivacyConfigError, match=r"dp_sft on the same part \(sft\) alone spend\(s\) epsilon"):
        run(dp_ppo.dp_ppo, project)
    assert not dp_ppo.ADAPTER_DIR.exists()
