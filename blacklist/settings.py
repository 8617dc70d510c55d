"""The `blacklist:` section of the robot's configuration: policy choice, tuning and safety."""
from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError

from robot.yamlconfig import (ConfigError, Duration, NonNegativeInt, PositiveInt, Strict, describe_validation_error,
                              set_at)

Fraction = Annotated[float, Field(gt=0, le=1)]
Risk = Annotated[float, Field(gt=0, lt=1)]


class HammerCloudSettings(Strict):
    """HammerCloud's own policy, as its code has it."""

    window: Duration = timedelta(hours=3)
    reinclude_successes: PositiveInt = 2  # the last N jobs completed in every critical template
    reexclusion_cooldown: Duration = timedelta(hours=6)
    job_gap: Duration = timedelta(0)  # a pause between a template's jobs at a queue (0: HammerCloud's cadence)


class SequentialSettings(Strict):
    """Our default: a sequential probability ratio test on the failures that point at the site."""

    window: Duration = timedelta(hours=6)
    p_healthy: Fraction = 0.03  # probability that a healthy queue's job fails for a reason of its own
    p_broken: Fraction = 0.5  # ... a broken queue's
    alpha: Fraction = 0.002  # accepted chance of excluding a healthy queue per decision
    beta: Fraction = 0.05  # accepted chance of missing a broken one
    code_share: Fraction = 0.25  # largest share of a healthy queue's failures that one error code takes
    spread_window: Duration = timedelta(hours=1)  # failures this close in time happen "at once"
    spread_sites: PositiveInt = 3  # a code failing at this many other sites at once: a shared cause, not the site ...
    spread_fraction: Fraction = 0.05  # ... or at this share of the other sites, if more (large grids)
    stall_after: Duration = timedelta(minutes=45)  # a job waiting this long while nothing starts: a stall
    probes: NonNegativeInt = 2  # extra jobs in flight per critical template while in doubt
    max_pending: Duration = timedelta(hours=2)  # give up the suspicion after this without a verdict
    include_successes: PositiveInt = 3  # fewest consecutive good jobs after an exclusion before re-inclusion
    relapse_risk: Risk = 0.01  # accepted chance that a queue still as broken shows the streak that re-includes it
    weak_fault: Risk = 0.3  # the weakest fault (share of jobs failing) re-inclusion must see through
    flap_window: Duration = timedelta(hours=24)  # each earlier exclusion in it asks for more good jobs
    stable_after: Duration = timedelta(hours=1)  # this long since the robot re-included it: a stable queue
    stable_gap: Duration = timedelta(minutes=60)  # on a stable queue, wait this long between jobs of a template
    broken_gap: Duration = timedelta(minutes=30)  # on an excluded queue still failing, the same


class UserJobsSettings(Strict):
    """Users' own jobs as evidence for the default policy (blacklist/userjobs.py): on or off, and how loudly.

    On by default: where no users' jobs are read (PanDA without `backend.panda.monitor_url`,
    `user_jobs.read: false`, a source that cannot be read or counts none) the policy decides and
    paces exactly as with it off."""

    enabled: bool = True
    weight: Fraction = 0.25  # share of an hour's log-likelihood ratio that counts
    min_failures: PositiveInt = 3  # fewest failures of one site-class code in a queue's hour that count
    floor: Risk = 0.02  # the least rate of a code that a queue's users' jobs are compared with
    watched_jobs: NonNegativeInt = 10  # users' jobs ended at a queue within the last hour that make it watched ...
    watched_gap: Duration = timedelta(minutes=90)  # ... and a watched stable queue waits this long between test jobs


class SafetySettings(Strict):
    mass_guard: bool = True  # hold exclusions and raise one central incident when many queues fail at once
    mass_min_queues: PositiveInt = 3  # a mass event needs at least this many queues at once ...
    mass_fraction: Fraction = 0.15  # ... and this share of all queues, or
    cloud_fraction: Fraction = 0.5  # this share of one cloud's queues
    central_share: Fraction = 0.5  # or this share of the evidence being central-class errors
    max_excluded_fraction: Fraction = 0.2  # never more than this share of queues excluded by the robot
    exempt_patterns: list[str] = ["*test*", "*local*"]  # queue names, case-insensitive
    exempt_sites: list[str] = []  # sites that opted out of automatic exclusion


class NotifySettings(Strict):
    enabled: bool = False
    smtp_host: str = "localhost"
    smtp_port: PositiveInt = 25
    starttls: bool = False
    username: str | None = None
    password: SecretStr | None = None  # use ${ENV} for it; never shown
    sender: str = "queue-health-robot@localhost"
    operations: list[str] = []  # always copied
    monitor_url: str = ""  # e.g. https://monitor.example.org/queue/{queue}
    burst: Duration = timedelta(minutes=10)  # decisions on one site within this time share one message


class BlacklistSettings(Strict):
    mode: Literal["off", "dry-run", "enforce"] = "dry-run"
    policy: Literal["default", "hammercloud"] = "default"
    critical_templates: list[str] = []  # default: every active functional template
    exclude_to: Literal["test", "brokeroff", "offline"] = "brokeroff"
    actor: str = "healthrobot"  # the probe name the robot's changes carry
    hammercloud: HammerCloudSettings = HammerCloudSettings()
    default: SequentialSettings = SequentialSettings()
    user_jobs: UserJobsSettings = UserJobsSettings()
    safety: SafetySettings = SafetySettings()
    notify: NotifySettings = NotifySettings()


def with_values(settings: BlacklistSettings, changes: dict[str, Any], where: str) -> BlacklistSettings:
    """The settings with some values replaced, each named by its key path under `blacklist:`
    (`default.stable_gap`, `hammercloud.job_gap`); every value is checked as in `robot.yaml`."""
    raw = settings.model_dump()
    for key, value in changes.items():
        steps = key.split(".")
        missing = set_at(raw, steps, value)
        if missing is not None:
            raise ConfigError(where, [f"blacklist.{key}: the blacklist settings have no "
                                      f"blacklist.{'.'.join(steps[:missing + 1])}"])
    try:
        return BlacklistSettings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(where, [f"blacklist.{problem}" for problem in describe_validation_error(exc, BlacklistSettings)]) from exc
