"""The dashboard in a real headless Chromium on loopback: every page renders with data, a filter
changes a graph, the stress form validates and checks who asks, a ticket's markup stays text.

One app and one browser for the module. The database is filled through the robot's own code: the
migrations, the real loop (topology sync, submission, polling) against a scripted grid whose jobs
the test finishes or fails, the stress supervisor (which stores the report), an exclusion
transition, and a mail archive imported and judged by the ticket code.
"""
from __future__ import annotations

import mailbox
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import format_datetime

import pytest
from sqlalchemy import select, update

from robot.backends.base import UserJobHour
from robot.classify import load_table
from robot.clock import ManualClock
from robot.config import RobotConfig
from robot.loop import Robot
from robot.storage.database import make_engine, make_sessionmaker, upgrade
from robot.storage.models import Queue, QueueTransition, Test
from robot.stress import StressRequest, StressSupervisor, request_stress_test
from robot.stress_report import build_report
from robot.tickets.ingest import import_source
from robot.tickets.store import judge_tickets
from robot.userjobs import UserJobWatch, hour_of
from robot.users import add_user
from tests import browser
from tests.fakes import ScriptedGrid, templates

pytestmark = pytest.mark.slow

QUEUES = {"ANALY_A": ("SITE-A", "DE"), "ANALY_B": ("SITE-B", "DE"), "ANALY_C": ("SITE-C", "FR"),
          "ANALY_D": ("SITE-D", "US")}
PASSWORDS = {"olga": "op-secret-olga", "sam": "admin-secret-sam"}
SUBJECT = "ANALY_A jobs fail <script>alert(1)</script>"


