"""Chat formatting with the generator's own tokenizer and chat template: token ids as a plain list,
a generation prompt that opens the assistant's turn, and the prompt a prefix of the full exchange
(what response scoring and SFT rely on to find where the response starts)."""
from __future__ import annotations

import pytest

from dpinstruct.alignment.chat import chat_ids, exchange, user
from dpinstruct.models.loading import load_tokenizer

INSTRUCTION, RESPONSE = "Name a primary colour.", "Red, for one."


@pytest.fixture(scope="module")
def tokenizer(tiny_generator_dir):
    return load_tokenizer(tiny_generator_dir)  # the real tokenizer and template


def test_messages_are_the_user_turn_and_the_exchange():
    assert user(INSTRUCTION) == [{"role": "user", "content": INSTRUCTION}]
    assert exchange(INSTRUCTION, RESPONSE) == [*user(INSTRUCTION), {"role": "assistant", "content": RESPONSE}]


def test_ids_are_a_plain_list_of_ints_whatever_transformers_returns(tokenizer):
    ids = chat_ids(tokenizer, user(INSTRUCTION), generation_prompt=True)
    assert type(ids) is list and ids and all(isinstance(i, int) for i in ids)
    assert ids == tokenizer(tokenizer.apply_chat_template(user(INSTRUCTION), add_generation_prompt=True, tokenize=False),
                            add_special_tokens=False)["input_ids"]


def test_the_generation_prompt_opens_the_assistants_turn(tokenizer):
    closed = chat_ids(tokenizer, user(INSTRUCTION), generation_prompt=False)
    prompt = chat_ids(tokenizer, user(INSTRUCTION), generation_prompt=True)
    assert tokenizer.decode(closed).endswith(f"<|im_start|>user\n{INSTRUCTION}<|im_end|>\n")
    assert prompt[:len(closed)] == closed and tokenizer.decode(prompt[len(closed):]) == "<|im_start|>assistant\n"


def test_the_prompt_is_a_prefix_of_the_exchange_and_the_rest_is_the_response(tokenizer):
    prompt = chat_ids(tokenizer, user(INSTRUCTION), generation_prompt=True)
    full = chat_ids(tokenizer, exchange(INSTRUCTION, RESPONSE), generation_prompt=False)
    assert full[:len(prompt)] == prompt
    assert tokenizer.decode(full[len(prompt):]) == f"{RESPONSE}<|im_end|>\n"
