"""DPLoop's epsilon curve: composed at a bounded number of steps (one PLD composition costs ~0.5 s),
always at the last, and equal to an independent composition of that many steps."""
from __future__ import annotations

import csv
import hashlib
import math

import pytest
import torch

from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.training import dp_loop
from dpinstruct.training.dp_adam import DPAdam


@pytest.mark.parametrize("steps", [7, 45])
def test_epsilon_is_logged_at_most_every_ceil_t_over_points_steps_and_at_the_last(tmp_path, monkeypatch, steps):
    monkeypatch.setenv("DPINSTRUCT_KEY_FILE", str(tmp_path / "key"))
    sigma, q, delta = 1.1, 0.05, 1e-5
    # a stand-in run key: DPLoop binds its streams to whatever run_key.run_key(...) the stage built
    loop = dp_loop.DPLoop("s", privacy=None, run_key=("stage:s", "params:p"), steps=steps, noise_multiplier=sigma,
                          sampling_rate=q, delta=delta, checkpoint_dir=tmp_path / "ckpt", live_dir=tmp_path / "live",
                          checkpoint_every=1000)
    model = torch.nn.Linear(2, 1, bias=False)
    dp = DPAdam(model, lr=0.1, noise_multiplier=sigma, clip_norm=1.0, expected_batch_size=1.0,
                noise=DPRandom(hashlib.sha256(b"n").digest()))
    for _ in loop.iterate(model=model, optimizer=dp.optimizer):
        dp.step([])
        loop.metrics.update(batch_size=0)
    with open(tmp_path / "live/plots/metrics/epsilon.tsv") as f:
        logged = {int(row["step"]): float(row["epsilon"]) for row in csv.DictReader(f, delimiter="\t")}
    every = math.ceil(steps / dp_loop.EPSILON_POINTS)
    assert sorted(logged) == sorted({t - 1 for t in range(every, steps + 1, every)} | {steps - 1})
    assert len(logged) <= dp_loop.EPSILON_POINTS + 1
    checked = sorted(logged)
    for step in {checked[0], checked[len(checked) // 2], checked[-1]}:  # each PLD composition costs ~0.5 s
        eps = logged[step]
        assert eps == pytest.approx(acct.epsilon_pld([acct.dp_sgd_event(sigma, q, step + 1)], delta), rel=1e-9)
