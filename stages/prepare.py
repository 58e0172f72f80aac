"""Stage `prepare`: clean the private and public instruction files and split the private one.

Private set (params ``data.private_path``) -> data/prepared/{train,val,test}.parquet, class
private. Public set (``data.public_path``) -> data/prepared/public.parquet, class public.
Pipeline per file: normalise whitespace, drop empty rows, keep lengths within
[min_tokens, max_tokens] tokens of the generator's tokenizer, exact dedup, n-gram dedup.
The split is seeded and by user: rows sharing a ``user_id`` land in one split (a later issue adds
user-level DP); rows without one are their own unit. Only counts are logged, never text.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from stages import params as P
from stages import quality
from stages.artifacts import table_metadata
from stages.errors import InputError
from stages.instructions_io import read_instructions
from stages.model_io import GENERATOR_DIR, load_tokenizer
from stages.runner import run_stage
from stages.text_filters import dedup, normalise

log = logging.getLogger("stages.prepare")
SCHEMA = pa.schema([pa.field("id", pa.string(), nullable=False), pa.field("instruction", pa.string(), nullable=False),
                    pa.field("user_id", pa.string()), pa.field("n_tokens", pa.int32(), nullable=False)])
SPLITS = ("train", "val", "test")
OUT = {name: f"data/prepared/{name}.parquet" for name in (*SPLITS, "public")}
METRICS = "metrics/prepare.json"


def clean(path, tokenizer, cfg: dict) -> tuple[pd.DataFrame, dict]:
    records = read_instructions(path)
    df = pd.DataFrame({"id": [r.id for r in records], "user_id": [r.user_id for r in records],
                       "instruction": [normalise(r.instruction) for r in records]})
    counts = {"read": len(df)}
    df = df[df.instruction != ""]
    counts["empty"] = counts["read"] - len(df)
    if df.empty:
        raise InputError(path, f"no instruction left after filtering ({counts})")
    df = df.assign(n_tokens=[len(ids) for ids in tokenizer(df.instruction.tolist(), add_special_tokens=False)["input_ids"]])
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


def split(df: pd.DataFrame, cfg: dict, path) -> dict[str, pd.DataFrame]:
    """Seeded split by unit (user_id, else the row): test, then val, then train take whole units."""
    unit = df.user_id.where(df.user_id.notna(), "row:" + df.id)
    units = np.array(sorted(unit.unique()))
    order = units[np.random.default_rng(cfg["seed"]).permutation(len(units))]
    sizes = {"test": cfg["test_size"], "val": cfg["val_size"], "train": cfg.get("train_size") or len(df)}
    rows_per_unit = unit.value_counts()
    assigned, filled, current = {}, dict.fromkeys(sizes, 0), iter(("test", "val", "train"))
    name = next(current)
    for u in order:
        while name is not None and filled[name] >= sizes[name]:
            name = next(current, None)
        if name is None:
            break
        assigned[u] = name
        filled[name] += int(rows_per_unit[u])
    label = unit.map(assigned)
    parts = {s: df[label == s].reset_index(drop=True) for s in SPLITS}
    short = {s: (len(parts[s]), sizes[s]) for s in ("val", "test") if len(parts[s]) < sizes[s]}
    if short or parts["train"].empty:
        raise InputError(path, f"only {len(df)} instructions after filtering: not enough for the split sizes "
                               f"(have, want) = {short or {'train': (0, 'at least 1')}}")
    return parts


def rules(name: str, df: pd.DataFrame, cfg: dict, others: dict[str, pd.DataFrame]) -> list:
    return quality.table_rules(
        columns=SCHEMA.names, non_null=("instruction", "n_tokens"), unique=("instruction",),
        between={"n_tokens": (cfg["min_tokens"], cfg["max_tokens"])},
        disjoint_from={o: {"id": d.id.tolist(), "instruction": d.instruction.tolist()} for o, d in others.items()})


def prepare(params: dict, out) -> dict:
    data, cfg = P.section(params, "data"), P.section(params, "prepare")
    tokenizer = load_tokenizer(GENERATOR_DIR)
    phash = P.params_hash(data, cfg, params["models"]["generator"])
    private, private_counts = clean(data["private_path"], tokenizer, cfg)
    parts = split(private, cfg, data["private_path"])
    public, public_counts = clean(data["public_path"], tokenizer, cfg)
    if cfg.get("public_size"):
        public = public.sample(n=min(cfg["public_size"], len(public)), random_state=cfg["seed"]).sort_index()
    tables = {**parts, "public": public}
    reports = {}
    for name, df in tables.items():
        others = {o: parts[o] for o in SPLITS if o != name} if name in SPLITS else {}
        reports[name] = quality.check(df, f"prepare/{name}", rules(name, df, cfg, others))
    for name, df in tables.items():
        privacy = "public" if name == "public" else "private"
        out.write_parquet(pa.Table.from_pandas(df, preserve_index=False), OUT[name], SCHEMA,
                          table_metadata("prepare", phash, privacy, split=name, source=str(data[f"{privacy}_path"])))
        out.write_json(reports[name], quality.report_path(f"prepare/{name}"))
    metrics = {"private": {**private_counts, **{s: len(parts[s]) for s in SPLITS}},
               "public": {**public_counts, "written": len(public)}}
    out.write_json(metrics, METRICS)
    log.info("private: %s", metrics["private"])
    log.info("public: %s", metrics["public"])
    return metrics


def main() -> None:
    with run_stage("prepare") as out:
        prepare(P.load(), out)


if __name__ == "__main__":
    main()
