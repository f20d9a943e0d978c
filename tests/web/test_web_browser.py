"""The local web page in a real headless Chromium, against a real agent (``urbanedge run``)
polling a streetlight simulator and forwarding to a real Mosquitto.

The password is set with the real CLI (``urbanedge web passwd``, password on stdin). The
browser is refused without a session, signs in, sees the devices, switches to Vietnamese,
sees a chart with data points and its data table, and the DOM has the accessibility facts
the page promises (lang, skip link, labels, headings, SVG title/desc). Plain HTTP checks
cover what a browser hides: the API's 401, the security headers, the wrong-password path.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto
from tests.support.ports import free_port
from tests.support.procs import AgentProc, SimProc, agent_config, tcp_bus, wait_for

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402
from selenium_axe_python import Axe  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "correct horse battery"

pytestmark = pytest.mark.skipif(not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
                                reason="Debian's chromium and chromium-driver are not installed (scripts/test.sh)")


def request(port: int, method: str, path: str, *, body: str | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        hdrs = {k.lower(): v for k, v in resp.getheaders()}
        hdrs["set-cookie"] = "\n".join(v for k, v in resp.getheaders() if k.lower() == "set-cookie")
        return resp.status, hdrs, resp.read().decode()
    finally:
        conn.close()


# WCAG 2.1 levels A and AA, what public-sector sites are held to.
AXE_OPTIONS = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}}


def axe_violations(browser: webdriver.Chrome) -> list[str]:
    """axe-core's audit of the page as shown: one line per violated rule, with where."""
    axe = Axe(browser)
    axe.inject()
    result = axe.run(options=AXE_OPTIONS)
    assert result["passes"], "axe ran no check at all"
    return [f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
            for v in result["violations"]]


def web_up(port: int) -> bool:
    try:
        return request(port, "GET", "/login")[0] == 200
    except OSError:
        return False


@pytest.fixture
def streetlights() -> Iterator[int]:
    port = free_port()
    sim = SimProc.start("streetlight", "--tcp", f"127.0.0.1:{port}", "--units", "1-2", "--seed", "5")
    try:
        yield port
    finally:
        sim.stop()


