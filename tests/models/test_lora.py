"""LoRA adapters on the tiny random generator: the config from params (optionally some blocks only),
fresh adapters with only their own weights trainable, adapters saved with stable bytes that peft
loads, and a merged model that computes what base + adapter compute."""
from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from dpinstruct.io.settings.models import Lora
from dpinstruct.models import lora as L
from dpinstruct.models.loading import load_generator

MODULES = ["v_proj", "q_proj", "o_proj", "k_proj"]
LORA = Lora(r=4, alpha=8, dropout=0.0, target_modules=MODULES)


def lora(**changes) -> Lora:
    return Lora.model_validate({**LORA.model_dump(), **changes})


def adapted_blocks(model) -> set[int]:
    return {int(name.split(".layers.")[1].split(".")[0]) for name, _ in model.named_parameters() if "lora_" in name}


def test_lora_config_from_params():
    config = L.lora_config(lora(layers=[28, 29.0]))  # a whole float is an integer (dvc exp run -S)
    assert (config.r, config.lora_alpha, config.lora_dropout) == (4, 8, 0.0)
    assert set(config.target_modules) == set(MODULES) and config.task_type == "CAUSAL_LM"
    assert config.layers_to_transform == [28, 29]
    assert L.lora_config(LORA).layers_to_transform is None  # every block


def test_a_fresh_adapter_trains_only_its_own_weights_in_the_named_blocks(tiny_generator_dir):
    model, tokenizer = L.lora_model(tiny_generator_dir, lora(layers=[28, 29]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert adapted_blocks(model) == {28, 29}
    assert {n.split(".")[-4] for n in trainable} == set(MODULES)
    assert tokenizer.eos_token == "<|im_end|>"
    # a fresh adapter is the identity (lora_B starts at zero); every block is adapted by default
    everywhere, _ = L.lora_model(load_generator(tiny_generator_dir), LORA)
    assert adapted_blocks(everywhere) == set(range(everywhere.config.num_hidden_layers))


def perturbed_adapter(tiny_generator_dir):
    torch.manual_seed(1)
    model, tokenizer = L.lora_model(tiny_generator_dir, lora(layers=[27, 28, 29]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # as training would leave it: the adapter now changes the function
    return model.eval(), tokenizer


def test_a_saved_adapter_has_stable_bytes_and_sorted_config(tiny_generator_dir, tmp_path):
    model, _ = perturbed_adapter(tiny_generator_dir)
    L.save_adapter(model, tmp_path / "a")
    L.save_adapter(model, tmp_path / "b")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    text = (tmp_path / "a/adapter_config.json").read_text()
    config = json.loads(text)
    assert config["target_modules"] == sorted(MODULES)  # a set in peft: hash-ordered unless sorted
    assert list(config) == sorted(config) and text.endswith("}\n")
    assert config["layers_to_transform"] == [27, 28, 29] and config["r"] == 4


def test_merged_model_computes_what_base_plus_adapter_compute(tiny_generator_dir, tmp_path):
    model, tokenizer = perturbed_adapter(tiny_generator_dir)
    L.save_adapter(model, tmp_path / "adapter")
    ids = torch.tensor([tokenizer("How do I bake bread at home?")["input_ids"]])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        with model.disable_adapter():
            bare = model(input_ids=ids).logits
    assert (expected - bare).abs().max() > 1e-3  # the adapter matters, so the comparison below does
    merged, merged_tokenizer = L.merged_model(tiny_generator_dir, tmp_path / "adapter")
    assert not isinstance(merged, PeftModel) and not merged.training
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)
    assert merged_tokenizer.get_vocab() == tokenizer.get_vocab()


@pytest.mark.parametrize("base_as", ["folder", "pair"])
def test_lora_model_takes_a_folder_or_a_loaded_pair(tiny_generator_dir, base_as):
    pair = load_generator(tiny_generator_dir)
    model, tokenizer = L.lora_model(str(tiny_generator_dir) if base_as == "folder" else pair, LORA)
    assert isinstance(model, PeftModel)
    if base_as == "pair":  # the given model is adapted in place, not reloaded
        assert model.get_base_model() is pair[0] and tokenizer is pair[1]
