"""IMDb reviews for the RL task: cleaning, the disjoint partitions of the private split, prompts.

The private dataset is the aclImdb ``train`` split; the ``test`` split is public and is cut into a
part that trains the reward classifier and a part whose openings are the evaluation prompts.

What turns the private file into the inputs of the two DP mechanisms (``private_parts``) is
*1-stable* (``dpinstruct.privacy``): for any file D and any review x, the DP-SFT part and the
DP-PPO part of D + x differ from those of D by x's own row at most, in one part only. Step by step:

- cleaning (``clean_review``) and the checks of ``read_reviews`` look at one row at a time (a file
  they refuse releases nothing: the stage stops before any mechanism runs);
- ``unique_reviews`` gives the reviews SET semantics on the cleaned text: a text that appears
  twice or more is one unit, represented by the row with the smallest id of its group, whatever
  the file order; adding a copy of a text already present changes no other text's row (at most
  the id on its own text's row);
- the length filter reads one review's token count;
- a review goes to a part by a seeded hash of its cleaned TEXT alone (``review_part``, i.e.
  ``text.splits.partition_of``): not of its id, so copies of one review can never straddle the
  parts, and adding or removing a review moves no other review. That is what makes parallel
  composition across the parts valid (``dpinstruct.privacy.composition``).
"""
from __future__ import annotations

import re
from collections.abc import Callable

import pandas as pd
import pyarrow as pa

from dpinstruct.text.filters import normalise
from dpinstruct.text.splits import partition_of

_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_review(text: str | None) -> str:
    """``<br />`` tags become newlines, then the instructions' normaliser (NFC, spaces collapsed,
    lines trimmed, at most one blank line). A rule on one review."""
    return normalise(_BREAK.sub("\n", text)) if text else ""


def unique_reviews(reviews: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct (cleaned) ``text``: the row with the smallest ``id`` of its group,
    rows sorted by id. A function of the SET of (id, text) rows: neither the file order nor a copy
    of another text changes a row, and a copy of a text moves at most the id on that text's row."""
    ordered = reviews.sort_values("id", kind="stable")
    return ordered.drop_duplicates("text", keep="first").reset_index(drop=True)


def review_part(text: str, seed: int, shares: dict[str, float]) -> str:
    """The part of a private review: a seeded hash of its cleaned text alone (its content, so all
    copies of it land together)."""
    return partition_of(text, seed, shares)


def opening(token_ids: list[int], prompt_tokens: int) -> list[int]:
    """A prompt: the first ``prompt_tokens`` tokens of a review."""
    return token_ids[:prompt_tokens]


REQUIRED = {"id": "a string", "label": "an integer 0 or 1", "text": "a string"}
# Prompts (a review's opening), private (DP-PPO) or public (evaluation): the text and its token ids.
PROMPT_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("prompt", pa.string(), nullable=False),
                           pa.field("prompt_ids", pa.list_(pa.int32()), nullable=False)])


def read_reviews(path) -> pd.DataFrame:
    """id, label, text of a reviews Parquet file, checked and cleaned (``check_reviews``)."""
    import pyarrow.parquet as pq

    from dpinstruct.io.errors import InputError

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise InputError(path, f"not a readable Parquet file ({type(e).__name__})") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(path, f"no {missing} column(s) (found {table.column_names})", field=missing[0])
    return check_reviews(table.select(list(REQUIRED)).to_pandas(), path)


def check_reviews(df: pd.DataFrame, path) -> pd.DataFrame:
    """id, label, text (cleaned) of raw rows; errors name the file, row and field and never quote a
    review. Each check reads one row, except the id check: an id shared by two DIFFERENT cleaned
    texts is refused (an id must name one review: DP-PPO keys a prompt's rollouts by it), while a
    row repeated with its id is just a copy (``unique_reviews`` keeps one). Refusing stops the stage
    before any mechanism: the guarantee covers the files this accepts."""
    from dpinstruct.io.errors import InputError

    for field, want in REQUIRED.items():
        values = df[field]
        bad = values.isna() | (~values.map(lambda v: isinstance(v, str)) if field != "label"
                               else ~values.isin([0, 1]))
        if bad.any():
            raise InputError(f"{path}, row {int(bad.to_numpy().argmax()) + 1}", f"expected {want}", field=field)
        if field != "label":
            nul = values.str.contains("\x00", regex=False).to_numpy()
            if nul.any():
                raise InputError(f"{path}, row {int(nul.argmax()) + 1}", "contains a NUL character", field=field)
    reviews = pd.DataFrame({"id": df.id, "label": df.label.astype("int8"), "text": df.text.map(clean_review)})
    clash = (reviews.id.duplicated() & ~reviews.duplicated(["id", "text"])).to_numpy()
    if clash.any():
        raise InputError(f"{path}, row {int(clash.argmax()) + 1}", "duplicate id of a different review", field="id")
    return reviews.reset_index(drop=True)


def private_parts(reviews: pd.DataFrame, encode: Callable[[list[str]], list[list[int]]],
                  decode: Callable[[list[int]], str], *, min_tokens: int, prompt_tokens: int, sft_tokens: int,
                  seed: int, shares: dict[str, float]) -> tuple[list[tuple], list[tuple], dict[str, int]]:
    """The inputs of the two DP mechanisms from the checked private reviews (``read_reviews``):
    (SFT rows (id, the first ``sft_tokens`` tokens as text, their count) of the ``sft`` part,
    prompt rows (id, the first ``prompt_tokens`` tokens as text and ids, part) of every review, counts).

    1-stable (module docstring): set semantics on the cleaned text (``unique_reviews``), then the
    length filter and the part (``review_part``), each a rule on one review. ``encode`` must
    tokenise each text on its own (no padding). Counts only: ``read`` = ``duplicates`` (rows that
    repeat a text) + ``too_short`` + one count per part."""
    unique = unique_reviews(reviews)
    tokens = encode(unique.text.tolist()) if len(unique) else []
    keep = [len(t) >= min_tokens for t in tokens]
    sft_rows, prompt_rows = [], []
    parts = dict.fromkeys(shares, 0)
    for rid, text, t, k in zip(unique.id, unique.text, tokens, keep):
        if not k:
            continue
        part = review_part(text, seed, shares)
        parts[part] += 1
        if part == "sft":
            sft_rows.append((rid, decode(t[:sft_tokens]), min(len(t), sft_tokens)))
        prompt = opening(t, prompt_tokens)
        prompt_rows.append((rid, decode(prompt), prompt, part))
    counts = {"read": len(reviews), "duplicates": len(reviews) - len(unique), "too_short": len(keep) - sum(keep),
              **parts}
    return sft_rows, prompt_rows, counts
