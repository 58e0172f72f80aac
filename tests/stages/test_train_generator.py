"""The train_generator stage end to end on a tiny slice of the shipped data."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dpinstruct.io.artifacts import Outputs
from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.models import dp_generator
from dpinstruct.privacy import dp_adam
from stages import prepare
from stages import train_generator as stage


def tiny(project, train_size=24, **train):
    """24 private train rows, T = 3 steps of q = 1/3 (expected batch 8)."""
    project.params["prepare"].update(train_size=train_size, val_size=10, test_size=10)
    project.params["privacy"].update(epsilon=6.0, delta=1e-3)
    project.params["train_generator"].update(sampling_rate=1 / 3, expected_batch_size=8, epochs=1.0,
                                             checkpoint_every=1, micro_batch_tokens=256, **train)
    project.save()
    with Outputs() as out:
        prepare.prepare(project.params, out)


def run(project):
    project.save()
    with Outputs() as out:
        return stage.train(project.params, out)


def kill_after_two_steps(project, monkeypatch):
    """Run the stage and 'kill' it (KeyboardInterrupt) when it starts its third step."""
    real_step, calls = dp_adam.DPAdam.step, []

    def dying_step(self, micro, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real_step(self, micro, **kwargs)

    monkeypatch.setattr(dp_adam.DPAdam, "step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run(project)
    return real_step


def count_steps(monkeypatch, real_step) -> list:
    """Let DPAdam step for real again, recording each step taken."""
    taken = []
    monkeypatch.setattr(dp_adam.DPAdam, "step", lambda self, m, **kw: taken.append(1) or real_step(self, m, **kw))
    return taken


def adapter_digest(root) -> str:
    return hashlib.sha256((root / stage.ADAPTER_DIR / "adapter_model.safetensors").read_bytes()).hexdigest()


def test_trains_a_loadable_adapter_and_writes_the_ledger(project, generator_dir):
    tiny(project)
    entry = run(project)
    saved = json.loads((project.root / "metrics/privacy/train_generator.json").read_text())
    assert saved == json.loads(json.dumps(entry))
    for key in ("stage", "mechanism", "noise_multiplier", "sampling_rate", "steps", "sensitivity", "neighbouring",
                "delta", "epsilon", "epsilon_prv", "dp_event"):
        assert key in saved, key
    assert saved["mechanism"] == "poisson_subsampled_gaussian" and saved["neighbouring"] == "add_or_remove_one"
    assert saved["steps"] == 3 and saved["sampling_rate"] == pytest.approx(8 / 24) and saved["sensitivity"] == 0.5
    assert saved["plan"]["composed_epsilon"] <= 6.0 and saved["plan"]["composed_epsilon_prv"] <= 6.0
    assert saved["epsilon"] < saved["plan"]["composed_epsilon"]
    assert abs(saved["epsilon"] - saved["epsilon_prv"]) < 0.1

    from peft import PeftModel

    from dpinstruct.models.loading import load_generator

    base, _ = load_generator(generator_dir)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    tuned = PeftModel.from_pretrained(base, str(project.root / stage.ADAPTER_DIR))
    merged = tuned.merge_and_unload().state_dict()
    changed = [k for k in reference if not torch.equal(reference[k], merged[k])]
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)  # the adapter is real
    assert (project.root / "dvclive/train_generator/plots/metrics/loss.tsv").read_text().count("\n") == 4
    config = json.loads((project.root / stage.ADAPTER_DIR / "adapter_config.json").read_text())
    assert config["target_modules"] == ["q_proj", "v_proj"]  # sorted: stable bytes whatever PYTHONHASHSEED


def test_killed_run_resumes_to_the_same_adapter(project, monkeypatch):
    tiny(project)
    run(project)
    uninterrupted = adapter_digest(project.root)
    ledger = json.loads((project.root / "metrics/privacy/train_generator.json").read_text())

    for p in ("data/adapters", "data/checkpoints", "metrics/privacy", "dvclive"):
        shutil.rmtree(project.root / p, ignore_errors=True)
    real_step = kill_after_two_steps(project, monkeypatch)
    assert not (project.root / stage.ADAPTER_DIR).exists()  # nothing half-written
    assert torch.load(project.root / stage.CHECKPOINT_DIR / "state.pt", weights_only=False)["step"] == 2
    steps_taken = count_steps(monkeypatch, real_step)
    run(project)
    assert len(steps_taken) == 1  # only the missing step ran
    assert adapter_digest(project.root) == uninterrupted
    assert json.loads((project.root / "metrics/privacy/train_generator.json").read_text()) == ledger


@pytest.mark.slow  # the run key's other parts (code, key) are checked in the default suite; CI time is tight
def test_checkpoint_of_another_plan_is_not_resumed(project, monkeypatch):
    tiny(project)
    real_step = kill_after_two_steps(project, monkeypatch)
    project.params["privacy"]["epsilon"] = 4.0  # another noise multiplier: the 2 old steps do not count
    steps_taken = count_steps(monkeypatch, real_step)
    entry = run(project)
    assert len(steps_taken) == entry["steps"] == 3


def test_non_private_mode_uses_the_same_path_and_says_so(project):
    tiny(project)
    project.params["privacy"]["epsilon"] = ".inf"
    entry = run(project)
    assert entry["private"] is False and entry["noise_multiplier"] == 0.0
    assert entry["epsilon"] == "inf" and entry["sensitivity"] == "inf"


def test_unsafe_budget_is_refused_before_any_training(project, monkeypatch):
    tiny(project)
    project.params["privacy"]["delta"] = 0.5
    monkeypatch.setattr(dp_generator, "lora_model", lambda *a: pytest.fail("model loaded before the privacy check"))
    with pytest.raises(PrivacyConfigError, match="delta=0.5 must be in"):
        run(project)
    assert not (project.root / stage.ADAPTER_DIR).exists()
    assert not (project.root / "metrics/privacy").exists()


def test_the_key_replays_the_adapter_and_another_key_does_not(project, monkeypatch, tmp_path_factory):
    tiny(project)
    run(project)
    first = adapter_digest(project.root)
    shutil.rmtree(project.root / "data/checkpoints")
    run(project)
    assert adapter_digest(project.root) == first  # same key, same data and params: bit for bit
    shutil.rmtree(project.root / "data/checkpoints")
    monkeypatch.setenv("DPINSTRUCT_KEY_FILE", str(tmp_path_factory.mktemp("key") / "other.key"))
    run(project)
    assert adapter_digest(project.root) != first


def test_a_checkpoint_made_by_other_code_is_not_resumed(project, monkeypatch):
    # any file the stage runs counts, not only the stage module: here randomness.py "changed"
    from dpinstruct.privacy import dp_loop

    tiny(project)
    real_step = kill_after_two_steps(project, monkeypatch)
    real_digest = dp_loop.file_digest
    monkeypatch.setattr(dp_loop, "file_digest", lambda p: real_digest(p) + ("x" if Path(p).name == "randomness.py" else ""))
    steps_taken = count_steps(monkeypatch, real_step)
    assert run(project)["steps"] == len(steps_taken) == 3


def test_a_checkpoint_made_under_another_key_is_not_resumed(project, monkeypatch, tmp_path_factory):
    tiny(project)
    real_step = kill_after_two_steps(project, monkeypatch)
    monkeypatch.setenv("DPINSTRUCT_KEY_FILE", str(tmp_path_factory.mktemp("key") / "other.key"))
    steps_taken = count_steps(monkeypatch, real_step)
    assert run(project)["steps"] == len(steps_taken) == 3


def test_secure_mode_samples_and_noises_afresh_with_identical_params(project, monkeypatch):
    tiny(project)
    project.params["privacy"]["secure_mode"] = True
    sampled, real = [], dp_generator.poisson_sample
    monkeypatch.setattr(dp_generator, "poisson_sample", lambda *a: sampled.append(real(*a)) or sampled[-1])
    digests = []
    for _ in range(2):
        shutil.rmtree(project.root / "data/checkpoints", ignore_errors=True)
        entry = run(project)
        digests.append(adapter_digest(project.root))
    assert entry["secure_mode"] is True and digests[0] != digests[1]
    first, second = sampled[:3], sampled[3:]
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))


def test_the_ledger_does_not_reveal_n(project):
    # An attacker with the ledger of two runs on datasets of 24 and 30 records sees identical entries.
    ledgers = []
    for n in (24, 30):
        tiny(project, train_size=n)
        run(project)
        ledgers.append((project.root / "metrics/privacy/train_generator.json").read_text())
        shutil.rmtree(project.root / "data/checkpoints")
    assert ledgers[0] == ledgers[1]
    assert "n_records" not in ledgers[0] and '"sampling_rate": 0.3333333333333333' in ledgers[0]


def test_user_level_dp_samples_users_and_the_ledger_says_so(project):
    import pandas as pd
    import pyarrow as pa

    from dpinstruct.io.artifacts import read_metadata, write_parquet

    tiny(project)
    path = project.root / "data/prepared/train.parquet"
    meta = {f"dpinstruct.{k}": v for k, v in read_metadata(path).items()}
    train = pd.read_parquet(path)
    train["user_id"] = [f"user{i % 6}" for i in range(len(train))]  # 6 users of 4 records
    table = pa.Table.from_pandas(train, preserve_index=False)
    write_parquet(table, path, table.schema, meta)
    project.params["user_level"] = {"max_records_per_user": 2}
    project.params["train_generator"].update(expected_batch_size=2)  # q x users
    project.params["privacy"]["delta"] = 0.2
    with pytest.raises(PrivacyConfigError, match=r"delta=0.2 .* N=6"):
        run(project)  # the unit is one of 6 users: delta must be below 1/6
    project.params["privacy"]["delta"] = 1e-3
    entry = run(project)
    assert entry["neighbouring"] == "add_or_remove_one_user" and entry["max_records_per_user"] == 2
    assert entry["sampling_rate"] == pytest.approx(1 / 3) and entry["steps"] == 3
    curves = (project.root / "dvclive/train_generator/plots/metrics/batch_size.tsv").read_text().split("\n")[1:]
    sizes = [float(line.split("\t")[-1]) for line in curves if line]
    assert sizes and max(sizes) <= 6  # units per step are users (at most all 6), each clipped once
