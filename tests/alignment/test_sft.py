"""SFT with TRL: the loss covers the response tokens only, every set gets the same seeded pairs,
and the adapter is a peft folder that loads with PeftModel.from_pretrained."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from dpinstruct.alignment.sft import SFTSettings, make_trainer, train_adapter, training_pairs
from dpinstruct.io.errors import InputError
from dpinstruct.io.settings.models import Lora
from dpinstruct.models.loading import load_tokenizer

SETTINGS = SFTSettings(examples=6, steps=2, batch_size=3, lr=1e-3, max_length=96,
                       lora=Lora(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]), seed=0)


def annotated(n=10):
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], "instruction": [f"Count to {i}." for i in range(n)],
                         "response": [" ".join(str(k) for k in range(1, i + 2)) for i in range(n)],
                         "response_tokens": [i + 1 for i in range(n)],
                         "finish_reason": ["stop"] * (n - 1) + ["length"]})


def test_pairs_are_finished_fit_and_seeded(tiny_generator_dir):
    tokenizer = load_tokenizer(tiny_generator_dir)
    pairs = training_pairs(annotated(), SETTINGS, tokenizer=tokenizer, label="x")
    assert len(pairs) == 6 and "r9" not in set(pairs.id)  # unfinished responses never train
    # the same ids whatever else the set holds: a grown set keeps its picks where they still rank first
    again = training_pairs(annotated().iloc[::-1], SETTINGS, tokenizer=tokenizer, label="x")
    assert set(again.id) == set(pairs.id)
    with pytest.raises(InputError, match="fewer than sft.examples=6"):
        training_pairs(annotated(5), SETTINGS, tokenizer=tokenizer, label="x")


def test_loss_covers_the_response_tokens_only(tiny_generator_dir, tmp_path):
    tokenizer = load_tokenizer(tiny_generator_dir)
    pairs = training_pairs(annotated(), SETTINGS, tokenizer=tokenizer, label="x")
    trainer = make_trainer(tiny_generator_dir, pairs, SETTINGS, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    for row in range(batch["input_ids"].shape[0]):
        labels = batch["labels"][row]
        scored = labels[labels != -100].tolist()
        text = tokenizer.decode(scored)
        assert text.rstrip().endswith("<|im_end|>") and "Count to" not in text and "<|im_start|>user" not in text
        assert any(text in (r + "<|im_end|>\n", r + "<|im_end|>") for r in pairs.response), text


def test_adapter_trains_and_loads_with_peft(tiny_generator_dir, tmp_path):
    from peft import PeftModel

    from dpinstruct.models.loading import load_generator

    tokenizer = load_tokenizer(tiny_generator_dir)
    pairs = training_pairs(annotated(), SETTINGS, tokenizer=tokenizer, label="x")
    metrics = train_adapter(tiny_generator_dir, pairs, SETTINGS, tmp_path / "adapter")
    assert metrics["train_loss"] > 0 and (tmp_path / "adapter/adapter_config.json").exists()
    base, _ = load_generator(tiny_generator_dir)
    reference = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).merge_and_unload().state_dict()
    changed = [k for k in reference if not torch.equal(reference[k], merged[k])]
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
