"""Click parameter types shared by the subcommands."""
from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from robot.durations import parse_duration


class DurationType(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


DURATION = DurationType()
