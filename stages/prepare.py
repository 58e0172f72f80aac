"""Stage `prepare`: clean the PRIVATE instruction file and split it into train / val / test.

``data.private_path`` -> data/prepared/{train,val,test}.parquet, class private (cleaning rules in
dpinstruct/text/cleaning.py). The public set has its own stage (`prepare_public`), so that no public artifact
is ever produced by a stage that reads private data.
The split is seeded and by user: rows sharing a ``user_id`` land in one split (a later issue adds
user-level DP); rows without one are their own unit. Only counts are logged, never text.
"""
from __future__ import annotations

import logging

import pyarrow as pa

from dpinstruct.io import config_checks as checks
from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import table_metadata
from dpinstruct.io.runner import run_stage
from dpinstruct.models.loading import GENERATOR_DIR, load_tokenizer
from dpinstruct.text.cleaning import SCHEMA, clean, rules
from dpinstruct.text.splits import SPLITS, split

log = logging.getLogger("stages.prepare")
OUT = {name: f"data/prepared/{name}.parquet" for name in SPLITS}
METRICS = "metrics/prepare.json"


def prepare(params: dict, out) -> dict:
    data, cfg = P.section(params, "data"), P.section(params, "prepare")
    check_settings(data, cfg)
    tokenizer = load_tokenizer(GENERATOR_DIR)
    phash = P.params_hash(data["private_path"], cfg, params["models"]["generator"])
    private, counts = clean(data["private_path"], tokenizer, cfg)
    parts = split(private, seed=cfg["seed"], test_size=cfg["test_size"], val_size=cfg["val_size"],
                  train_size=cfg.get("train_size"), path=data["private_path"])
    for name, df in parts.items():
        report = quality.check(df, f"prepare/{name}", rules(df, cfg, {o: parts[o] for o in SPLITS if o != name}))
        out.write_parquet(pa.Table.from_pandas(df, preserve_index=False), OUT[name], SCHEMA,
                          table_metadata("prepare", phash, "private", split=name, source=str(data["private_path"])))
        out.write_json(report, quality.report_path(f"prepare/{name}"))
    metrics = {"private": {**counts, **{s: len(parts[s]) for s in SPLITS}}}
    out.write_json(metrics, METRICS)
    log.info("private: %s", metrics["private"])
    return metrics


def check_settings(data: dict, cfg: dict) -> None:
    """Wrong types stop here, naming the key, before the private file is opened."""
    checks.path(data, "private_path", "data")
    checks.cleaning(cfg, "prepare")
    checks.integer(cfg, "seed", "prepare")
    checks.integer(cfg, "test_size", "prepare", minimum=1)
    checks.integer(cfg, "val_size", "prepare", minimum=1)
    checks.integer(cfg, "train_size", "prepare", minimum=1, nullable=True)


def main() -> None:
    with run_stage("prepare") as out:
        prepare(P.load(), out)


if __name__ == "__main__":
    main()
