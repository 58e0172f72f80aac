"""Held-out response NLL by teacher forcing (checked against a one-example loop), bootstrap
intervals, win-rate outcomes from two orders, the local judge's output, on the real student."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dpinstruct.alignment import judge as J
from dpinstruct.alignment.chat import chat_ids, exchange
from dpinstruct.alignment.scoring import bootstrap_mean, outcome, pair_ids, response_nll, win_rate
from dpinstruct.models.loading import load_generator

PAIRS = [("What is 2+2?", "2+2 is 4."),
         ("Write a haiku about the sea.", "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps its time."),
         ("Name a primary colour.", "Red.")]


@pytest.fixture(scope="module")
def student(tiny_generator_dir):
    return load_generator(tiny_generator_dir)


def test_response_nll_equals_a_one_example_computation(student):
    model, tokenizer = student
    batched = response_nll(model, tokenizer, [p[0] for p in PAIRS], [p[1] for p in PAIRS], batch_size=3)
    for (instruction, response), got in zip(PAIRS, batched):
        ids, begin = pair_ids(tokenizer, instruction, response)
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        targets = torch.tensor(ids[begin:])
        manual = -logp[begin - 1:len(ids) - 1].gather(1, targets[:, None]).mean().item()
        assert got == pytest.approx(manual, abs=1e-4)
    # the scored tokens are the response and the template's end of turn, not the instruction
    ids, begin = pair_ids(tokenizer, *PAIRS[0])
    assert tokenizer.decode(ids[begin:]).startswith(PAIRS[0][1]) and ids[:begin] == chat_ids(
        tokenizer, exchange(*PAIRS[0])[:1], generation_prompt=True)


def test_a_response_the_model_would_give_scores_lower_than_nonsense(generator_dir):
    model, tokenizer = load_generator(generator_dir)  # a judgement of language: the real model
    good, bad = response_nll(model, tokenizer, ["What is 2+2?"] * 2, ["2+2 equals 4.", "Purple seven walrus quantum."])
    assert good < bad


def test_bootstrap_interval_and_outcomes():
    values = np.random.default_rng(0).normal(1.0, 0.5, 400)
    summary = bootstrap_mean(values, draws=2000, seed=0)
    assert summary["lo"] < summary["mean"] < summary["hi"] and summary["hi"] - summary["lo"] == pytest.approx(
        2 * 1.96 * 0.5 / 20, rel=0.15)
    assert bootstrap_mean(values, draws=2000, seed=0) == summary  # seeded
    assert [outcome(1, 1), outcome(-1, -1), outcome(1, -1), outcome(0, 1)] == [1.0, 0.0, 0.5, 1.0]
    assert [outcome(3.0, -2.5), outcome(3.0, -3.5)] == [1.0, 0.0]  # margins: a position bias of 3 cancels
    w = win_rate(np.array([1.0, 1.0, 0.5, 0.0]), draws=500, seed=0)
    assert (w["wins"], w["ties"], w["losses"], w["win_rate"]) == (2, 1, 1, 0.625)


class BiasedFirst:
    """A judge with a strong preference for the first position, and a small one for longer answers."""

    def judge(self, triples, label=""):
        return np.array([5.0 + 0.1 * (len(a) - len(b)) for _, a, b in triples])


def test_both_orders_cancel_a_position_bias():
    first, second = J.both_orders(BiasedFirst(), ["i"] * 3, ["long answer", "x", "same"], ["y", "longer one", "same"],
                                  label="t")
    assert (first > 0).all() and (second < 0).all()  # every single verdict names position A
    assert [outcome(f, s) for f, s in zip(first, second)] == [1.0, 0.0, 0.5]


def test_local_judge_returns_a_verdict_per_pair(student):
    judge = J.LocalJudge(*student, batch_size=2)
    margins = judge.judge([(i, r, "I do not know.") for i, r in PAIRS])
    assert margins.shape == (3,) and np.isfinite(margins).all() and len(set(margins)) == 3
    assert J._verdict(" B") == -1 and J._verdict("A.") == 1 and J._verdict("neither") == 0
