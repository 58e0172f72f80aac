"""Stage `memorisation`: the gate on private text copied into the synthetic sets.

Counts the release and pool rows that equal a private train row (case and whitespace folded) or
share a word n-gram (``memorisation.ngram_n``) with one (dpinstruct/text/memorisation.py). DP bounds
what any row can reveal, but a generator that learnt a frequent prompt can still emit it; this
makes that visible before a release. The counts are statistics of the private rows, so the stage is
class private (metrics/memorisation.json is for the data owner). With
``memorisation.max_release_matches`` set, a release with more matching rows fails the stage, and
with it `dvc repro`; nothing is written then. Only counts are logged, never text.
"""
from __future__ import annotations

import logging

import pandas as pd

from dpinstruct.io import params as P
from dpinstruct.io.errors import QualityError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.evaluation import Memorisation
from dpinstruct.text.memorisation import PrivateIndex

log = logging.getLogger("stages.memorisation")
STAGE = "memorisation"
TRAIN = "data/prepared/train.parquet"
SETS = {"release": "data/release/instructions.parquet", "pool": "data/generated/pool.parquet"}
METRICS = "metrics/memorisation.json"


def memorisation(params: dict, out) -> dict:
    cfg = Memorisation.from_params(params)
    n, limit = cfg.ngram_n, cfg.max_release_matches
    index = PrivateIndex(pd.read_parquet(TRAIN, columns=["instruction"]).instruction.tolist(), n)
    metrics = {"ngram_n": n, "max_release_matches": limit}
    for name, path in SETS.items():
        metrics[name] = index.matches(pd.read_parquet(path, columns=["instruction"]).instruction.tolist())
        log.info("%s: %d of %d rows copy a private train row, %d more share a %d-gram with one", name,
                 metrics[name]["exact"], metrics[name]["rows"], metrics[name]["ngram"], n)
    found = metrics["release"]["any"]
    if limit is not None and found > limit:
        raise QualityError(f"{SETS['release']}: {found} rows copy or share a {n}-gram with a private train row, "
                           f"more than {STAGE}.max_release_matches={limit}; nothing may be released (inspect them "
                           "privately, lower the privacy budget or raise the limit)")
    out.write_json(metrics, METRICS)
    return metrics


def main() -> None:
    with run_stage(STAGE) as out:
        memorisation(P.load(), out)


if __name__ == "__main__":
    main()
