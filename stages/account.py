"""Stage `account`: one (epsilon, delta) per private dataset, the released instruction set's first.

Reads every ledger entry under metrics/privacy/ and composes them by dataset
(dpinstruct/privacy/composition.py): sequentially within a partition (PLD, with opacus' PRV as
cross-check), in parallel (the maximum) across disjoint partitions of one dataset, separately per
dataset, all of a dataset's entries under one neighbouring relation (a record, or a user). Each
dataset has its own budget: params.yaml ``datasets`` names each dataset's budget section, and dvc.yaml
(``meta.dp_dataset``) the mechanisms that spend it, which are the ledger entries expected. Writes metrics/privacy.json: the release's
guarantee at the top level (``epsilon``, ``delta``, ...: the ``instructions`` dataset) and every
dataset's under ``datasets``. The run fails when a dataset's composed epsilon exceeds its
target by EITHER accountant, by any amount: every mechanism's noise was calibrated so that both
fit, so an excess means the ledger and the budget disagree (for example a stale entry), and
nothing may be released. It also refuses a ledger whose entries mix randomness modes (keyed and
``secure_mode``): ``privacy.secure_mode`` is one setting for every DP stage.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from dpinstruct.io import params as P
from dpinstruct.io import pipeline_spec
from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.privacy import Datasets
from dpinstruct.io.settings.project import read_section
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger
from dpinstruct.privacy.composition import compose_dataset

log = logging.getLogger("stages.account")
STAGE = "account"
OUT = "metrics/privacy.json"


def datasets(params: dict, root: str | Path = pipeline_spec.ROOT) -> tuple[dict[str, str], dict[str, tuple[str, ...]], str]:
    """(dataset -> its budget section, dataset -> the mechanisms that spend it, the release's dataset):
    the datasets from params.yaml ``datasets``, their mechanisms from dvc.yaml (``meta.dp_dataset``)."""
    declared = Datasets.from_params(params).root
    mechanisms = pipeline_spec.dp_mechanisms(root)
    unknown = sorted(f"{s} ({d})" for s, d in mechanisms.items() if d not in declared)
    if unknown:
        raise PrivacyConfigError(f"dvc.yaml: mechanisms {unknown} spend a dataset that params.yaml `datasets` does not "
                                 f"declare ({sorted(declared)})")
    expected = {d: tuple(sorted(s for s, ds in mechanisms.items() if ds == d)) for d in declared}
    idle = sorted(d for d, found in expected.items() if not found)
    if idle:
        raise PrivacyConfigError(f"params.yaml datasets {idle}: no dvc.yaml stage spends them (meta.dp_dataset)")
    return {d: spec.budget for d, spec in declared.items()}, expected, Datasets.from_params(params).release


def budget(params: dict, section_name: str) -> tuple[float, float]:
    section = read_section(params, section_name)
    return section.epsilon, section.delta


def account(params: dict, out) -> dict:
    budgets, expected, release_dataset = datasets(params)
    entries = ledger.read_entries()
    found = {d: sorted(e["stage"] for e in entries if e.get("dataset") == d) for d in expected}
    unknown = sorted(e["stage"] for e in entries if e.get("dataset") not in expected)
    if unknown or any(found[d] != sorted(expected[d]) for d in expected):
        raise PrivacyConfigError(f"{ledger.LEDGER_DIR}: expected ledger entries {expected}, found {found}"
                                 + (f" and entries of unknown datasets {unknown}" if unknown else ""))
    unstated = sorted(e["stage"] for e in entries if not isinstance(e.get("secure_mode"), bool))
    if unstated:  # an entry that does not say how it drew its noise cannot be checked against the others
        raise PrivacyConfigError(f"{ledger.LEDGER_DIR}: entries {unstated} do not state secure_mode (true or false); "
                                 "they come from another version of the pipeline: re-run them (dvc repro)")
    modes = {e["stage"]: e["secure_mode"] for e in entries}
    if len(set(modes.values())) > 1:
        raise PrivacyConfigError(f"{ledger.LEDGER_DIR}: entries drew their randomness in different modes "
                                 f"(secure_mode per stage: {modes}); privacy.secure_mode is one setting for every "
                                 "DP stage: re-run the stale ones (dvc repro)")
    guarantees = {}
    for name in expected:
        target, delta = budget(params, budgets[name])
        mine = [e for e in entries if e["dataset"] == name]
        stale = [e["stage"] for e in mine if P.as_float(e["delta"]) != delta]
        if stale:
            raise PrivacyConfigError(f"ledger entries {stale} were made at another delta than {budgets[name]}.delta="
                                     f"{delta}: re-run them (dvc repro)")
        relations = sorted({e.get("neighbouring", acct.NEIGHBOURING) for e in mine})
        if len(relations) > 1:
            raise PrivacyConfigError(f"dataset {name}: ledger entries under different neighbouring relations "
                                     f"{relations} do not compose; re-run them on the same data (dvc repro)")
        guarantee = {**compose_dataset(mine, delta), "neighbouring": relations[0]}
        prv = guarantee["epsilon_prv"]  # None: opacus' PRV does not model one of the events; PLD alone decides
        within = math.isinf(target) or (guarantee["epsilon"] <= target and (prv is None or prv <= target))
        if not within:
            raise PrivacyConfigError(f"dataset {name}: composed epsilon {guarantee['epsilon']:.4f} (PRV "
                                     f"{prv}) exceeds {budgets[name]}.epsilon {target}; nothing may be released")
        guarantees[name] = {**guarantee, "target_epsilon": target, "within_budget": within, "budget": budgets[name]}
        log.info("dataset %s: epsilon %.4f (PRV %s) at delta %g; budget %s", name, guarantee["epsilon"], prv, delta,
                 target)
    release = guarantees[release_dataset]
    result = ledger.finite({
        **{k: release[k] for k in ("epsilon", "delta", "epsilon_prv", "target_epsilon", "within_budget", "private",
                                   "accountant")},
        "neighbouring": release["neighbouring"], "datasets": guarantees,
        "stages": {e["stage"]: {k: e.get(k) for k in ("dataset", "partition", "mechanism", "noise_multiplier",
                                                       "sampling_rate", "steps", "sensitivity", "epsilon", "epsilon_prv")}
                   for e in entries},
    })
    out.write_json(result, OUT)
    return result


def main() -> None:
    with run_stage(STAGE) as out:
        account(P.load(), out)


if __name__ == "__main__":
    main()
