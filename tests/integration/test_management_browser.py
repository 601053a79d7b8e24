"""
The management page in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) against the guard of the loopback lab,
between two real Prosody servers: access refused without credentials, the
page after signing in, a peer appearing when a Prosody connects, the chart
moving under traffic (with a screenshot, docs/management.png), and a reload
refused for a broken policy and accepted for a good one.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from guard.lab.clients import ClientLoop
from guard.lab.topology import DEFAULT_POLICY as ALLOW_ALL

from .policylab import PolicyLab
from .labs import started

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
MANAGEMENT_ADDRESS = "127.0.3.3"
MANAGEMENT_PORT = 19270
BASE = f"http://{MANAGEMENT_ADDRESS}:{MANAGEMENT_PORT}"
TOKEN = "lab-management-token-0123456789abcdef"
# The screenshot goes to the lab folder; GUARD_MANAGEMENT_SCREENSHOT=docs/management.png refreshes the README's.
SCREENSHOT_TO = os.environ.get("GUARD_MANAGEMENT_SCREENSHOT")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,1800", "--hide-scrollbars")

POLICY = """
[policy]
name = "allow-all-but-quarantine"
description = "Pass everything but what goes to the quarantined conference service."
default = "drop"

[sets.domains]
quarantined = ["conference.blue.example"]

[[rules]]
id = "quarantine"
rev = 1
why = "The blue conference service is quarantined."
to_domain = "$quarantined"
verdict = "drop"

[[rules]]
id = "allow-all"
rev = 1
why = "Everything else passes."
verdict = "pass"
keep = "everything"
"""
BROKEN = POLICY.replace('verdict = "drop"', 'verdict = "launch"')

pytestmark = pytest.mark.guard


def browser_missing() -> str | None:
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.path.exists(path):
            return f"{path} is missing: install Debian's {package} (make test does)"
    try:
        import selenium  # noqa: F401 - only whether it is installed
    except ImportError:
        return "selenium is missing: pip install -e '.[test]' (make test does)"
    return None


MANAGEMENT = f"""
[management]
listen = "tcp:{MANAGEMENT_PORT}:interface={MANAGEMENT_ADDRESS}"
token_file = "{{folder}}/management.token"
allow_reload = true
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The policy lab (red->blue judged by POLICY, blue->red by allow-all) whose guard serves the management page,
    reload allowed, with a token file only the guard's user can read."""
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    folder = tmp_path_factory.mktemp("lab-management")
    token_file = folder / "management.token"
    token_file.write_text(TOKEN + "\n")
    os.chmod(token_file, 0o600)
    laboratory = PolicyLab(folder, POLICY, ALLOW_ALL.read_text(), extra_config=MANAGEMENT)
    yield started(laboratory, ready=lambda: wait_until(lambda: port_open(MANAGEMENT_ADDRESS, MANAGEMENT_PORT),
                                                       what="the management page's port"))
    laboratory.stop()


@pytest.fixture(scope="module")
def policy(lab):
    """red's policy file, which the reload test breaks and mends."""
    return lab.policy_files["red"]


def port_open(address, port) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex((address, port)) == 0


@pytest.fixture(scope="module")
def clients(lab):
    loop = ClientLoop()
    romeo = lab.client(loop, "romeo@red.example").connect()
    juliet = lab.client(loop, "juliet@blue.example").connect()
    yield romeo, juliet
    romeo.disconnect()
    juliet.disconnect()
    loop.close()


