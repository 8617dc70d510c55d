"""The robot's YAML configuration: models, `${ENV}` substitution and errors that name file and key.

Every key is documented in the commented example `configs/robot.yaml` and in the README's
configuration reference (a test checks that the two agree with these models).
"""
from __future__ import annotations

import fnmatch
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from robot.durations import parse_duration

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration problem: which file, which key, what was expected."""

    def __init__(self, path: Path | str, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        super().__init__(f"{path}: " + ("\n  ".join([""] + problems) if len(problems) > 1 else problems[0]))


class Strict(BaseModel):
    """Unknown keys are errors; values are immutable once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_timedelta="float")


class DatabaseConfig(Strict):
    url: str | None = None  # default: sqlite:///<data_dir>/healthrobot.db
    echo: bool = False


class EmbeddedBackendConfig(Strict):
    grid: str = "grid.yaml"
    max_parallel_jobs: PositiveInt = Field(default_factory=lambda: max(1, os.cpu_count() or 1))


class BackendConfig(Strict):
    kind: Literal["embedded"] = "embedded"
    embedded: EmbeddedBackendConfig = EmbeddedBackendConfig()


class LoopConfig(Strict):
    interval: Duration = timedelta(seconds=60)
    poll_batch_size: PositiveInt = 500
    submit_batch_size: PositiveInt = 200
    unknown_after: Duration = timedelta(hours=6)


class TemplateConfig(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    category: Literal["functional", "stress"]
    description: str = ""
    active: bool = True
    payload: Annotated[str, Field(pattern=r"^[a-z0-9_]+$")]
    input_dataset: str
    events_per_job: PositiveInt
    max_wall_time: Duration = timedelta(minutes=30)
    max_queue_time: Duration = timedelta(hours=2)
    processing_type: str = "gangarobot"
    lifetime: Duration = timedelta(days=1)
    queues: list[str] = ["*"]
    clouds: list[str] = []
    max_running_jobs: PositiveInt = 1
    min_queue_depth: NonNegativeInt = 0
    resubmit: bool = True

    def applies_to(self, queue: str, cloud: str) -> bool:
        if self.clouds and cloud not in self.clouds:
            return False
        return any(fnmatch.fnmatchcase(queue, pattern) for pattern in self.queues)


class ClassificationConfig(Strict):
    table: str | None = None  # YAML file with extra or changed error-code classes


class RobotConfig(Strict):
    data_dir: str = "../var"
    database: DatabaseConfig = DatabaseConfig()
    backend: BackendConfig = BackendConfig()
    loop: LoopConfig = LoopConfig()
    classification: ClassificationConfig = ClassificationConfig()
    templates: list[TemplateConfig] = []

    # Where the file was read from: relative paths in it are resolved against that folder.
    base_dir: Annotated[Path, Field(exclude=True)] = Path(".")

    @model_validator(mode="after")
    def _unique_template_names(self) -> "RobotConfig":
        names = [t.name for t in self.templates]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"template names must be unique, repeated: {', '.join(duplicates)}")
        return self

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def data_path(self) -> Path:
        return self.resolve(self.data_dir)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_path / 'healthrobot.db'}"

    def template(self, name: str) -> TemplateConfig:
        for template in self.templates:
            if template.name == name:
                return template
        raise KeyError(name)


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


def describe_validation_error(error: ValidationError) -> list[str]:
    """One line per problem: key path, what is wrong, what was found."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"]) or "<top>"
        kind = item["type"]
        if kind == "extra_forbidden":
            lines.append(f"{loc}: unknown key")
        elif kind == "missing":
            lines.append(f"{loc}: missing required key")
        else:
            message = item["msg"].removeprefix("Value error, ")
            lines.append(f"{loc}: {message} (got {item['input']!r})")
    return lines


def load_yaml_model(path: Path | str, model: type[M], **extra: Any) -> M:
    """Read a YAML file into a pydantic model; every failure is a ConfigError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror or exc}"]) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(path, [f"not valid YAML: {exc}"]) from exc
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
        raise ConfigError(path, describe_validation_error(exc)) from exc


def load_config(path: Path | str) -> RobotConfig:
    path = Path(path)
    return load_yaml_model(path, RobotConfig, base_dir=path.resolve().parent)
