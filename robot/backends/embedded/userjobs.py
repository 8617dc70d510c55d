"""The embedded grid's background users: the analysis jobs other people run at its queues.

The grid does not run them (its machine runs the robot's test jobs); it draws them, as PanDA
would count them: per queue and hour, about `defaults.user_jobs_per_hour` jobs ending at random
times, drawn once from a random stream keyed by (seed, queue, hour) so every read sees the same
jobs. A job fails with the fault of its queue that is on when it ends (at the fault's
probability, with the pilot's code for that fault: a broken queue fails its users too), else
for reasons of its own at `defaults.user_job_failure_rate` (user code, memory: the users' bugs,
not the site's). A stuck queue (or one whose jobs the server holds) ends no job; a slow one
fails none. Traffic starts when the grid first started and no job ends after `now`.
"""
from __future__ import annotations

import math
import random
from datetime import datetime, timedelta

from robot.backends.base import UserJobHour
from robot.backends.embedded.config import FaultMode
from robot.backends.embedded.pilot import SETUP_FAULTS, STAGEIN_FAULTS, STAGEOUT_FAULTS
from robot.backends.embedded.state import Fault
from robot.userjobs import HOUR, hour_of

FAULT_CODES = {mode: code for mode, (code, _) in {**SETUP_FAULTS, **STAGEIN_FAULTS, **STAGEOUT_FAULTS}.items()}
FAULT_CODES["crash"] = 1203  # SIGSEGV
USER_CODES = ((1305, 0.8), (1235, 0.2))  # their own: the payload's exception (1305), out of memory (1235)
NO_JOB_ENDS = (FaultMode.STUCK, FaultMode.NOT_ACTIVATED)


def user_jobs(queues: list[str], faults: list[Fault], seed: int, per_hour: float, failure_rate: float,
              since: datetime, until: datetime, started: datetime, now: datetime) -> list[tuple[str, datetime, int]]:
    """Each users' job that ended at `queues` in [since, until): (queue, end, pilot error code or 0), by queue
    and end hour: what PanDA's monitor lists one by one (the embedded PanDA service's job list)."""
    found = []
    end = min(until, now)
    for queue in queues:
        mine = [f for f in faults if f.queue == queue]
        hour = max(hour_of(since), hour_of(started))
        while hour < end:
            found += [(queue, when, code) for when, code in _draw(seed, queue, hour, per_hour, failure_rate, mine)
                      if max(since, started) <= when < end]
            hour += HOUR
    return found


def user_hours(queues: list[str], faults: list[Fault], seed: int, per_hour: float, failure_rate: float,
               since: datetime, until: datetime, started: datetime, now: datetime) -> list[UserJobHour]:
    """Users' jobs that ended at `queues` in [since, until), per queue and hour."""
    counts: dict[tuple[str, datetime], tuple[int, dict[tuple[str, int], int]]] = {}
    for queue, when, code in user_jobs(queues, faults, seed, per_hour, failure_rate, since, until, started, now):
        ended, errors = counts.get((queue, hour_of(when)), (0, {}))
        if code:
            errors[("pilot", code)] = errors.get(("pilot", code), 0) + 1
        counts[(queue, hour_of(when))] = (ended + 1, errors)
    return [UserJobHour(queue, hour, ended, sum(errors.values()), errors)
            for (queue, hour), (ended, errors) in counts.items()]


def _draw(seed: int, queue: str, hour: datetime, per_hour: float, failure_rate: float,
          faults: list[Fault]) -> list[tuple[datetime, int]]:
    """The hour's jobs: (end, pilot error code or 0), the same at every read."""
    rng = random.Random(f"users:{seed}:{queue}:{hour:%Y%m%d%H}")
    jobs = []
    limit, product = math.exp(-per_hour), rng.random()  # a Poisson count (Knuth)
    while product > limit:
        when = hour + timedelta(seconds=rng.random() * 3600)
        u_fault, u_own, u_code = rng.random(), rng.random(), rng.random()
        product *= rng.random()
        active = [f for f in faults if f.active(when)]
        if any(f.mode in NO_JOB_ENDS for f in active):
            continue
        hit = next((f for f in active if f.mode.value in FAULT_CODES and u_fault < f.probability), None)
        if hit is not None:
            jobs.append((when, FAULT_CODES[hit.mode.value]))
        elif u_own < failure_rate:
            jobs.append((when, USER_CODES[0][0] if u_code < USER_CODES[0][1] else USER_CODES[1][0]))
        else:
            jobs.append((when, 0))
    return jobs
