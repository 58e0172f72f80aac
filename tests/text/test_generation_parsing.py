"""Parsing edge cases of sampled instructions: prompt echo, no EOS, whitespace-only, very long, loops."""
from __future__ import annotations

import pytest

from dpinstruct.io.settings.generation import SampleRules
from dpinstruct.models.loading import load_tokenizer
from dpinstruct.text.generation_parsing import parse

RULES = {"drop_truncated": True, "min_tokens": 2, "min_distinct_word_ratio": 0.3}


@pytest.fixture(scope="module")
def tok(generator_dir):
    return load_tokenizer(generator_dir)


def run(tok, text_ids, **rules):
    prompt = tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"]
    return parse(text_ids, prompt_ids=prompt, special_ids=set(tok.all_special_ids), tokenizer=tok,
                 rules=SampleRules(**{**RULES, **rules}))


def ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_plain_instruction_ending_with_eos(tok):
    p = run(tok, ids(tok, "Write a  haiku about\tautumn.  ") + [tok.eos_token_id])
    assert (p.text, p.drop) == ("Write a haiku about autumn.", None)
    assert p.n_tokens == len(ids(tok, "Write a  haiku about\tautumn.  "))


def test_prompt_echo_is_stripped(tok):
    echo = ids(tok, "<|im_start|>user\n")
    p = run(tok, echo + echo + ids(tok, "List three primes.") + [tok.eos_token_id])
    assert (p.text, p.drop) == ("List three primes.", None)


def test_a_new_turn_ends_the_instruction(tok):
    p = run(tok, ids(tok, "Explain DNS.") + ids(tok, "<|im_start|>assistant\nSure"))
    assert (p.text, p.drop) == ("Explain DNS.", None)


def test_no_eos_is_truncated_unless_allowed(tok):
    body = ids(tok, "Tell me about the history of")
    assert run(tok, body).drop == "truncated"
    kept = run(tok, body, drop_truncated=False)
    assert (kept.text, kept.drop) == ("Tell me about the history of", None)


def test_very_long_sample_cut_at_the_limit(tok):
    body = ids(tok, " ".join(f"word{i}" for i in range(200)))[:64]  # what max_new_tokens leaves
    p = run(tok, body)
    assert p.drop == "truncated" and p.n_tokens == 64


@pytest.mark.parametrize("text", ["", "   ", "\n\n \t"])
def test_whitespace_only_is_empty(tok, text):
    assert run(tok, ids(tok, text) + [tok.eos_token_id]).drop == "empty"


def test_too_short_and_degenerate(tok):
    assert run(tok, ids(tok, "Hi") + [tok.eos_token_id], min_tokens=2).drop == "too_short"
    assert run(tok, ids(tok, "the " * 12) + [tok.eos_token_id]).drop == "degenerate"
    assert run(tok, ids(tok, "I am I am I am I am") + [tok.eos_token_id]).drop == "degenerate"
    assert run(tok, ids(tok, "Plan a week of meals for a family of four on a budget") + [tok.eos_token_id]).drop is None
