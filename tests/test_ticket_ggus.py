"""The GGUS (Zammad) REST client, against `responses` fixtures built from the documented fields."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import responses

from robot.tickets.ggus import GGUSClient, TicketSourceUnavailable, to_messages
from robot.tickets.threads import thread

BASE = "https://helpdesk.example.org"
API = BASE + "/api/v1"
TOKEN = "s3cr3t-T0KEN-value"


def ticket(i, number=None, site="MWT2", state="assigned"):
    return {"id": i, "number": str(number or 165000 + i), "title": f"ATLAS: failures at {site}",
            "state": state, "priority": "urgent", "type": "Incident",
            "created_at": "2025-02-27T10:00:00.000Z", "updated_at": "2025-02-28T09:30:00.000Z",
            "article_ids": [i * 10 + 1, i * 10 + 2], "wlcg_sites": site, "vo_support": "atlas",
            "area": "Storage", "notified_groups": ""}


ARTICLES = [
    {"id": 72, "ticket_id": 7, "from": "Shifter One <shifter@cern.ch>",
     "created_at": "2025-02-28T09:30:00.000Z", "content_type": "text/html",
     "body": "<p>Site admins: please check &amp; fix.</p><script>x()</script>"},
    {"id": 71, "ticket_id": 7, "from": "ggus@ggus.example",
     "created_at": "2025-02-27T10:00:00.000Z", "content_type": "text/plain",
     "body": "Get error: stage-in failed from MWT2_DATADISK\nhttps://bigpanda.cern.ch/job?pandaid=6412345678"},
]


def client(**kw):
    kw.setdefault("sleep", lambda s: None)
    return GGUSClient(BASE, TOKEN, **kw)


@responses.activate
def test_search_pages_with_id_cursor():
    pages = [[ticket(1), ticket(2)], [ticket(5), ticket(7)], [ticket(9)]]
    seen = []

    def callback(request):
        q = parse_qs(urlparse(request.url).query)
        seen.append(q)
        assert request.headers["Authorization"] == f"Token token={TOKEN}"
        import json
        return 200, {}, json.dumps(pages[len(seen) - 1])

    responses.add_callback(responses.GET, API + "/tickets/search", callback=callback)
    tickets = client(page_size=2).search("MWT2", since_id=0)
    assert [t["id"] for t in tickets] == [1, 2, 5, 7, 9]
    assert [q["query"][0] for q in seen] == [
        'vo_support:"atlas" AND wlcg_sites:"MWT2" AND id:>0',
        'vo_support:"atlas" AND wlcg_sites:"MWT2" AND id:>2',
        'vo_support:"atlas" AND wlcg_sites:"MWT2" AND id:>7']
    assert seen[0]["sort_by"] == ["id"] and seen[0]["order_by"] == ["asc"]
    assert seen[0]["limit"] == ["2"] and seen[0]["expand"] == ["true"]


@responses.activate
def test_search_without_site_and_open_only():
    responses.add(responses.GET, API + "/tickets/search", json=[])
    assert client().search(None, since_id=42, open_only=True) == []
    q = parse_qs(urlparse(responses.calls[0].request.url).query)["query"][0]
    assert q == 'vo_support:"atlas" AND !((state.name:solved) OR (state.name:unsolved)) AND id:>42'


@responses.activate
def test_articles_and_messages():
    responses.add(responses.GET, API + "/ticket_articles/by_ticket/7", json=ARTICLES)
    arts = client().articles(7)
    assert [a["id"] for a in arts] == [72, 71]
    msgs = to_messages(ticket(7, number=165432, state="in progress"), arts)
    assert client().to_messages(ticket(7, number=165432, state="in progress"), arts) == msgs
    assert [m.message_id for m in msgs] == ["ggus-article-71@ggus", "ggus-article-72@ggus"]
    assert all(m.thread_hint == "ggus:165432" and m.labels == ("GGUS/in progress",) for m in msgs)
    assert msgs[0].date == datetime(2025, 2, 27, 10, 0, tzinfo=timezone.utc)
    assert msgs[1].sender == "shifter@cern.ch" and msgs[1].in_reply_to == msgs[0].message_id
    assert msgs[1].body == "Site admins: please check & fix."
    assert "pandaid=6412345678" in msgs[0].body
    assert msgs[0].subject == "ATLAS: failures at MWT2" and msgs[0].source == "ggus"
    threads = thread(msgs)
    assert len(threads) == 1 and threads[0].key == "ggus:165432" and threads[0].state == "open"
    solved = thread(to_messages(ticket(7, number=165432, state="solved"), arts),
                    support_addresses=["shifter@cern.ch"])
    assert solved[0].state == "closed"


@responses.activate
def test_retries_then_unavailable_and_token_never_logged(caplog):
    sleeps = []
    responses.add(responses.GET, API + "/tickets/search", status=503)
    responses.add(responses.GET, API + "/tickets/search", body=requests.Timeout("slow"))
    responses.add(responses.GET, API + "/tickets/search", status=500)
    responses.add(responses.GET, API + "/tickets/search", status=502)
    c = client(retries=3, backoff=0.5, max_backoff=1.0, sleep=sleeps.append)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(TicketSourceUnavailable) as err:
            c.search("MWT2", 0)
    assert len(responses.calls) == 4
    assert sleeps == [0.5, 1.0, 1.0]
    assert TOKEN not in caplog.text and TOKEN not in str(err.value) and TOKEN not in repr(c)
    assert "503" in caplog.text


@responses.activate
def test_retry_recovers():
    responses.add(responses.GET, API + "/ticket_articles/by_ticket/3", status=500)
    responses.add(responses.GET, API + "/ticket_articles/by_ticket/3", json=[ARTICLES[1]])
    assert [a["id"] for a in client().articles(3)] == [71]
    assert len(responses.calls) == 2


@responses.activate
def test_client_errors_not_retried():
    responses.add(responses.GET, API + "/ticket_articles/by_ticket/3", status=401)
    with pytest.raises(TicketSourceUnavailable, match="401"):
        client().articles(3)
    assert len(responses.calls) == 1


@responses.activate
def test_bad_json_is_unavailable():
    responses.add(responses.GET, API + "/tickets/search", body="<html>maintenance</html>")
    with pytest.raises(TicketSourceUnavailable):
        client().search("MWT2", 0)


@responses.activate
def test_tickets_import_ggus_through_the_cli_is_idempotent(tmp_path):
    import json

    from click.testing import CliRunner

    from robot.cli import main
    from robot.storage.database import make_engine, upgrade

    responses.add(responses.GET, API + "/tickets/search", json=[ticket(7)])  # a short page: the last one
    responses.add(responses.GET, API + "/ticket_articles/by_ticket/7", json=ARTICLES)
    config = tmp_path / "robot.yaml"
    config.write_text(f"data_dir: {tmp_path}\ntickets:\n  ggus: {{url: {BASE}, token: '${{TEST_GGUS_TOKEN}}'}}\n")
    upgrade(make_engine(f"sqlite:///{tmp_path / 'healthrobot.db'}"))
    env = {"TEST_GGUS_TOKEN": TOKEN}
    run = lambda: CliRunner(env=env).invoke(main, ["--config", str(config), "tickets", "import", "ggus", "--json"])  # noqa: E731
    first = run()
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["new_messages"] == 2 and json.loads(first.output)["new_tickets"] == 1
    again = json.loads(run().output)
    assert again["threads"] == 1 and again["new_messages"] == 0 and again["new_tickets"] == 0
    listed = json.loads(CliRunner(env=env).invoke(main, ["--config", str(config), "tickets", "list", "--json"]).output)
    assert listed[0]["source"] == "ggus" and "pandaid" not in listed[0]["subject"]
    assert any(m["kind"] == "panda_id" and m["value"] == "6412345678" for m in listed[0]["mentions"])
