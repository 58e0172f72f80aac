"""Stage `prepare`: clean the PRIVATE instruction file and split it into train / val / test.

``data.private_path`` -> data/prepared/{train,val,test}.parquet, class private (cleaning rules in
dpinstruct/text/cleaning.py). The public set has its own stage (`prepare_public`), so that no public artifact
is ever produced by a stage that reads private data.
Every step is 1-stable (``dpinstruct.privacy``): adding or removing one unit of the raw file (a
row, or a user with all their rows) changes the train split by that unit's rows alone. Rows are
cleaned one by one or within their unit (dpinstruct/text/cleaning.py), and a unit goes to test, val
or train by a seeded hash of its key alone (``prepare.test_share`` / ``val_share`` are expected
shares, never counts; dpinstruct/text/splits.py): no permutation filling fixed sizes, no cap. Only
counts are logged, never text.
"""
from __future__ import annotations

import logging

import pyarrow as pa

from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import table_metadata
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.data import Data, Prepare
from dpinstruct.io.settings.models import Models
from dpinstruct.io.settings.privacy import UserLevel
from dpinstruct.models.loading import GENERATOR_DIR, load_tokenizer
from dpinstruct.text.cleaning import SCHEMA, clean, rules
from dpinstruct.text.splits import SPLITS, split

log = logging.getLogger("stages.prepare")
OUT = {name: f"data/prepared/{name}.parquet" for name in SPLITS}
METRICS = "metrics/prepare.json"


def prepare(params: dict, out) -> dict:
    # Wrong types stop here, naming the key, before the private file is opened.
    path, cfg = Data.read(params, "private_path"), Prepare.from_params(params)
    by_user = UserLevel.read(params, "enabled")
    tokenizer = load_tokenizer(GENERATOR_DIR)
    phash = P.params_hash(path, cfg.raw, Models.read(params, "generator"), params.get("user_level"))
    # The privacy unit is a param (user_level.enabled), never inferred from whether rows name users.
    private, counts = clean(path, tokenizer, cfg, per_unit=True, users=by_user)
    parts = split(private, seed=cfg.seed, test_share=cfg.test_share, val_share=cfg.val_share, path=path)
    for name, df in parts.items():
        report = quality.check(df, f"prepare/{name}", rules(df, cfg, {o: parts[o] for o in SPLITS if o != name}))
        out.write_parquet(pa.Table.from_pandas(df, preserve_index=False), OUT[name], SCHEMA,
                          table_metadata("prepare", phash, "private", split=name, source=str(path)))
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
