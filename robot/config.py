"""The robot's configuration (`configs/robot.yaml`).

Every key is documented in the commented example `configs/robot.yaml` and in the README's
configuration reference (a test checks that the two agree with these models).
"""
from __future__ import annotations

import fnmatch
import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from blacklist.settings import BlacklistSettings
from robot.yamlconfig import Duration, NonNegativeInt, PositiveInt, Strict, load_yaml_model

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


class StressSafetyConfig(Strict):
    """HammerCloud's stop rule: stop sending to a queue when too many recent jobs failed."""

    window: Duration = timedelta(hours=1)
    min_jobs: PositiveInt = 20  # more than this many jobs ended in the window ...
    max_failure_fraction: Annotated[float, Field(gt=0, le=1)] = 0.7  # ... and more than this share failed


class StressConfig(Strict):
    max_jobs: PositiveInt = 2000
    max_concurrency: PositiveInt = 200
    max_duration: Duration = timedelta(days=1)
    retries: NonNegativeInt = 1  # a failed job is sent again this many times
    operators: list[str] = []  # may request anywhere and approve any request
    site_admins: dict[str, list[str]] = {}  # site -> people whose requests for it are approved at once
    safety: StressSafetyConfig = StressSafetyConfig()


class GGUSConfig(Strict):
    url: str  # e.g. https://helpdesk.ggus.eu
    token: str  # use ${GGUS_TOKEN}: never written in the file
    vo: str = "atlas"
    sites: list[str] = []  # only tickets for these sites (empty: all of the VO)


class IMAPConfig(Strict):
    host: str
    port: PositiveInt = 993
    ssl: bool = True
    username: str
    password: str  # use ${IMAP_PASSWORD}: never written in the file
    folder: str = "INBOX"  # Gmail: "[Gmail]/All Mail"


class TicketsConfig(Strict):
    aliases: dict[str, str] = {}  # other names people use -> queue or site name
    support_address: str = ""  # the support desk's own address (its replies do not re-open a thread)
    ggus: GGUSConfig | None = None
    imap: IMAPConfig | None = None


class ClassificationConfig(Strict):
    table: str | None = None  # YAML file with extra or changed error-code classes


class RobotConfig(Strict):
    data_dir: str = "../var"
    database: DatabaseConfig = DatabaseConfig()
    backend: BackendConfig = BackendConfig()
    loop: LoopConfig = LoopConfig()
    classification: ClassificationConfig = ClassificationConfig()
    templates: list[TemplateConfig] = []
    blacklist: BlacklistSettings = BlacklistSettings()
    stress: StressConfig = StressConfig()
    tickets: TicketsConfig = TicketsConfig()

    # Where the file was read from: relative paths in it are resolved against that folder.
    base_dir: Annotated[Path, Field(exclude=True)] = Path(".")

    @model_validator(mode="after")
    def _unique_template_names(self) -> "RobotConfig":
        names = [t.name for t in self.templates]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"template names must be unique, repeated: {', '.join(duplicates)}")
        unknown = sorted(set(self.blacklist.critical_templates) - set(names))
        if unknown:
            raise ValueError(f"blacklist.critical_templates names unknown templates: {', '.join(unknown)}")
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


def load_config(path: Path | str) -> RobotConfig:
    path = Path(path)
    return load_yaml_model(path, RobotConfig, base_dir=path.resolve().parent)
