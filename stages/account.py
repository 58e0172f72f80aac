"""Stage `account`: one (epsilon, delta) for the released instruction set.

Composes every ledger entry under metrics/privacy/ (sequential composition: all mechanisms touch
the same private train records) with dp_accounting's PLD accountant at ``privacy.delta``, and
cross-checks with opacus' PRV accountant. Writes metrics/privacy.json. The run fails when the
composed epsilon exceeds ``privacy.epsilon`` by EITHER accountant, by any amount: the generator's
noise was calibrated so that both fit, so an excess means the ledger and the budget disagree (for
example a stale entry), and nothing may be released.
"""
from __future__ import annotations

import logging
import math

from dpinstruct.io import params as P
from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.io.runner import run_stage
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import ledger

log = logging.getLogger("stages.account")
STAGE = "account"
OUT = "metrics/privacy.json"
EXPECTED = ("histogram", "train_generator")  # the DP mechanisms of this pipeline


def compose(entries: list[dict], delta: float) -> tuple[float, float]:
    """(PLD epsilon, PRV epsilon) of all entries composed, at delta."""
    events = [ledger.event_from_json(e["dp_event"]) for e in entries]
    components = [(P.as_float(e["noise_multiplier"]), P.as_float(e["sampling_rate"]), int(e["steps"])) for e in entries]
    return acct.round_up(acct.epsilon_pld(events, delta)), acct.round_up(acct.epsilon_prv(components, delta))


def account(params: dict, out) -> dict:
    privacy = P.section(params, "privacy")
    target, delta = P.as_float(privacy["epsilon"]), P.as_float(privacy["delta"])
    entries = ledger.read_entries()
    stages = sorted(e["stage"] for e in entries)
    if stages != sorted(EXPECTED):
        raise PrivacyConfigError(f"{ledger.LEDGER_DIR}: expected ledger entries for {list(EXPECTED)}, found {stages}")
    stale = [e["stage"] for e in entries if P.as_float(e["delta"]) != delta]
    if stale:
        raise PrivacyConfigError(f"ledger entries {stale} were made at another delta than privacy.delta={delta}: "
                                 "re-run them (dvc repro)")
    epsilon, epsilon_prv = compose(entries, delta)
    within = math.isinf(target) or (epsilon <= target and epsilon_prv <= target)
    result = ledger.finite({
        "epsilon": epsilon, "delta": delta, "accountant": "dp_accounting PLD (sequential composition)",
        "epsilon_prv": epsilon_prv, "target_epsilon": target, "within_budget": within,
        "neighbouring": acct.NEIGHBOURING, "private": not math.isinf(epsilon),
        "stages": {e["stage"]: {k: e[k] for k in ("mechanism", "noise_multiplier", "sampling_rate", "steps",
                                                   "sensitivity", "epsilon", "epsilon_prv")} for e in entries},
    })
    if not within:
        raise PrivacyConfigError(f"composed epsilon {epsilon:.4f} (PRV {epsilon_prv:.4f}) exceeds privacy.epsilon "
                                 f"{target}; nothing may be released")
    out.write_json(result, OUT)
    log.info("release: epsilon %.4f (PRV %.4f) at delta %g; budget %s", epsilon, epsilon_prv, delta, target)
    return result


def main() -> None:
    with run_stage(STAGE) as out:
        account(P.load(), out)


if __name__ == "__main__":
    main()
