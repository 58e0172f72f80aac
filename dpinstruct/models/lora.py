"""LoRA adapters on the base generator: made for training, saved with stable bytes, merged for sampling.

Adapters are peft folders (``adapter_config.json`` + safetensors) that anyone with peft loads with
``PeftModel.from_pretrained``.
"""
from __future__ import annotations

import json
from pathlib import Path

from dpinstruct.io.settings.models import Lora
from dpinstruct.models.loading import load_generator


def lora_config(lora: Lora):
    """A peft LoraConfig from params: r, alpha, dropout, target_modules and, optionally, ``layers``
    (the transformer blocks to adapt; default all). Adapting only the upper blocks lets the backward
    pass stop early, and a DP run pays noise on fewer coordinates."""
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), task_type="CAUSAL_LM",
                      **({"layers_to_transform": list(lora.layers)} if lora.layers else {}))


def lora_model(base, lora: Lora):
    """(peft model with fresh LoRA layers, tokenizer) on ``base``: a model folder, or an already
    loaded (model, tokenizer) pair."""
    from peft import get_peft_model

    model, tokenizer = load_generator(base) if isinstance(base, (str, Path)) else base
    return get_peft_model(model, lora_config(lora)), tokenizer


def save_adapter(model, target: Path | str) -> None:
    model.save_pretrained(target)
    # peft keeps target_modules as a set, so its JSON order follows PYTHONHASHSEED and the adapter's
    # hash would change from run to run with identical weights; sort it.
    config_path = Path(target) / "adapter_config.json"
    config = json.loads(config_path.read_text())
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def merged_model(base_dir: Path | str, adapter_dir: Path | str):
    """(base + adapter merged into plain weights, in eval mode; tokenizer). Merging removes the LoRA
    side-branch from every forward: the same function with fewer matmuls."""
    from peft import PeftModel

    base, tokenizer = load_generator(base_dir)
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload().eval(), tokenizer
