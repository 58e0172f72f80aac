"""``DPSGDMechanism``: one run of a DP-SGD mechanism, the frame all four DP-SGD stages share.

A stage builds its plan (``dpinstruct.privacy.accounting.plan_dp_sgd`` / ``plan_generator``: q, T,
sigma from params and the DP count alone, refused before any model work when unsafe), declares what
the mechanism touches (``Scope``: dataset, partition, privacy unit, neighbouring relation) and
then only runs its step body:

    mech = DPSGDMechanism(scope, plan, privacy=Randomness.from_params(params), run_key=key, ...)
    dp = mech.optimizer(model, lr=...)
    for step in mech.steps(desc=...):
        batch = mech.sample(n)            # Poisson sample from the keyed stream
        ...                               # the stage's own body: a loss, rollouts, ...
        mech.metrics.update(...)
    entry = mech.ledger_entry()           # written FROM plan.event(): no field can drift from it

Both DP streams (Poisson sampling and noise) are bound to the run key plus the plan (``DPLoop``),
and DP-Adam's noise, divisor and clip come from the same plan the ledger entry states.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpinstruct.io.fingerprint import fingerprint
from dpinstruct.io.params import params_hash
from dpinstruct.io.settings.privacy import Randomness
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger
from dpinstruct.training.dp_adam import DPAdam, poisson_sample
from dpinstruct.training.dp_loop import DPLoop

log = logging.getLogger(__name__)
MECHANISM = "poisson_subsampled_gaussian"


@dataclass(frozen=True)
class Scope:
    """What a mechanism touches, as its ledger entry states it (``composition`` composes by it)."""
    stage: str
    dataset: str
    partition: str
    privacy_unit: str
    neighbouring: str = acct.NEIGHBOURING


class DPSGDMechanism:
    def __init__(self, scope: Scope, plan: acct.DPSGDPlan, *, privacy: Randomness | None, run_key: tuple,
                 checkpoint_dir: Path | str, live_dir: Path | str, checkpoint_every: int):
        """``run_key``: ``dpinstruct.privacy.run_key.run_key(...)`` of this run; the plan is bound
        into the streams on top of it. ``privacy``: params' randomness setting (key_file / secure_mode)."""
        self.scope, self.plan = scope, plan
        log.info("%s plan: %s", scope.stage, plan.describe())
        # The machine is bound too (device, CPU kernels, torch/MKL versions, threads): a param such as
        # bf16: auto resolves by device, and one run key on a CPU and on a GPU would otherwise draw
        # the same sample and noise for two different computations.
        # ``run_key`` here is the whole binding: a stage's other keyed streams (DP-PPO's rollouts) use it too
        self.run_key = (*run_key, params_hash(plan.as_dict()), f"machine:{params_hash(fingerprint())}")
        self.loop = DPLoop(scope.stage, privacy=privacy, run_key=self.run_key,
                           steps=plan.steps, noise_multiplier=plan.effective_noise_multiplier,
                           sampling_rate=plan.sampling_rate, delta=plan.delta, checkpoint_dir=checkpoint_dir,
                           live_dir=live_dir, checkpoint_every=int(checkpoint_every))
        self.dp: DPAdam | None = None
        self.model = None

    @property
    def metrics(self) -> dict:
        """The current step's metrics, logged to DVCLive after the step (private: from private batches)."""
        return self.loop.metrics

    @property
    def replayable(self) -> bool:
        return self.loop.noise.replayable

    def optimizer(self, model, *, lr: float, autocast_bf16: bool = False) -> DPAdam:
        """DP-Adam on ``model`` with the plan's noise multiplier, clip norm and divisor q x N~."""
        self.model = model
        self.dp = DPAdam(model, lr=lr, noise_multiplier=self.plan.noise_multiplier, clip_norm=self.plan.clip_norm,
                         expected_batch_size=self.plan.expected_batch_size, noise=self.loop.noise,
                         autocast_bf16=autocast_bf16)
        return self.dp

    def steps(self, *, desc: str, summary: dict | None = None, extra_streams: dict | None = None):
        """The step numbers still to run (resuming this very run's checkpoint); needs ``optimizer`` first."""
        if self.dp is None:
            raise RuntimeError("DPSGDMechanism.steps: call optimizer(model, lr=...) first")
        return self.loop.iterate(model=self.model, optimizer=self.dp.optimizer, summary=summary,
                                 extra_streams=extra_streams, desc=desc)

    def sample(self, n: int) -> np.ndarray:
        """Indices of the units in this step's Poisson sample (each with probability q, keyed stream)."""
        return poisson_sample(self.loop.sampler, n, self.plan.sampling_rate)

    def ledger_entry(self, **extra) -> dict:
        """The mechanism's ledger entry, from the plan's DpEvent (epsilon, PRV cross-check, q, T, sigma)."""
        r, p = self.scope, self.plan
        return ledger.make_entry(stage=r.stage, mechanism=MECHANISM, dataset=r.dataset, partition=r.partition,
                                 event=p.event(), sensitivity=p.clip_norm, delta=p.delta, neighbouring=r.neighbouring,
                                 privacy_unit=r.privacy_unit, plan=p.as_dict(), secure_mode=not self.replayable,
                                 **({} if p.private else {"sampling_rate": p.sampling_rate, "steps": p.steps}),
                                 **({"epochs_per_batch": p.epochs_per_batch,
                                     "noise_multiplier_per_epoch": p.noise_multiplier}
                                    if p.epochs_per_batch != 1 else {}), **extra)
