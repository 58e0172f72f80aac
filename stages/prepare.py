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

from dpinstruct.io import config_checks as checks
from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import table_metadata
from dpinstruct.io.errors import ConfigError
from dpinstruct.io.runner import run_stage
from dpinstruct.models.loading import GENERATOR_DIR, load_tokenizer
from dpinstruct.privacy import user_level
from dpinstruct.text.cleaning import SCHEMA, clean, rules
from dpinstruct.text.splits import SPLITS, split

log = logging.getLogger("stages.prepare")
OUT = {name: f"data/prepared/{name}.parquet" for name in SPLITS}
METRICS = "metrics/prepare.json"


def prepare(params: dict, out) -> dict:
    data, cfg = P.section(params, "data"), P.section(params, "prepare")
    cfg = check_settings(data, cfg)
    tokenizer = load_tokenizer(GENERATOR_DIR)
    phash = P.params_hash(data["private_path"], cfg, params["models"]["generator"], params.get("user_level"))
    # The privacy unit is a param (user_level.enabled), never inferred from whether rows name users.
    private, counts = clean(data["private_path"], tokenizer, cfg, per_unit=True,
                            users=user_level.enabled(params.get("user_level")))
    parts = split(private, seed=cfg["seed"], test_share=cfg["test_share"],
                  val_share=cfg["val_share"], path=data["private_path"])
    for name, df in parts.items():
        report = quality.check(df, f"prepare/{name}", rules(df, cfg, {o: parts[o] for o in SPLITS if o != name}))
        out.write_parquet(pa.Table.from_pandas(df, preserve_index=False), OUT[name], SCHEMA,
                          table_metadata("prepare", phash, "private", split=name, source=str(data["private_path"])))
        out.write_json(report, quality.report_path(f"prepare/{name}"))
    metrics = {"private": {**counts, **{s: len(parts[s]) for s in SPLITS}}}
    out.write_json(metrics, METRICS)
    log.info("private: %s", metrics["private"])
    return metrics


def check_settings(data: dict, cfg: dict) -> dict:
    """Wrong types stop here, naming the key, before the private file is opened. Returns the section
    with every checked value in its checked type (a whole float 0.0 is the integer 0: the split
    hashes ``f"{seed}:{key}"``, so the raw value would give another split)."""
    for key in ("test_size", "val_size", "train_size"):  # counts would need N and made the split unstable
        if key in cfg:
            raise ConfigError(f"prepare.{key}", "is no longer a param: splits take expected shares "
                                                "(prepare.test_share, prepare.val_share), never counts")
    checks.path(data, "private_path", "data")
    checked = {**cfg, **checks.cleaning(cfg, "prepare"), "seed": checks.integer(cfg, "seed", "prepare")}
    shares = [checks.number(cfg, key, "prepare") for key in ("test_share", "val_share")]
    if min(shares) <= 0 or sum(shares) >= 1:
        raise ConfigError("prepare", f"test_share and val_share must be > 0 with a sum below 1 (the rest is "
                                     f"train), got {shares}")
    return checked | {"test_share": shares[0], "val_share": shares[1]}


def main() -> None:
    with run_stage("prepare") as out:
        prepare(P.load(), out)


if __name__ == "__main__":
    main()
