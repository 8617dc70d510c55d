"""The robot's configuration (`configs/robot.yaml`).

Every key is documented in the commented example `configs/robot.yaml` and in the README's
configuration reference (a test checks that the two agree with these models).
"""
from __future__ import annotations

import fnmatch
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator

from blacklist.settings import BlacklistSettings
from robot.yamlconfig import Duration, NonNegativeInt, PositiveInt, Strict, load_yaml_model

# The password of a database URL (`scheme://user:password@host/...`, split as SQLAlchemy splits it)
# and any `password=` query parameter.
_URL_PASSWORD = re.compile(r"^([\w+]+://[^:/@]*:)[^@]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*", re.IGNORECASE)


def masked_url(url: str) -> str:
    """`url` with its password replaced by `***`: the only form of a database URL that is ever shown."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", url))


class DatabaseConfig(Strict):
    """Where the robot's state lives. The URL is a secret (it may hold a password): shown only masked."""

    url: SecretStr | None = None  # default: sqlite:///<data_dir>/healthrobot.db
    echo: bool = False


class EmbeddedBackendConfig(Strict):
    grid: str = "grid.yaml"
    max_parallel_jobs: PositiveInt = Field(default_factory=lambda: max(1, os.cpu_count() or 1))


class PandaConfig(Strict):
    """The real PanDA server, reached through the unmodified panda-client.

    Credentials never appear in this file: an x509 proxy (`proxy_file`, else `$X509_USER_PROXY`)
    or an OIDC ID token (`token_file`, else `$PANDA_AUTH_ID_TOKEN` / `$OIDC_AUTH_TOKEN_FILE`).
    """

    url: str  # e.g. https://pandaserver.cern.ch:25443/server/panda
    cache_url: str | None = None  # PANDACACHE_URL; default: url
    auth: Literal["x509", "oidc", "none"] = "x509"  # none: plain http on loopback only
    vo: str = "atlas"  # the OIDC virtual organisation (PANDA_AUTH_VO)
    proxy_file: str | None = None
    token_file: str | None = None
    ca_dir: str | None = None  # X509_CERT_DIR
    timeout: Duration = timedelta(seconds=60)
    retries: NonNegativeInt = 3  # after the first attempt, with exponential back-off
    cmt_config: str = "x86_64-el9-gcc13-opt"  # the platform the test jobs ask for
    nickname: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$")] = "healthrobot"  # outputs: user.<nickname>.<job>
    # PanDA's monitor (BigPanDA), where users' own jobs are counted and where unconfirmed submissions are
    # looked up by name (panda-server cannot find a job by name): its job list {monitor_url}/jobs/?json
    monitor_url: str | None = None
    # A submission the monitor does not list is called lost once it is this old (before: asked again)
    lookup_grace: Duration = timedelta(minutes=10)


class BackendConfig(Strict):
    kind: Literal["embedded", "panda"] = "embedded"
    embedded: EmbeddedBackendConfig = EmbeddedBackendConfig()
    panda: PandaConfig | None = None

    @model_validator(mode="after")
    def _panda_needs_settings(self) -> "BackendConfig":
        if self.kind == "panda" and self.panda is None:
            raise ValueError("backend.kind is panda but backend.panda (url, auth) is missing")
        return self


class CRICConfig(Strict):
    """ATLAS CRIC: topology, queue status, and where exclusions are applied (probe status)."""

    url: str  # e.g. https://atlas-cric.cern.ch
    cert_file: str | None = None  # grid certificate and key for the probe-status write
    key_file: str | None = None
    ca_path: str | None = None
    token_file: str | None = None  # alternatively a bearer token, read from this file
    probe: str = "healthrobot"  # the probe name CRIC records with each status change
    manual_probe: str = "healthrobot-manual"  # the probe name of people's overrides (healthrobot blacklist)
    timeout: Duration = timedelta(seconds=30)
    retries: NonNegativeInt = 3


