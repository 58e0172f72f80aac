"""Stage `hh_prepare`: the PRIVATE human preference pairs (HH-RLHF harmless), checked and split.

``rlhf.data.private_path`` -> data/rlhf/pairs.parquet (id, prompt, chosen, rejected, partition),
class private. Bad input stops the stage with the file, line and field (``read_pairs``: checks of
one line each; nothing is written). Then every step is 1-stable (``preference_parts``), so "add or
remove one comparison of the raw file" is the neighbouring relation the ledger's epsilon covers:
a comparison repeated in the file is ONE comparison (set semantics, counted in ``duplicates``);
the pairs that do not compare two answers to one prompt are dropped and counted (``comparisons``);
a comparison goes to ``reward`` (the DP reward model's part) or ``heldout`` (accuracy, never trained
on by the models under comparison) by a seeded hash of its id alone, a hash of its two texts, so
the held-out part is disjoint from the DP mechanism's input and copies never straddle the two.
Only counts are logged, into metrics/rlhf/prepare.json (private).
"""
from __future__ import annotations

import logging

import pyarrow as pa

from dpinstruct.io import params as P
from dpinstruct.io import quality
from dpinstruct.io.artifacts import table_metadata
from dpinstruct.io.errors import InputError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.rlhf import RlhfData
from dpinstruct.rl.preferences import SCHEMA, preference_parts, read_pairs

log = logging.getLogger("stages.hh_prepare")
STAGE = "hh_prepare"
OUT, METRICS = "data/rlhf/pairs.parquet", "metrics/rlhf/prepare.json"


def hh_prepare(params: dict, out) -> dict:
    cfg = RlhfData.from_params(params)  # wrong types stop here, before the private file is opened
    path, parts = cfg.private_path, {"reward": 1 - cfg.heldout_share, "heldout": cfg.heldout_share}
    raw = read_pairs(path)
    pairs, counts = preference_parts(raw, cfg.partition_seed, parts)
    if pairs.empty:
        raise InputError(path, "no pair compares two answers to one prompt")
    table = pa.Table.from_pandas(pairs[SCHEMA.names], schema=SCHEMA, preserve_index=False)
    report = quality.check(pairs, "rlhf/pairs", quality.table_rules(columns=SCHEMA.names, non_null=SCHEMA.names))
    out.write_parquet(table, OUT, SCHEMA, table_metadata(STAGE, P.params_hash(cfg.raw), "private", source=str(path)))
    out.write_json(report, quality.report_path("rlhf/pairs"))
    metrics = {"read": len(raw), **counts}
    out.write_json(metrics, METRICS)
    log.info("private preference pairs: %s", metrics)
    return metrics


def main() -> None:
    with run_stage(STAGE) as out:
        hh_prepare(P.load(), out)


if __name__ == "__main__":
    main()
