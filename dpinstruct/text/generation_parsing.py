"""From sampled token ids to instruction text, and the rules that drop unusable samples.

A sample is the token ids the generator produced after the fixed prompt, ending with EOS or cut
at ``max_new_tokens``. Parsing, in order:

1. Prompt echo: a sample that starts by repeating the prompt's tokens (the model re-opened the
   user turn) has the repeats stripped.
2. The instruction ends at the first special token: EOS, or a ``<|im_start|>`` opening another
   turn. A sample with neither is ``truncated``.
3. Decode, then the whitespace normalisation used for the private data (``text_filters``).

Drop reasons (first that applies): ``truncated`` (when ``drop_truncated``), ``empty``
(nothing but whitespace), ``too_short`` (fewer than ``min_tokens`` tokens), ``degenerate`` (at
least DEGENERATE_MIN_WORDS words of which fewer than ``min_distinct_word_ratio`` are distinct:
loops such as "the the the").
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from dpinstruct.io.settings.generation import SampleRules
from dpinstruct.text.filters import normalise

DEGENERATE_MIN_WORDS = 8
_WORD = re.compile(r"\w+")
REASONS = ("truncated", "empty", "too_short", "degenerate")


@dataclass(frozen=True)
class Parsed:
    text: str
    n_tokens: int
    drop: str | None  # one of REASONS, or None when kept


def strip_echo(tokens: list[int], prompt_ids: list[int]) -> list[int]:
    k = len(prompt_ids)
    while k and tokens[:k] == prompt_ids:
        tokens = tokens[k:]
    return tokens


def parse(tokens: list[int], *, prompt_ids: list[int], special_ids: set[int], tokenizer,
          rules: SampleRules) -> Parsed:
    tokens = strip_echo(list(tokens), list(prompt_ids))
    end = next((i for i, t in enumerate(tokens) if t in special_ids), None)
    body = tokens if end is None else tokens[:end]
    text = normalise(tokenizer.decode(body, skip_special_tokens=True))
    words = _WORD.findall(text.casefold())
    if end is None and rules.drop_truncated:
        drop = "truncated"
    elif not text:
        drop = "empty"
    elif len(body) < rules.min_tokens:
        drop = "too_short"
    elif len(words) >= DEGENERATE_MIN_WORDS and len(set(words)) < rules.min_distinct_word_ratio * len(words):
        drop = "degenerate"
    else:
        drop = None
    return Parsed(text=text, n_tokens=len(body), drop=drop)
