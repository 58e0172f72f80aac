"""Stage `sft` (one DVC stage per instruction set, `sft@<set>`): a LoRA adapter aligned on that set.

``python -m stages.sft <set>`` fine-tunes the student (``sft.student``, default the base generator)
with TRL's SFTTrainer on the set's annotated pairs (data/annotated/<set>.parquet), loss on the
response tokens only (dpinstruct/alignment/sft.py). Every set gets the same number of pairs (a
seeded sample of ``sft.examples``) and the same optimiser steps, so that adapters differ only by
their instructions. Writes data/adapters/sft/<set> (a peft folder: ``PeftModel.from_pretrained``
loads it) and the loss curve in dvclive/sft/<set>; both keep the class of the set.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pandas as pd

from dpinstruct.alignment.sft import SFTSettings, train_adapter, training_pairs
from dpinstruct.io import params as P
from dpinstruct.io.artifacts import read_metadata
from dpinstruct.io.errors import ConfigError
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.alignment import Sft
from dpinstruct.models.loading import GENERATOR_DIR, load_tokenizer

log = logging.getLogger("stages.sft")
STAGE = "sft"
SETS = ("train", "public", "pool", "release")


def annotated(name: str) -> Path:
    return Path(f"data/annotated/{name}.parquet")


def adapter_dir(name: str) -> Path:
    return Path(f"data/adapters/sft/{name}")


def live_dir(name: str) -> Path:
    return Path(f"dvclive/sft/{name}")


def settings(cfg: Sft) -> SFTSettings:
    return SFTSettings(examples=cfg.examples, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                       max_length=cfg.max_length, lora=cfg.lora, seed=cfg.seed)


def student_dir(cfg: Sft) -> str:
    return str(GENERATOR_DIR) if cfg.student == "generator" else cfg.student


def sft(name: str, params: dict, out) -> dict:
    from dvclive import Live

    if name not in SETS:
        raise ConfigError("stage argument", f"unknown instruction set {name!r}; one of {list(SETS)}")
    cfg = Sft.from_params(params)
    s = settings(cfg)
    source = annotated(name)
    privacy = read_metadata(source).get("privacy")
    pairs = training_pairs(pd.read_parquet(source), s, tokenizer=load_tokenizer(student_dir(cfg)), label=str(source))
    log.info("sft@%s: %d pairs (class %s), %d steps of %d", name, len(pairs), privacy, s.steps, s.batch_size)
    live = Live(str(out.path(live_dir(name))), save_dvc_exp=False, dvcyaml=None, report=None)
    metrics = train_adapter(student_dir(cfg), pairs, s, out.path(adapter_dir(name)), live=live)
    live.summary.update({"pairs": len(pairs), "steps": s.steps, "train_loss": metrics.get("train_loss")})
    live.end()
    log.info("sft@%s: train loss %.4f in %.0f s", name, metrics.get("train_loss", float("nan")),
             metrics.get("train_runtime", float("nan")))
    return metrics


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    with run_stage(f"{STAGE}@{name}") as out:
        sft(name, P.load(), out)


if __name__ == "__main__":
    main()
