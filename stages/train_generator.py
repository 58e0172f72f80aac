"""Stage `train_generator` (Algorithm 1): DP-LoRA fine-tuning of the base generator.

Budget first: before touching the model, the noise multiplier is calibrated so that the COMPOSED
epsilon of this stage's T Poisson-subsampled Gaussian steps and the one Gaussian histogram of
Algorithm 2 meets privacy.epsilon at privacy.delta; unsafe or impossible settings stop here.
Output: the peft adapter (data/adapters/generator, class dp), the ledger entry
metrics/privacy/train_generator.json and DVCLive curves (loss, epsilon spent). Checkpoints in
data/checkpoints/train_generator let a killed run resume bit-identically. Poisson sampling and the
noise come from secret-keyed streams bound to this run's params and data (dpinstruct/privacy/randomness.py);
``train_generator.seed`` drives only the LoRA initialisation.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from dpinstruct.io import params as P
from dpinstruct.io.artifacts import file_digest
from dpinstruct.io.runner import run_stage
from dpinstruct.models.loading import GENERATOR_DIR
from dpinstruct.models.lora import lora_model, save_adapter
from dpinstruct.privacy import accounting as acct
from dpinstruct.privacy import dp_adam, ledger
from dpinstruct.privacy.dp_adam import DPAdam, build_examples, collate, micro_batches, poisson_sample
from dpinstruct.privacy.dp_loop import DPLoop

log = logging.getLogger("stages.train_generator")
TRAIN = Path("data/prepared/train.parquet")
ADAPTER_DIR = Path("data/adapters/generator")
CHECKPOINT_DIR = Path("data/checkpoints/train_generator")
LIVE_DIR = Path("dvclive/train_generator")
DATASET = "instructions"  # the private dataset this mechanism touches (ledger, composition)
STAGE = "train_generator"


def plan(params: dict, n_records: int) -> acct.GeneratorPlan:
    cfg = params[STAGE]
    return acct.plan_generator(params.get("privacy"), params.get("histogram"), n_records=n_records,
                               sampling_rate=P.as_float(cfg["sampling_rate"]), epochs=P.as_float(cfg["epochs"]),
                               clip_norm=P.as_float(cfg["clip_norm"]),
                               expected_batch_size=P.as_float(cfg["expected_batch_size"]))


def train(params: dict, out) -> dict:

    cfg = params[STAGE]
    phash = P.params_hash(cfg, params.get("privacy"), params.get("histogram"))
    instructions = pd.read_parquet(TRAIN, columns=["instruction"]).instruction.tolist()
    p = plan(params, len(instructions))  # refuses unsafe configs before any model work
    log.info("plan: q=%.4g T=%d sigma=%.4f C=%s -> composed epsilon %.3f (PLD), %.3f (PRV) at delta %g",
             p.sampling_rate, p.steps, p.noise_multiplier, p.clip_norm, p.composed_epsilon, p.composed_epsilon_prv,
             p.delta)
    # DP randomness: one keyed stream per source, bound to this run's params and private data.
    loop = DPLoop(STAGE, privacy=params.get("privacy"), binding=(phash, file_digest(TRAIN)),
                  run_key_parts=(phash, p.as_dict(), file_digest(TRAIN), file_digest(GENERATOR_DIR / "model.safetensors"),
                                 file_digest(__file__), file_digest(dp_adam.__file__)),
                  steps=p.steps, noise_multiplier=p.noise_multiplier, sampling_rate=p.sampling_rate, delta=p.delta,
                  checkpoint_dir=CHECKPOINT_DIR, live_dir=LIVE_DIR, checkpoint_every=cfg["checkpoint_every"])
    torch.manual_seed(cfg["seed"])  # LoRA init only: public, and no DP proof relies on it
    model, tokenizer = lora_model(GENERATOR_DIR, cfg["lora"])
    examples, prompt_len, skipped = build_examples(tokenizer, instructions, cfg["prompt"], cfg["max_seq_len"])
    if skipped:  # a private count: the log and DVCLive (private) only
        log.info("%d train instructions longer than max_seq_len=%d are skipped (never cut: they would lose EOS)",
                 skipped, cfg["max_seq_len"])
    lengths = np.array([len(e) for e in examples])
    dp = DPAdam(model, lr=P.as_float(cfg["lr"]), noise_multiplier=p.noise_multiplier, clip_norm=p.clip_norm,
                expected_batch_size=p.expected_batch_size, noise=loop.noise, autocast_bf16=bool(cfg["bf16"]))
    for _ in loop.iterate(model=model, optimizer=dp.optimizer, summary={"skipped_too_long": skipped},
                          desc="DP-Adam steps"):
        idx = poisson_sample(loop.sampler, len(examples), p.sampling_rate)
        micro = [collate([examples[i] for i in b], prompt_len, tokenizer.pad_token_id)
                 for b in micro_batches(idx, lengths, cfg["micro_batch_tokens"])]
        result = dp.step(micro)
        loop.metrics.update(loss=result.loss, batch_size=result.batch_size)
    realised = p.sampling_rate * len(examples)
    if not 0.5 <= realised / p.expected_batch_size <= 2:
        log.warning("train_generator.expected_batch_size=%g is far from the realised mean batch q x N: it only "
                    "scales the update, but set it near q x N", p.expected_batch_size)
    save_adapter(model, out.path(ADAPTER_DIR))
    event = acct.dp_sgd_event(p.noise_multiplier, p.sampling_rate, p.steps)
    entry = ledger.make_entry(stage=STAGE, mechanism="poisson_subsampled_gaussian", dataset=DATASET, partition="all",
                              noise_multiplier=p.noise_multiplier,
                              sampling_rate=p.sampling_rate, steps=p.steps, sensitivity=p.clip_norm, delta=p.delta,
                              event=event, plan=p.as_dict(), secure_mode=not loop.noise.replayable, params_hash=phash)
    out.write_json(entry, ledger.entry_path(STAGE))
    log.info("epsilon of this stage alone: %s (PRV %s); planned release epsilon %.3f", entry["epsilon"],
             entry["epsilon_prv"], p.composed_epsilon)
    return entry


def main() -> None:
    with run_stage(STAGE) as out:
        train(P.load(), out)


if __name__ == "__main__":
    main()
