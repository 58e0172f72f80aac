"""Stage `account`: one (epsilon, delta) per private dataset, the released instruction set's first.

Reads every ledger entry under metrics/privacy/ and composes them by dataset
(dpinstruct/privacy/composition.py): sequentially within a partition (PLD, with opacus' PRV as
cross-check), in parallel (the maximum) across disjoint partitions of one dataset, separately per
dataset, all of a dataset's entries under one neighbouring relation (a record, or a user). Each
dataset has its own budget in params (``BUDGETS``). Writes metrics/privacy.json: the release's
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

from dpinstruct.io import params as P
from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.io.runner import run_stage
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger
from dpinstruct.privacy.composition import compose_dataset

log = logging.getLogger("stages.account")
STAGE = "account"
OUT = "metrics/privacy.json"
RELEASE = "instructions"  # the dataset of the released instruction set
BUDGETS = {"instructions": "privacy", "imdb": "rl.privacy", "hh_rlhf": "rlhf.privacy"}  # dataset -> its budget
# each dataset's mechanisms; RLHF on the release adds none to `instructions` (post-processing)
# (each DP-SGD input's DP count is a mechanism of its dataset too: dp_count@<input>)
EXPECTED = {"instructions": ("dp_count@instructions", "histogram", "train_generator"),
            "imdb": ("dp_count@imdb_ppo", "dp_count@imdb_sft", "dp_ppo", "dp_sft"),
            "hh_rlhf": ("dp_count@hh_rlhf", "dp_reward_model",)}


def budget(params: dict, dataset: str) -> tuple[float, float]:
    section = params
    for key in BUDGETS[dataset].split("."):
        section = P.section(section, key)
    return P.as_float(section["epsilon"]), P.as_float(section["delta"])


def account(params: dict, out) -> dict:
    entries = ledger.read_entries()
    found = {d: sorted(e["stage"] for e in entries if e.get("dataset") == d) for d in EXPECTED}
    unknown = sorted(e["stage"] for e in entries if e.get("dataset") not in EXPECTED)
    if unknown or any(found[d] != sorted(EXPECTED[d]) for d in EXPECTED):
        raise PrivacyConfigError(f"{ledger.LEDGER_DIR}: expected ledger entries {EXPECTED}, found {found}"
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
    datasets = {}
    for name in EXPECTED:
        target, delta = budget(params, name)
        mine = [e for e in entries if e["dataset"] == name]
        stale = [e["stage"] for e in mine if P.as_float(e["delta"]) != delta]
        if stale:
            raise PrivacyConfigError(f"ledger entries {stale} were made at another delta than {BUDGETS[name]}.delta="
                                     f"{delta}: re-run them (dvc repro)")
        relations = sorted({e.get("neighbouring", acct.NEIGHBOURING) for e in mine})
        if len(relations) > 1:
            raise PrivacyConfigError(f"dataset {name}: ledger entries under different neighbouring relations "
                                     f"{relations} do not compose; re-run them on the same data (dvc repro)")
        guarantee = {**compose_dataset(mine, delta), "neighbouring": relations[0]}
        within = math.isinf(target) or (guarantee["epsilon"] <= target and guarantee["epsilon_prv"] <= target)
        if not within:
            raise PrivacyConfigError(f"dataset {name}: composed epsilon {guarantee['epsilon']:.4f} (PRV "
                                     f"{guarantee['epsilon_prv']:.4f}) exceeds {BUDGETS[name]}.epsilon {target}; "
                                     "nothing may be released")
        datasets[name] = {**guarantee, "target_epsilon": target, "within_budget": within, "budget": BUDGETS[name]}
        log.info("dataset %s: epsilon %.4f (PRV %.4f) at delta %g; budget %s", name, guarantee["epsilon"],
                 guarantee["epsilon_prv"], delta, target)
    release = datasets[RELEASE]
    result = ledger.finite({
        **{k: release[k] for k in ("epsilon", "delta", "epsilon_prv", "target_epsilon", "within_budget", "private",
                                   "accountant")},
        "neighbouring": release["neighbouring"], "datasets": datasets,
        "stages": {e["stage"]: {k: e[k] for k in ("dataset", "partition", "mechanism", "noise_multiplier",
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
