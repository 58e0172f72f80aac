"""The RL pipeline (Wu et al. task (i)) end to end at toy size on shipped reviews and the real
models: prepare, public split, reward model, the parts' DP counts, DP-SFT, DP-PPO (resumable bit for
bit), account across datasets, evaluation; a part's size reaching the ledger only through its DP
count; the one randomness setting (privacy.secure_mode / key) reaching every RL DP stage; and the
settings it refuses."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from dpinstruct.io.artifacts import Outputs
from dpinstruct.io.errors import ConfigError, PrivacyConfigError
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_count, ledger
from dpinstruct.training import dp_adam, mechanism
from stages import account, dp_ppo, dp_sft, evaluate_rl, imdb_prepare, imdb_public, sentiment_reward
from tests.conftest import run_dp_count
from tests.spies import record_reads, record_streams, unbound_reads

REPO = Path(__file__).resolve().parents[2]
COUNTS = ("imdb_sft", "imdb_ppo")  # the DP counts of the two parts (stage dp_count@<name>)
COUNT_SIGMA = 4.0  # dp_count.sigma here: N~ stays near the ~80 reviews of a part, so q x N~ is a real batch


def run(fn, params):
    with Outputs() as out:
        return fn(params, out)


@pytest.fixture
def project(tmp_path, monkeypatch, generator_dir, repo_params):
    """The real generator: the end-to-end test."""
    return rl_project(tmp_path, monkeypatch, generator_dir, repo_params)


@pytest.fixture
def tiny(tmp_path, monkeypatch, tiny_generator_dir, repo_params):
    """The tiny random generator (conftest): the mechanics tests (resume, keys, sizes, refusals)."""
    return rl_project(tmp_path, monkeypatch, tiny_generator_dir, repo_params)


def rl_project(tmp_path, monkeypatch, generator_dir, repo_params):
    monkeypatch.chdir(tmp_path)
    Path("data/models").mkdir(parents=True)
    os.symlink(generator_dir, "data/models/generator")
    Path("data/raw/imdb").mkdir(parents=True)
    for split in ("train", "test"):
        raw_reviews(split, 160)
    params = yaml.safe_load(yaml.safe_dump(repo_params))
    params["dp_count"]["sigma"] = COUNT_SIGMA
    rl = params["rl"]
    rl["privacy"].update(epsilon=4.0, delta=1e-3)
    rl["data"].update(sft_tokens=24)
    rl["sentiment_reward"].update(rows=60, heldout=20)
    # no batch size: the divisor of each step's noisy sum is q x N~ of the part's DP count
    small = {"sampling_rate": 0.15, "steps": 3, "checkpoint_every": 1,
             "lora": {**rl["dp_sft"]["lora"], "layers": [28, 29]}}
    rl["dp_sft"].update(small, micro_batch_tokens=512)
    rl["dp_ppo"].update(small, rollouts=2, new_tokens=6, prompts_per_micro=4)
    rl["evaluate_rl"].update(rows=8, bootstrap=100)
    return params


def raw_reviews(split: str, n: int) -> None:
    """n shipped reviews of ``split``, evenly spaced, as this project's raw file."""
    table = pq.read_table(REPO / f"data/raw/imdb/{split}.parquet")
    pq.write_table(table.take(list(range(0, 25000, 25000 // n))[:n]), f"data/raw/imdb/{split}.parquet")


def count_parts(params) -> dict:
    """dp_count@imdb_sft and dp_count@imdb_ppo on the current parts (as dvc repro runs them after
    imdb_prepare): the entries the DP stages read."""
    return {name: run_dp_count(name, params) for name in COUNTS}


def prepare(params):
    run(imdb_prepare.imdb_prepare, params)
    run(imdb_public.imdb_public, params)
    run(sentiment_reward.sentiment_reward, params)
    return count_parts(params)


def part_sizes() -> dict:
    """The exact number of reviews in each part (private: what the ledger must not reveal)."""
    prompts = pd.read_parquet(imdb_prepare.PROMPTS, columns=["partition"])
    return {"imdb_sft": len(pd.read_parquet(imdb_prepare.SFT, columns=["id"])),
            "imdb_ppo": int((prompts.partition == "ppo").sum())}


def digest(path) -> str:
    return hashlib.sha256(Path(path, "adapter_model.safetensors").read_bytes()).hexdigest()


def instructions_ledger():
    """The other datasets' entries, their DP counts included (account wants every dataset's
    mechanisms), keyed like the imdb stages of the test."""
    for name, sigma, q, steps in (("train_generator", 0.6, 0.03, 15), ("histogram", 10.0, 1.0, 1),
                                  ("dp_count@instructions", 20.0, 1.0, 1), ("dp_reward_model", 1.0, 0.05, 100),
                                  ("dp_count@hh_rlhf", 20.0, 1.0, 1)):
        dataset, part = ("hh_rlhf", "reward") if name.endswith(("dp_reward_model", "hh_rlhf")) else ("instructions", "all")
        entry = ledger.make_entry(stage=name, mechanism="m", dataset=dataset, partition=part,
                                  sensitivity=1.0, delta=1e-5,
                                  event=acct.component_event(sigma, q, steps), secure_mode=False)
        Path(ledger.entry_path(name)).write_text(json.dumps(entry))


def test_the_rl_pipeline_end_to_end(project, monkeypatch):
    counts = prepare(project)
    for name, part in (("imdb_sft", "sft"), ("imdb_ppo", "ppo")):
        assert counts[name]["dataset"] == "imdb" and counts[name]["partition"] == part
        assert counts[name]["private"] and counts[name]["noise_multiplier"] == COUNT_SIGMA
    reward = json.loads(Path(sentiment_reward.METRICS).read_text())
    assert 0.5 < reward["accuracy"] <= 1 and reward["reward"] == "positive-class logit"
    parts = pq.read_table(imdb_prepare.PROMPTS).to_pandas()
    sft_ids = set(pq.read_table(imdb_prepare.SFT).column("id").to_pylist())
    assert sft_ids == set(parts[parts.partition == "sft"].id)  # SFT reads exactly its own part
    assert not sft_ids & set(parts[parts.partition == "ppo"].id)
    run(dp_sft.dp_sft, project)
    used = []
    real = mechanism.poisson_sample
    monkeypatch.setattr(mechanism, "poisson_sample", lambda rng, n, q: used.append(q) or real(rng, n, q))
    run(dp_ppo.dp_ppo, project)
    entries = {e["stage"]: e for e in ledger.read_entries()}
    assert entries["dp_sft"]["partition"] == "sft" and entries["dp_ppo"]["partition"] == "ppo"
    assert used == [entries["dp_ppo"]["sampling_rate"]] * 3 == [0.15] * 3  # the rate recorded is the rate used
    assert entries["dp_ppo"]["privacy_unit"].startswith("one prompt")
    for stage, count in (("dp_sft", "imdb_sft"), ("dp_ppo", "imdb_ppo")):
        # the divisor is q x N~ of the part's own DP count
        assert entries[stage]["plan"]["expected_batch_size"] == pytest.approx(0.15 * counts[count]["noisy_count"])
    instructions_ledger()
    project["privacy"].update(epsilon=10.0, delta=1e-5)
    imdb = run(account.account, project)["datasets"]["imdb"]
    assert imdb["epsilon"] == max(imdb["partitions"]["sft"]["epsilon"], imdb["partitions"]["ppo"]["epsilon"]) <= 4.0
    for stage, part in (("dp_sft", "sft"), ("dp_ppo", "ppo")):
        # each part composes its count with its stage, and the stage was calibrated with the count as
        # its prior: the plan's composed epsilon is the one account finds for the part
        assert imdb["partitions"][part]["stages"] == [f"dp_count@imdb_{part}", stage]
        assert imdb["partitions"][part]["epsilon"] == pytest.approx(entries[stage]["plan"]["composed_epsilon"], abs=1e-6)
        assert entries[stage]["epsilon"] < imdb["partitions"][part]["epsilon"] <= 4.0
    result = run(evaluate_rl.evaluate_rl, project)
    assert set(result["mean_reward"]) == {"base", "dp_sft", "dp_ppo"} and result["epsilon"] == imdb["epsilon"]
    for name, summary in result["mean_reward"].items():
        assert summary["lo"] <= summary["mean"] <= summary["hi"] and summary["n"] == 8
    assert result["kl_to_reference"]["dp_sft"]["mean"] == pytest.approx(0, abs=1e-5)  # the reference itself
    assert set(result["reward_diff"]) == {"dp_ppo-dp_sft", "dp_sft-base"}


def test_dp_ppo_resumes_after_a_kill_bit_for_bit_and_needs_the_key_to_replay(tiny, monkeypatch):
    prepare(tiny)
    run(dp_sft.dp_sft, tiny)
    run(dp_ppo.dp_ppo, tiny)
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
        run(dp_ppo.dp_ppo, tiny)
    assert not dp_ppo.ADAPTER_DIR.exists()
    monkeypatch.setattr(dp_adam.DPAdam, "step", real_step)
    run(dp_ppo.dp_ppo, tiny)
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
    run(dp_ppo.dp_ppo, tiny)
    assert digest(dp_ppo.ADAPTER_DIR) != whole


def test_refused_settings(tiny):
    counts = prepare(tiny)
    rl = tiny["rl"]
    rl["privacy"]["delta"] = 0.5
    # refused by the DP count N~ (an exact N would make the refusal itself depend on N)
    noisy = counts["imdb_sft"]["noisy_count"]
    with pytest.raises(PrivacyConfigError, match=r"rl.privacy.delta=0.5 must be in \(0, 1/N\) .* for the DP count "
                                                 + re.escape(f"N~={noisy:.1f} ")):
        run(dp_sft.dp_sft, tiny)
    # without its part's DP count the stage does not run (it would need N)
    Path(dp_count.entry_path("imdb_sft")).unlink()
    rl["privacy"]["delta"] = 1e-3
    with pytest.raises(FileNotFoundError, match=r"dp_count@imdb_sft.json: the DP count of imdb_sft is missing"):
        run(dp_sft.dp_sft, tiny)
    assert not dp_sft.ADAPTER_DIR.exists()
    run_dp_count("imdb_sft", tiny)
    rl["privacy"] = {"delta": 1e-3}
    with pytest.raises(ConfigError, match=r"rl\.privacy\.epsilon: missing \(must be a number, or \.inf for a "
                                          r"non-private run\)"):
        run(dp_sft.dp_sft, tiny)
    # DP-PPO on DP-SFT's own part composes with it; an entry that already spends the budget is refused
    rl["privacy"] = {"epsilon": 4.0, "delta": 1e-3}
    spent = ledger.make_entry(stage="dp_sft", mechanism="m", dataset="imdb", partition="sft", sensitivity=1.0, delta=1e-3,
                              event=acct.dp_sgd_event(0.3, 0.5, 50))
    Path(ledger.entry_path("dp_sft")).write_text(json.dumps(spent))
    rl["dp_ppo"]["partition"] = "sft"
    with pytest.raises(PrivacyConfigError, match=r"the DP count and earlier mechanisms on part sft alone spend\(s\) "
                                                 r"epsilon"):
        run(dp_ppo.dp_ppo, tiny)
    assert not dp_ppo.ADAPTER_DIR.exists()


def test_a_parts_size_reaches_the_ledger_only_through_its_dp_count(tiny):
    # Two private files whose parts differ in size, but whose parts' DP counts came out equal (the
    # first run's count entries written before the second run): the DP-SFT and DP-PPO entries must
    # be identical, since q, T and sigma are params and the only size in an entry is the divisor
    # q x N~ (plan.expected_batch_size), which must be the DP count's and not the part's size N.
    saved, sizes, ledgers = {}, [], []
    for n in (160, 200):
        if not saved:
            counts = prepare(tiny)
            saved = {name: Path(dp_count.entry_path(name)).read_text() for name in COUNTS}
        else:
            raw_reviews("train", n)
            run(imdb_prepare.imdb_prepare, tiny)
            for name, text in saved.items():
                Path(dp_count.entry_path(name)).write_text(text)  # as if N~ had come out the same
        sizes.append(part_sizes())
        run(dp_sft.dp_sft, tiny)
        run(dp_ppo.dp_ppo, tiny)
        ledgers.append({stage: Path(ledger.entry_path(stage)).read_text() for stage in ("dp_sft", "dp_ppo")})
        shutil.rmtree("data/checkpoints")
    for name in COUNTS:
        assert sizes[0][name] != sizes[1][name], sizes  # the two runs read parts of different sizes
    assert ledgers[0] == ledgers[1]
    for stage, name in (("dp_sft", "imdb_sft"), ("dp_ppo", "imdb_ppo")):
        entry, noisy = json.loads(ledgers[0][stage]), counts[name]["noisy_count"]
        assert "n_records" not in entry and entry["sampling_rate"] == 0.15
        batch_over_q = entry["plan"]["expected_batch_size"] / entry["sampling_rate"]
        assert batch_over_q == pytest.approx(noisy, rel=1e-12)
        assert all(batch_over_q != size[name] for size in sizes)  # N~, never N


def rl_dp_run(project) -> dict:
    """One run of every imdb DP stage (the two counts, DP-SFT, DP-PPO) from scratch (no checkpoint
    to resume), recording what each drew: the counts, the DP streams it asked for, DP-PPO's Poisson
    samples and the seed of a probe prompt's rollouts at each step, the adapters and the entries."""
    shutil.rmtree("data/checkpoints", ignore_errors=True)
    samples, probes = [], []
    real_sample, real_seeds = mechanism.poisson_sample, dp_ppo.ppo.rollout_seeds

    def rollout_seeds(seed_of, keys, k):
        probes.append(seed_of("probe", 0))  # the stage's own seed function on a fixed prompt id
        return real_seeds(seed_of, keys, k)

    with pytest.MonkeyPatch.context() as mp:
        streams = record_streams(mp)
        mp.setattr(mechanism, "poisson_sample", lambda rng, n, q: samples.append(real_sample(rng, n, q)) or samples[-1])
        mp.setattr(dp_ppo.ppo, "rollout_seeds", rollout_seeds)
        counts = count_parts(project)
        with record_reads() as sft_reads:
            run(dp_sft.dp_sft, project)
        with record_reads() as ppo_reads:
            run(dp_ppo.dp_ppo, project)
    own = ("data/checkpoints", "dvclive", "keys")  # what a stage reads back of its own, and the key
    return {"counts": {k: v["noisy_count"] for k, v in counts.items()}, "streams": streams,
            # files each stage opened that its run key does not bind (from what it read, not its INPUTS)
            "unbound": {"dp_sft": unbound_reads(sft_reads, Path.cwd(), own=own),
                        "dp_ppo": unbound_reads(ppo_reads, Path.cwd(), own=own)},
            "samples": [s.tolist() for s in samples], "probes": probes,
            "adapters": {s: digest(m.ADAPTER_DIR) for s, m in (("dp_sft", dp_sft), ("dp_ppo", dp_ppo))},
            "entries": {s: json.loads(Path(ledger.entry_path(s)).read_text())
                        for s in ("dp_sft", "dp_ppo", *(f"dp_count@{c}" for c in COUNTS))}}


def test_privacy_secure_mode_reaches_every_rl_dp_stage_and_rl_privacy_does_not_decide(tiny, monkeypatch,
                                                                                         tmp_path):
    # The randomness setting is params' `privacy` section (key_file, secure_mode) for every DP stage;
    # rl.privacy holds the imdb budget only: a randomness key there is refused by name, before any
    # stage could read it (secure mode true there, with privacy.secure_mode false, is not a secure run).
    prepare(tiny)
    for stage in ("dp_sft", "dp_ppo"):
        tiny["rl"][stage]["steps"] = 2  # eight runs: two steps each show every stream
    monkeypatch.delenv("DPINSTRUCT_KEY_FILE")  # the key comes from privacy.key_file, not the environment
    key, decoy = tmp_path / "keys/secret.key", tmp_path / "keys/rl.key"
    tiny["privacy"]["key_file"] = str(key)
    budget = dict(tiny["rl"]["privacy"])
    for misplaced in ({"secure_mode": True}, {"key_file": str(decoy)}):
        tiny["rl"]["privacy"] = {**budget, **misplaced}
        with pytest.raises(ConfigError, match=rf"rl\.privacy\.{next(iter(misplaced))}: unknown key"):
            run_dp_count("imdb_sft", tiny)
        with pytest.raises(ConfigError, match=rf"rl\.privacy\.{next(iter(misplaced))}: unknown key"):
            run(dp_sft.dp_sft, tiny)
    tiny["rl"]["privacy"] = budget
    tiny["privacy"]["secure_mode"] = True
    secure = [rl_dp_run(tiny) for _ in range(2)]
    assert not key.exists() and not decoy.exists()  # no key read in secure mode
    purposes = {"dp_count/noise", "dp_sft/poisson", "dp_sft/noise", "dp_ppo/poisson", "dp_ppo/noise",
                "dp_ppo/rollouts"}
    for r in secure:
        assert set(r["streams"]) == purposes
        assert not any(s.replayable for streams in r["streams"].values() for s in streams)  # all from the OS
        assert all(e["secure_mode"] is True for e in r["entries"].values())
    a, b = secure
    assert all(a["counts"][c] != b["counts"][c] for c in COUNTS)
    assert a["adapters"]["dp_sft"] != b["adapters"]["dp_sft"] and a["adapters"]["dp_ppo"] != b["adapters"]["dp_ppo"]
    assert a["samples"] != b["samples"]  # DP-PPO's Poisson sampling
    assert len(a["probes"]) == 2 and not set(a["probes"]) & set(b["probes"])  # its rollouts, step by step
    # a ledger mixing these secure entries with keyed ones is refused: tests/stages/test_account_modes.py

    tiny["privacy"]["secure_mode"] = False
    keyed = [rl_dp_run(tiny) for _ in range(2)]
    assert key.exists() and not decoy.exists()  # privacy.key_file's key, never rl.privacy's
    a, b = keyed
    assert set(a["streams"]) == purposes and all(s.replayable for streams in a["streams"].values() for s in streams)
    assert all(e["secure_mode"] is False for e in a["entries"].values())
    assert a["unbound"] == {"dp_sft": [], "dp_ppo": []}
    # the same key, params and data replay every draw bit for bit
    assert a["counts"] == b["counts"] and a["samples"] == b["samples"] and a["probes"] == b["probes"]
    assert a["adapters"] == b["adapters"] and a["entries"] == b["entries"]
