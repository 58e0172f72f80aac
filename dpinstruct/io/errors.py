"""Errors a stage raises for bad input or violated rules.

Messages name the file, row and field, and never quote private text: they end up in logs.
"""


class PipelineError(Exception):
    """Base class: the stage stops, prints the message and exits non-zero."""


class InputError(PipelineError):
    """The input file cannot be used as given (format, encoding, missing field, nothing left)."""

    def __init__(self, path, problem, *, line=None, field=None):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")


class MissingInputError(PipelineError, FileNotFoundError):
    """A file an earlier stage writes is absent (the stage was not run, or its output was removed)."""


class QualityError(PipelineError):
    """A hard data-quality rule failed on an artifact."""


class PrivacyConfigError(PipelineError):
    """A privacy configuration is unsafe or incomplete; raised before any private data is used."""


class ConfigError(PipelineError):
    """A parameter in params.yaml is missing or out of range."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"params.yaml, {key}: {problem}")
