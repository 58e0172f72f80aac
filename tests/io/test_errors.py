"""Errors name the file, row and field (and never need the text to do so)."""
from __future__ import annotations

from dpinstruct.io.errors import ConfigError, InputError, MissingInputError, PipelineError


def test_an_input_error_names_file_line_and_field():
    err = InputError("data/x.jsonl", "contains a NUL character", line=4, field="instruction")
    assert str(err) == "data/x.jsonl, line 4, field 'instruction': contains a NUL character"
    assert str(InputError("data/x.jsonl", "empty")) == "data/x.jsonl: empty"


def test_config_errors_name_the_key_and_every_error_is_a_pipeline_error():
    assert str(ConfigError("prepare.seed", "must be an integer")) == "params.yaml, prepare.seed: must be an integer"
    assert issubclass(MissingInputError, FileNotFoundError) and issubclass(MissingInputError, PipelineError)