def fill(tmp_path) -> tuple[RobotConfig, object, ManualClock]:
    clock = ManualClock(datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2))
    grid = ScriptedGrid(clock, QUEUES)
    config = RobotConfig.model_validate({
        "data_dir": str(tmp_path / "data"),
        "templates": templates({"name": "hc_func", "max_running_jobs": 2},
                               {"name": "stress_zmumu", "category": "stress"}),
        "stress": {"operators": ["olga"], "site_admins": {"SITE-A": ["sam"]}},
        "dashboard": {"anonymous_read": True, "refresh": "1h"}})
    engine = make_engine(config.database_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    # users' own jobs at ANALY_A, as PanDA counts them, read by the robot's loop step
    grid.user_hours = [UserJobHour("ANALY_A", hour_of(clock.now()), 35, 9, {("pilot", 1099): 7, ("exe", 1): 2})]
    robot = Robot(config, sessions, grid, grid, grid, load_table(),
                  evaluators=[StressSupervisor(config, grid, report=build_report),
                              UserJobWatch(grid, load_table(), timedelta(minutes=10), timedelta(hours=6))])
    robot.run_once(clock.now())
    with sessions() as session:
        request_stress_test(session, StressRequest(queues=("ANALY_B",), template="stress_zmumu", jobs=4,
                                                   concurrency=2, requested_by="olga"), config, clock.now())
        session.commit()
    for step in range(16):  # about 80 minutes of results
        for queue in QUEUES:
            for pid in grid.in_queue(queue):
                grid.start(pid)
                if queue == "ANALY_A" and step >= 4:
                    grid.finish(pid, wall=60 + step, pilot_error_code=1099,
                                pilot_error_diag="Failed to stage-in file: <b>srm timeout</b>")
                else:
                    grid.finish(pid, events=20_000, wall=80 + 3 * step)
        clock.advance(timedelta(minutes=5))
        robot.run_once(clock.now())
    with sessions() as session:
        queue_a = session.scalar(select(Queue.id).where(Queue.name == "ANALY_A"))
        session.add(QueueTransition(queue_id=queue_a, time=clock.now(), kind="state", old="online", new="excluded",
                                    reason="site-class failures: 12 of the last 12 jobs failed with STAGEINFAILED",
                                    evidence={"panda_ids": [1010, 1011], "error_codes": {"1099": 12}},
                                    actor="healthrobot", policy="default", applied=False))
        session.execute(update(Queue).where(Queue.id == queue_a).values(robot_state="excluded",
                                                                         robot_state_since=clock.now()))
        session.commit()
    archive = tmp_path / "support.mbox"
    box = mailbox.mbox(str(archive), create=True)
    message = EmailMessage()
    message["Subject"], message["From"], message["To"] = SUBJECT, "user@example.org", "support@example.org"
    message["Date"], message["Message-ID"] = format_datetime(clock.now() - timedelta(minutes=20)), "<t1@example.org>"
    message.set_content("My jobs at ANALY_A fail with STAGEINFAILED since an hour. <img src=x onerror=alert(2)>")
    box.add(mailbox.mboxMessage(message))
    box.close()
    with sessions() as session:
        for name, password in PASSWORDS.items():  # stored as scrypt hashes, as `healthrobot users add` does
            add_user(session, name, password, clock.now())
        _summary, changed = import_source(session, str(archive), config, load_table(), clock.now())
        judge_tickets(session, clock.now(), changed)
        session.commit()
        assert session.scalar(select(Test.state).where(Test.category == "stress")) == "completed"
    engine.dispose()
    clock.advance(timedelta(minutes=1))  # the pages look a little later
    return config, sessions, clock


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(base url, driver, clock): the app on loopback and a headless Chromium, shared by the module."""
    tmp_path = tmp_path_factory.mktemp("dashboard")
    config, sessions, clock = fill(tmp_path)
    from dashboard.app import create_app

    app = create_app(config, sessions, clock)  # signs people in against the robot's users table
    server = browser.serve(app)
    profile = tmp_path / "chromium-profile"
    driver = browser.chrome(profile)
    yield server.url, driver, clock
    browser.close(driver, profile)
    server.stop()


def open_page(site, path: str, signed_out: bool = True):
    url, driver, _clock = site
    if signed_out:
        driver.delete_all_cookies()
    driver.get(url + path)
    return driver


def test_overview_shows_every_queue_and_a_cloud_filter_changes_the_heatmap(site):
    driver = open_page(site, "/")
    browser.wait_text(driver, "#ov-table td", "ANALY_D")
    browser.wait_text(driver, "#ov-table td", "excluded")  # ANALY_A, as the robot sees it
    browser.wait_css(driver, "#ov-heatmap .main-svg")
    browser.wait_for(driver, lambda d: browser.count(d, "#ov-heatmap .ytick text") == 4)
    driver.find_element("css selector", '#ov-clouds input[value="FR"]').click()
    browser.wait_for(driver, lambda d: browser.count(d, "#ov-heatmap .ytick text") == 1,
                     message="the FR filter did not reduce the heatmap to one queue")
    assert browser.wait_text(driver, "#ov-heatmap .ytick text", "ANALY_C")
    browser.wait_for(driver, lambda d: "ANALY_A" not in d.find_element("css selector", "#ov-table").text)


def test_queue_page_shows_failures_jobs_history_and_tickets(site):
    driver = open_page(site, "/queue/ANALY_A")
    browser.wait_text(driver, "#q-title", "ANALY_A")
    browser.wait_text(driver, "#q-failure .gtitle", "Failure rate")
    browser.wait_css(driver, "#q-failure .scatterlayer .trace")
    browser.wait_text(driver, "#q-errors td", "1099")
    browser.wait_text(driver, "#q-jobs td", "srm timeout")  # the diagnostic, as text
    browser.wait_text(driver, "#q-transitions td", "STAGEINFAILED")
    browser.wait_text(driver, "#q-tickets td", "<script>alert(1)</script>")
    browser.wait_text(driver, "#q-users td", "STAGEINFAILED 7 (site)")  # the users' own jobs of the last hours


def test_stress_list_and_report(site):
    driver = open_page(site, "/stress")
    cell = browser.wait_text(driver, "#st-table td", "stress_zmumu")
    browser.wait_text(driver, "#st-table td", "completed")
    row = cell.find_element("xpath", "./ancestor::tr")
    row.find_element("css selector", 'td[data-dash-column="id"]').click()
    browser.wait_for(driver, lambda d: "/stress/" in d.current_url)
    browser.wait_text(driver, "#sr-summary", "baseline")
    browser.wait_css(driver, "#sr-time .scatterlayer .trace")
    browser.wait_css(driver, "#sr-eps .barlayer .point")


def test_exclusions_timeline_and_evidence(site):
    driver = open_page(site, "/exclusions")
    browser.wait_css(driver, "#ex-timeline .scatterlayer .point")
    cell = browser.wait_text(driver, "#ex-table td", "STAGEINFAILED")
    cell.click()
    browser.wait_text(driver, "#ex-evidence", "1099")
    browser.wait_text(driver, "#ex-who", "sign in first")


def test_ticket_subject_with_a_script_tag_is_shown_as_text(site):
    driver = open_page(site, "/tickets")
    cell = browser.wait_text(driver, "#tk-table td", "<script>alert(1)</script>")
    assert SUBJECT in cell.text
    assert driver.execute_script("return document.querySelectorAll('#page script, #page img').length") == 0
    cell.click()
    browser.wait_text(driver, "#tk-subject", "<script>alert(1)</script>")
    assert driver.execute_script("return document.querySelectorAll('#page script, #page img').length") == 0
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.text  # noqa: B018  (no alert was ever opened)


def fill_form(driver, **values: str) -> None:
    from selenium.webdriver.common.keys import Keys

    for name, value in values.items():
        field = browser.wait_css(driver, f"#st-{name}")
        field.send_keys(Keys.CONTROL, "a")  # React owns the value: replace it as a person would
        field.send_keys(Keys.BACKSPACE)
        field.send_keys(value)
        browser.wait_for(driver, lambda d, f=field, v=value: f.get_attribute("value") == v)


def test_stress_form_refuses_anonymous_people(site):
    driver = open_page(site, "/stress")
    browser.wait_text(driver, "#st-who", "Sign in")
    fill_form(driver, **{"queue-text": "ANALY_B"})
    driver.find_element("css selector", "#st-submit").click()
    browser.wait_text(driver, "#st-message", "Sign in to request a stress test")


def test_stress_form_validates_then_accepts_an_operators_request(site):
    url, driver, _clock = site
    driver.delete_all_cookies()
    driver.get(url + "/login?next=/stress")
    browser.wait_css(driver, "#login-name").send_keys("olga")
    driver.find_element("css selector", "#login-password").send_keys(PASSWORDS["olga"])
    driver.find_element("css selector", "#login-submit").click()
    browser.wait_text(driver, "#whoami-name", "olga (operator)")
    browser.wait_text(driver, "#st-who", "Requesting as olga")
    fill_form(driver, **{"queue-text": "ANALY_NOPE", "jobs": "0", "concurrency": "lots", "duration": "forever"})
    driver.find_element("css selector", "#st-submit").click()
    problems = browser.wait_text(driver, "#st-message", "unknown queue 'ANALY_NOPE'").text
    assert "jobs: must be between 1 and 2000" in problems
    assert "concurrency: a whole number is needed" in problems and "duration: 'forever'" in problems
    fill_form(driver, **{"queue-text": "ANALY_C", "jobs": "20", "concurrency": "4", "duration": "1h"})
    driver.find_element("css selector", "#st-submit").click()
    accepted = browser.wait_text(driver, "#st-message", "scheduled").text
    assert "approved by olga (operator)" in accepted
    browser.wait_for(driver, lambda d: d.find_element("css selector", "#st-table").text.count("stress_zmumu") == 2)


def test_sign_out_is_a_button_that_posts_the_token_and_a_visit_to_logout_changes_nothing(site):
    url, driver, _clock = site
    driver.delete_all_cookies()
    driver.get(url + "/login?next=/exclusions")
    browser.wait_css(driver, "#login-name").send_keys("sam")
    driver.find_element("css selector", "#login-password").send_keys(PASSWORDS["sam"])
    driver.find_element("css selector", "#login-submit").click()
    browser.wait_text(driver, "#whoami-name", "sam (site admin of SITE-A)")
    driver.get(url + "/logout")  # what a link or an <img src=/logout> on another page would do
    browser.wait_css(driver, "#signout-button")
    driver.get(url + "/exclusions")
    browser.wait_text(driver, "#whoami-name", "sam (site admin of SITE-A)")
    browser.wait_css(driver, "#whoami #signout-button").click()  # the button in the top bar
    browser.wait_css(driver, "#login-name")
    driver.get(url + "/exclusions")
    browser.wait_css(driver, "#signin-link")
