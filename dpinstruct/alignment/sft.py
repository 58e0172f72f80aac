"""LoRA SFT of a student on (instruction, response) pairs with TRL's SFTTrainer, loss on the
response tokens only.

Every instruction set is trained the same way (same student, same number of examples, same
optimiser steps, same seeds), so that adapters differ only by their instructions. Training is not
a DP mechanism here: the class of an adapter is the class of its instructions (an adapter trained
on the private train split is private, on the DP release dp). Seeds therefore come from params.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dpinstruct.alignment.chat import chat_ids, exchange
from dpinstruct.io.settings.models import Lora

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SFTSettings:
    examples: int            # common size: every set is subsampled (seeded) to this many pairs
    steps: int               # optimiser steps, the same for every set
    batch_size: int
    lr: float
    max_length: int          # prompt + response tokens; longer pairs are dropped before sampling
    lora: Lora               # r, alpha, dropout, target_modules
    seed: int


def training_pairs(annotated: pd.DataFrame, settings: SFTSettings, *, tokenizer, label: str) -> pd.DataFrame:
    """The pairs one adapter trains on: finished responses whose chat-formatted pair fits
    ``max_length``, then a seeded sample of exactly ``examples`` of them (ordered by a hash of
    (seed, id), so the same ids are picked whatever else the set holds). Raises when fewer remain."""
    from dpinstruct.io.errors import InputError

    usable = annotated[(annotated.finish_reason == "stop") & (annotated.response.str.strip() != "")]
    lengths = [len(chat_ids(tokenizer, exchange(r.instruction, r.response), generation_prompt=False))
               for r in usable.itertuples()]
    usable = usable[[n <= settings.max_length for n in lengths]]
    if len(usable) < settings.examples:
        raise InputError(label, f"{len(usable)} usable annotated pairs (finished, at most {settings.max_length} tokens), "
                                f"fewer than sft.examples={settings.examples}: lower it or annotate more rows")
    rank = pd.util.hash_pandas_object(usable.id.astype(str) + f"#{settings.seed}", index=False)
    return usable.assign(_rank=rank.to_numpy()).sort_values("_rank").head(settings.examples).drop(columns="_rank")


def make_trainer(student_dir: Path | str, pairs: pd.DataFrame, settings: SFTSettings, scratch: Path | str, live=None):
    """TRL's SFTTrainer for one adapter: LoRA on the student, prompt-completion pairs, loss on the
    completion (the response and its end-of-turn tokens) only. ``live``: a DVCLive Live that
    receives the loss curve."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from dpinstruct.models.loading import load_generator

    class LiveLoss(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if live is not None and logs and "loss" in logs:
                live.log_metric("loss", float(logs["loss"]))
                live.next_step()

    dataset = Dataset.from_list([{"prompt": exchange(r.instruction, r.response)[:1],
                                  "completion": exchange(r.instruction, r.response)[1:]} for r in pairs.itertuples()])
    torch.manual_seed(settings.seed)
    model, tokenizer = load_generator(student_dir)
    lora = settings.lora
    config = SFTConfig(output_dir=str(scratch), max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
                       learning_rate=settings.lr, lr_scheduler_type="constant", warmup_steps=0,
                       logging_steps=1, save_strategy="no", report_to=[], seed=settings.seed,
                       data_seed=settings.seed, max_length=settings.max_length, completion_only_loss=True,
                       gradient_checkpointing=False, bf16=False, dataloader_num_workers=0,
                       train_sampling_strategy="group_by_length",  # batches of similar lengths pad little
                       use_cpu=not torch.cuda.is_available(), disable_tqdm=False)
    return SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM"),
                      callbacks=[LiveLoss()])


def train_adapter(student_dir: Path | str, pairs: pd.DataFrame, settings: SFTSettings, out_dir: Path | str,
                  live=None) -> dict:
    """Train one LoRA adapter and save it (a peft folder) to ``out_dir``; returns the trainer's metrics."""
    from dpinstruct.models.lora import save_adapter

    with tempfile.TemporaryDirectory(prefix="sft-") as scratch:
        trainer = make_trainer(student_dir, pairs, settings, scratch, live)
        result = trainer.train()
        save_adapter(trainer.model, out_dir)
    return dict(result.metrics)
