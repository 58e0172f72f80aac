"""Chat formatting: token ids of messages under a model's own chat template."""
from __future__ import annotations


def chat_ids(tokenizer, messages: list[dict], *, generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` with the tokenizer's chat template; ``generation_prompt`` appends
    the opening of the assistant's turn (a prompt to answer), else the messages end as written.
    transformers returns a list or a BatchEncoding depending on its version: both come out a list."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def user(instruction: str) -> list[dict]:
    return [{"role": "user", "content": instruction}]


def exchange(instruction: str, response: str) -> list[dict]:
    return [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