class TopologyConfig(Strict):
    source: Literal["embedded", "cric"] = "embedded"  # cric: queues, sites, endpoints and statuses from CRIC
    cric: CRICConfig | None = None
    refresh: Duration = timedelta(minutes=30)  # how often CRIC is read again

    @model_validator(mode="after")
    def _cric_needs_settings(self) -> "TopologyConfig":
        if self.source == "cric" and self.cric is None:
            raise ValueError("topology.source is cric but topology.cric (url) is missing")
        return self


class GOCDBConfig(Strict):
    """GOCDB's public programmatic interface, where sites announce their downtimes."""

    url: str = "https://goc.egi.eu"  # the interface is {url}/gocdbpi/public/?method=get_downtime
    ca_path: str | None = None
    timeout: Duration = timedelta(seconds=30)
    retries: NonNegativeInt = 2


class DowntimesConfig(Strict):
    # embedded: the embedded grid's own (`healthrobot grid downtime add`); gocdb: GOCDB; cric: CRIC's downtime
    # view (topology.cric's address and credentials); none: not read.
    # Unset: the topology's own (embedded, or cric).
    source: Literal["embedded", "gocdb", "cric", "none"] | None = None
    gocdb: GOCDBConfig = GOCDBConfig()
    refresh: Duration = timedelta(minutes=10)  # how often the source is read again


class UserJobsConfig(Strict):
    """Users' own analysis jobs, read from the backend as hourly counts per queue (robot/userjobs.py)."""

    read: bool = True  # with PanDA, only where backend.panda.monitor_url is set
    refresh: Duration = timedelta(minutes=10)  # how often they are read again
    look_back: Duration = timedelta(hours=6)  # hours read back at start


class RucioConfig(Strict):
    """Rucio, for the input datasets complete at each queue's storage endpoints (robot/rucio_catalogue.py).

    Secrets never appear in this file: the password is read from `password_file`, a certificate and
    key from their files, an OIDC token from `$BEARER_TOKEN` / `$BEARER_TOKEN_FILE`.
    """

    host: str  # e.g. https://voatlasrucio-server-prod.cern.ch
    auth_host: str | None = None  # default: host
    account: str
    auth_type: Literal["userpass", "x509", "oidc"] = "x509"
    username: str | None = None  # userpass identity
    password_file: str | None = None  # userpass: the password, read from this file
    cert_file: str | None = None  # x509: certificate (or proxy)
    key_file: str | None = None  # x509: its key (default: cert_file)
    ca_cert: str | None = None  # CA bundle or folder to verify Rucio (default: $X509_CERT_DIR, else system CAs)
    vo: str | None = None  # multi-VO servers only
    timeout: Duration = timedelta(seconds=30)
    retries: NonNegativeInt = 3  # after the first attempt, with exponential back-off
    cache_ttl: Duration = timedelta(minutes=15)  # how long a list of complete datasets is reused

    @model_validator(mode="after")
    def _credentials(self) -> "RucioConfig":
        if self.auth_type == "userpass" and not (self.username and self.password_file):
            raise ValueError("rucio auth_type userpass needs username and password_file")
        if self.auth_type == "x509" and not self.cert_file:
            raise ValueError("rucio auth_type x509 needs cert_file (and key_file unless the certificate holds it)")
        return self


class DatasetsConfig(Strict):
    source: Literal["embedded", "rucio"] = "embedded"  # rucio: datasets complete at an endpoint, from Rucio
    rucio: RucioConfig | None = None

    @model_validator(mode="after")
    def _rucio_needs_settings(self) -> "DatasetsConfig":
        if self.source == "rucio" and self.rucio is None:
            raise ValueError("datasets.source is rucio but datasets.rucio (host, account, credentials) is missing")
        return self


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
    local_user_is_operator: bool = False  # the OS user of the CLI is an operator, on the embedded grid only
    safety: StressSafetyConfig = StressSafetyConfig()


class GGUSConfig(Strict):
    url: str  # e.g. https://helpdesk.ggus.eu
    token: SecretStr  # use ${GGUS_TOKEN}: never written in the file
    vo: str = "atlas"
    sites: list[str] = []  # only tickets for these sites (empty: all of the VO)