@pytest.fixture
def agent_web(tmp_path: Path, mosquitto: Mosquitto, streetlights: int) -> Iterator[int]:
    wport = free_port()
    cfg = agent_config(tmp_path / "agent.toml", broker_port=mosquitto.port,
                       buses=tcp_bus(streetlights, [("sl-1", "streetlight", 1), ("sl-2", "streetlight", 2)],
                                     interval=0.3))
    with cfg.open("a") as f:
        f.write(f'\n[web]\nlisten = "127.0.0.1:{wport}"\npasswords = "web-passwords"\nrefresh = 2\n'
                f'default_lang = "en"\n')
    done = subprocess.run([sys.executable, "-m", "urbanedge", "web", "passwd", "--config", str(cfg), "tech"],
                          input=PASSWORD + "\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "web-passwords").stat().st_mode & 0o777 == 0o600
    assert PASSWORD not in (tmp_path / "web-passwords").read_text()
    agent = AgentProc(cfg)
    agent.start()
    try:
        wait_for(lambda: web_up(wport), 30, "the web page")
        yield wport
        assert agent.alive(), agent.log_text()[-3000:]
        assert "Traceback" not in agent.log_text()
    finally:
        agent.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 "--lang=en-US", "--window-size=1280,1000"):
        opts.add_argument(flag)
    try:
        drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    except WebDriverException as exc:  # pragma: no cover - depends on the machine
        pytest.fail(f"chromium did not start: {exc}")
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def test_http_refuses_without_session_and_sends_security_headers(agent_web: int) -> None:
    port = agent_web
    status, hdrs, _ = request(port, "GET", "/")
    assert status == 303 and hdrs["location"] == "/login"
    status, hdrs, body = request(port, "GET", "/api/status")
    assert status == 401 and json.loads(body) == {"error": "unauthorized"}
    status, hdrs, body = request(port, "GET", "/login")
    assert status == 200
    csp = hdrs["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert hdrs["x-frame-options"] == "DENY" and hdrs["cache-control"] == "no-store"
    assert "HttpOnly" in hdrs["set-cookie"] and "SameSite=Strict" in hdrs["set-cookie"]
    # A forged Host (DNS rebinding) is refused before anything else.
    assert request(port, "GET", "/login", headers={"Host": "evil.example:80"})[0] == 421
    # Wrong password, with a valid form token: 401 and no session cookie.
    form_token = hdrs["set-cookie"].split("ue_form=", 1)[1].split(";", 1)[0]
    body = urllib.parse.urlencode({"form": form_token, "username": "tech", "password": "wrong password"})
    status, hdrs, page = request(port, "POST", "/login", body=body, headers={
        "Content-Type": "application/x-www-form-urlencoded", "Cookie": f"ue_form={form_token}"})
    assert status == 401 and "ue_session=" not in hdrs["set-cookie"]
    assert "Wrong user name or password." in page
    # The right password without the form cookie (a cross-site post): refused.
    body = urllib.parse.urlencode({"form": form_token, "username": "tech", "password": PASSWORD})
    status, hdrs, _ = request(port, "POST", "/login", body=body,
                              headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403 and "ue_session=" not in hdrs["set-cookie"]


def test_technician_signs_in_sees_devices_and_chart_in_vietnamese(agent_web: int, browser: webdriver.Chrome) -> None:
    base = f"http://127.0.0.1:{agent_web}"
    wait = WebDriverWait(browser, 20)
    browser.get(base + "/")
    # Refused without a session: the browser lands on the sign-in form.
    assert urllib.parse.urlsplit(browser.current_url).path == "/login"
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("lang") == "en"
    assert axe_violations(browser) == []
    # Labels belong to their fields (what a screen reader reads for each input).
    for field_id in ("username", "password"):
        label = browser.find_element(By.CSS_SELECTOR, f'label[for="{field_id}"]')
        assert label.text.strip()
        assert browser.find_element(By.ID, field_id).get_attribute("name") == field_id
    browser.find_element(By.ID, "username").send_keys("tech")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form.login button[type=submit]").click()
    wait.until(lambda d: urllib.parse.urlsplit(d.current_url).path == "/")
    cookies = {c["name"]: c for c in browser.get_cookies()}
    assert cookies["ue_session"]["httpOnly"] and cookies["ue_session"]["sameSite"] == "Strict"

    # The devices, as `urbanedge status` lists them, online once polled.
    def devices_online(d: webdriver.Chrome) -> bool:
        d.refresh()
        rows = d.find_elements(By.CSS_SELECTOR, "table.devices tbody tr")
        return len(rows) == 2 and all("Online" in r.text for r in rows)
    wait.until(devices_online)
    assert [r.find_element(By.TAG_NAME, "th").text for r in
            browser.find_elements(By.CSS_SELECTOR, "table.devices tbody tr")] == ["sl-1", "sl-2"]
    assert browser.find_element(By.ID, "uplink-state").text == "Connected"
    assert axe_violations(browser) == []

    # Switch to Vietnamese with the visible switcher (by keyboard: focus the link, press Enter).
    link = browser.find_element(By.CSS_SELECTOR, 'nav.lang a[hreflang="vi"]')
    link.send_keys("\n")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "html").get_attribute("lang") == "vi")
    assert "Trạng thái cổng gw-test" in browser.find_element(By.TAG_NAME, "h1").text
    assert browser.find_element(By.CSS_SELECTOR, 'nav.lang a[aria-current="true"]').get_attribute("hreflang") == "vi"
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "table.devices tbody tr")) == 2)
    states = [r.find_elements(By.TAG_NAME, "td")[2].text for r in
              browser.find_elements(By.CSS_SELECTOR, "table.devices tbody tr")]
    assert states == ["Trực tuyến", "Trực tuyến"]

    # The chart of recent readings: an SVG with several data points, title and desc for
    # screen readers, and the same readings in a data table.
    def chart_with_points(d: webdriver.Chrome) -> bool:
        d.refresh()
        return len(d.find_elements(By.CSS_SELECTOR, "svg#chart-sl-1-voltage circle.pt")) >= 3
    wait.until(chart_with_points)
    svg = browser.find_element(By.ID, "chart-sl-1-voltage")
    assert svg.get_attribute("role") == "img"
    title = svg.find_element(By.TAG_NAME, "title").get_attribute("textContent")
    desc = svg.find_element(By.TAG_NAME, "desc").get_attribute("textContent")
    assert title.startswith("sl-1: voltage") and desc.startswith("Biểu đồ đường")
    assert set(svg.get_attribute("aria-labelledby").split()) == {"chart-sl-1-voltage-title", "chart-sl-1-voltage-desc"}
    n_points = len(svg.find_elements(By.CSS_SELECTOR, "circle.pt"))
    table = browser.find_element(By.ID, "tbl-sl-1-voltage")
    table.find_element(By.TAG_NAME, "summary").click()
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) >= n_points  # the table was rendered with the chart or after it (more readings)
    assert all(float(r.find_elements(By.TAG_NAME, "td")[1].text) > 0 for r in rows)

    # Auto-refresh (every 2 s here) swaps in new figures but keeps the open table open and the
    # keyboard focus where it was.
    assert browser.switch_to.active_element.get_attribute("id") == "sum-sl-1-voltage"
    before = browser.find_element(By.CSS_SELECTOR, "#live .updated").text
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#live .updated").text != before)
    assert browser.find_element(By.ID, "tbl-sl-1-voltage").get_attribute("open") is not None
    assert browser.switch_to.active_element.get_attribute("id") == "sum-sl-1-voltage"
    # The full page in Vietnamese, chart and open data table included.
    assert axe_violations(browser) == []
    # (and the audit does see a fault: an image without a text alternative)
    browser.execute_script("document.getElementById('main').insertAdjacentHTML('beforeend', '<img src=\\'x.png\\'>')")
    assert [v.split(" ")[0] for v in axe_violations(browser)] == ["image-alt"]
    if os.environ.get("UE_WEB_SCREENSHOT"):  # a look at the page when changing it
        browser.save_screenshot(os.environ["UE_WEB_SCREENSHOT"])

    # Accessibility facts of the page: skip link first and pointing at main, one h1, section
    # headings, header cells with scope, every form control labelled or with a label for it.
    first_link = browser.find_element(By.CSS_SELECTOR, "body > a")
    assert first_link.get_attribute("class") == "skip" and first_link.get_attribute("href").endswith("#main")
    assert browser.find_element(By.ID, "main").tag_name == "main"
    assert len(browser.find_elements(By.TAG_NAME, "h1")) == 1
    assert len(browser.find_elements(By.TAG_NAME, "h2")) >= 5
    assert all(th.get_attribute("scope") in ("col", "row")
               for th in browser.find_elements(By.CSS_SELECTOR, "table.devices th"))
    unlabelled = browser.execute_script(
        "return Array.from(document.querySelectorAll('input:not([type=hidden])'))"
        ".filter(function (i) { return !(i.labels && i.labels.length); }).length;")
    assert unlabelled == 0
    # The auto-refresh script ran (CSP allows it from 'self') and shows its control.
    assert browser.find_element(By.ID, "refresh-ctl").is_displayed()
    # Keyboard: on a freshly loaded page the skip link is the first thing Tab reaches, and
    # following it moves the focus to the main content.
    browser.get(base + "/")
    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("class") == "skip"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "main"

    # Sign out: the session is gone, the page is refused again.
    browser.find_element(By.CSS_SELECTOR, "form.logout button").click()
    wait.until(lambda d: urllib.parse.urlsplit(d.current_url).path == "/login")
    browser.get(base + "/")
    assert urllib.parse.urlsplit(browser.current_url).path == "/login"


def test_agent_polls_on_when_the_web_address_is_taken(tmp_path: Path, mosquitto: Mosquitto,
                                                      streetlights: int) -> None:
    from agent.buffer.store import Outbox

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    cfg = agent_config(tmp_path / "agent.toml", broker_port=mosquitto.port,
                       buses=tcp_bus(streetlights, [("sl-1", "streetlight", 1)], interval=0.2))
    with cfg.open("a") as f:
        f.write(f'\n[web]\nlisten = "127.0.0.1:{taken.getsockname()[1]}"\npasswords = "pw"\n')
    agent = AgentProc(cfg)
    agent.start()

    def last_seq() -> int:
        outbox = Outbox.open_readonly(tmp_path / "outbox.db")
        if outbox is None:
            return 0
        try:
            return int(outbox.stats().last_seq or 0)
        finally:
            outbox.close()
    try:
        wait_for(lambda: "event=web_start_failed" in agent.log_text(), 30, "the bind failure to be logged")
        seq = last_seq()
        wait_for(lambda: last_seq() > seq + 5, 30, "more readings after the failure")
        assert agent.alive()
    finally:
        agent.stop()
        taken.close()
