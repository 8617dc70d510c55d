"""YAML configuration files: strict models, `${ENV}` substitution, errors that name file and key."""
from __future__ import annotations

import difflib
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Sequence, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

from robot.durations import parse_duration

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
# libyaml's parser when PyYAML has it: the pure-Python one spends ~0.1 s of CPU on the commented robot.yaml,
# a fifth of a command's start-up. The same safe constructors either way; errors carry the same marks.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str) -> Any:
    """`yaml.safe_load`, with libyaml's parser when available."""
    return yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader


class ConfigError(Exception):
    """A configuration problem: which file, which key, what was expected."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + ("\n  ".join([""] + problems) if len(problems) > 1 else problems[0]))


class Strict(BaseModel):
    """Unknown keys are errors; values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_timedelta="float")


M = TypeVar("M", bound=BaseModel)


def substitute_env(value: Any, where: str = "", env: dict[str, str] | None = None) -> Any:
    """Replace `${NAME}` and `${NAME:-default}` in every string of a parsed YAML tree."""
    env = os.environ if env is None else env
    if isinstance(value, dict):
        return {k: substitute_env(v, f"{where}.{k}" if where else str(k), env) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, f"{where}[{i}]", env) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise KeyError(f"{where or '<top>'}: environment variable {name} is not set (write ${{{name}:-default}} for a default)")

    return _ENV_REF.sub(replace, value)


_UNION_TAG = re.compile(r"(int|str|float|bool|none|list|dict|(function|constrained|nullable|json-or-python)-.*|.*\[.*\])")


def key_path(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as written in YAML terms: faults[2].codes[0].weight."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _UNION_TAG.fullmatch(part):  # which member of a union failed: not a key of the file
            continue
        else:
            path += f".{part}" if path else str(part)
    return path


def describe_validation_error(error: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """One line per problem: key path, what is wrong, what was found (never a secret: `model` says
    which fields are secrets); an unknown key gets the closest known one ("did you mean")."""
    lines = []
    for item in error.errors():
        loc = key_path(item["loc"]) or "<top>"
        kind = item["type"]
        if kind == "value_error" and not item["loc"]:  # a check across keys: its message names them
            lines.append(item["msg"].removeprefix("Value error, "))
        elif kind == "extra_forbidden":
            close = difflib.get_close_matches(str(item["loc"][-1]), _keys_at(model, item["loc"][:-1]), n=1)
            lines.append(f"{loc}: unknown key" + (f"; did you mean {close[0]}?" if close else ""))
        elif kind == "missing":
            lines.append(f"{loc}: missing required key")
        else:
            message = item["msg"].removeprefix("Value error, ")
            found = _found(item["input"], item["loc"], model)
            lines.append(f"{loc}: {message}" + ("" if found[2:-1] and found[2:-1] in message else found))
    return lines


def _keys_at(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at a location (`loop`, `templates[0]`), for suggestions; [] when unsure."""
    current = [model] if model is not None else []
    for part in loc:
        if isinstance(part, int) or _UNION_TAG.fullmatch(part):
            continue  # a list's element or a union's member: the models are the ones found below
        fields = next((m.model_fields for m in current if part in m.model_fields), None)
        if fields is None:
            return []
        current = _models_in(fields[part].annotation)
    return [key for m in current for key in m.model_fields]


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML syntax error in one line with its line and column in the file (not "<unicode string>")."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    if context and context_mark is not None:
        context += f" that starts at line {context_mark.line + 1}, column {context_mark.column + 1}"
    return f"not valid YAML{where}: {problem}" + (f" ({context})" if context else "")


def _found(value: Any, loc: tuple[Any, ...], model: type[BaseModel] | None) -> str:
    """` (got VALUE)`, except for a mapping (its keys say; a model's own check sees the whole section,
    secrets included) and for a secret field."""
    if isinstance(value, dict):
        return ""
    if model is not None and _is_secret(model, loc):
        return " (the value is a secret: not shown)"
    return f" (got {value!r})"


def _is_secret(model: type[BaseModel], loc: tuple[Any, ...]) -> bool:
    """Whether the field at `loc` (`tickets.imap.password`, `templates.0.name`) holds a SecretStr."""
    annotation: Any = model
    for part in loc:
        if isinstance(part, int) or _UNION_TAG.fullmatch(part):
            continue  # a list's element (the list's annotation holds its type), or a union's member
        current = _models_in(annotation)
        fields = next((m.model_fields for m in current if part in m.model_fields), None)
        if fields is None:
            return False
        annotation = fields[part].annotation
    return _holds(annotation, SecretStr)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models inside an annotation such as `X`, `X | None` or `list[X]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def _holds(annotation: Any, kind: type) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, kind):
        return True
    return any(_holds(arg, kind) for arg in getattr(annotation, "__args__", ()))


def set_at(raw: Any, steps: Sequence[str | int], value: Any) -> int | None:
    """Sets `value` at the key path `steps` (dict keys, list indices) inside `raw`, in place. Returns
    None once set, or, when a step does not exist, how many steps before it did (nothing is set)."""
    node = raw
    for i, step in enumerate(steps):
        found = (isinstance(node, dict) and isinstance(step, str) and step in node) or (
            isinstance(node, list) and isinstance(step, int) and step < len(node))
        if not found:
            return i
        if i == len(steps) - 1:
            node[step] = value
        else:
            node = node[step]
    return None


def load_yaml_model(path: Path | str, model: type[M], **extra: Any) -> M:
    """Read a YAML file into a pydantic model; every failure is a ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror or exc}"]) from exc
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [_yaml_problem(exc)]) from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(path, [f"<top>: expected a mapping of keys, got {type(raw).__name__}"])
    try:
        raw = substitute_env(raw)
    except KeyError as exc:
        raise ConfigError(path, [exc.args[0]]) from exc
    try:
        return model.model_validate({**raw, **extra})
    except ValidationError as exc:
        raise ConfigError(path, describe_validation_error(exc, model)) from exc
