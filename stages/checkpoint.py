"""Training checkpoints that make a killed run resume as if it had never stopped.

A checkpoint holds the LoRA weights, the Adam state, the step count and EVERY random state the run
draws from (Poisson sampler, noise generator, dropout). Resuming therefore replays exactly the
batches and noise of an uninterrupted run: no step is re-sampled with fresh noise, so nothing
beyond the T accounted steps is ever computed on the data (in secure_mode the noise source cannot
be replayed; the resumed steps use fresh noise and still number T in total). A checkpoint is used
only by the same run: same params, privacy plan, train data and base weights (`run_key`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)
FILE = "state.pt"


def save(directory: Path, *, step: int, run_key: str, model, optimizer, sampler_rng, noise_generator) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step, "run_key": run_key,
        "trainable": {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad},
        "optimizer": optimizer.state_dict(),
        "sampler_rng": sampler_rng.bit_generator.state,
        "noise_generator": noise_generator.get_state() if noise_generator is not None else None,
        "torch_rng": torch.get_rng_state(),
    }
    tmp = directory / (FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, directory / FILE)  # a kill during save leaves the previous checkpoint intact


def load(directory: Path, run_key: str) -> dict | None:
    path = directory / FILE
    if not path.exists():
        return None
    state = torch.load(path, weights_only=False)
    if state.get("run_key") != run_key:
        log.info("checkpoint in %s is from another run (params, plan, data or weights differ); starting at step 0", directory)
        return None
    return state


def restore(state: dict, *, model, optimizer, sampler_rng, noise_generator) -> int:
    named = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state["trainable"].items():
            named[k].copy_(v)
    optimizer.load_state_dict(state["optimizer"])
    sampler_rng.bit_generator.state = state["sampler_rng"]
    if noise_generator is not None and state["noise_generator"] is not None:
        noise_generator.set_state(state["noise_generator"])
    torch.set_rng_state(state["torch_rng"])
    log.info("resuming from checkpoint at step %d", state["step"])
    return state["step"]
