"""Alignment on each instruction set: ``annotate`` (answers from a local model or an endpoint),
``sft`` (a LoRA student per set) and ``evaluate_alignment`` (held-out NLL and judged win rates).
Backend names are checked against the registries in dpinstruct/alignment when the stage runs."""
from dpinstruct.io.settings.base import BOOL, NAME, OPTIONAL_NAME, OPTIONAL_TEXT, Float, Int, Params, Section
from dpinstruct.io.settings.models import Lora


class Endpoint(Params):
    """An OpenAI-compatible endpoint."""
    base_url: NAME
    model: NAME
    api_key_env: OPTIONAL_NAME = None   # NAME of the environment variable that holds the key
    concurrency: Int(ge=1)              # requests in flight
    timeout: Float(gt=0)                # seconds per request
    max_retries: Int(ge=0)


class LocalAnnotator(Params):
    model: NAME                      # `generator` = the materialised base generator; or an HF id / local folder
    batch_size: Int(ge=1)


class Annotate(Section):
    KEY = "annotate"
    backend: NAME                    # local | openai
    allow_remote_private: BOOL = False
    rows: Int(ge=1, null=True)       # seeded sample of each set; null: all
    test_rows: Int(ge=1, null=True)
    seed: Int(ge=0)
    system_prompt: OPTIONAL_TEXT = None
    temperature: Float(ge=0)         # 0 = greedy
    top_p: Float(gt=0, le=1)
    max_new_tokens: Int(ge=1)
    local: LocalAnnotator
    openai: Endpoint

    def decoding(self) -> dict:
        """The decoding params a backend takes (and a request cache keys on)."""
        return {"temperature": self.temperature, "top_p": self.top_p, "max_new_tokens": self.max_new_tokens}


class Sft(Section):
    KEY = "sft"
    student: NAME                    # `generator` = the base generator; or an HF id / local folder
    examples: Int(ge=1)
    steps: Int(ge=1)
    batch_size: Int(ge=1)
    lr: Float(gt=0)
    max_length: Int(ge=1)
    lora: Lora
    seed: Int(ge=0)


class Judge(Params):
    rows: Int(ge=0)                  # the first rows also answered by every model and judged
    backend: NAME                    # none | local | openai
    model: NAME                      # local judge: `generator` or an HF id / local folder
    allow_remote_private: BOOL = False
    openai: Endpoint


class EvaluateAlignment(Section):
    KEY = "evaluate_alignment"
    rows: Int(ge=1)
    max_new_tokens: Int(ge=1)
    batch_size: Int(ge=1)
    bootstrap: Int(ge=1)
    seed: Int(ge=0)
    judge: Judge
