"""Stage `prepare`: clean the PRIVATE instruction file and split it into train / val / test.

``data.private_path`` -> data/prepared/{train,val,test}.parquet, class private (cleaning rules in
stages/cleaning.py). The public set has its own stage (`prepare_public`), so that no public artifact
is ever produced by a stage that reads private data.
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
from stages.cleaning import SCHEMA, clean, rules
from stages.errors import InputError
from stages.model_io import GENERATOR_DIR, load_tokenizer
from stages.runner import run_stage

log = logging.getLogger("stages.prepare")
SPLITS = ("train", "val", "test")
OUT = {name: f"data/prepared/{name}.parquet" for name in SPLITS}
METRICS = "metrics/prepare.json"


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


def prepare(params: dict, out) -> dict:
    data, cfg = P.section(params, "data"), P.section(params, "prepare")
    tokenizer = load_tokenizer(GENERATOR_DIR)
    phash = P.params_hash(data["private_path"], cfg, params["models"]["generator"])
    private, counts = clean(data["private_path"], tokenizer, cfg)
    parts = split(private, cfg, data["private_path"])
    for name, df in parts.items():
        report = quality.check(df, f"prepare/{name}", rules(df, cfg, {o: parts[o] for o in SPLITS if o != name}))
        out.write_parquet(pa.Table.from_pandas(df, preserve_index=False), OUT[name], SCHEMA,
                          table_metadata("prepare", phash, "private", split=name, source=str(data["private_path"])))
        out.write_json(report, quality.report_path(f"prepare/{name}"))
    metrics = {"private": {**counts, **{s: len(parts[s]) for s in SPLITS}}}
    out.write_json(metrics, METRICS)
    log.info("private: %s", metrics["private"])
    return metrics


def main() -> None:
    with run_stage("prepare") as out:
        prepare(P.load(), out)


if __name__ == "__main__":
    main()
