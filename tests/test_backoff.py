"""The one bounded HTTP retry loop CRIC, GOCDB and GGUS share, against `responses` (requests' own mock)."""
from __future__ import annotations

import logging

import pytest
import requests
import responses

from robot.backoff import backoff_delay, request_with_retries

URL = "https://remote.example/api/things"
SECRET = "Bearer s3cret-token"


class Failed(Exception):
    pass


def call(sleeps: list[float], **kwargs):
    settings = {"what": "REMOTE things", "error": Failed, "retries": 2, "sleep": sleeps.append, "timeout": 5,
                "headers": {"Authorization": SECRET}, **kwargs}
    return request_with_retries(requests.Session(), "GET", URL, **settings)


def test_back_off_doubles_up_to_its_ceiling():
    assert [backoff_delay(k) for k in (1, 2, 3, 10)] == [1.0, 2.0, 4.0, 30.0]
    assert backoff_delay(3, first=0.5, most=1.5) == 1.5


@responses.activate
def test_server_errors_time_outs_and_malformed_answers_are_tried_again_then_succeed():
    responses.add(responses.GET, URL, status=503)
    responses.add(responses.GET, URL, body=requests.ConnectTimeout("slow"))
    responses.add(responses.GET, URL, json={"ok": True})
    sleeps: list[float] = []
    assert call(sleeps, read=lambda r: r.json()) == {"ok": True}
    assert sleeps == [1.0, 2.0] and len(responses.calls) == 3
    assert all(c.request.headers["Authorization"] == SECRET for c in responses.calls)


@responses.activate
def test_bounded_then_one_error_naming_the_call_and_the_last_failure_never_the_secret(caplog):
    responses.add(responses.GET, URL, body="<html>", status=200)
    caplog.set_level(logging.DEBUG)
    sleeps: list[float] = []
    with pytest.raises(Failed, match=r"^REMOTE things: malformed answer: .* after 3 attempt\(s\)$") as err:
        call(sleeps, read=lambda r: r.json())
    assert len(responses.calls) == 3 and sleeps == [1.0, 2.0]
    assert SECRET not in str(err.value) and "s3cret" not in caplog.text


@responses.activate
def test_client_errors_and_broken_requests_are_not_tried_again():
    responses.add(responses.GET, URL, status=401)
    sleeps: list[float] = []
    with pytest.raises(Failed, match="^REMOTE things: HTTP 401$"):
        call(sleeps)
    assert len(responses.calls) == 1 and not sleeps
    responses.replace(responses.GET, URL, body=requests.exceptions.InvalidHeader("bad header"))
    with pytest.raises(Failed, match=r"request failed \(InvalidHeader\)"):
        call(sleeps)
    assert not sleeps


@responses.activate
def test_which_statuses_are_retried_is_the_callers_choice():
    responses.add(responses.GET, URL, status=429)
    responses.add(responses.GET, URL, status=429)
    responses.add(responses.GET, URL, json=[])
    sleeps: list[float] = []
    with pytest.raises(Failed, match="HTTP 429"):
        call(sleeps)
    assert call(sleeps, retry_status=lambda s: s == 429, first=0.5) is not None and sleeps == [0.5]
