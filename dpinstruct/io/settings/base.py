"""The value types of params and the rules for reading a section (package docstring).

Value types (each refuses everything else, naming what it wants):

* ``Int(ge=...)``: an integer; a whole float is that integer (`dvc exp run -S` may write 500.0 for
  500), 2.7, "3", true and null are refused;
* ``Float(gt=..., le=...)``: a finite number, as a float (an int is accepted: `-S privacy.epsilon=8`
  writes 8 where the file has 8.0); NaN, infinities, booleans and quoted numbers are refused;
* ``EPSILON``: a number or infinity (``.inf``, or the strings "inf", "Infinity", as
  ``params.as_float`` reads them): infinity is the non-private run; NaN is refused;
* ``BOOL`` (true or false, nothing truthy), ``PATH`` (a non-empty string), ``NAME`` (a non-empty
  string), ``one_of(...)``.

A number spelt in YAML 1.2's exponent form without a dot (``1e-06``, what DVC writes for
`-S privacy.delta=1e-6`) is read as that number: PyYAML, a YAML 1.1 reader, leaves it a string.
Where a check involves several keys it is a validator of the section's model that raises
``ConfigError`` naming the key.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, PlainValidator, PrivateAttr, TypeAdapter, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from dpinstruct.io.errors import ConfigError
from dpinstruct.io.params import spells_infinity

# YAML 1.2 floats with an exponent that YAML 1.1 (PyYAML) reads as strings: 1e-06, 1.5e3, .5E+2
_EXPONENT_FORM = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+")


class Want:
    """What a param must be, in words (e.g. "an integer >= 1"): the messages of the value types,
    and of a missing key."""

    def __init__(self, text: str):
        self.text = text


def refuse(want: str, value) -> PydanticCustomError:
    return PydanticCustomError("param", "must be {want}, got {got}", {"want": want, "got": repr(value)})


def _bounds(ge=None, gt=None, le=None, lt=None) -> str:
    low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
    high = f"{le}]" if le is not None else f"{lt})" if lt is not None else None
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" >= {ge}" if ge is not None else f" > {gt}"
    if high:
        return f" <= {le}" if le is not None else f" < {lt}"
    return ""


def _within(value, ge, gt, le, lt) -> bool:
    return ((ge is None or value >= ge) and (gt is None or value > gt)
            and (le is None or value <= le) and (lt is None or value < lt))


def _number(value) -> float | None:
    """``value`` as a float if YAML wrote a number (int, float or the exponent form), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _EXPONENT_FORM.fullmatch(value.strip()):
        return float(value)
    return None


def Int(ge: int | None = 0, le: int | None = None, *, null: bool = False) -> Any:  # noqa: N802  (a type)
    want = f"an integer{_bounds(ge=ge, le=le)}{' or null' if null else ''}"

    def check(value):
        if value is None and null:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not _within(value, ge, None, le, None):
            raise refuse(want, value)
        return value

    return Annotated[int | None if null else int, PlainValidator(check), Want(want)]


def Float(*, ge: float | None = None, gt: float | None = None, le: float | None = None,  # noqa: N802  (a type)
          lt: float | None = None) -> Any:
    want = f"a finite number{_bounds(ge, gt, le, lt)}"

    def check(value):
        number = _number(value)
        # NaN would pass every later range check (all comparisons with NaN are False)
        if number is None or not math.isfinite(number) or not _within(number, ge, gt, le, lt):
            raise refuse(want, value)
        return number

    return Annotated[float, PlainValidator(check), Want(want)]


def _epsilon(value) -> float:
    number = math.inf if spells_infinity(value) else _number(value)
    if number is None or math.isnan(number):
        raise refuse("a number, or .inf for a non-private run", value)
    return number


EPSILON = Annotated[float, PlainValidator(_epsilon), Want("a number, or .inf for a non-private run")]


def _bool(value) -> bool:
    if not isinstance(value, bool):
        raise refuse("true or false", value)
    return value


BOOL = Annotated[bool, PlainValidator(_bool), Want("true or false")]


def _text(want: str, *, empty: bool, null: bool):
    def check(value):
        if value is None and null:
            return None
        if not isinstance(value, str) or not (empty or value.strip()):
            raise refuse(want, value)
        return value

    return check


PATH = Annotated[str, PlainValidator(_text("a file path", empty=False, null=False)), Want("a file path")]
OPTIONAL_PATH = Annotated[str | None, PlainValidator(_text("a file path or null", empty=False, null=True)),
                          Want("a file path or null")]
NAME = Annotated[str, PlainValidator(_text("a non-empty string", empty=False, null=False)), Want("a non-empty string")]
OPTIONAL_NAME = Annotated[str | None, PlainValidator(_text("a non-empty string or null", empty=False, null=True)),
                          Want("a non-empty string or null")]
OPTIONAL_TEXT = Annotated[str | None, PlainValidator(_text("a string or null", empty=True, null=True)),
                          Want("a string or null")]


def one_of(*choices: str) -> Any:
    want = f"one of {', '.join(choices)}"

    def check(value):
        if not isinstance(value, str) or value not in choices:
            raise refuse(want, value)
        return value

    return Annotated[str, PlainValidator(check), Want(want)]


