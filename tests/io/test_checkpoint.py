"""Checkpoints: a resumed run continues with the very weights, optimizer state and stream positions
it stopped with, and only the same run (its run key) may resume one."""
from __future__ import annotations

import hashlib

import torch

from dpinstruct.io import checkpoint
from dpinstruct.privacy.randomness import DPRandom


def setup():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    stream = DPRandom(hashlib.sha256(b"k").digest())
    return model, opt, stream


def step(model, opt, stream):
    opt.zero_grad()
    model(torch.from_numpy(stream.normal((4, 3), 1.0)).float()).sum().backward()
    opt.step()


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path):
    model, opt, stream = setup()
    for _ in range(4):
        step(model, opt, stream)
    straight = [p.detach().clone() for p in model.parameters()]

    model, opt, stream = setup()
    for _ in range(2):
        step(model, opt, stream)
    checkpoint.save(tmp_path, step=2, run_key="run", model=model, optimizer=opt, streams={"noise": stream},
                    history=[{"loss": 1.0}, {"loss": 0.5}])
    model, opt, stream = setup()  # a fresh process: new objects, states at the start
    state = checkpoint.load(tmp_path, "run")
    assert checkpoint.restore(state, model=model, optimizer=opt, streams={"noise": stream}) == 2
    assert state["history"] == [{"loss": 1.0}, {"loss": 0.5}]
    for _ in range(2):
        step(model, opt, stream)
    assert all(torch.equal(a, b) for a, b in zip(straight, model.parameters()))


def test_only_the_same_run_resumes(tmp_path):
    model, opt, stream = setup()
    checkpoint.save(tmp_path, step=1, run_key="run-a", model=model, optimizer=opt, streams={"noise": stream})
    assert checkpoint.load(tmp_path, "run-b") is None
    assert checkpoint.load(tmp_path / "absent", "run-a") is None
    assert checkpoint.load(tmp_path, "run-a")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint.FILE]  # no temporary file left
