#!/usr/bin/env python3
"""The web console in headless Chromium (Selenium), for crates/burrow/tests/web.rs.

Argument: JSON with the console's base URL, each operator's ssh config, the screenshot folder
and the relay's data directory. Asks the Rust test for what only it can do by printing
"REQ ..." and reading one answer line. A failing scenario saves a screenshot of every open
browser and exits non-zero.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

P = json.loads(sys.argv[1])
BASE = P["base"]
WAIT = 20
browsers = {}


def say(*a):
    print(*a, flush=True)


def ask(line):
    say("REQ " + line)
    return sys.stdin.readline().strip()


def browser(name):
    o = Options()
    for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if os.path.exists(path):
            o.binary_location = path
            break
    # As root Chromium needs --no-sandbox; the rest keeps it off the (closed) network.
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-default-apps",
                "--window-size=1280,900",
                "--user-data-dir=" + tempfile.mkdtemp(prefix="burrow-chromium-")):
        o.add_argument(arg)
    driver_path = next((p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")
                        if os.path.exists(p)), None)
    d = webdriver.Chrome(options=o, service=Service(executable_path=driver_path))
    d.set_page_load_timeout(WAIT)
    d.set_script_timeout(WAIT)
    browsers[name] = d
    return d


def until(d, what, cond, timeout=WAIT):
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.1).until(lambda d: cond(d))
    except TimeoutException:
        raise AssertionError("timed out waiting for " + what)


def link(operator):
    out = subprocess.run(["ssh", "-F", P["ssh_configs"][operator], "relay", "web"],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return next(l.strip() for l in out.stdout.splitlines() if "/login/link#" in l)


def log_in(d, operator):
    d.get(link(operator))
    until(d, operator + "'s fleet page", lambda d: d.current_url == BASE + "/" and
          d.find_elements(By.ID, "fleet"))


def row_state(d, device):
    # Read in one script: live updates replace the rows at any moment.
    return d.execute_script("""
        var r = document.querySelector('tr[data-device="' + arguments[0] + '"]');
        return r ? [r.querySelector('.state').textContent, r.querySelector('.reason').textContent] : null;
        """, device)


def console_text(d):
    return d.execute_script("return window.burrowConsole ? window.burrowConsole.text : ''")


def open_console(d):
    d.get(BASE + "/console/pi/console")
    until(d, "the console to connect", lambda d: "connected to pi/console" in console_text(d))


def type_keys(d, keys):
    box = d.find_element(By.CSS_SELECTOR, ".xterm-helper-textarea")
    box.send_keys(keys)


def scenario_link_once(alice):
    l = link("alice")
    alice.get(l)
    until(alice, "the fleet page", lambda d: d.current_url == BASE + "/")
    assert "#" not in alice.current_url, "the secret left the address bar"
    alice.get(l)
    until(alice, "the used link refused", lambda d: "used already" in
          d.find_element(By.ID, "status").text)
    say("ok: the link logged in once and was refused the second time")


def scenario_fleet_online_then_offline(alice):
    alice.get(BASE + "/")
    until(alice, "edge online", lambda d: (row_state(d, "edge") or ("",))[0] == "online")
    assert ask("stop-agent") == "OK"
    # Live update: no reload.
    st = until(alice, "edge offline with its reason",
               lambda d: (row_state(d, "edge") or ("",))[0] == "offline" and row_state(d, "edge"))
    # How its session ended, as `device ls` says it: the agent said goodbye.
    assert st[1] == "clean", st
    say("ok: edge went offline on the live page:", st[1])
    alice.save_screenshot(os.path.join(P["screenshots"], "fleet.png"))
    # Its label filters the fleet.
    alice.find_element(By.CSS_SELECTOR, 'tr[data-device="edge"] a.label').click()
    until(alice, "the fleet filtered by site=osaka", lambda d: "label=site%3Dosaka" in d.current_url
          and row_state(d, "edge") is not None)
    assert row_state(alice, "pi") is None, "pi has no site=osaka label"
    say("ok: the fleet filtered by a device's label")


def scenario_console(alice, bob, vera):
    open_console(alice)
    until(alice, "alice to write", lambda d: d.find_element(By.ID, "role").get_attribute("data-write") == "1")
    type_keys(alice, "show version\n")
    until(alice, "the router's answer", lambda d: "Router# got show version" in console_text(d))
    say("ok: typed into the console and the router answered")
    open_console(bob)
    until(bob, "bob read-only", lambda d: d.find_element(By.ID, "role").get_attribute("data-write") == "0"
          and "alice" in d.find_element(By.ID, "role").text)
    until(bob, "bob to see alice's session", lambda d: "Router# got show version" in console_text(d))
    say("ok: a second browser session is read-only:", bob.find_element(By.ID, "role").text)
    alice.find_element(By.ID, "break").click()
    until(alice, "the break notice", lambda d: "break (500 ms) sent by alice" in console_text(d))
    rec_dir = os.path.join(P["data_dir"], "recordings", "pi")
    def recorded(_):
        for f in os.listdir(rec_dir):
            with open(os.path.join(rec_dir, f)) as fh:
                if "break (500 ms) sent by alice" in fh.read():
                    return True
        return False
    until(alice, "the break in the recording", recorded)
    say("ok: break pressed, and it is in the recording")
    open_console(vera)
    until(vera, "vera read-only", lambda d: d.find_element(By.ID, "role").get_attribute("data-write") == "0")
    type_keys(vera, "vera-was-here\n")
    until(vera, "the viewer told", lambda d: "viewer" in console_text(d))
    vera.find_element(By.ID, "take").click()
    vera.find_element(By.ID, "force").click()
    # Everything vera sent before alice's next line has reached the relay by the time the
    # router answers alice.
    type_keys(alice, "after-vera\n")
    until(alice, "the router's answer to alice", lambda d: "Router# got after-vera" in console_text(d))
    assert ask("router-has vera-was-here") == "NO", "a viewer's keystrokes reached the router"
    assert alice.find_element(By.ID, "role").get_attribute("data-write") == "1", "vera took write"
    say("ok: a viewer cannot write (keys, take, force)")
    scenario_power(alice, vera)


def scenario_power(alice, vera):
    """The Power button asks first; dismissed it does nothing, accepted the agent switches."""
    Select(alice.find_element(By.ID, "power")).select_by_value("off")
    alice.find_element(By.ID, "set-power").click()
    WebDriverWait(alice, WAIT).until(EC.alert_is_present())
    alice.switch_to.alert.dismiss()
    # A dismissed question sends nothing: the next line reaches the router with no switch.
    type_keys(alice, "before-power\n")
    until(alice, "the router's answer", lambda d: "Router# got before-power" in console_text(d))
    assert ask("power-calls") == "[]", "power switched without confirmation"
    alice.find_element(By.ID, "set-power").click()
    WebDriverWait(alice, WAIT).until(EC.alert_is_present())
    alice.switch_to.alert.accept()
    until(alice, "the power's outcome", lambda d: "power off: done" in console_text(d))
    assert ask("power-calls") == "[off]", "the agent's power command did not run once"
    # A viewer's button is refused at the relay, not only hidden by the page.
    Select(vera.find_element(By.ID, "power")).select_by_value("on")
    vera.find_element(By.ID, "set-power").click()
    WebDriverWait(vera, WAIT).until(EC.alert_is_present())
    vera.switch_to.alert.accept()
    type_keys(alice, "after-viewer-power\n")
    until(alice, "the router's answer", lambda d: "Router# got after-viewer-power" in console_text(d))
    assert ask("power-calls") == "[off]", "a viewer switched the power"
    say("ok: power from the console page, after confirmation, writer only")


def scenario_csrf_and_origin(alice):
    alice.get(BASE + "/")
    status = alice.execute_async_script(
        "var done = arguments[0]; fetch('/logout', {method: 'POST'}).then(r => done(r.status), e => done(String(e)));")
    assert status == 403, status
    say("ok: a POST without a CSRF token is refused:", status)
    # A page of another origin (here an opaque one) opens the console's socket in the same
    # browser. (tests/web.rs also sends the session's cookie with a foreign Origin: 403.)
    alice.get("data:text/html,<title>elsewhere</title><p>another site</p>")
    ws = BASE.replace("http://", "ws://") + "/console/pi/console/ws"
    outcome = alice.execute_async_script("""
        var done = arguments[arguments.length - 1];
        try {
            var ws = new WebSocket(arguments[0]);
            ws.onopen = function () { done('open'); };
            ws.onerror = function () { done('refused'); };
        } catch (e) { done('refused: ' + e); }
        setTimeout(function () { done('no answer'); }, 10000);""", ws)
    assert outcome.startswith("refused"), outcome
    say("ok: a WebSocket from another origin is refused")


def scenario_policy():
    olga = browser("olga")
    # The password form this time (a real form post, its Origin checked).
    olga.get(BASE + "/login")
    olga.find_element(By.NAME, "name").send_keys("olga")
    olga.find_element(By.NAME, "password").send_keys("wrong")
    olga.find_element(By.CSS_SELECTOR, "form.login button").click()
    until(olga, "the refusal", lambda d: "Wrong name, password or code" in d.page_source)
    olga.find_element(By.NAME, "name").send_keys("olga")
    olga.find_element(By.NAME, "password").send_keys("olga's password")
    olga.find_element(By.CSS_SELECTOR, "form.login button").click()
    until(olga, "olga's fleet page", lambda d: d.current_url == BASE + "/" and d.find_elements(By.ID, "fleet"))
    assert row_state(olga, "edge") is not None, "olga's own device missing"
    assert row_state(olga, "pi") is None, "olga sees pi"
    olga.get(BASE + "/device/pi")
    assert "No device pi" in olga.page_source
    olga.get(BASE + "/console/pi/console")
    assert "No such console" in olga.page_source
    say("ok: an operator does not see devices outside its policy")


def scenario_play(alice, bob):
    alice.get(BASE + "/recordings")
    # bob and vera are still attached: the console in use is offered to watch live.
    alice.find_element(By.CSS_SELECTOR, '#live a[href="/console/pi/console?watch=1"]').click()
    until(alice, "watching live, read-only", lambda d: "connected to pi/console, read-only" in console_text(d))
    # alice left the console: bob takes write (the button sends what Ctrl-E c a does).
    bob.find_element(By.ID, "take").click()
    until(bob, "bob to write", lambda d: d.find_element(By.ID, "role").get_attribute("data-write") == "1")
    type_keys(bob, "seen-live\n")
    until(alice, "bob's line seen live", lambda d: "Router# got seen-live" in console_text(d))
    say("ok: a console in use watched live from the recordings page")
    alice.get(BASE + "/recordings")
    alice.find_element(By.CSS_SELECTOR, 'a[href^="/recordings/pi/"]').click()
    until(alice, "the player", lambda d: d.execute_script(
        "return !!(window.burrowPlayer && document.querySelector('.ap-player'))"))
    # Seek to the end and read what the player's terminal shows.
    alice.execute_async_script("""
        var done = arguments[0], p = window.burrowPlayer;
        Promise.resolve(p.getDuration()).then(function (d) {
            return p.seek(d || 1);
        }).then(function () { done(true); }, function (e) { done(String(e)); });""")
    until(alice, "the recording's text in the player", lambda d: "Router# got show version" in
          d.execute_script("return document.querySelector('.ap-player').innerText"))
    say("ok: the recording plays in the browser, seeking to its end")


def scenario_device_ui(alice):
    alice.get(BASE + "/d/pi/8080/")
    # The app redirected "/" to its absolute "/login": still under the prefix.
    until(alice, "the device's login page", lambda d: d.current_url == BASE + "/d/pi/8080/login")
    alice.find_element(By.ID, "user").send_keys("alice-on-the-device")
    alice.find_element(By.ID, "go").click()
    # Its cookie (Path=/) came back under the prefix, and its next redirect stayed there.
    until(alice, "the device's home page", lambda d: d.current_url == BASE + "/d/pi/8080/home" and
          "Welcome, alice-on-the-device" in d.find_element(By.ID, "welcome").text)
    until(alice, "the WebSocket through the relay", lambda d:
          d.find_element(By.ID, "echo").text == "echo: echo of ping through the relay")
    say("ok: the device's web UI through path routing (redirects, cookies, WebSocket)")
    # Host routing: the same app at http://8080--pi.localhost:PORT/, its login handed over
    # from the console's host.
    host = BASE.replace("://localhost", "://8080--pi.localhost")
    alice.get(host + "/")
    until(alice, "the device's login page by host", lambda d: d.current_url == host + "/login")
    alice.find_element(By.ID, "user").send_keys("alice-by-host")
    alice.find_element(By.ID, "go").click()
    until(alice, "the device's home page by host", lambda d: d.current_url == host + "/home" and
          "Welcome, alice-by-host" in d.find_element(By.ID, "welcome").text)
    until(alice, "the WebSocket by host", lambda d:
          d.find_element(By.ID, "echo").text == "echo: echo of ping through the relay")
    cookies = {c["name"] for c in alice.get_cookies()}
    assert "burrow_session" not in cookies, "the console's cookie reached the device's host"
    say("ok: the device's web UI through host routing (PORT--NAME), its own host-only cookie")


def scenario_admin():
    adam = browser("adam")
    log_in(adam, "adam")
    adam.get(BASE + "/admin")
    box = adam.find_element(By.CSS_SELECTOR, 'tr[data-operator="olga"] input[name="allow"]')
    box.clear()
    box.send_keys("edge* pi")
    adam.find_element(By.CSS_SELECTOR, 'tr[data-operator="olga"] button').click()
    until(adam, "olga's new policy on the admin page", lambda d: d.current_url == BASE + "/admin" and
          d.find_element(By.CSS_SELECTOR, 'tr[data-operator="olga"] input[name="allow"]')
          .get_attribute("value") == "edge* pi")
    olga = browsers["olga"]
    olga.get(BASE + "/")
    until(olga, "pi on olga's fleet page", lambda d: row_state(d, "pi") is not None)
    say("ok: an admin widened olga's policy from the admin page; olga sees pi")


def main():
    os.makedirs(P["screenshots"], exist_ok=True)
    try:
        alice = browser("alice")
        scenario_link_once(alice)
        scenario_fleet_online_then_offline(alice)
        bob = browser("bob")
        log_in(bob, "bob")
        vera = browser("vera")
        log_in(vera, "vera")
        scenario_console(alice, bob, vera)
        scenario_csrf_and_origin(alice)
        scenario_device_ui(alice)
        scenario_policy()
        alice.get(BASE + "/")
        scenario_play(alice, bob)
        scenario_admin()
        for name, d in browsers.items():
            d.save_screenshot(os.path.join(P["screenshots"], "ok-%s.png" % name))
        say("ALL PASSED")
        return 0
    except Exception:
        say("FAILED: " + traceback.format_exc().replace("\n", "\n  "))
        for name, d in browsers.items():
            try:
                path = os.path.join(P["screenshots"], "failed-%s.png" % name)
                d.save_screenshot(path)
                say("screenshot:", path, "at", d.current_url)
            except Exception as e:
                say("no screenshot of", name, e)
        return 1
    finally:
        for d in browsers.values():
            try:
                d.quit()
            except Exception:
                pass


if __name__ == "__main__":
    sys.exit(main())
