"""The frame of a DP training stage: secret-keyed streams, resumable steps, epsilon as it is spent.

``DPLoop`` gives a stage the two DP random streams it draws from (Poisson sampling and noise,
bound to the stage's whole run key: params, every input's digest and the code; ``run_key``,
``randomness``), the key that decides whether a checkpoint may be resumed, and an iterator over the remaining steps that
logs each step's metrics and the epsilon spent so far to DVCLive and saves a checkpoint every
``checkpoint_every`` steps. A killed stage therefore resumes bit for bit: no step is ever re-drawn
with fresh noise. The body of a step is the stage's own (a batch of examples, or PPO rollouts).
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from tqdm import tqdm

from dpinstruct.io import checkpoint
from dpinstruct.io.params import params_hash
from dpinstruct.io.settings.privacy import Randomness
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy.randomness import DPRandom

log = logging.getLogger(__name__)
EPSILON_POINTS = 20


class DPLoop:
    def __init__(self, stage: str, *, privacy: Randomness | None, run_key: tuple, steps: int,
                 noise_multiplier: float, sampling_rate: float, delta: float, checkpoint_dir: Path | str,
                 live_dir: Path | str, checkpoint_every: int):
        """``run_key``: ``dpinstruct.privacy.run_key.run_key(...)`` of this run (params, every input's
        digest, the code), to which both streams are bound; ``privacy`` the randomness setting
        (params' ``privacy.key_file`` / ``privacy.secure_mode``), the same for every DP stage."""
        self.sampler = DPRandom.for_purpose(f"{stage}/poisson", *run_key, privacy=privacy)
        self.noise = DPRandom.for_purpose(f"{stage}/noise", *run_key, privacy=privacy)
        # A checkpoint is resumed only by the very same run: params, plan, data, weights, code and key.
        # In secure mode the streams' tag is always "os": without a fresh nonce a second secure run
        # would resume the first run's last checkpoint and share most of its steps (never resumed).
        nonce = () if self.sampler.replayable else (os.urandom(16).hex(),)
        self.run_key = params_hash(*run_key, steps, noise_multiplier, sampling_rate, self.sampler.resume_tag(),
                                   self.noise.resume_tag(), *nonce)
        self.steps, self.noise_multiplier, self.sampling_rate, self.delta = steps, noise_multiplier, sampling_rate, delta
        self.checkpoint_dir, self.live_dir, self.checkpoint_every = Path(checkpoint_dir), str(live_dir), checkpoint_every
        self.metrics: dict = {}

    def streams(self) -> dict:
        return {"poisson": self.sampler, "noise": self.noise}

    def iterate(self, *, model, optimizer, extra_streams: dict | None = None, summary: dict | None = None,
                desc: str = "DP steps"):
        """Yield the step numbers still to run, resuming from a checkpoint of this run; after each
        step, log ``self.metrics`` (set by the body) and epsilon, and checkpoint when due."""
        from dvclive import Live

        streams = {**self.streams(), **(extra_streams or {})}
        state = checkpoint.load(self.checkpoint_dir, self.run_key)
        if state and len(state.get("history", [])) != state["step"]:
            log.info("checkpoint in %s has no curves to resume them from (an older format); starting at step 0",
                     self.checkpoint_dir)
            state = None
        start = checkpoint.restore(state, model=model, optimizer=optimizer, streams=streams) if state else 0
        # The curves restart from the checkpoint's history, not from the DVCLive folder: DVC deletes a
        # stage's outputs before re-running it, so a resumed run would otherwise log from step 0 again.
        history = list(state["history"]) if state else []
        # Epsilon is composed at EPSILON_POINTS steps at most (and the last): even from a one-step PLD
        # built once, a composition costs ~0.2 s, which at hundreds of cheap steps (the reward
        # model's head) would dominate the stage.
        every, eps = max(1, math.ceil(self.steps / EPSILON_POINTS)), math.inf
        curve = acct.EpsilonCurve(self.noise_multiplier, self.sampling_rate, self.delta) \
            if self.noise_multiplier > 0 and start < self.steps else None
        live = Live(self.live_dir, resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
        live.summary.update(summary or {})
        for logged in history:
            for name, value in logged.items():
                live.log_metric(name, value)
            live.next_step()
        bar = tqdm(range(start, self.steps), initial=start, total=self.steps, desc=desc, unit="step")
        for step in bar:
            self.metrics = {}
            yield step
            due = (step + 1) % every == 0 or step + 1 == self.steps
            if due and self.noise_multiplier > 0:
                eps = curve(step + 1)
            bar.set_postfix({k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in self.metrics.items()},
                            eps=f"{eps:.2f}")
            logged = dict(self.metrics, **({"epsilon": eps} if due and self.noise_multiplier > 0 else {}))
            for name, value in logged.items():
                live.log_metric(name, value)
            live.next_step()
            history.append(logged)
            if (step + 1) % self.checkpoint_every == 0 and step + 1 < self.steps:
                checkpoint.save(self.checkpoint_dir, step=step + 1, run_key=self.run_key, model=model,
                                optimizer=optimizer, streams=streams, history=history)
        live.end()
