"""The whole params.yaml: one field per section (unknown sections are refused), and the lookup of
a section's model by its dotted name (a dataset's ``budget`` names one)."""
from pathlib import Path

from pydantic import model_validator

from dpinstruct.io import params as P
from dpinstruct.io.errors import ConfigError
from dpinstruct.io.settings.algorithm2 import Cluster, Embed, Resample
from dpinstruct.io.settings.alignment import Annotate, EvaluateAlignment, Sft
from dpinstruct.io.settings.base import Params, Section, check
from dpinstruct.io.settings.data import Data, Prepare, PreparePublic
from dpinstruct.io.settings.evaluation import Evaluate, Memorisation
from dpinstruct.io.settings.generation import Generate, GenerateBase, TrainGenerator
from dpinstruct.io.settings.models import Models
from dpinstruct.io.settings.privacy import Audit, Budget, Datasets, DpCount, Histogram, Privacy, UserLevel
from dpinstruct.io.settings.rl import Rl
from dpinstruct.io.settings.rlhf import Rlhf


class Settings(Params):
    data: Data
    models: Models
    prepare: Prepare
    prepare_public: PreparePublic
    privacy: Privacy
    histogram: Histogram
    dp_count: DpCount
    datasets: Datasets
    train_generator: TrainGenerator
    user_level: UserLevel
    audit: Audit
    generate: Generate
    generate_base: GenerateBase
    embed: Embed
    cluster: Cluster
    resample: Resample
    evaluate: Evaluate
    memorisation: Memorisation
    annotate: Annotate
    sft: Sft
    evaluate_alignment: EvaluateAlignment
    rl: Rl
    rlhf: Rlhf

    @model_validator(mode="after")
    def _budgets_exist(self):
        for name, spec in self.datasets.root.items():
            model = model_at(spec.budget, missing_ok=True)
            if model is None or not issubclass(model, Budget):
                raise ConfigError(f"datasets.{name}.budget", f"must name a budget section (epsilon, delta) such "
                                                             f"as privacy or rl.privacy, got {spec.budget!r}")
        return self


def model_at(key: str, *, missing_ok: bool = False):
    """The model of the section at dotted ``key`` (e.g. ``rl.privacy`` -> ``Budget``)."""
    model = Settings
    for part in key.split("."):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            if missing_ok:
                return None
            raise ConfigError(key, "no such section in params.yaml")
        model = fields[part].annotation
    return model


def read_section(params: dict, key: str) -> Section:
    """The section at dotted ``key``, checked by its model (a dataset's budget, named in params)."""
    return model_at(key).from_params(params, key)


def load_params(params: dict) -> Settings:
    """Every section of ``params`` (params.yaml as read), checked."""
    return check(Settings, params, "")


def load(path: Path | str = P.PARAMS_FILE) -> Settings:
    """Every section of a params file, checked."""
    return load_params(P.load(path))
