"""A queue named on the command line must be one the robot knows; else one line with the closest names."""
from __future__ import annotations

import difflib

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from robot.storage.models import Queue


def require_queue(session: Session, name: str) -> None:
    """Stop with `unknown queue 'X'; did you mean ...?` unless the database knows queue `name`."""
    names = list(session.scalars(select(Queue.name)))
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = (f"; did you mean {', '.join(close)}?" if close else
            f"; known queues: {', '.join(sorted(names)[:20])}" if names else "; the robot knows no queue yet")
    raise click.ClickException(f"unknown queue {name!r}{hint}")
