"""Stage `dp_count@<name>`: a DP count of the units one DP-SGD mechanism reads.

Each foreach item (``COUNTED``) names a private input, the dataset and partition it belongs to and
the budget section that says whether the run is private. The count N~ = N + N(0, sigma^2)
(``dp_count.sigma``, L2 sensitivity 1 under add-or-remove-one unit; a unit is a user with
``user_level.enabled``) is the only size the DP stages after it use
(dpinstruct/privacy/dp_count.py). Output: the ledger entry metrics/privacy/dp_count@<name>.json
(class dp), which states N~ and is composed by `account` with the dataset's other mechanisms.
The noise comes from the secret-keyed stream bound to this run's whole run key
(dpinstruct/privacy/run_key.py), or the OS in secure mode.
"""
from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dpinstruct.io import params as P
from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.privacy import DpCount, Privacy, UserLevel
from dpinstruct.io.settings.project import read_section
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_count, ledger, user_level
from dpinstruct.privacy.randomness import DPRandom
from dpinstruct.privacy.run_key import run_key

log = logging.getLogger("stages.dp_count")
STAGE = dp_count.STAGE
MIN_SIGMA = 1.0


@dataclass(frozen=True)
class Counted:
    input: Path
    dataset: str
    partition: str       # the partition of the dataset the mechanism reads (composition)
    budget: str          # the params section of the dataset's budget
    part_column: str | None = None   # rows of this partition only, when the file holds several

    def units(self, by_user: bool) -> tuple[int, str]:
        """(number of units, neighbouring relation) of the input; users count only where ``by_user``
        (the instructions' ``user_level.enabled``: a param, never the data)."""
        columns = ["id"] + (["user_id"] if by_user else []) + ([self.part_column] if self.part_column else [])
        df = pd.read_parquet(self.input, columns=columns)
        if self.part_column:
            df = df[df[self.part_column] == self.partition]
        if by_user:
            return len(set(user_level.unit_index(df.user_id, df.id))), user_level.NEIGHBOURING
        return len(df), acct.NEIGHBOURING


# The input of each DP-SGD mechanism: the generator's train split, the two disjoint IMDb parts
# (DP-SFT reads sft; DP-PPO reads rl.dp_ppo.partition), the reward model's preference pairs.
COUNTED = {
    "instructions": Counted(Path("data/prepared/train.parquet"), "instructions", "all", "privacy"),
    "imdb_sft": Counted(Path("data/rl/sft.parquet"), "imdb", "sft", "rl.privacy"),
    "imdb_ppo": Counted(Path("data/rl/prompts.parquet"), "imdb", "ppo", "rl.privacy", "partition"),
    "hh_rlhf": Counted(Path("data/rlhf/features.parquet"), "hh_rlhf", "reward", "rlhf.privacy", "partition"),
}


def count(name: str, params: dict, out) -> dict:
    if name not in COUNTED:
        raise PrivacyConfigError(f"dp_count: unknown item {name!r} (one of {sorted(COUNTED)})")
    item = COUNTED[name]
    budget, privacy, cfg = read_section(params, item.budget), Privacy.from_params(params), DpCount.from_params(params)
    epsilon, delta = budget.epsilon, budget.delta
    sigma = 0.0 if math.isinf(epsilon) else cfg.sigma
    if not math.isinf(epsilon) and not sigma >= MIN_SIGMA:
        raise PrivacyConfigError(f"dp_count.sigma must be >= {MIN_SIGMA} in a private run ({item.budget}."
                                 f"epsilon is finite), got {sigma}: 0 would publish N exactly, and below {MIN_SIGMA} "
                                 "the count alone costs more than epsilon 4.4 at delta 1e-5 (the accountants also "
                                 "stall near 0); the count only sizes the run, the default 20 costs 0.003")
    # only the instructions have users (user_level); the sections are bound and hashed as written
    users = UserLevel.from_params(params) if item.dataset == "instructions" else None
    user_cfg = None if users is None else users.raw
    key = run_key(f"{STAGE}@{name}", (cfg.raw, budget.raw, privacy.raw.get("secure_mode"), user_cfg), (item.input,),
                  module=STAGE)
    random = DPRandom.for_purpose(f"{STAGE}/noise", *key, privacy=privacy)
    n, neighbouring = item.units(users is not None and users.enabled)
    noisy = dp_count.release(n, sigma, random)
    entry = ledger.make_entry(stage=f"{STAGE}@{name}", mechanism=dp_count.MECHANISM, dataset=item.dataset,
                              partition=item.partition, sensitivity=1.0, delta=delta, event=acct.histogram_event(sigma),
                              noisy_count=noisy, secure_mode=not random.replayable, neighbouring=neighbouring,
                              params_hash=P.params_hash(cfg.raw, budget.raw, user_cfg))
    out.write_json(entry, dp_count.entry_path(name))
    log.info("DP count of %s (sigma %g): epsilon of this step alone %s", name, sigma, entry["epsilon"])
    return entry


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    with run_stage(f"{STAGE}@{name}") as out:
        count(name, P.load(), out)


if __name__ == "__main__":
    main()
