"""Takes docs/overview.png: the dashboard's overview, as it opens, on the demo's database.

    make demo ARGS="--duration 2m"        # leaves its database in var/demo
    .venv/bin/python docs/screenshot.py   # [--data-dir var/demo] [--out docs/overview.png]

The page is served on loopback at a free port and read by Debian's headless Chromium through
chromedriver (what the browser tests use; `sh tests/ensure_browser.sh` installs them), with the
page's own default time range: nothing is clicked before the picture is taken.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=REPO / "var" / "demo")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "overview.png")
    options = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from dashboard.app import DashboardServer, create_app
    from robot.clock import SystemClock
    from robot.config import load_config
    from robot.storage.database import make_engine, make_sessionmaker

    config = load_config(REPO / "configs" / "robot.yaml")
    config = config.model_copy(update={"data_dir": str(options.data_dir.resolve()),
                                       "dashboard": config.dashboard.model_copy(update={"anonymous_read": True})})
    if not (options.data_dir / "healthrobot.db").exists():
        print(f"no database in {options.data_dir}: run `make demo` first", file=sys.stderr)
        return 1
    app = create_app(config, make_sessionmaker(make_engine(config.database_url)), SystemClock())
    server = DashboardServer(app.server, "127.0.0.1", 0).start()
    profile = Path(tempfile.mkdtemp(prefix="overview-"))
    chrome = webdriver.ChromeOptions()
    chrome.binary_location = "/usr/bin/chromium"
    for option in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                   "--hide-scrollbars", f"--user-data-dir={profile}"):
        chrome.add_argument(option)
    driver = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=chrome)
    try:
        driver.get(server.url + "/")
        WebDriverWait(driver, 60).until(lambda d: "ANALY_" in d.find_element(By.ID, "ov-table").text)
        time.sleep(2)  # the figures' transitions
        options.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(options.out))
    finally:
        driver.quit()
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)
    print(f"wrote {options.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
