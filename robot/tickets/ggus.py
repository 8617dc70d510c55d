"""A small GGUS (Zammad helpdesk) REST client: search tickets, read articles, turn them into mail.

Authentication is the header `Authorization: Token token=<token>`; the token is never logged nor
shown in `repr`/error messages. Timeouts, connection errors, 429 and 5xx answers are retried with
bounded exponential back-off (`sleep` is injectable for tests); after `retries` retries, or on any
other failure (4xx, bad JSON) `TicketSourceUnavailable` is raised.
"""
from __future__ import annotations

import email.utils
import time
from datetime import datetime, timezone
from typing import Any, Callable

import requests

from robot.backoff import MAX_BACKOFF, request_with_retries
from robot.tickets.mail import Message, clean_line, html_to_text, limit_body


EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class TicketSourceUnavailable(Exception):
    """The ticket system could not be read (after retries)."""


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def _name(value: Any) -> str:
    """Zammad expands relations to names; accept a name, a {"name": ...} dict or nothing."""
    if isinstance(value, dict):
        value = value.get("name")
    return str(value) if value not in (None, "") else ""


class GGUSClient:
    def __init__(self, base_url: str, token: str, vo: str = "atlas", timeout: float = 30,
                 retries: int = 3, *, page_size: int = 100, backoff: float = 1.0,
                 max_backoff: float = MAX_BACKOFF, max_pages: int = 1000,
                 sleep: Callable[[float], None] = time.sleep,
                 session: requests.Session | None = None):
        base = base_url.rstrip("/")
        if not base.endswith("/api/v1"):
            base += "/api/v1"
        self.base_url = base
        self.vo = vo
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.page_size = max(1, int(page_size))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_pages = max_pages
        self.sleep = sleep
        self.session = session or requests.Session()
        self._headers = {"Authorization": f"Token token={token}", "Accept": "application/json"}

    def __repr__(self) -> str:
        return f"GGUSClient({self.base_url!r}, token=***, vo={self.vo!r})"

    # ------------------------------------------------------------------ HTTP
    def _get(self, path: str, params: dict | None = None) -> Any:
        url = f"{self.base_url}{path}"

        def read(response: requests.Response) -> Any:
            try:
                return response.json()
            except ValueError:  # not retried: the server answered, with something else than JSON
                raise TicketSourceUnavailable(f"GGUS sent invalid JSON for {url}") from None

        return request_with_retries(self.session, "GET", url, what=f"GGUS {url}", error=TicketSourceUnavailable,
                                    retries=self.retries, sleep=self.sleep, timeout=self.timeout, read=read,
                                    retry_status=lambda status: status >= 500 or status == 429,
                                    first=self.backoff, most=self.max_backoff, params=params, headers=self._headers)

    # ------------------------------------------------------------------ API
    def query(self, site: str | None, since_id: int, open_only: bool = False) -> str:
        parts = [f"vo_support:{_quote(self.vo)}"]
        if site:
            parts.append(f"wlcg_sites:{_quote(site)}")
        if open_only:
            parts.append("!((state.name:solved) OR (state.name:unsolved))")
        parts.append(f"id:>{int(since_id)}")
        return " AND ".join(parts)

    def search(self, site: str | None = None, since_id: int = 0,
               open_only: bool = False) -> list[dict]:
        """Tickets of this VO (optionally one site) with id > since_id, ascending by id."""
        found: dict[int, dict] = {}
        last = int(since_id)
        for _ in range(self.max_pages):
            params = {"query": self.query(site, last, open_only), "sort_by": "id",
                      "order_by": "asc", "limit": self.page_size, "expand": "true"}
            page = self._tickets(self._get("/tickets/search", params))
            for ticket in page:
                found.setdefault(ticket["id"], ticket)
            ids = [t["id"] for t in page if t["id"] > last]
            if len(page) < self.page_size or not ids:
                break
            last = max(ids)
        return [found[k] for k in sorted(found)]

    @staticmethod
    def _tickets(data: Any) -> list[dict]:
        if isinstance(data, dict):  # non-expanded answer: {"tickets": [ids], "assets": {...}}
            assets = (data.get("assets") or {}).get("Ticket") or {}
            data = [assets.get(str(i)) or assets.get(i) or {"id": i} for i in data.get("tickets", [])]
        if not isinstance(data, list):
            raise TicketSourceUnavailable("GGUS search answer is not a list")
        out = []
        for item in data:
            if isinstance(item, dict):
                try:
                    item["id"] = int(item["id"])
                except (KeyError, TypeError, ValueError):
                    continue
                out.append(item)
        return out

    def ticket(self, ticket_id: int) -> dict:
        data = self._get(f"/tickets/{int(ticket_id)}", {"expand": "true"})
        if not isinstance(data, dict):
            raise TicketSourceUnavailable("GGUS ticket answer is not an object")
        return data

    def articles(self, ticket_id: int) -> list[dict]:
        data = self._get(f"/ticket_articles/by_ticket/{int(ticket_id)}")
        if not isinstance(data, list):
            raise TicketSourceUnavailable("GGUS articles answer is not a list")
        return [a for a in data if isinstance(a, dict)]

    def to_messages(self, ticket: dict, articles: list[dict]) -> list[Message]:
        """Same as the module-level `to_messages` (convenience for callers holding a client)."""
        return to_messages(ticket, articles)

    def web_link(self, ticket: dict) -> str:
        return f"{self.base_url[:-len('/api/v1')]}/#ticket/zoom/{ticket['id']}"


def to_messages(ticket: dict, articles: list[dict]) -> list[Message]:
    """A GGUS ticket's articles as `Message`s (thread hint "ggus:<number>", label "GGUS/<state>")."""
    number = str(ticket.get("number") or ticket.get("id") or "").strip()
    hint = f"ggus:{int(number)}" if number.isdigit() else (f"ggus:{number}" if number else None)
    title = clean_line(str(ticket.get("title") or ""))
    state = _name(ticket.get("state"))
    labels = (f"GGUS/{state}",) if state else ()
    fallback = _parse_time(ticket.get("created_at")) or _parse_time(ticket.get("updated_at")) or EPOCH
    messages = []
    previous: str | None = None
    for article in sorted(articles, key=lambda a: (str(a.get("created_at") or ""), a.get("id") or 0)):
        article_id = article.get("id")
        message_id = f"ggus-article-{article_id}@ggus"
        raw_body = str(article.get("body") or "")
        if "html" in str(article.get("content_type") or "").lower():
            raw_body = html_to_text(raw_body)
        body, truncated = limit_body(raw_body)
        sender_raw = clean_line(str(article.get("from") or ""), 320)
        _, address = email.utils.parseaddr(sender_raw)
        messages.append(Message(
            source="ggus",
            message_id=message_id,
            in_reply_to=previous,
            references=(previous,) if previous else (),
            thread_hint=hint,
            subject=clean_line(str(article.get("subject") or "")) or title,
            sender=(address or sender_raw).lower(),
            date=_parse_time(article.get("created_at")) or fallback,
            labels=labels,
            body=body,
            truncated=truncated,
        ))
        previous = message_id
    return messages
