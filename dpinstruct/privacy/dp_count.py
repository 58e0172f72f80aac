"""A DP count of the units a DP-SGD mechanism reads: where the pipeline needs N, it uses this.

Under add-or-remove-one the number of units N is itself private (sensitivity 1). A DP-SGD stage
needs a size twice: the divisor of each step's noisy gradient sum (the expected batch q x N) and
the delta < 1/N refusal. Using N there would publish it (the ledger states q and the divisor, and
their ratio is N: 3,832 for 3,828 records before this module). So each DP-SGD input gets one
Gaussian count N~ = N + N(0, sigma^2) (``dp_count.sigma``; L2 sensitivity 1, event
Gaussian(sigma)), released with its own ledger entry (mechanism ``gaussian_count``) in the same
dataset and partition as the mechanism that uses it, so ``account`` composes it with the rest.
q, T and sigma of the DP-SGD mechanism stay params: N~ only scales its update (adaptive use of an
earlier DP output with fixed privacy parameters, which sequential composition covers); it never
chooses a privacy parameter (that would be a fully adaptive composition, outside the PLD bound).
A non-private run (epsilon .inf) counts exactly and says so.
"""
from __future__ import annotations

import json
from pathlib import Path

from dpinstruct.io.errors import MissingInputError, PrivacyConfigError
from dpinstruct.privacy.accounting import Component, prv_components

STAGE = "dp_count"
MECHANISM = "gaussian_count"


def release(n_units: int, sigma: float, random) -> float:
    """N + N(0, sigma^2) from the keyed stream ``random`` (exactly N when sigma is 0: non-private)."""
    return float(n_units) + (float(random.normal((1,), sigma)[0]) if sigma > 0 else 0.0)


def entry_path(name: str) -> Path:
    """The ledger entry of the count ``name`` (a dp_count foreach item: instructions, imdb_sft, ...)."""
    return Path(f"metrics/privacy/{STAGE}@{name}.json")


def read(name: str) -> tuple[float, Component, dict]:
    """(N~, its component for the calibration's prior, the entry) of the count ``name``."""
    path = entry_path(name)
    if not path.exists():
        raise MissingInputError(f"{path}: the DP count of {name} is missing (dvc repro {STAGE}@{name})")
    entry = json.loads(path.read_text())
    from dpinstruct.io.params import as_float
    from dpinstruct.privacy.ledger import event_from_json

    # from the stored event, the entry's one source (as dp_ppo reads DP-SFT's), never its summary fields
    components = prv_components(event_from_json(entry["dp_event"]))
    if components is None or len(components) != 1:
        raise PrivacyConfigError(f"{path}: the DP count's stored event is not one Gaussian release, so it cannot "
                                 f"be the calibration's prior (re-run dvc repro {STAGE}@{name})")
    (component,) = components
    return as_float(entry["noisy_count"]), component, entry
