"""Algorithm 1's loop (dpinstruct/training/dp_generator.py) on the tiny random generator: the scope a
ledger states, the unit of every example kept after too-long records are skipped, and a user-level
fit whose every row is trained as its own user's. (The train_generator stage's tests run the plan,
keys, resume and ledger end to end: tests/stages/test_train_generator.py.)"""
from __future__ import annotations

import numpy as np
import pytest

from dpinstruct.io.settings.generation import TrainGenerator
from dpinstruct.models.loading import load_tokenizer
from dpinstruct.privacy import user_level
from dpinstruct.training import dp_adam
from dpinstruct.training import dp_generator as G

# distinct instructions of 1 to ~40 tokens: with max_seq_len 24 the longest are skipped
INSTRUCTIONS = [("Tell me about " + "the history of bread and the ovens of old towns " * (i % 4)).strip() + f" {i}?"
                for i in range(24)]


def train_generator(repo_params, **changes) -> TrainGenerator:
    return TrainGenerator.from_params({"train_generator": {**repo_params["train_generator"], **changes}})


def test_the_scope_is_one_instruction_or_one_user_with_the_cap():
    record = G.scope(None, None)
    assert (record.stage, record.dataset, record.partition) == ("train_generator", "instructions", "all")
    assert record.privacy_unit == "one instruction" and record.neighbouring == "add_or_remove_one"
    user = G.scope(np.array([0, 0, 1]), 3)
    assert user.privacy_unit == "one user (all their instructions; at most 3 of them in a step)"
    assert user.neighbouring == user_level.NEIGHBOURING == "add_or_remove_one_user"


@pytest.mark.parametrize("max_seq_len", [12, 16, 24, 40])
def test_kept_units_are_the_units_of_the_examples_build_examples_keeps(tiny_generator_dir, repo_params, max_seq_len):
    tokenizer = load_tokenizer(tiny_generator_dir)
    cfg = train_generator(repo_params, max_seq_len=max_seq_len)
    units = np.arange(len(INSTRUCTIONS)) // 3  # 8 users of 3 instructions
    examples, prompt_len, skipped = dp_adam.build_examples(tokenizer, INSTRUCTIONS, cfg.prompt, cfg.max_seq_len)
    kept = G._kept_units(tokenizer, INSTRUCTIONS, units, cfg)
    body = {tuple(tokenizer(t, add_special_tokens=False)["input_ids"]): u for t, u in zip(INSTRUCTIONS, units)}
    assert len(kept) == len(examples) == len(INSTRUCTIONS) - skipped
    assert kept.tolist() == [body[tuple(e[prompt_len:-1])] for e in examples]
    # the limit is inclusive: an example of exactly max_seq_len tokens is kept
    assert max(len(e) for e in examples) <= max_seq_len


def test_kept_units_at_the_exact_boundary(tiny_generator_dir, repo_params):
    tokenizer = load_tokenizer(tiny_generator_dir)
    lengths = [len(e) for e in dp_adam.build_examples(tokenizer, INSTRUCTIONS, "<|im_start|>user\n", 10_000)[0]]
    at = sorted(set(lengths))[len(set(lengths)) // 2]  # a length some example has exactly
    cfg = train_generator(repo_params, max_seq_len=at)
    kept = G._kept_units(tokenizer, INSTRUCTIONS, np.arange(len(INSTRUCTIONS)), cfg)
    assert kept.tolist() == [i for i, n in enumerate(lengths) if n <= at] and at in [lengths[i] for i in kept]


def fit(project, units, **train):
    params = project.params
    # epsilon .inf: the same sampling and batching with no noise, and no calibration (seconds of accounting)
    params["privacy"].update(epsilon=float("inf"), delta=1e-3)
    params["train_generator"].update(sampling_rate=0.5, epochs=1.0, max_seq_len=24, micro_batch_tokens=128,
                                     checkpoint_every=1, **train)
    params["train_generator"]["lora"]["layers"] = [29]  # the last block only: the backward pass stops there
    return G.fit(params, INSTRUCTIONS, units=units, noisy_count=float(len(INSTRUCTIONS)),
                 count_component=(4.0, 1.0, 1), run_key=("test", "dp_generator"),
                 checkpoint_dir=project.root / "checkpoints", live_dir=project.root / "live")


def record_micro_batches(monkeypatch) -> list:
    seen, real = [], dp_adam.DPAdam.step
    monkeypatch.setattr(dp_adam.DPAdam, "step", lambda self, micro, **kw: seen.append(micro) or real(self, micro, **kw))
    return seen


def rows_of(micro: dict):
    for ids, mask in zip(micro["input_ids"], micro["attention_mask"]):
        yield tuple(ids[mask.bool()].tolist())


def test_a_user_level_fit_trains_every_row_as_its_own_users(tiny_project, monkeypatch):
    seen = record_micro_batches(monkeypatch)
    units = np.arange(len(INSTRUCTIONS)) % 6  # 6 users, interleaved: a kept row's index is not its unit's
    fitted = fit(tiny_project, units)
    tokenizer = fitted.tokenizer
    _, _, skipped = dp_adam.build_examples(tokenizer, INSTRUCTIONS, "<|im_start|>user\n", 24)
    prompt = tokenizer("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    unit_of = {tuple(prompt + tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]): u
               for t, u in zip(INSTRUCTIONS, units)}
    assert fitted.skipped == skipped > 0 and len(seen) == fitted.plan.steps == 2
    checked = 0
    for micro in (m for step in seen for m in step):
        for row, unit in zip(rows_of(micro), micro["unit"].tolist()):
            assert unit_of[row] == unit
            checked += 1
        # at most max_records_per_user rows of one user in a step
        assert np.bincount(micro["unit"].numpy()).max() <= tiny_project.params["user_level"]["max_records_per_user"]
    assert checked > 0
    assert fitted.mechanism.scope.neighbouring == user_level.NEIGHBOURING


def test_a_record_level_fit_samples_records_and_skips_the_too_long(tiny_project, monkeypatch):
    seen = record_micro_batches(monkeypatch)
    fitted = fit(tiny_project, None)
    examples, _, skipped = dp_adam.build_examples(fitted.tokenizer, INSTRUCTIONS, "<|im_start|>user\n", 24)
    assert fitted.skipped == skipped > 0 and fitted.mechanism.scope.privacy_unit == "one instruction"
    rows = [r for step in seen for m in step for r in rows_of(m)]
    assert rows and all("unit" not in m for step in seen for m in step)
    assert set(rows) <= {tuple(e) for e in examples}  # only kept examples, whole (never cut)
    trainable = [n for n, p in fitted.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
