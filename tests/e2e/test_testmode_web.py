"""Test mode's web page in a real browser: headless Chromium from Debian, driven by selenium.

The real ``meta1 run`` in test mode (as root: production mode, the four worker users) serves the
page on ``test_mode { listen }``. A user opens it, sends a message over SMTP, sees the message
appear in the list without reloading, opens it and reads its headers, text and SMTP transcript.
The browser is Debian's ``chromium`` driven through Debian's ``chromedriver`` (scripts/test.sh
installs both); selenium is the WebDriver client. A screenshot of the open message is saved as
``testmode.png`` in the test's temporary directory.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

from meta1py_testing.daemon import DaemonError, Meta1Daemon, free_port, poll

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

webdriver = pytest.importorskip(
    "selenium.webdriver", reason="selenium is not installed (pip install -e .[test])"
)
if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        f"{CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

# After the skips: the module must import (and be skipped) where selenium is absent.
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

#: Longest wait for the page (it polls the API every second; delivery to a capture is quick).
WAIT_S = 60


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with a private profile under ``tmp_path``; stopped (by pid) at the end."""
    options = Options()
    options.binary_location = CHROMIUM
    options.add_argument("--headless=new")
    options.add_argument("--disable-gpu")
    options.add_argument("--disable-dev-shm-usage")  # containers often have a tiny /dev/shm
    profile = tmp_path / "chromium-profile"
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument("--window-size=1280,1024")
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    service = Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        yield driver
    finally:
        # quit() closes the browser through the driver, then stops chromedriver (its Popen).
        driver.quit()
        _stop_leftovers(profile)
    assert service.process is None or service.process.poll() is not None


def _browser_pids(profile: Path) -> list[int]:
    """Pids of the processes whose command line names our private profile (the browser's)."""
    marker = f"--user-data-dir={profile}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _stop_leftovers(profile: Path) -> None:
    """Wait for the browser to exit after quit(); one that does not is killed by its pid."""
    try:
        poll(lambda: not _browser_pids(profile) or None, 10, "Chromium exits after quit()")
    except DaemonError:
        for pid in _browser_pids(profile):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise


@pytest.fixture
def testmode(make_daemon: Callable[..., Meta1Daemon]) -> Iterator[tuple[Meta1Daemon, int]]:
    """The daemon in test mode and the port of its control API and web page."""
    api_port = free_port()
    daemon = make_daemon(extra_config=f"test_mode {{ enable = yes; listen = 127.0.0.1:{api_port}; }}")
    with daemon:
        poll(lambda: _page_answers(api_port), 30, "the web page answers")
        yield daemon, api_port


def _page_answers(port: int) -> bool | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/")
            return conn.getresponse().status == 200 or None
        finally:
            conn.close()
    except OSError:
        return None


def _message_link(driver: WebDriver, subject: str) -> WebElement | Literal[False]:
    """The button that opens the captured message with this subject, once the list shows it."""
    for button in driver.find_elements(By.CSS_SELECTOR, "#messages button.link"):
        if button.text == subject:
            return button
    return False


def _text(driver: WebDriver, element_id: str) -> str:
    return str(driver.find_element(By.ID, element_id).text)


def test_a_message_sent_over_smtp_appears_live_and_opens_with_its_transcript(
    testmode: tuple[Meta1Daemon, int], browser: WebDriver, tmp_path: Path
) -> None:
    daemon, port = testmode
    wait = WebDriverWait(browser, WAIT_S)

    browser.get(f"http://127.0.0.1:{port}/")
    assert browser.title == "meta1 test mode"
    wait.until(lambda d: "No message captured yet." in _text(d, "messages"))
    assert browser.find_elements(By.CSS_SELECTOR, "#messages button.link") == []
    # A marker on this document: a reload or a navigation would lose it.
    browser.execute_script("window.meta1Marker = 'still the same page';")

    body = (
        "From: Alice <alice@example.org>\r\n"
        "To: someone@example.net\r\n"
        "Subject: hello from the browser test\r\n"
        "\r\n"
        "The body, as the recipient would read it.\r\n"
    )
    with smtplib.SMTP("127.0.0.1", daemon.port, timeout=60) as client:
        assert client.ehlo("client.example")[0] == 250
        assert client.sendmail("alice@example.org", ["someone@example.net"], body.encode()) == {}

    # The list redraws by itself: no reload, no navigation.
    subject = "hello from the browser test"
    link = wait.until(lambda d: _message_link(d, subject))
    assert browser.execute_script("return window.meta1Marker;") == "still the same page"
    row = str(link.find_element(By.XPATH, "./ancestor::tr").text)
    assert "alice@example.org" in row and "someone@example.net" in row and "delivered" in row

    view = browser.find_element(By.ID, "view")
    assert not view.is_displayed()
    link.click()
    wait.until(lambda d: d.find_element(By.ID, "view").is_displayed() and _text(d, "v-transcript"))
    assert _text(browser, "h-view") == f"Message: {subject}"
    envelope = _text(browser, "v-envelope").splitlines()
    assert envelope == ["MAIL FROM:<alice@example.org>", "RCPT TO:<someone@example.net>"]
    headers = _text(browser, "v-headers").splitlines()
    assert f"Subject: {subject}" in headers
    assert "To: someone@example.net" in headers
    assert "The body, as the recipient would read it." in _text(browser, "v-text")
    # The transcript of the captured delivery, as the page shows it ("S:" server, "C:" client).
    transcript = _text(browser, "v-transcript").splitlines()
    assert transcript[0].startswith("S: 220 ")
    assert any(line.startswith(("C: EHLO ", "C: LHLO ")) for line in transcript), transcript
    assert "C: RCPT TO:<someone@example.net>" in transcript
    assert any(line.startswith("S: 250 ") for line in transcript), transcript
    assert browser.execute_script("return window.meta1Marker;") == "still the same page"

    screenshot = tmp_path / "testmode.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 1000