def _is_model(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


class Params(BaseModel):
    """A mapping of params: unknown keys are refused (a misspelt key must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Section(Params):
    """A params.yaml section at the dotted ``KEY``. ``SUBSET``: the model is the part of its section
    one stage reads (the section's other keys belong to other stages and are not checked here).
    ``raw`` is the section as params.yaml wrote it (``SUBSET``: those keys): what stages hash."""

    KEY: ClassVar[str] = ""
    SUBSET: ClassVar[bool] = False
    _raw: dict | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw(cls, data, handler):
        model = handler(data)
        if isinstance(data, dict):
            model._raw = data
        return model

    @property
    def raw(self) -> dict:
        return self._raw

    def __eq__(self, other) -> bool:
        """Equal values are equal settings, however params.yaml spelt them (``raw`` is not compared)."""
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), tuple(repr(v) for v in self.__dict__.values())))

    def model_copy(self, *, update: dict | None = None, deep: bool = False):
        """A copy with ``update``d values (checked by the caller); its ``raw`` has them too."""
        copy = super().model_copy(update=update, deep=deep)
        if update and self._raw is not None:
            copy._raw = {**self._raw, **update}
        return copy

    @classmethod
    def from_params(cls, params: dict, key: str | None = None):
        """The section at ``key`` (default ``KEY``) of ``params``, checked; ``ConfigError`` names the
        first bad key."""
        key = key or cls.KEY
        if not key:  # e.g. Budget: at privacy, rl.privacy or rlhf.privacy
            raise TypeError(f"{cls.__name__} is read at a key the caller names: from_params(params, key)")
        found = section(params, key)
        if cls.SUBSET:
            found = {k: v for k, v in found.items() if k in cls.model_fields}
        return check(cls, found, key)

    @classmethod
    def read(cls, params: dict, *keys: str):
        """Single keys of the section, each checked by its field's type (a stage that reads only
        these; the section's other keys are not checked): one value, or a tuple for several."""
        found = section(params, cls.KEY)
        values = []
        for key in keys:
            field = cls.model_fields[key]
            if key not in found:
                if field.is_required():
                    raise ConfigError(f"{cls.KEY}.{key}", f"missing (must be {_want(field)})")
                values.append(field.default)
                continue
            try:
                values.append(_adapter(cls, key).validate_python(found[key]))
            except ValidationError as e:
                raise _config_error(e, cls.KEY, cls, prefix=(key,)) from None
        return values[0] if len(values) == 1 else tuple(values)


@lru_cache(maxsize=None)
def _adapter(cls: type[BaseModel], key: str) -> TypeAdapter:
    field = cls.model_fields[key]
    return TypeAdapter(Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation)


def section(params: dict, key: str) -> dict:
    """The mapping at dotted ``key`` of ``params``; a missing section or a value that is not a
    mapping is a ``ConfigError`` naming it."""
    node, walked = params, []
    for part in key.split("."):
        walked.append(part)
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(".".join(walked), "missing: params.yaml has no such section")
        node = node[part]
    if not isinstance(node, dict):
        raise ConfigError(key, f"must be a mapping of params, got {node!r}")
    return node


def check(cls: type[BaseModel], data, key: str):
    """``cls`` validated from ``data`` (the section at ``key``), or a ``ConfigError``."""
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise _config_error(e, key, cls) from None


def _want(field) -> str:
    found = next((m.text for m in field.metadata if isinstance(m, Want)), None)
    if found:
        return found
    return "a mapping of params" if _is_model(field.annotation) else "set"


def _field_at(cls: type[BaseModel], loc: tuple):
    """The FieldInfo at ``loc`` (model fields only; None past a list or a dict)."""
    field = None
    for part in loc:
        if not (_is_model(cls) and isinstance(part, str) and part in cls.model_fields):
            return None
        field = cls.model_fields[part]
        cls = field.annotation
    return field


def _dotted(key: str, loc: tuple) -> str:
    out = key
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _problem(cls, error: dict) -> str:
    kind, loc, value = error["type"], error["loc"], error.get("input")
    if kind == "param":
        return error["msg"]
    if kind == "missing":
        field = _field_at(cls, loc)
        return f"missing (must be {_want(field)})" if field is not None else "missing"
    if kind == "extra_forbidden":
        parent = _field_at(cls, loc[:-1]) if loc[:-1] else None
        owner = cls if not loc[:-1] else parent.annotation if parent is not None else None
        known = ", ".join(owner.model_fields) if _is_model(owner) else ""
        return f"unknown key (a misspelling?), got {value!r}" + (f"; the keys here are {known}" if known else "")
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping of params, got {value!r}"
    if kind == "list_type":
        return f"must be a list, got {value!r}"
    if kind == "too_short":
        return f"must not be empty, got {value!r}"
    return f"{error['msg']}, got {value!r}"


def _config_error(e: ValidationError, key: str, cls, prefix: tuple = ()) -> ConfigError:
    errors = e.errors()
    first = errors[0]
    loc = prefix + tuple(first["loc"])
    problem = _problem(cls, {**first, "loc": loc})
    if len(errors) > 1:
        others = [_dotted(key, prefix + tuple(x["loc"])) for x in errors[1:]]
        problem += f" (also wrong: {', '.join(others)})"
    return ConfigError(_dotted(key, loc), problem)