class IMAPConfig(Strict):
    host: str
    port: PositiveInt = 993
    ssl: bool = True
    username: str
    password: SecretStr  # use ${IMAP_PASSWORD}: never written in the file
    folder: str = "INBOX"  # Gmail: "[Gmail]/All Mail"


class TicketsConfig(Strict):
    aliases: dict[str, str] = {}  # other names people use -> queue or site name
    support_address: str = ""  # the support desk's own address (its replies do not re-open a thread)
    ggus: GGUSConfig | None = None
    imap: IMAPConfig | None = None


class ClassificationConfig(Strict):
    table: str | None = None  # YAML file with extra or changed error-code classes


class DashboardConfig(Strict):
    """The web dashboard (`healthrobot dashboard`), with /health and /metrics on the same server."""

    host: str = "127.0.0.1"  # 0.0.0.0 to listen on every interface (put it behind a reverse proxy)
    port: Annotated[int, Field(ge=0, le=65535)] = 8050  # 0: any free port
    anonymous_read: bool = False  # people who are not signed in may view the pages (never change anything)
    trusted_user_header: str | None = None  # e.g. X-Remote-User, set by a single sign-on reverse proxy
    secret_key_file: str | None = None  # signs the sign-in cookie; default: <data_dir>/dashboard.key, made 0600
    refresh: Duration = timedelta(seconds=30)  # how often open pages reload their data


class RobotConfig(Strict):
    data_dir: str = "../var"
    database: DatabaseConfig = DatabaseConfig()
    backend: BackendConfig = BackendConfig()
    topology: TopologyConfig = TopologyConfig()
    datasets: DatasetsConfig = DatasetsConfig()
    downtimes: DowntimesConfig = DowntimesConfig()
    user_jobs: UserJobsConfig = UserJobsConfig()
    loop: LoopConfig = LoopConfig()
    classification: ClassificationConfig = ClassificationConfig()
    templates: list[TemplateConfig] = []
    blacklist: BlacklistSettings = BlacklistSettings()
    stress: StressConfig = StressConfig()
    tickets: TicketsConfig = TicketsConfig()
    dashboard: DashboardConfig = DashboardConfig()

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

    @model_validator(mode="after")
    def _services_fit_together(self) -> "RobotConfig":
        if self.downtimes.source == "embedded" and self.topology.source != "embedded":
            raise ValueError("downtimes.source embedded needs topology.source embedded: the embedded grid announces "
                             "downtimes of its own sites only (use gocdb or none)")
        if self.downtimes.source == "cric" and self.topology.source != "cric":
            raise ValueError("downtimes.source cric needs topology.source cric: CRIC is read with topology.cric's "
                             "address and credentials (use gocdb or none)")
        if self.backend.kind == "embedded" and self.topology.source == "cric":
            raise ValueError("topology.source cric needs backend.kind panda: the embedded grid has only its own queues")
        if self.topology.source == "cric" and self.datasets.source == "embedded":
            raise ValueError("topology.source cric needs datasets.source rucio: the embedded grid's datasets are not"
                             " at CRIC's storage endpoints")
        return self

    def resolve(self, relative: str) -> Path:
        path = Path(relative)
        return path if path.is_absolute() else (self.base_dir / path).resolve()

    @property
    def downtime_source(self) -> str:
        """Where announced downtimes are read: the configured source, else the topology's own."""
        if self.downtimes.source is not None:
            return self.downtimes.source
        return self.topology.source

    @property
    def data_path(self) -> Path:
        return self.resolve(self.data_dir)

    @property
    def database_url(self) -> str:
        """The URL to connect with, password included: never print or log it (see `shown_database_url`)."""
        if self.database.url is not None:
            return self.database.url.get_secret_value()
        return f"sqlite:///{self.data_path / 'healthrobot.db'}"

    @property
    def shown_database_url(self) -> str:
        """The database URL as it may be printed: its password masked."""
        return masked_url(self.database_url)

    def template(self, name: str) -> TemplateConfig:
        for template in self.templates:
            if template.name == name:
                return template
        raise KeyError(name)


def load_config(path: Path | str) -> RobotConfig:
    path = Path(path)
    return load_yaml_model(path, RobotConfig, base_dir=path.resolve().parent)
