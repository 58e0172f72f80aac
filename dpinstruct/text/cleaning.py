"""Cleaning an instruction file, shared by `prepare` (private) and `prepare_public` (public).

Per file: normalise whitespace, drop empty rows, keep lengths within [min_tokens, max_tokens]
tokens of the generator's tokenizer, exact dedup, word n-gram dedup. Returns only the kept rows
and counts; callers log counts, never text.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from dpinstruct.io import quality
from dpinstruct.io.errors import InputError
from dpinstruct.io.instructions import read_instructions
from dpinstruct.text.filters import dedup, normalise

SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("instruction", pa.string(), nullable=False),
                    pa.field("user_id", pa.string()), pa.field("n_tokens", pa.int32(), nullable=False)])
FILTER_KEYS = ("min_tokens", "max_tokens", "dedup_casefold", "ngram_dedup_n")
TOKENIZE_CHUNK = 50_000


def longest_token_bytes(tokenizer) -> int:
    """Bytes of the longest vocabulary entry (byte-level BPE: one vocabulary character per byte)."""
    return max(len(t) for t in tokenizer.get_vocab())


def clean(path, tokenizer, cfg: dict) -> tuple[pd.DataFrame, dict]:
    records = read_instructions(path)
    df = pd.DataFrame({"id": [r.id for r in records], "user_id": [r.user_id for r in records],
                       "instruction": [normalise(r.instruction) for r in records]})
    del records  # the frame holds what is needed; a million Records would double the peak memory
    counts = {"read": len(df)}
    df = df[df.instruction != ""]
    counts["empty"] = counts["read"] - len(df)
    if df.empty:
        raise InputError(path, f"no instruction left after filtering ({counts})")
    # A row with more characters than max_tokens x the longest token (in bytes, >= its characters)
    # cannot fit: it is too long without being tokenised, so a 1 MB paste costs nothing.
    surely_long = (df.instruction.str.len() > cfg["max_tokens"] * longest_token_bytes(tokenizer)).to_numpy()
    n_tokens = np.full(len(df), cfg["max_tokens"] + 1, dtype=np.int64)
    fits = np.flatnonzero(~surely_long)
    for start in range(0, len(fits), TOKENIZE_CHUNK):  # chunks: ids of 1M rows at once would hold GBs
        chunk = fits[start:start + TOKENIZE_CHUNK]
        ids = tokenizer(df.instruction.iloc[chunk].tolist(), add_special_tokens=False)["input_ids"]
        n_tokens[chunk] = [len(i) for i in ids]
    df = df.assign(n_tokens=n_tokens)
    counts["too_short"] = int((df.n_tokens < cfg["min_tokens"]).sum())
    counts["too_long"] = int((df.n_tokens > cfg["max_tokens"]).sum())
    df = df[df.n_tokens.between(cfg["min_tokens"], cfg["max_tokens"])]
    reasons = pd.Series(dedup(df.instruction.tolist(), casefold=cfg["dedup_casefold"], ngram_n=cfg["ngram_dedup_n"]),
                        index=df.index, dtype=object)
    counts["exact_duplicate"] = int((reasons == "exact").sum())
    counts["ngram_duplicate"] = int((reasons == "ngram").sum())
    df = df[reasons.isna()].reset_index(drop=True)
    counts["kept"] = len(df)
    if df.empty:
        raise InputError(path, f"no instruction left after filtering ({counts})")
    return df, counts


def rules(df: pd.DataFrame, cfg: dict, others: dict[str, pd.DataFrame] | None = None) -> list:
    return quality.table_rules(
        columns=SCHEMA.names, non_null=("instruction", "n_tokens"), unique=("instruction",),
        between={"n_tokens": (cfg["min_tokens"], cfg["max_tokens"])},
        disjoint_from={o: {"id": d.id.tolist(), "instruction": d.instruction.tolist()} for o, d in (others or {}).items()})
