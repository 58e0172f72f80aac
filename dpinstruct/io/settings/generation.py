"""Algorithm 1 and the pools: ``train_generator`` (DP-LoRA), ``generate`` (the DP pool) and
``generate_base`` (the same sampler on the bare generator)."""
from typing import Annotated, Literal

from pydantic import PlainValidator

from dpinstruct.io.settings.base import BOOL, NAME, Float, Int, Section, Want, refuse
from dpinstruct.io.settings.models import Lora


def _bf16(value):
    if value != "auto" and not isinstance(value, bool):
        raise refuse("auto, true or false", value)
    return value


BF16 = Annotated[bool | Literal["auto"], PlainValidator(_bf16), Want("auto, true or false")]


class TrainGenerator(Section):
    """DP-LoRA of the generator. ``sampling_rate`` and ``epochs`` are checked by the accountant."""
    KEY = "train_generator"
    seed: Int(ge=0)                  # LoRA initialisation only
    prompt: NAME                     # the fixed generation prompt
    max_seq_len: Int(ge=1)
    lora: Lora
    lr: Float(gt=0)
    clip_norm: Float(gt=0)
    sampling_rate: Float()
    epochs: Float()
    micro_batch_tokens: Int(ge=1)
    bf16: BF16
    checkpoint_every: Int(ge=1)


class SampleRules(Section):
    """How a sample is parsed into an instruction (dpinstruct/text/generation_parsing.py)."""
    KEY, SUBSET = "generate", True
    drop_truncated: BOOL             # drop samples without EOS within max_new_tokens
    min_tokens: Int(ge=0)
    min_distinct_word_ratio: Float(ge=0, le=1)   # with 8+ words, fewer distinct words = degenerate loop


class Generate(SampleRules):
    KEY, SUBSET = "generate", False
    seed: Int(ge=0)
    n: Int(ge=1)                     # sequences sampled
    batch_size: Int(ge=1)            # sequences per chunk (the resume unit)
    max_new_tokens: Int(ge=1)
    top_p: Float(gt=0, le=1)
    temperature: Float(gt=0)
    dedup_casefold: BOOL


class GenerateBase(Section):
    KEY = "generate_base"
    n: Int(ge=1)
