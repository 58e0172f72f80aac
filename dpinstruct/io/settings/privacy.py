"""The privacy sections: each dataset's budget (``privacy``, ``rl.privacy``, ``rlhf.privacy``), the
randomness setting of every DP stage, ``histogram``, ``dp_count``, ``datasets``, ``user_level`` and
``audit``. Range rules that depend on the run (epsilon > 0, delta < 1/N~, sigma in a private run,
q in (0, 1]) are the accountant's (dpinstruct/privacy/accounting.py): they raise PrivacyConfigError."""
from typing import ClassVar

from pydantic import RootModel

from dpinstruct.io.errors import PrivacyConfigError
from dpinstruct.io.settings.base import BOOL, EPSILON, NAME, OPTIONAL_PATH, Float, Int, Params, Section, check, section


class Budget(Section):
    """A dataset's (epsilon, delta); epsilon .inf is the non-private run. At ``privacy`` the section
    also holds the randomness setting (``Privacy``); ``rl.privacy`` and ``rlhf.privacy`` are budgets
    alone, read with ``Budget.from_params(params, "rl.privacy")``."""
    epsilon: EPSILON
    delta: Float()


class Randomness(Section):
    """Where every DP stage's randomness comes from (dpinstruct/privacy/randomness.py): the secret
    key file (null: $DPINSTRUCT_KEY_FILE or the default), or the OS with ``secure_mode``."""
    KEY, SUBSET = "privacy", True
    key_file: OPTIONAL_PATH = None
    secure_mode: BOOL = False


class Privacy(Budget, Randomness):
    """``privacy``: the release's budget and the randomness setting."""
    KEY, SUBSET = "privacy", False


class Histogram(Section):
    KEY = "histogram"
    sigma: Float()                   # noise std of the DP histogram (> 0 in a private run: the accountant's rule)


class DpCount(Section):
    KEY = "dp_count"
    sigma: Float()                   # noise std of every DP count (its floor in a private run: the stage's rule)


class Dataset(Params):
    budget: NAME                     # the dotted params section holding its (epsilon, delta)
    release: BOOL = False            # the dataset the released instruction set is made from


class Datasets(RootModel[dict[str, Dataset]]):
    """``datasets``: every private dataset, once."""
    KEY: ClassVar[str] = "datasets"

    @classmethod
    def from_params(cls, params: dict) -> "Datasets":
        return check(cls, section(params, cls.KEY), cls.KEY)

    @property
    def release(self) -> str:
        """The one dataset marked ``release: true``: the released instruction set is made from it
        (``account`` states its guarantee first, ``dpinstruct export`` bundles its record only)."""
        marked = [d for d, spec in self.root.items() if spec.release]
        if len(marked) != 1:
            raise PrivacyConfigError(f"params.yaml `datasets`: exactly one dataset must be marked release: true, "
                                     f"got {marked}")
        return marked[0]


class UserLevel(Section):
    KEY = "user_level"
    enabled: BOOL                    # true: the privacy unit is a user; false: a row (a param, never inferred)
    max_records_per_user: Int(ge=1)


class Audit(Section):
    KEY = "audit"
    canaries: Int(ge=2) = 1000
    confidence: Float(gt=0, lt=1) = 0.95
