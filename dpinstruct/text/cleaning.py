"""Cleaning an instruction file, shared by `prepare` (private) and `prepare_public` (public).

Per file: normalise whitespace, drop empty rows, keep lengths within [min_tokens, max_tokens]
tokens of the generator's tokenizer, exact dedup, word n-gram dedup. Returns only the kept rows
and counts; callers log counts, never text.

Private files (``per_unit=True``) are cleaned by 1-stable rules only (``dpinstruct.privacy``
states why): every rule looks at one row, or at the rows of one UNIT, never across units. A unit
is a ``user_id`` when the row has one, else the row's dedup key (its normalised text): so exact
dedup of rows without a user is a SET operation (a duplicate adds nothing, and the row kept for a
text, the one with the smallest id, does not depend on file order), and dedup of a user's rows,
exact or by n-gram, touches that user's rows alone. The paper's cross-row n-gram dedup is NOT
stable (one added row could remove every later row sharing a 10-gram with it: 70 train rows
changed on the shipped file), so on a private file it runs within a unit only. A public file
(``per_unit=False``) keeps the paper's rule: first occurrence in file order, across the file.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from dpinstruct.io import quality
from dpinstruct.io.errors import InputError
from dpinstruct.io.instructions import read_instructions
from dpinstruct.io.settings.data import Cleaning
from dpinstruct.text.filters import dedup, dedup_key, normalise

SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("instruction", pa.string(), nullable=False),
                    pa.field("user_id", pa.string()), pa.field("n_tokens", pa.int32(), nullable=False)])
TOKENIZE_CHUNK = 50_000


def longest_token_bytes(tokenizer) -> int:
    """Bytes of the longest vocabulary entry (byte-level BPE: one vocabulary character per byte)."""
    return max(len(t) for t in tokenizer.get_vocab())


def unit_keys(df: pd.DataFrame, casefold: bool) -> pd.Series:
    """The unit of each row: ``user:<user_id>``, or ``text:<dedup key>`` for a row without a user.
    Without a user the key is case-SENSITIVE whatever ``casefold`` says: a row differing from another
    only in case is a unit of its own, so adding it can never replace the row already there (a
    replacement is two changes, twice the sensitivity). ``casefold`` applies within a user's rows."""
    texts = df.instruction.map(lambda t: "text:" + dedup_key(t, False))
    return ("user:" + df.user_id).where(df.user_id.notna(), texts)


def clean(path, tokenizer, cfg: Cleaning, *, per_unit: bool, users: bool = True) -> tuple[pd.DataFrame, dict]:
    """Kept rows (id, instruction, user_id, n_tokens; plus ``unit`` when ``per_unit``) and counts.
    ``users=False`` (record-level DP, ``user_level.enabled: false``) drops every ``user_id`` as read:
    under record-level DP a row is the unit, so no rule may group one user's rows (a case variant
    added to a user's rows could replace one: two changes)."""
    records = read_instructions(path)
    df = pd.DataFrame({"id": [r.id for r in records], "user_id": [r.user_id if users else None for r in records],
                       "instruction": [normalise(r.instruction) for r in records]})
    del records  # the frame holds what is needed; a million Records would double the peak memory
    counts = {"read": len(df)}
    df = df[df.instruction != ""]
    counts["empty"] = counts["read"] - len(df)
    if df.empty:
        raise InputError(path, f"no instruction left after filtering ({counts})")
    # A row with more characters than max_tokens x the longest token (in bytes, >= its characters)
    # cannot fit: it is too long without being tokenised, so a 1 MB paste costs nothing.
    surely_long = (df.instruction.str.len() > cfg.max_tokens * longest_token_bytes(tokenizer)).to_numpy()
    n_tokens = np.full(len(df), cfg.max_tokens + 1, dtype=np.int64)
    fits = np.flatnonzero(~surely_long)
    for start in range(0, len(fits), TOKENIZE_CHUNK):  # chunks: ids of 1M rows at once would hold GBs
        chunk = fits[start:start + TOKENIZE_CHUNK]
        ids = tokenizer(df.instruction.iloc[chunk].tolist(), add_special_tokens=False)["input_ids"]
        n_tokens[chunk] = [len(i) for i in ids]
    df = df.assign(n_tokens=n_tokens)
    counts["too_short"] = int((df.n_tokens < cfg.min_tokens).sum())
    counts["too_long"] = int((df.n_tokens > cfg.max_tokens).sum())
    df = df[df.n_tokens.between(cfg.min_tokens, cfg.max_tokens)]
    if per_unit:
        df = df.assign(unit=unit_keys(df, cfg.dedup_casefold))
    reasons = _dedup_per_unit(df, cfg) if per_unit else pd.Series(
        dedup(df.instruction.tolist(), casefold=cfg.dedup_casefold, ngram_n=cfg.ngram_dedup_n),
        index=df.index, dtype=object)
    counts["exact_duplicate"] = int((reasons == "exact").sum())
    counts["ngram_duplicate"] = int((reasons == "ngram").sum())
    df = df[reasons.isna()].reset_index(drop=True)
    counts["kept"] = len(df)
    if df.empty:
        raise InputError(path, f"no instruction left after filtering ({counts})")
    return df, counts


def _dedup_per_unit(df: pd.DataFrame, cfg: Cleaning) -> pd.Series:
    """Dedup reasons (None = kept) with each unit deduplicated alone, its rows in content order
    (text, then id): neither file order, nor another unit's rows, nor ids a reader made from line
    numbers (which shift when a row is added above) decide which row survives."""
    reasons = pd.Series(None, index=df.index, dtype=object)
    ordered = df.sort_values(["unit", "instruction", "id"], kind="stable")  # df has its ``unit`` column
    shared = ordered[ordered.unit.duplicated(keep=False)]  # units of one row need no dedup (most of them)
    for _, rows in shared.groupby("unit", sort=False):
        reasons[rows.index] = dedup(rows.instruction.tolist(), casefold=cfg.dedup_casefold,
                                    ngram_n=cfg.ngram_dedup_n)
    return reasons


def rules(df: pd.DataFrame, cfg: Cleaning, others: dict[str, pd.DataFrame] | None = None) -> list:
    return quality.table_rules(
        # Two users may ask the same thing; within the rows without a user, texts are unique.
        columns=SCHEMA.names, non_null=("instruction", "n_tokens"),
        unique=() if df.user_id.notna().any() else ("instruction",),
        between={"n_tokens": (cfg.min_tokens, cfg.max_tokens)},
        disjoint_from={o: {"id": d.id.tolist(), **({} if df.user_id.notna().any() else
                                                    {"instruction": d.instruction.tolist()})}
                       for o, d in (others or {}).items()})
