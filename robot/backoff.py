"""How a remote client waits and tries again: exponential back-off with a ceiling, and one bounded
HTTP request loop (`request_with_retries`) for the clients that speak plain HTTP through `requests`
(CRIC, GOCDB, GGUS)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, TypeVar

if TYPE_CHECKING:
    import requests

MAX_BACKOFF = 30.0  # seconds
T = TypeVar("T")
log = logging.getLogger(__name__)


def backoff_delay(retry: int, first: float = 1.0, most: float = MAX_BACKOFF) -> float:
    """Seconds before retry number `retry` (1, 2, 3 ...): first, 2 x first, 4 x first ..., at most `most`."""
    return min(most, first * 2.0 ** (retry - 1))


def server_error(status: int) -> bool:
    """Statuses worth another attempt by default: the server's own failures (5xx)."""
    return status >= 500


def request_with_retries(session: requests.Session, method: str, url: str, *, what: str, error: type[Exception],
                         retries: int, sleep: Callable[[float], None], timeout: float,
                         read: Callable[[requests.Response], T] = lambda response: response,  # type: ignore[assignment,return-value]
                         retry_status: Callable[[int], bool] = server_error, first: float = 1.0,
                         most: float = MAX_BACKOFF, **request: Any) -> T:
    """`read(response)` of one HTTP request, tried at most `retries` + 1 times.

    A time-out, a connection error, a status `retry_status` accepts (5xx) or a ValueError from `read`
    (a malformed answer) is tried again after `backoff_delay`; any other request error or a 4xx raises
    `error` at once, as does the last failure. Messages and logs name `what` (the caller's words for
    the call, no query string, no header) and the failure, never a credential."""
    import requests  # noqa: PLC0415 - imported by the callers that speak HTTP, not by whoever imports this module

    attempts = max(0, int(retries)) + 1
    last = "no attempt"
    for attempt in range(attempts):
        if attempt:
            delay = backoff_delay(attempt, first, most)
            log.warning("%s failed (%s), retry %d/%d in %.1fs", what, last, attempt, attempts - 1, delay)
            sleep(delay)
        try:
            response = session.request(method, url, timeout=timeout, **request)
        except requests.Timeout:
            last = "timeout"
            continue
        except requests.ConnectionError:
            last = "connection error"
            continue
        except requests.RequestException as exc:  # invalid URL, SSL set-up ...: trying again cannot help
            raise error(f"{what}: request failed ({type(exc).__name__})") from None
        if retry_status(response.status_code):
            last = f"HTTP {response.status_code}"
            continue
        if response.status_code >= 400:
            raise error(f"{what}: HTTP {response.status_code}")
        try:
            return read(response)
        except ValueError as exc:
            last = f"malformed answer: {exc}"
            continue
    raise error(f"{what}: {last} after {attempts} attempt(s)")
