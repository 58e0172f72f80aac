"""The unit of each private row (cleaning.unit_keys): a user's key, else the row's case-SENSITIVE
text, with the two key spaces apart; and the byte bound that skips tokenising a surely-long row."""
from __future__ import annotations

import pandas as pd

from dpinstruct.models.loading import load_tokenizer
from dpinstruct.text.cleaning import longest_token_bytes, unit_keys


def test_units_are_users_or_case_sensitive_texts_in_separate_key_spaces():
    df = pd.DataFrame({"user_id": [None, None, "u1", "u1", "text:hello world"],
                       "instruction": ["Hello  world", "HELLO WORLD", "a", "b", "hello world"]})
    keys = unit_keys(df, casefold=True)
    assert keys[0] != keys[1]  # a case variant is its own unit, whatever dedup_casefold says
    assert keys[2] == keys[3] == "user:u1"
    # a user id that looks like a text key never shares a unit with that text's row
    assert keys[4] == "user:text:hello world" and keys[4] not in set(keys[:2])


def test_no_token_is_longer_in_bytes_than_the_bound(generator_dir):
    tokenizer = load_tokenizer(generator_dir)
    bound = longest_token_bytes(tokenizer)
    text = "x" * 50
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) * bound >= len(text.encode())
