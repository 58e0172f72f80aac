"""``data`` (the input files), ``prepare`` (cleaning and split of the private file) and
``prepare_public`` (the public file, cleaned by ``prepare``'s rules)."""
from pydantic import model_validator

from dpinstruct.io.errors import ConfigError
from dpinstruct.io.settings.base import BOOL, PATH, Float, Int, Section


class Data(Section):
    KEY = "data"
    private_path: PATH
    public_path: PATH


class Cleaning(Section):
    """The cleaning rules of ``prepare``, shared by ``prepare_public`` (dpinstruct/text/cleaning.py):
    length bounds in generator tokens, inclusive, and dedup."""
    KEY, SUBSET = "prepare", True
    min_tokens: Int(ge=1)
    max_tokens: Int(ge=1)
    dedup_casefold: BOOL
    ngram_dedup_n: Int(ge=0)        # 0 disables the word n-gram dedup

    @model_validator(mode="after")
    def _bounds(self):
        if self.min_tokens > self.max_tokens:
            raise ConfigError(f"{self.KEY}.min_tokens", f"{self.min_tokens} exceeds {self.KEY}.max_tokens "
                                                         f"{self.max_tokens}: every row would be dropped")
        return self


# counts would need N (private) and made the split unstable: a params.yaml written for them is refused
OLD_SPLIT_KEYS = ("test_size", "val_size", "train_size")


class Prepare(Cleaning):
    KEY, SUBSET = "prepare", False
    seed: Int(ge=0)                  # of the split's hash: 0.0 is read as 0, so it gives the same split
    test_share: Float()
    val_share: Float()

    @model_validator(mode="before")
    @classmethod
    def _no_old_sizes(cls, data):
        for key in OLD_SPLIT_KEYS:
            if isinstance(data, dict) and key in data:
                raise ConfigError(f"prepare.{key}", "is no longer a param: splits take expected shares "
                                                    "(prepare.test_share, prepare.val_share), never counts")
        return data

    @model_validator(mode="after")
    def _shares(self):
        shares = [self.test_share, self.val_share]
        if min(shares) <= 0 or sum(shares) >= 1:
            raise ConfigError("prepare", f"test_share and val_share must be > 0 with a sum below 1 (the rest is "
                                         f"train), got {shares}")
        return self


class PreparePublic(Section):
    KEY = "prepare_public"
    size: Int(ge=1, null=True) = None   # a seeded sample of the cleaned rows; null: all
    seed: Int(ge=0)
