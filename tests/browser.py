"""Browser test helpers: the dashboard on loopback in a thread, and Debian's headless Chromium.

    server = serve(app)                 # DashboardServer on 127.0.0.1, a free port
    driver = chrome(tmp_dir)            # selenium Chrome: /usr/bin/chromium + /usr/bin/chromedriver
    driver.get(server.url + "/")
    wait_text(driver, "#page", "Overview")

`tests/ensure_browser.sh` (run by `make test`) installs chromium and chromium-driver when missing;
without them the browser tests are skipped with the reason.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 20.0  # seconds: the longest any single wait may take
OPTIONS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--window-size=1400,1000")


def serve(app: Any) -> Any:
    """The app's Flask server on 127.0.0.1 at a free port, in a thread (a DashboardServer); `.stop()` it."""
    from dashboard.app import DashboardServer

    return DashboardServer(app.server, "127.0.0.1", 0).start()


def chrome(user_data_dir: Path, window: tuple[int, int] = (1400, 1000)) -> Any:
    """A headless Chromium driven through chromedriver, with a fresh profile in `user_data_dir`."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} missing: run tests/ensure_browser.sh (make test does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for option in OPTIONS:
        options.add_argument(option if not option.startswith("--window-size") else f"--window-size={window[0]},{window[1]}")
    options.add_argument(f"--user-data-dir={user_data_dir}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT)
    return driver


def close(driver: Any, user_data_dir: Path) -> None:
    driver.quit()
    shutil.rmtree(user_data_dir, ignore_errors=True)


def wait_for(driver: Any, condition: Callable[[Any], Any], timeout: float = WAIT, message: str = "") -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message)


def wait_css(driver: Any, selector: str, timeout: float = WAIT) -> Any:
    """The first element matching `selector`, once it is there."""
    from selenium.webdriver.common.by import By

    return wait_for(driver, lambda d: (d.find_elements(By.CSS_SELECTOR, selector) or [None])[0], timeout,
                    f"nothing matches {selector}")


def wait_text(driver: Any, selector: str, text: str, timeout: float = WAIT) -> Any:
    """The first element matching `selector` whose text contains `text`."""
    from selenium.webdriver.common.by import By

    def found(d: Any) -> Any:
        for element in d.find_elements(By.CSS_SELECTOR, selector):
            try:
                if text in element.text:
                    return element
            except Exception:  # replaced while reading it (Dash re-rendered): try again
                continue
        return None

    return wait_for(driver, found, timeout, f"no {selector} containing {text!r}")


def count(driver: Any, selector: str) -> int:
    from selenium.webdriver.common.by import By

    return len(driver.find_elements(By.CSS_SELECTOR, selector))
