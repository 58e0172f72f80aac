"""Pairwise judges: the prompt, the local judge's margins (left-padded batches give each pair's
unbatched margin, in input order), the remote judge's verdicts through a real OpenAI client
against a server on 127.0.0.1, and the two orders of ``both_orders``.
(tests/alignment/test_scoring.py has the position-bias cancellation and the outcome rules.)"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dpinstruct.alignment import judge as J
from dpinstruct.alignment.backends import OpenAIChatBackend
from dpinstruct.alignment.chat import chat_ids
from dpinstruct.models.loading import load_generator
from tests.alignment.openai_server import FakeOpenAI, Reply

TRIPLES = [("What is 2+2?", "4", "It is four, as two and two make four."),
           ("Write a haiku about the sea.", "Waves fold into foam,\nsalt wind carries gull voices.", "No."),
           ("Name a primary colour.", "Red.", "Blue is one; red and yellow are the others."),
           ("Hi", "Hello!", "Hey")]


@pytest.fixture(scope="module")
def student(tiny_generator_dir):
    return load_generator(tiny_generator_dir)


def test_the_prompt_shows_instruction_then_a_then_b():
    [message] = J.messages("INSTR", "FIRST", "SECOND")
    assert message["role"] == "user"
    text = message["content"]
    assert text.index("INSTR") < text.index("Response A:\nFIRST") < text.index("Response B:\nSECOND")
    assert text.endswith("Answer with one letter: A or B.")


def unbatched_margin(model, tokenizer, triple) -> float:
    ids = torch.tensor([chat_ids(tokenizer, J.messages(*triple), generation_prompt=True)])
    with torch.inference_mode():
        last = model(input_ids=ids).logits[0, -1].float()
    a, b = (tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in "AB")
    return (last[a] - last[b]).item()


def test_local_margins_are_each_pairs_own_next_token_logit_difference(student):
    # the prompts differ in length, so batches are left-padded: padding, masks and positions must
    # leave every pair's margin as the model gives it alone
    model, tokenizer = student
    judge = J.LocalJudge(model, tokenizer, batch_size=3)
    margins = judge.judge(TRIPLES)
    assert margins.shape == (4,) and margins.dtype == np.float64
    np.testing.assert_allclose(margins, [unbatched_margin(model, tokenizer, t) for t in TRIPLES], atol=1e-4)


def test_local_margins_come_back_in_input_order_whatever_the_batching(student):
    judge = J.LocalJudge(*student, batch_size=2)  # batches are formed by length, not by position
    margins = judge.judge(TRIPLES)
    np.testing.assert_allclose(judge.judge(TRIPLES[::-1])[::-1], margins, atol=1e-4)
    judge.batch_size = 1
    np.testing.assert_allclose(judge.judge(TRIPLES), margins, atol=1e-4)
    assert judge.judge([]).shape == (0,)


def test_the_local_judge_reads_the_letters_as_single_tokens(student):
    model, tokenizer = student
    judge = J.LocalJudge(model, tokenizer)
    assert [tokenizer.decode([i]) for i in judge.choices] == ["A", "B"]
    with pytest.raises(ValueError, match=r"the judge's tokenizer splits 'Qzxjv' into 5 tokens"):
        judge._letter_id("Qzxjv")


@pytest.mark.parametrize("reply, verdict", [
    ("A", 1), ("B", -1), (" b ", -1), ("a.", 1), ("**B**", -1), ("Response A is better.", 1),
    ("Answer: B", -1), ("(A)", 1), ("", 0), ("neither", 0), ("I cannot decide.", 0),
    # not verdicts: the B of "Both", the article "a" upper-cased, a word starting with A
    ("Both are equally good.", 0), ("Neither; they are a tie.", 0), ("Apples", 0), ("It is a tie, B", 0),
])
def test_the_first_standalone_letter_of_a_reply_is_the_verdict(reply, verdict):
    assert J._verdict(reply) == verdict


def test_the_remote_judge_asks_each_pair_and_reads_its_verdict(tmp_path):
    def prefers_the_shorter(n, body):  # a judge that reads the prompt: the shorter response wins
        text = body["messages"][0]["content"]
        a = text.split("Response A:\n")[1].split("\n\nResponse B:")[0]
        b = text.split("Response B:\n")[1].split("\n\nWhich response")[0]
        return Reply(content="A" if len(a) < len(b) else "Response B.")

    with FakeOpenAI(prefers_the_shorter) as server:
        backend = OpenAIChatBackend(base_url=server.url, model="m", api_key_env=None, concurrency=2, timeout=5.0,
                                    max_retries=0, decoding={"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 4},
                                    cache_path=tmp_path / "cache.sqlite")
        verdicts = J.RemoteJudge(backend).judge(TRIPLES, label="judge@test")
        assert verdicts.tolist() == [1.0, -1.0, 1.0, -1.0] and verdicts.dtype == float
        assert len(server.requests) == 4
        assert sorted(r["messages"][0]["content"] for r in server.requests) == sorted(
            J.messages(*t)[0]["content"] for t in TRIPLES)
        assert all(r["max_tokens"] == 4 and r["temperature"] == 0.0 for r in server.requests)
    assert J.JUDGES == {"local": J.LocalJudge, "openai": J.RemoteJudge}
    assert J.RemoteJudge.remote and not J.LocalJudge.remote


class Recording:
    """A judge that records what it is shown and prefers the response named "good"."""

    def __init__(self):
        self.calls = []

    def judge(self, triples, *, label):
        self.calls.append((label, list(triples)))
        return np.array([(a == "good") - (b == "good") for _, a, b in triples], dtype=float)


def test_both_orders_shows_x_first_then_y_first_and_reports_both_from_x():
    judge = Recording()
    first, second = J.both_orders(judge, ["i1", "i2"], ["good", "bad"], ["bad", "good"], label="eval")
    assert judge.calls == [("eval (x first)", [("i1", "good", "bad"), ("i2", "bad", "good")]),
                           ("eval (y first)", [("i1", "bad", "good"), ("i2", "good", "bad")])]
    assert first.tolist() == second.tolist() == [1.0, -1.0]  # x = "good" preferred in both orders
