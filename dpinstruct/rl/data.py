"""IMDb reviews for the RL task: cleaning, the disjoint partitions of the private split, prompts.

The private dataset is the aclImdb ``train`` split; the ``test`` split is public and is cut into a
part that trains the reward classifier and a part whose openings are the evaluation prompts.
``partition_of`` assigns a record to a part by a seeded hash of its id ALONE, which is what makes
parallel composition across the parts valid (``dpinstruct.privacy.composition``).
"""
from __future__ import annotations

import hashlib
import re

import pandas as pd
import pyarrow as pa

from dpinstruct.text.filters import normalise

_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_review(text: str | None) -> str:
    """``<br />`` tags become newlines, then the instructions' normaliser (NFC, spaces collapsed,
    lines trimmed, at most one blank line)."""
    return normalise(_BREAK.sub("\n", text)) if text else ""


def unit_interval(record_id: str, seed: int) -> float:
    """A uniform draw in [0, 1) fixed by (seed, id) alone: sha256 of both, first 8 bytes."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def partition_of(record_id: str, seed: int, shares: dict[str, float]) -> str:
    """The part of a record: cumulative ``shares`` (summing to 1) cut [0, 1); by its id alone."""
    u, edge = unit_interval(record_id, seed), 0.0
    for name, share in shares.items():
        edge += share
        if u < edge:
            return name
    return list(shares)[-1]  # u within rounding of 1


def opening(token_ids: list[int], prompt_tokens: int) -> list[int]:
    """A prompt: the first ``prompt_tokens`` tokens of a review."""
    return token_ids[:prompt_tokens]


REQUIRED = {"id": "a string", "label": "an integer 0 or 1", "text": "a string"}
# Prompts (a review's opening), private (DP-PPO) or public (evaluation): the text and its token ids.
PROMPT_SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("prompt", pa.string(), nullable=False),
                           pa.field("prompt_ids", pa.list_(pa.int32()), nullable=False)])


def read_reviews(path) -> pd.DataFrame:
    """id, label, text of a reviews Parquet file, cleaned; errors name the file, row and field and
    never quote a review."""
    import pyarrow.parquet as pq

    from dpinstruct.io.errors import InputError

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise InputError(path, f"not a readable Parquet file ({type(e).__name__})") from None
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise InputError(path, f"no {missing} column(s) (found {table.column_names})", field=missing[0])
    df = table.select(list(REQUIRED)).to_pandas()
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
    duplicated = df.id.duplicated()
    if duplicated.any():
        raise InputError(f"{path}, row {int(duplicated.to_numpy().argmax()) + 1}", "duplicate id", field="id")
    return pd.DataFrame({"id": df.id, "label": df.label.astype("int8"), "text": df.text.map(clean_review)})
