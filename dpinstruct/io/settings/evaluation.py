"""``evaluate`` (MAUVE and statistics against the test split, also val_nll's intervals) and
``memorisation`` (the gate on private text in the release)."""
from typing import Annotated

from pydantic import PlainValidator

from dpinstruct.io.settings.base import Float, Int, Section, Want, refuse


def _buckets(value):
    if value == "auto":
        return value
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise refuse("auto or an integer >= 2", value)
    return value


BUCKETS = Annotated[int | str, PlainValidator(_buckets), Want("auto or an integer >= 2")]


class Evaluate(Section):
    KEY = "evaluate"
    seed: Int(ge=0)
    sample_size: Int(ge=1)           # rows per MAUVE draw, the same for every set
    repeats: Int(ge=1)
    num_buckets: BUCKETS             # auto: sample_size / 10 (mauve-text's rule)
    explained_variance: Float(gt=0, le=1)
    niter: Int(ge=1)
    nredo: Int(ge=1)
    confidence: Float(gt=0, lt=1)    # of every interval
    bootstrap: Int(ge=1)             # resamples of the val NLL's bootstrap
    length_bin_words: Int(ge=1)
    length_max_words: Int(ge=1)


class Memorisation(Section):
    KEY = "memorisation"
    ngram_n: Int(ge=1)
    max_release_matches: Int(ge=0, null=True) = None   # null: report only
