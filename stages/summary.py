"""Stage `summary`: the few figures a person compares across runs, as the pipeline's DVC metrics.

``dvc metrics show`` and ``dvc exp show`` read only metrics/summary.json, one row that fits 120
columns: the composed epsilon of each private dataset (``eps``) and the largest delta of any, the
rows released, the release's MAUVE against test with the half-width of its interval (``mauve_pm``,
at ``evaluate.confidence``) and the DP generator's per-token NLL on val. Everything else
(per-set MAUVE, the pool's yield, the base generator's values, the intervals themselves) stays in
the stages' full reports beside it: metrics/eval.json, metrics/val_nll.json, metrics/privacy.json.
Numbers are rounded to 4 significant digits, which is finer than any interval.

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
    release = ev["mauve"]["release"]
    return finite({  # strict JSON: a non-private run's epsilon is written "inf", as in the ledger
        "eps": {name: _r(d["epsilon"]) for name, d in sorted(datasets.items())},
        "delta": max(d["delta"] for d in datasets.values()),
        "released": reports["resample"]["released"],
        "mauve": _r(release["mauve"]), "mauve_pm": _pm(release),
        "nll": _r(nll["dp"]["mean"]),  # its interval (metrics/val_nll.json) would push the row past 120 columns
    })


def main() -> None:
    with run_stage(STAGE) as out:
        out.write_json(summarise({k: json.loads(Path(p).read_text()) for k, p in INPUTS.items()}), METRICS)


if __name__ == "__main__":
    main()
