"""The train_generator stage end to end on a tiny slice of the shipped data."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dpinstruct.io.artifacts import Outputs
from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.training import dp_adam, dp_generator, mechanism
from stages import prepare
from stages import train_generator as stage
from tests.conftest import _project
from tests.spies import record_reads, unbound_reads

COUNT_SIGMA = 4.0  # dp_count.sigma here: N~ stays near the ~25 train rows, so the divisor q x N~ is a real batch
COUNT = Path("metrics/privacy/dp_count@instructions.json")


@pytest.fixture
def project(tiny_project):
    """Mechanics (plans, keys, resume, ledger) on the tiny random generator (tests/conftest.py)."""
    return tiny_project


@pytest.fixture
def real_project(tmp_path, monkeypatch, generator_dir, repo_params):
    """The real generator, for the one end-to-end test of the stage."""
    return _project(tmp_path, monkeypatch, generator_dir, repo_params)


def tiny(project, n=40, **train):
    """The first n shipped private rows (25 train rows at n = 40), T = 3 steps of q = 1/3, and the
    DP count of the train split that the stage reads (dp_count@instructions)."""
    project.use_private_rows(n)
    project.params["privacy"].update(epsilon=6.0, delta=1e-3)
    project.params["dp_count"]["sigma"] = COUNT_SIGMA
    project.params["train_generator"].update(sampling_rate=1 / 3, epochs=1.0, checkpoint_every=1,
                                             micro_batch_tokens=256, **train)
    project.save()
    with Outputs() as out:
        prepare.prepare(project.params, out)
    project.dp_count("instructions")


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


def test_trains_a_loadable_adapter_and_writes_the_ledger(real_project, generator_dir):
    project = real_project
    tiny(project)
    entry = run(project)
    saved = json.loads((project.root / "metrics/privacy/train_generator.json").read_text())
    assert saved == json.loads(json.dumps(entry))
    for key in ("stage", "mechanism", "noise_multiplier", "sampling_rate", "steps", "sensitivity", "neighbouring",
                "delta", "epsilon", "epsilon_prv", "dp_event"):
        assert key in saved, key
    assert saved["mechanism"] == "poisson_subsampled_gaussian" and saved["neighbouring"] == "add_or_remove_one"
    assert saved["steps"] == 3 and saved["sampling_rate"] == pytest.approx(1 / 3) and saved["sensitivity"] == 0.5
    assert saved["plan"]["composed_epsilon"] <= 6.0 and saved["plan"]["composed_epsilon_prv"] <= 6.0
    assert saved["epsilon"] < saved["plan"]["composed_epsilon"]
    assert abs(saved["epsilon"] - saved["epsilon_prv"]) < 0.1
    # the divisor is q x N~ of the DP count, and the plan composed the count with the histogram
    count = json.loads((project.root / COUNT).read_text())
    assert saved["plan"]["expected_batch_size"] == pytest.approx(count["noisy_count"] / 3)
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    independent = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    independent.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.PoissonSampledDpEvent(
            1 / 3, dp_accounting.GaussianDpEvent(saved["noise_multiplier"])), 3),
        dp_accounting.GaussianDpEvent(project.params["histogram"]["sigma"]),
        dp_accounting.GaussianDpEvent(COUNT_SIGMA)]))
    assert saved["plan"]["composed_epsilon"] == pytest.approx(independent.get_epsilon(1e-3), abs=1e-6)

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

    for p in ("data/adapters", "data/checkpoints", "dvclive"):
        shutil.rmtree(project.root / p, ignore_errors=True)
    (project.root / "metrics/privacy/train_generator.json").unlink()  # its DP count (an input) stays
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


def test_a_file_naming_users_stays_record_level_unless_user_level_is_enabled(tiny_project):
    # The unit is a param, never read off the data: a file whose every row names a user, run with
    # user_level.enabled false, is record-level from prepare to the ledger (user_id dropped as read).
    project = tiny_project
    path = project.use_private_rows(40)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**r, "user_id": f"user{i % 6}"}) + "\n" for i, r in enumerate(rows)))
    project.params["user_level"]["enabled"] = False
    project.params["privacy"].update(epsilon=6.0, delta=1e-3)
    project.params["dp_count"]["sigma"] = COUNT_SIGMA
    project.params["train_generator"].update(sampling_rate=1 / 3, epochs=1.0, micro_batch_tokens=256)
    project.save()
    with Outputs() as out:
        prepare.prepare(project.params, out)
    train = pd.read_parquet(project.root / stage.TRAIN)
    assert len(train) > 6 and train.user_id.isna().all()
    count = project.dp_count("instructions")
    assert count["neighbouring"] == "add_or_remove_one" and abs(count["noisy_count"] - len(train)) < 6 * COUNT_SIGMA
    entry = run(project)
    assert entry["neighbouring"] == "add_or_remove_one" and "max_records_per_user" not in entry
    assert entry["privacy_unit"] == "one instruction"


def test_every_file_the_stage_reads_is_bound_into_its_noise(project):
    # Recorded from what the run opens (not from the stage's INPUTS constant): a read the run key
    # leaves out would let two runs differing there share one sample and one noise.
    tiny(project)
    project.dp_count("instructions")
    with record_reads() as seen:
        run(project)
    assert seen["bound"] and not unbound_reads(seen, project.root, own=("data/checkpoints", "dvclive"))
    assert {"data/prepared/train.parquet", "data/models/generator/config.json"} <= \
        {str(Path(p).relative_to(project.root)) for p in seen["read"] if p.startswith(str(project.root))}


def test_non_private_mode_uses_the_same_path_and_says_so(project):
    tiny(project)
    project.params["privacy"]["epsilon"] = ".inf"
    count = project.dp_count("instructions")  # a non-private run counts exactly, and says so
    assert count["private"] is False and count["noisy_count"] == len(pd.read_parquet(project.root / stage.TRAIN))
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
    assert project.files("metrics/privacy") == [str(COUNT)]  # only its input, the DP count


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
    from dpinstruct.privacy import run_key

    tiny(project)
    real_step = kill_after_two_steps(project, monkeypatch)
    real_digest = run_key.file_digest
    monkeypatch.setattr(run_key, "file_digest", lambda p: real_digest(p) + ("x" if Path(p).name == "randomness.py" else ""))
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
    assert project.dp_count("instructions")["secure_mode"] is True  # one randomness setting for every DP stage
    sampled, real = [], mechanism.poisson_sample
    monkeypatch.setattr(mechanism, "poisson_sample", lambda *a: sampled.append(real(*a)) or sampled[-1])
    digests = []
    for _ in range(2):
        shutil.rmtree(project.root / "data/checkpoints", ignore_errors=True)
        entry = run(project)
        digests.append(adapter_digest(project.root))
    assert entry["secure_mode"] is True and digests[0] != digests[1]
    first, second = sampled[:3], sampled[3:]
    assert any(not np.array_equal(a, b) for a, b in zip(first, second))


def test_the_ledger_reveals_n_only_through_the_dp_count(project):
    # Two train splits of different sizes whose DP counts came out equal publish identical entries:
    # q, T and sigma are params, and the only size in the entry is the divisor q x N~.
    ledgers, counts, sizes = [], [], []
    for n in (40, 50):
        tiny(project, n=n)
        sizes.append(len(pd.read_parquet(project.root / stage.TRAIN)))
        if counts:
            (project.root / COUNT).write_text(counts[0])  # as if N~ had come out the same
        counts.append((project.root / COUNT).read_text())
        run(project)
        ledgers.append((project.root / "metrics/privacy/train_generator.json").read_text())
        shutil.rmtree(project.root / "data/checkpoints")
    assert sizes[0] < sizes[1] and ledgers[0] == ledgers[1]
    assert "n_records" not in ledgers[0] and '"sampling_rate": 0.3333333333333333' in ledgers[0]
    noisy = json.loads(counts[0])["noisy_count"]
    assert noisy != sizes[0] and json.loads(ledgers[0])["plan"]["expected_batch_size"] == pytest.approx(noisy / 3)


def test_user_level_dp_samples_users_and_the_ledger_says_so(project):
    import pyarrow as pa

    from dpinstruct.io.artifacts import read_metadata, write_parquet

    tiny(project)
    path = project.root / "data/prepared/train.parquet"
    meta = {f"dpinstruct.{k}": v for k, v in read_metadata(path).items()}
    train = pd.read_parquet(path)
    train["user_id"] = [f"user{i % 6}" for i in range(len(train))]  # 6 users of 4 or 5 records
    table = pa.Table.from_pandas(train, preserve_index=False)
    write_parquet(table, path, table.schema, meta)
    project.params["user_level"] = {"enabled": True, "max_records_per_user": 2}
    project.params["privacy"]["delta"] = 0.5
    # sigma 1, the smallest dp_count allows: N~ = 6 +- 1, so N~ > 2 (refused) and one digit (users, not the
    # ~25 records) both hold unless the noise passes 4 sds
    project.params["dp_count"]["sigma"] = 1.0
    count = project.dp_count("instructions")  # the DP count counts users now
    assert count["neighbouring"] == "add_or_remove_one_user"
    with pytest.raises(PrivacyConfigError, match=r"delta=0.5 .* N~=\d\.\d of the records"):
        run(project)  # the unit is one of 6 users: delta must be below 1/N~ ~ 1/6 (records would say N~ ~ 25)
    project.params["privacy"]["delta"] = 1e-3
    project.params["dp_count"]["sigma"] = COUNT_SIGMA
    project.dp_count("instructions")
    entry = run(project)
    assert entry["neighbouring"] == "add_or_remove_one_user" and entry["max_records_per_user"] == 2
    assert entry["sampling_rate"] == pytest.approx(1 / 3) and entry["steps"] == 3
    curves = (project.root / "dvclive/train_generator/plots/metrics/batch_size.tsv").read_text().split("\n")[1:]
    sizes = [float(line.split("\t")[-1]) for line in curves if line]
    assert sizes and max(sizes) <= 6  # units per step are users (at most all 6), each clipped once


def record_streams(monkeypatch) -> list[dict]:
    """The first draws of the Poisson and noise streams of each DPLoop the stage builds (copies:
    the run itself draws from the originals)."""
    import copy

    from dpinstruct.training import dp_loop

    seen, real_init = [], dp_loop.DPLoop.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append({name: copy.deepcopy(s).uniform(8).tolist() for name, s in self.streams().items()})

    monkeypatch.setattr(dp_loop.DPLoop, "__init__", init)
    return seen


def test_other_base_weights_draw_another_sample_and_other_noise(project, tiny_generator_dir, monkeypatch):
    # The run key binds the base weights folder: two runs on the same data, params and key, whose
    # base folders differ (here by one harmless extra file, the model itself unchanged), must not
    # share Poisson samples or DP-Adam noise, or publishing both would let the noise cancel out.
    tiny(project)
    seen = record_streams(monkeypatch)
    run(project)
    first = adapter_digest(project.root)
    folder = project.root / "data/models/generator"
    folder.unlink()
    folder.mkdir()
    for f in tiny_generator_dir.iterdir():
        (folder / f.name).symlink_to(f)
    (folder / "NOTES.md").write_text("the same generator, with a note\n")
    shutil.rmtree(project.root / "data/checkpoints")
    run(project)
    assert len(seen) == 2
    assert seen[0]["poisson"] != seen[1]["poisson"] and seen[0]["noise"] != seen[1]["noise"]
    assert adapter_digest(project.root) != first
