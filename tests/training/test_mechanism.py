"""DPSGDMechanism: the one DP-SGD frame. Its ledger entry is written FROM the plan's DpEvent, so the
noise DP-Adam adds, the (q, T, sigma) the entry states and the epsilon ``account`` composes cannot
drift apart; a tiny model runs the real loop (keyed streams, DP-Adam, steps)."""
from __future__ import annotations

import dp_accounting
import pytest
import torch

from dpinstruct.io.settings.privacy import Budget
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger
from dpinstruct.training.mechanism import MECHANISM, DPSGDMechanism, Scope

DELTA = 1e-5


def plan(epochs_per_batch: int = 1, epsilon: float = 4.0) -> acct.DPSGDPlan:
    return acct.plan_dp_sgd(Budget(epsilon=epsilon, delta=DELTA), budget_name="rl.privacy", noisy_count=500.3,
                            sampling_rate=0.1, steps=6, clip_norm=0.5, epochs_per_batch=epochs_per_batch,
                            prior=[(20.0, 1.0, 1)])


def run(tmp_path, monkeypatch, p: acct.DPSGDPlan, key=None) -> tuple[DPSGDMechanism, list[int]]:
    monkeypatch.setenv("DPINSTRUCT_KEY_FILE", str(key or tmp_path / "key"))
    mech = DPSGDMechanism(Scope("s", "d", "all", "one row"), p, privacy=None, run_key=("stage:s",),
                          checkpoint_dir=tmp_path / "ckpt", live_dir=tmp_path / "live", checkpoint_every=100)
    model = torch.nn.Linear(3, 1, bias=False)
    dp = mech.optimizer(model, lr=0.1)
    x = torch.randn(500, 3)
    sizes = []
    for _ in mech.steps(desc="test"):
        idx = mech.sample(len(x))
        sizes.append(len(idx))
        micro = [{"x": x[idx]}] if len(idx) else []
        result = dp.step(micro, loss_fn=lambda m, b: m(b["x"]).squeeze(-1) ** 2)
        mech.metrics.update(batch_size=result.batch_size)
    return mech, sizes


@pytest.mark.parametrize("epochs", [1, 3])
def test_the_entry_states_the_plans_event_and_its_epsilon(tmp_path, monkeypatch, epochs):
    p = plan(epochs)
    mech, sizes = run(tmp_path, monkeypatch, p)
    assert len(sizes) == p.steps and 0 < sum(sizes) < 500 * p.steps
    entry = mech.ledger_entry(params_hash="h")
    event = ledger.event_from_json(entry["dp_event"])
    # one source: the event; sigma there is the effective one (e epochs on one sample = sigma / sqrt(e))
    assert event == acct.dp_sgd_event(p.noise_multiplier / epochs ** 0.5, 0.1, 6) == p.event()
    assert (entry["noise_multiplier"], entry["sampling_rate"], entry["steps"]) == (p.effective_noise_multiplier, 0.1, 6)
    assert entry["epsilon"] == acct.round_up(acct.epsilon_pld([event], DELTA))
    assert entry["epsilon_prv"] == acct.round_up(acct.epsilon_prv([(p.effective_noise_multiplier, 0.1, 6)], DELTA))
    assert entry["mechanism"] == MECHANISM and entry["privacy_unit"] == "one row" and entry["params_hash"] == "h"
    assert entry["secure_mode"] is False and entry["plan"] == p.as_dict()
    assert ("noise_multiplier_per_epoch" in entry) == (epochs != 1)


def test_a_non_private_run_states_its_q_and_t_and_no_epsilon(tmp_path, monkeypatch):
    p = plan(epsilon=float("inf"))
    mech, _ = run(tmp_path, monkeypatch, p)
    entry = mech.ledger_entry()
    assert entry["private"] is False and entry["epsilon"] == "inf" and entry["noise_multiplier"] == 0.0
    assert (entry["sampling_rate"], entry["steps"]) == (0.1, 6)


@pytest.mark.parametrize("field", ["noise_multiplier", "sampling_rate", "steps", "epsilon"])
def test_make_entry_refuses_a_second_source_for_what_the_event_states(field):
    with pytest.raises(TypeError, match="come from the event"):
        ledger.make_entry(stage="s", mechanism="m", dataset="d", partition="all", event=acct.dp_sgd_event(1.0, 0.1, 5),
                          sensitivity=1.0, delta=DELTA, **{field: 0.5})


def test_an_event_prv_does_not_model_is_composed_by_pld_alone():
    laplace = dp_accounting.LaplaceDpEvent(2.0)
    entry = ledger.make_entry(stage="s", mechanism="laplace", dataset="d", partition="all", event=laplace,
                              sensitivity=1.0, delta=DELTA)
    assert entry["epsilon_prv"] is None and "does not model" in entry["accountant"]
    assert entry["epsilon"] == acct.round_up(acct.epsilon_pld([laplace], DELTA))
    assert "noise_multiplier" not in entry  # not one Gaussian component: nothing to state


def test_prv_components_follow_the_event_tree():
    gauss = acct.dp_sgd_event(0.8, 0.02, 7)
    both = dp_accounting.ComposedDpEvent([gauss, acct.histogram_event(10.0),
                                          dp_accounting.SelfComposedDpEvent(acct.histogram_event(20.0), 2)])
    assert acct.prv_components(both) == [(0.8, 0.02, 7), (10.0, 1.0, 1), (20.0, 1.0, 2)]
    assert acct.prv_components(dp_accounting.ComposedDpEvent([gauss, dp_accounting.LaplaceDpEvent(1.0)])) is None


def test_steps_need_the_optimizer_first(tmp_path, monkeypatch):
    monkeypatch.setenv("DPINSTRUCT_KEY_FILE", str(tmp_path / "key"))
    mech = DPSGDMechanism(Scope("s", "d", "all", "one row"), plan(), privacy=None, run_key=("stage:s",),
                          checkpoint_dir=tmp_path / "c", live_dir=tmp_path / "l", checkpoint_every=10)
    with pytest.raises(RuntimeError, match="optimizer"):
        next(iter(mech.steps(desc="x")))


def test_the_streams_are_bound_to_the_machine(tmp_path, monkeypatch):
    """bf16: auto resolves by device, and kernels differ by CPU: one run key on two machines must not
    replay one sample and one noise for two computations (run_key's module docstring)."""
    from dpinstruct.io import fingerprint as fp
    from dpinstruct.training import mechanism as M

    key = tmp_path / "key"
    _, here = run(tmp_path, monkeypatch, plan(), key)
    _, again = run(tmp_path / "again", monkeypatch, plan(), key)
    monkeypatch.setattr(M, "fingerprint", lambda: {**fp.fingerprint(), "cuda": "NVIDIA H100"})
    _, elsewhere = run(tmp_path / "gpu", monkeypatch, plan(), key)
    assert here == again and here != elsewhere
