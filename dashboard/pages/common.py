"""What every page shares: the context (configuration, sessions, clock, who is signed in), the time
ranges, and tables that show every value as text."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from dash import dash_table, html
from sqlalchemy.orm import Session, sessionmaker

from dashboard import auth
from robot.clock import Clock
from robot.config import RobotConfig
from robot.vocabulary import decision, plain_reason

RANGES: dict[str, timedelta] = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(days=1),
                                "3d": timedelta(days=3), "7d": timedelta(days=7)}
DEFAULT_RANGE = "24h"
TIME_FORMAT = "%Y-%m-%d %H:%M"


@dataclass
class PageContext:
    config: RobotConfig
    sessions: sessionmaker[Session]
    clock: Clock

    def user(self) -> str | None:
        """Who makes the current request (only inside a request: a callback or a page load)."""
        return auth.current_user(self.config.dashboard)

    def filters(self, range_key: str | None, **chosen: Sequence[str] | None) -> Any:
        from dashboard.queries import Filters

        now = self.clock.now()
        span = RANGES.get(range_key or DEFAULT_RANGE, RANGES[DEFAULT_RANGE])
        return Filters(start=now - span, end=now, **{k: tuple(v or ()) for k, v in chosen.items()})


def cell(value: Any) -> Any:
    """A value as a table cell: text or a number, never markup."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.strftime(TIME_FORMAT)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, int):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(str(cell(v)) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    if dataclasses.is_dataclass(value):
        return json.dumps(as_dict(value), sort_keys=True, default=str)
    return str(value)


def as_dict(item: Any) -> dict[str, Any]:
    """A result row's fields (one level: nested rows stay objects)."""
    if dataclasses.is_dataclass(item):
        return {f.name: getattr(item, f.name) for f in dataclasses.fields(item)}
    if isinstance(item, dict):
        return dict(item)
    return dict(item._asdict()) if hasattr(item, "_asdict") else dict(vars(item))


def rows(items: Iterable[Any], id_field: str | None = None) -> list[dict[str, Any]]:
    out = []
    for item in items:
        row = {key: cell(value) for key, value in as_dict(item).items()}
        if id_field is not None:
            row["id"] = str(as_dict(item)[id_field])
        out.append(row)
    return out


def transition_rows(found: Sequence[Any]) -> list[dict[str, Any]]:
    """Transitions as table rows in the robot's vocabulary (`decision`), with the reason in plain words (`why`)."""
    data = rows(found)
    for row, t in zip(data, found):
        row["decision"] = decision(t.old, t.new, t.applied, t.kind)
        row["why"] = plain_reason(t.reason, t.evidence, t.time, t.new)
    return data


def table(table_id: str, columns: Sequence[tuple[str, str]], data: list[dict[str, Any]] | None = None,
          page_size: int = 25, numeric: Sequence[str] = (), **options: Any) -> dash_table.DataTable:
    """A sortable, filterable table; cells are plain text (no markdown, no HTML)."""
    settings: dict[str, Any] = dict(
        sort_action="native", filter_action="native", page_action="native", page_size=page_size,
        style_table={"overflowX": "auto"},
        style_cell={"textAlign": "left", "padding": "4px 8px", "fontFamily": "system-ui, sans-serif",
                    "fontSize": "13px", "maxWidth": "420px", "whiteSpace": "normal", "height": "auto"},
        style_header={"fontWeight": "bold", "backgroundColor": "#eef1f4"})
    settings.update(options)
    return dash_table.DataTable(
        id=table_id, data=data or [],
        columns=[{"name": label, "id": key, "type": "numeric" if key in numeric else "text"} for key, label in columns],
        **settings)


def message(kind: str, lines: Sequence[str], element_id: str | None = None) -> html.Div:
    """A notice ("ok", "error", "info") with its lines as text."""
    children: list[Any] = [html.Div(lines[0])] if len(lines) == 1 else [html.Ul([html.Li(x) for x in lines])]
    props = {"id": element_id} if element_id else {}
    return html.Div(children, className=f"notice notice-{kind}", **props)


def heading(title: str, *extra: Any) -> html.Div:
    return html.Div([html.H2(title), *extra], className="page-heading")


def time_range(component_id: str, value: str = DEFAULT_RANGE) -> Any:
    from dash import dcc

    return html.Div([html.Label("Time range"),
                     dcc.RadioItems(id=component_id, options=[{"label": k, "value": k} for k in RANGES],
                                    value=value, inline=True, className="radio")], className="filter")


def data_missing(what: str) -> html.Div:
    return message("info", [f"Nothing to show yet: {what}."])
