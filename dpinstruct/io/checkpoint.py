"""Training checkpoints that make a killed run resume as if it had never stopped.

A checkpoint holds the LoRA weights, the Adam state, the step count and EVERY random state the run
draws from (the positions of the keyed Poisson and noise streams, torch's RNG for dropout).
Resuming therefore replays exactly the batches and noise of an uninterrupted run: no step is
re-sampled with fresh noise, so nothing beyond the T accounted steps is ever computed on the data
(in secure_mode the OS source cannot be replayed; the resumed steps use fresh randomness and still
number T in total). A checkpoint is used only by the same run: same params, privacy plan, train
data, base weights and secret key (`run_key`). It holds stream positions, never the key or a seed,
but it is private all the same: it holds weights trained on private data before the last step.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)
FILE = "state.pt"


def save(directory: Path, *, step: int, run_key: str, model, optimizer, streams: dict,
         history: list[dict] | None = None) -> None:
    """``history``: the metrics logged at each step so far, so that a resumed run can rebuild its
    curves (DVC deletes a stage's outputs, the DVCLive folder included, before it re-runs it)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "step": step, "run_key": run_key, "history": list(history or []),
        "trainable": {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad},
        "optimizer": optimizer.state_dict(),
        "streams": {name: stream.state() for name, stream in streams.items()},
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


def restore(state: dict, *, model, optimizer, streams: dict) -> int:
    named = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in state["trainable"].items():
            named[k].copy_(v)
    optimizer.load_state_dict(state["optimizer"])
    for name, stream in streams.items():
        stream.restore(state["streams"].get(name))
    torch.set_rng_state(state["torch_rng"])
    log.info("resuming from checkpoint at step %d", state["step"])
    return state["step"]