@pytest.fixture(scope="module")
def browser(lab):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="guard-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(condition, timeout=20.0, every=0.25, what="the condition"):
    """Poll ``condition`` (bounded in time) until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what} did not hold within {timeout} s")


def sign_in(browser):
    from selenium.webdriver.common.by import By

    browser.get(BASE + "/login")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "sign-in").click()
    wait_until(lambda: browser.find_elements(By.ID, "service-state"), what="the status page after signing in")


def side_table(browser, side):
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, f'div.side[data-side="{side}"]').text


def csp_violations(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if "Content Security Policy" in entry["message"]]


def test_access_is_refused_without_credentials(lab, browser):
    """Without the token the browser gets the sign-in form and nothing of the guard; a script gets a 401."""
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(BASE + "/")
    assert browser.find_elements(By.ID, "token") and not browser.find_elements(By.ID, "service-state")
    assert "red.example" not in browser.page_source
    for path in ("/", "/rates.json", "/reload"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(BASE + path, timeout=10)
        assert refused.value.code == 401 and refused.value.headers["X-Frame-Options"] == "DENY"
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "sign-in").click()
    assert wait_until(lambda: browser.find_elements(By.ID, "login-problem"), what="the refusal").pop().text == "wrong token"


def test_the_page_loads_after_signing_in_with_no_csp_violation(lab, browser):
    """Signed in, the page shows the running service and its policies, and Chromium reports no CSP violation
    (no inline script or style on the page)."""
    from selenium.webdriver.common.by import By

    browser.get_log("browser")
    sign_in(browser)
    assert browser.find_element(By.ID, "service-state").text == "running"
    assert "allow-all-but-quarantine" in browser.find_element(By.ID, "policies").text
    wait_until(lambda: browser.find_element(By.ID, "rates-chart").get_attribute("data-readings") not in (None, "0"),
               what="the chart's first reading")
    assert csp_violations(browser) == []


def test_a_peer_appears_after_a_real_prosody_connects(lab, browser, clients):
    """Once romeo's message crosses, red's Prosody is an inbound peer on side red (certificate authenticated, with
    its certificate subject) and the guard's stream to blue's Prosody is an outbound peer on side blue."""
    romeo, juliet = clients
    sign_in(browser)
    romeo.send_message("juliet@blue.example", "wherefore art thou")
    juliet.wait_for_body("romeo@red.example", "wherefore art thou")

    def peers_shown():
        browser.refresh()
        red, blue = side_table(browser, "red"), side_table(browser, "blue")
        return "red.example inbound" in red and "blue.example outbound" in blue and (red, blue)

    red, blue = wait_until(peers_shown, what="the peers on the page")
    assert "certificate" in red and "red.example" in red.split("inbound", 1)[1]


def test_the_chart_moves_under_traffic_and_the_screenshot_is_taken(lab, browser, clients):
    """Messages both ways for a few seconds: the chart reads a rate above zero for red->blue passed, its pixels
    change, a refusal shows in the table; the page under traffic is saved as a PNG of a few hundred KiB at most."""
    from selenium.webdriver.common.by import By

    romeo, juliet = clients
    sign_in(browser)
    canvas = browser.find_element(By.ID, "rates-chart")
    blank = browser.execute_script("return arguments[0].toDataURL();", canvas)
    stop = threading.Event()

    def traffic():
        sent = 0
        while not stop.is_set() and sent < 3000:
            romeo.send_message("juliet@blue.example", f"message {sent}")
            juliet.send_message("romeo@red.example", f"answer {sent}")
            if sent % 20 == 0:
                romeo.send_message("room@conference.blue.example", "to the quarantine")
            sent += 1
            time.sleep(0.02)

    sender = threading.Thread(target=traffic, daemon=True)
    sender.start()
    try:
        wait_until(lambda: float(canvas.get_attribute("data-peak") or 0) > 1.0, timeout=30, what="a rate above 1/s")
        wait_until(lambda: "red->blue passed" in browser.find_element(By.ID, "rates-legend").text,
                   what="the red->blue passed series")
        assert browser.execute_script("return arguments[0].toDataURL();", canvas) != blank
        browser.refresh()
        canvas = browser.find_element(By.ID, "rates-chart")
        wait_until(lambda: int(canvas.get_attribute("data-readings") or 0) >= 20, timeout=40,
                   what="twenty readings after refresh")
        assert "quarantine" in browser.find_element(By.ID, "refusals").text
        screenshot = Path(SCREENSHOT_TO) if SCREENSHOT_TO else lab.folder / "management.png"
        assert browser.save_screenshot(str(screenshot))
    finally:
        stop.set()
        sender.join(timeout=30)
    assert 10 * 1024 < screenshot.stat().st_size < 400 * 1024


def test_a_broken_policy_is_refused_with_the_checkers_message_and_a_good_one_is_reloaded(lab, browser, policy):
    """Reload from the page: confirm, then the checker's refusal (naming the key and the rule) for a broken policy,
    with the policies in force unchanged; the same steps with the good policy reload it."""
    from selenium.webdriver.common.by import By

    sign_in(browser)
    loaded_before = browser.find_element(By.ID, "policies").text

    def reload_from_the_page():
        browser.get(BASE + "/")
        browser.find_element(By.ID, "reload-link").click()
        wait_until(lambda: browser.find_elements(By.ID, "confirm-reload"), what="the confirmation").pop().click()
        return wait_until(lambda: browser.find_elements(By.ID, "reload-result"), what="the result").pop()

    policy.write_text(BROKEN)
    try:
        result = reload_from_the_page()
        assert result.get_attribute("data-reloaded") == "false" and "Reload refused" in result.text
        message = browser.find_element(By.ID, "checker-message").text
        assert "sides.red.policy" in message and "launch" in message
        browser.get(BASE + "/")
        assert browser.find_element(By.ID, "policies").text == loaded_before
    finally:
        policy.write_text(POLICY)
    result = reload_from_the_page()
    assert result.get_attribute("data-reloaded") == "true" and "Policies reloaded" in result.text
    assert csp_violations(browser) == []
