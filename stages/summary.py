"""Stage `summary`: the few figures a person compares across runs, as the pipeline's DVC metrics.

``dvc metrics show`` and ``dvc exp show`` read only metrics/summary.json (the stages' full reports
stay plain outputs beside it): the composed epsilon and delta of each private dataset, the rows
released, and for utility the DP pool's yield (kept / sampled), the DP generator's per-token NLL on
val and the MAUVE of each set against test, each with the base generator's value beside it and the
half-width of its interval (``*_pm``, at ``evaluate.confidence``; intervals: stages/evaluate.py and
stages/val_nll.py). Numbers are rounded to 4 significant digits, which is finer than any interval.

Privacy class: private (it repeats evaluation figures computed on private splits).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from dpinstruct.io import params as P
from dpinstruct.io.runner import run_stage
from dpinstruct.privacy.ledger import finite

STAGE = "summary"
INPUTS = {"privacy": "metrics/privacy.json", "eval": "metrics/eval.json", "val_nll": "metrics/val_nll.json",
          "resample": "metrics/resample.json"}
METRICS = "metrics/summary.json"


def _r(x: float | str) -> float:
    x = P.as_float(x)  # the ledger writes a non-private run's epsilon as "inf"
    return x if not math.isfinite(x) or x == 0 else round(x, 3 - math.floor(math.log10(abs(x))))


def _pm(interval: dict) -> float:
    return _r((interval["hi"] - interval["lo"]) / 2)


def summarise(reports: dict) -> dict:
    datasets, ev, nll = reports["privacy"]["datasets"], reports["eval"], reports["val_nll"]
    mauve = ev["mauve"]
    return finite({  # strict JSON: a non-private run's epsilon is written "inf", as in the ledger
        "epsilon": {name: _r(d["epsilon"]) for name, d in sorted(datasets.items())},
        "delta": {name: d["delta"] for name, d in sorted(datasets.items())},
        "released": reports["resample"]["released"],
        "yield": {"dp": _r(ev["yield"]["pool"]["mean"]), "dp_pm": _pm(ev["yield"]["pool"]),
                  "base": _r(ev["yield"]["base"]["mean"])},
        "nll": {"dp": _r(nll["dp"]["mean"]), "dp_pm": _pm(nll["dp"]), "base": _r(nll["base"]["mean"])},
        "mauve": {"release": _r(mauve["release"]["mauve"]), "release_pm": _pm(mauve["release"]),
                  "pool": _r(mauve["pool"]["mauve"]), "pool_pm": _pm(mauve["pool"]),
                  "base": _r(mauve["base"]["mauve"]), "train": _r(mauve["train"]["mauve"]),
                  "public": _r(mauve["public"]["mauve"])},
    })


def main() -> None:
    with run_stage(STAGE) as out:
        out.write_json(summarise({k: json.loads(Path(p).read_text()) for k, p in INPUTS.items()}), METRICS)


if __name__ == "__main__":
    main()
