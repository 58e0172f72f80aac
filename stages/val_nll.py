"""Stage `val_nll`: the generator's per-token NLL on the private VAL split, with and without its adapter.

A smooth utility measure of what DP fine-tuning learnt, which ranks epsilons where MAUVE on a few
hundred samples cannot: the mean NLL per target token (instruction + EOS after the fixed prompt,
as train_generator's loss) of every val record that fits ``train_generator.max_seq_len``, under
the DP generator (``dp``) and the bare base generator (``base``), each with a percentile bootstrap
interval over records, and the paired difference dp - base on the same resampled records. The
per-record sums go to data/eval/val_nll.parquet (in val order, no text), so that a sweep can pair
two experiments record by record (`dpinstruct sweep`: epsilon-to-epsilon intervals).

Privacy class: private (computed on the private val split without noise: for the data owner).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from dpinstruct.evaluation.intervals import bootstrap_ratio
from dpinstruct.io import params as P
from dpinstruct.io.artifacts import table_metadata
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.evaluation import Evaluate
from dpinstruct.io.settings.generation import TrainGenerator
from dpinstruct.models.instruction_loss import record_nll
from dpinstruct.models.loading import GENERATOR_DIR, load_generator
from dpinstruct.models.lora import merged_model
from dpinstruct.training.dp_adam import build_examples

log = logging.getLogger("stages.val_nll")
STAGE = "val_nll"
VAL = Path("data/prepared/val.parquet")
ADAPTER_DIR = Path("data/adapters/generator")
METRICS = "metrics/val_nll.json"
RECORDS = "data/eval/val_nll.parquet"
SCHEMA = pa.schema([("dp_nll", pa.float64()), ("base_nll", pa.float64()), ("tokens", pa.int32())])


def val_nll(params: dict, out) -> dict:
    (prompt, max_seq_len), cfg = TrainGenerator.read(params, "prompt", "max_seq_len"), Evaluate.from_params(params)
    texts = pd.read_parquet(VAL, columns=["instruction"]).instruction.tolist()
    nll = {}
    for name, load in (("base", lambda: load_generator(GENERATOR_DIR)),
                       ("dp", lambda: merged_model(GENERATOR_DIR, ADAPTER_DIR))):
        model, tokenizer = load()
        examples, prompt_len, skipped = build_examples(tokenizer, texts, prompt, max_seq_len)
        nll[name], tokens = record_nll(model.eval(), examples, prompt_len, tokenizer.pad_token_id, "val NLL")
    boot = {"resamples": cfg.bootstrap, "seed": cfg.seed, "confidence": cfg.confidence}
    result = {"records": len(examples), "skipped_too_long": skipped, "tokens": int(tokens.sum()),
              "confidence": boot["confidence"], "bootstrap": boot["resamples"],
              "dp": bootstrap_ratio(nll["dp"], tokens, **boot), "base": bootstrap_ratio(nll["base"], tokens, **boot),
              "dp_minus_base": bootstrap_ratio(nll["dp"], tokens, minus=nll["base"], **boot)}
    log.info("val NLL per token: DP %.4f [%.4f, %.4f], base %.4f; DP - base %.4f [%.4f, %.4f] (%d records)",
             result["dp"]["mean"], result["dp"]["lo"], result["dp"]["hi"], result["base"]["mean"],
             *(result["dp_minus_base"][k] for k in ("mean", "lo", "hi")), len(examples))
    table = pa.table({"dp_nll": nll["dp"], "base_nll": nll["base"], "tokens": tokens.astype(np.int32)}, schema=SCHEMA)
    out.write_parquet(table, RECORDS, SCHEMA, table_metadata(STAGE, P.params_hash(cfg.raw, prompt, max_seq_len),
                                                             "private", source=str(VAL)))
    out.write_json(result, METRICS)
    return result


def main() -> None:
    with run_stage(STAGE) as out:
        val_nll(P.load(), out)


if __name__ == "__main__":
    main()
