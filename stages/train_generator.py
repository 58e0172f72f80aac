"""Stage `train_generator` (Algorithm 1): DP-LoRA fine-tuning of the base generator.

Budget first: before touching the model, the noise multiplier is calibrated so that the COMPOSED
epsilon of this stage's T Poisson-subsampled Gaussian steps and the one Gaussian histogram of
Algorithm 2 meets privacy.epsilon at privacy.delta; unsafe or impossible settings stop here.
The privacy unit is the record, or the user with ``user_level.enabled`` (a param, never inferred
from the data; dpinstruct/privacy/user_level.py; ``user_level.max_records_per_user`` then applies).
Output: the peft adapter (data/adapters/generator, class dp), the ledger entry
metrics/privacy/train_generator.json and DVCLive curves (loss, epsilon spent). Checkpoints in
data/checkpoints/train_generator let a killed run resume bit-identically. Poisson sampling and the
noise come from secret-keyed streams bound to this run's whole run key: params, the train split, the
base weights, the DP count and the code (dpinstruct/privacy/run_key.py, randomness.py);
``train_generator.seed`` drives only the LoRA initialisation. The loop itself is
dpinstruct/training/dp_generator.py.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from dpinstruct.io import params as P
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.privacy import UserLevel
from dpinstruct.models.lora import save_adapter
from dpinstruct.privacy import dp_count, ledger, user_level
from dpinstruct.privacy.run_key import run_key
from dpinstruct.training import dp_generator

log = logging.getLogger("stages.train_generator")
ADAPTER_DIR = Path("data/adapters/generator")
CHECKPOINT_DIR = Path("data/checkpoints/train_generator")
LIVE_DIR = Path("dvclive/train_generator")
STAGE, TRAIN, COUNT, INPUTS = dp_generator.STAGE, dp_generator.TRAIN, dp_generator.COUNT, dp_generator.INPUTS


def train(params: dict, out) -> dict:
    users, sections = UserLevel.from_params(params), dp_generator.sections(params)
    train_split = pd.read_parquet(TRAIN, columns=["id", "instruction", "user_id"])
    units = user_level.units(train_split.user_id, train_split.id, users.enabled)
    noisy_count, count_component, _ = dp_count.read(COUNT)
    fitted = dp_generator.fit(
        params, train_split.instruction.tolist(), units=units, noisy_count=noisy_count,
        count_component=count_component, run_key=run_key(STAGE, sections, INPUTS), checkpoint_dir=CHECKPOINT_DIR,
        live_dir=LIVE_DIR)
    save_adapter(fitted.model, out.path(ADAPTER_DIR))
    entry = fitted.mechanism.ledger_entry(params_hash=P.params_hash(*sections), **({} if units is None else {
        "max_records_per_user": users.max_records_per_user}))
    out.write_json(entry, ledger.entry_path(STAGE))
    log.info("epsilon of this stage alone: %s (PRV %s); planned release epsilon %.3f", entry["epsilon"],
             entry["epsilon_prv"], fitted.plan.composed_epsilon)
    return entry


def main() -> None:
    with run_stage(STAGE) as out:
        train(P.load(), out)


if __name__ == "__main__":
    main()
