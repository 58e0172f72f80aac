"""`dpinstruct audit`'s own parts, without a training run: the public canary vocabulary, canaries and
inclusion flags drawn from a keyed stream, a canary's loss as training scores a record, the
refusals of ``run_audit``, and the command's exit code and report. (The whole audit on a tiny slice
runs in tests/privacy/test_audit.py; the bound itself is dpinstruct/privacy/audit.py's.)"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dpinstruct.cli import main
from dpinstruct.io.errors import PipelineError
from dpinstruct.models.loading import load_generator
from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.tools import canary_audit as CA

PROMPT = "<|im_start|>user\n"


@pytest.fixture(scope="module")
def tiny(tiny_generator_dir):
    return load_generator(tiny_generator_dir)


def stream(seed: bytes = b"s" * 32) -> DPRandom:
    return DPRandom(seed)  # a keyed stream, as DPRandom.for_purpose derives one from the secret key


def test_vocabulary_words_are_whole_lowercase_single_token_words(tiny):
    _, tokenizer = tiny
    words = CA.vocabulary_words(tokenizer)
    assert len(words) > 5000 and words == sorted(words) and len(set(words)) == len(words)
    assert all(w.isalpha() and w.islower() and len(w) >= 4 for w in words)
    for w in words[:: len(words) // 200]:  # a spread of them: " word" is one token
        assert len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1, w


def test_canaries_are_distinct_eight_word_sentences_replayed_by_the_stream():
    words = [f"word{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
    texts, included = CA.draw_canaries(stream(), words, 300)
    assert len(texts) == len(set(texts)) == 300
    for t in texts:
        parts = t.split(" ")
        assert len(parts) == CA.CANARY_WORDS and t[0] == "W" and {p.lower() for p in parts} <= set(words)
    assert included.dtype == bool and included.shape == (300,) and 100 < included.sum() < 200  # p = 1/2
    again, again_included = CA.draw_canaries(stream(), words, 300)
    assert again == texts and (again_included == included).all()
    other, other_included = CA.draw_canaries(stream(b"t" * 32), words, 300)
    assert other != texts and (other_included != included).any()
    # every word can be drawn (the last one too: no off-by-one at the top of [0, 1))
    assert {p.lower() for t in texts for p in t.split(" ")} == set(words)


def test_colliding_canaries_are_refused():
    with pytest.raises(CA.AuditFailure, match="canaries collided; draw again with another audit.canaries"):
        CA.draw_canaries(stream(), ["only"], 2)


def test_a_canarys_loss_is_its_mean_token_loss_after_the_prompt(tiny):
    model, tokenizer = tiny
    texts = ["Apple river stone cloud", "Seven quiet lamps glow over the harbour tonight", "Hi"]
    losses = CA.canary_losses(model, tokenizer, texts, PROMPT, batch_size=2)  # padded batches
    prompt = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    for text, got in zip(texts, losses):
        ids = prompt + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        targets = torch.tensor(ids[len(prompt):])  # the text and EOS; the prompt is context
        assert got == pytest.approx(-logp[len(prompt) - 1:-1].gather(1, targets[:, None]).mean().item(), abs=1e-4)
    assert losses.shape == (3,) and not model.training
    np.testing.assert_allclose(CA.canary_losses(model, tokenizer, texts, PROMPT, batch_size=64), losses, atol=1e-5)


def test_run_audit_refuses_before_reading_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=r"data/prepared/train\.parquet not found: run `dvc repro prepare` first"):
        CA.run_audit({}, canaries=10, confidence=0.9)
    CA.TRAIN.parent.mkdir(parents=True)
    CA.TRAIN.write_bytes(b"")  # present, never read: the arguments are checked first
    with pytest.raises(PipelineError, match=r"audit\.canaries must be >= 2, got 1"):
        CA.run_audit({}, canaries=1, confidence=0.9)
    for runs in ((), ("run", "twice"), ("inf", "Run")):
        with pytest.raises(PipelineError, match=r"--runs must name run and/or inf, got '"):
            CA.run_audit({}, canaries=10, confidence=0.9, runs=runs)


def test_a_bad_audit_param_fails_the_command_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("audit: {canaries: 1, confidence: 0.95}\n")
    assert main(["audit", "--out", "audit.json"]) == 1
    assert "audit failed: params.yaml, audit.canaries: " in capsys.readouterr().err
    assert not (tmp_path / "audit.json").exists()


def test_the_command_passes_its_flags_and_defaults_to_the_audit(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("audit: {canaries: 10, confidence: 0.95}\n")
    calls = []
    monkeypatch.setattr(CA, "run_audit", lambda params, **kw: calls.append(kw) or {"claimed_epsilon": 1.0,
                                                                                  "lower_bound": 0.5})
    assert main(["audit", "--out", "a.json"]) == 0
    assert main(["audit", "--out", "b.json", "--canaries", "40", "--confidence", "0.8", "--runs", "inf,",
                 "--epochs", "2"]) == 0
    assert calls == [{"canaries": 10, "confidence": 0.95, "runs": ("run", "inf"), "epochs": None},
                     {"canaries": 40, "confidence": 0.8, "runs": ("inf",), "epochs": 2.0}]


@pytest.mark.parametrize("flag, message", [("--canaries", "audit.canaries must be >= 2, got 0"),
                                           ("--confidence", "audit.confidence must be in (0, 1), got 0.0")])
def test_a_zero_flag_is_refused_not_replaced_by_the_params_value(tmp_path, monkeypatch, capsys, flag, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("audit: {canaries: 10, confidence: 0.95}\n")
    assert main(["audit", "--out", "a.json", flag, "0"]) == 1
    assert message in capsys.readouterr().err and not (tmp_path / "a.json").exists()


def test_a_bound_above_the_claim_fails_loudly_after_writing_the_report(tmp_path, monkeypatch, capsys):
    # the audit's verdict, not its training, is under test here: a report whose bound exceeds the
    # claim (what a broken noise path would produce at scale) must exit 1 and still be written
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("audit: {canaries: 10, confidence: 0.95}\n")
    broken = {"claimed_epsilon": 1.0, "lower_bound": 2.5, "inf": {"claimed_epsilon": "inf", "lower_bound": 3.0}}
    monkeypatch.setattr(CA, "run_audit", lambda *a, **k: broken)
    assert main(["audit", "--out", "audit.json"]) == 1
    assert json.loads((tmp_path / "audit.json").read_text())["lower_bound"] == 2.5
    err = capsys.readouterr().err
    assert "AUDIT FAILURE (run): lower bound 2.5000 exceeds the claimed epsilon 1.0" in err and "(inf)" not in err
