"""Browser tests of the customer portal: the real `keyledger` binary (dev mode)
against the real PostgreSQL, driven by Playwright in Debian's Chromium.

Each test module gets its own server and database; each test its own
organization, browser context and sign-in link.
"""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("KEYLEDGER_BIN", ROOT / "target" / "debug" / "keyledger"))
POSTGRES = os.environ.get("KEYLEDGER_TEST_POSTGRES", "postgres://postgres@127.0.0.1:5432")
AXE = ROOT / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = ROOT / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`keyledger dev` on a free port with a database of its own."""

    def __init__(self, extra_env=None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.database = f"kl_portal_{uuid.uuid4().hex}"
        self.dir = Path(tempfile.mkdtemp(prefix="kl-portal-"))
        self.log_path = self.dir / "server.log"
        self.env = {
            **os.environ,
            "DATABASE_URL": f"{POSTGRES}/{self.database}",
            "KEYLEDGER_HASH_KEY": os.urandom(32).hex(),
            "KEYLEDGER_LISTEN": f"127.0.0.1:{self.port}",
            "KEYLEDGER_DATA_DIR": str(self.dir / "data"),
            "KEYLEDGER_USAGE_FLUSH_SECONDS": "1",
            "RUST_LOG": "info,sqlx=warn",
            **(extra_env or {}),
        }
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen([str(BINARY), "dev"], env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=1)
                return
            except OSError:
                if self.process.poll() is not None or time.time() > deadline:
                    raise RuntimeError("keyledger did not start:\n" + self.log_path.read_text())
                time.sleep(0.05)

    def cli(self, *args):
        done = subprocess.run([str(BINARY), *args], env=self.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done

    def org(self, name="Acme"):
        """A new organization: its id, admin key and first sign-in link."""
        return json.loads(self.cli("org", "create", "--name", name, "--plan", "pro").stdout)

    def api(self, method, path, key=None, body=None):
        """(status, JSON body) of one API request."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if key:
            request.add_header("Authorization", f"Bearer {key}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            raw = error.read()
            return error.code, json.loads(raw) if raw else None

    def mint(self, admin, user=None):
        status, body = self.api("POST", "/v1/portal/sessions", admin, {"user": user} if user else {})
        assert status == 201, body
        return body["url"]

    def verify(self, key, scopes=None):
        status, body = self.api("POST", "/v1/verify", body={"key": key, "scopes": scopes or [], "environment": "live"})
        assert status == 200, body
        return body["code"]

    def log_text(self):
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        subprocess.run(["psql", f"{POSTGRES}/postgres", "-qc", f'drop database if exists "{self.database}" with (force)'],
                       capture_output=True)


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield b
        b.close()


class Portal:
    """One organization and a signed-in browser context of it."""

    def __init__(self, server, browser, name="Acme", javascript=True):
        self.server = server
        created = server.org(name)
        self.org_id = created["org"]["id"]
        self.admin = created["key"]["key"]
        self.context = browser.new_context(java_script_enabled=javascript, viewport={"width": 1280, "height": 860})
        self.context.set_default_timeout(5000)
        self.page = self.context.new_page()
        self.csp_errors = []
        self.page.on("console", lambda m: self.csp_errors.append(m.text)
                     if "Content Security Policy" in m.text else None)
        self.page.goto(server.mint(self.admin, user="alice@acme.example"))
        assert self.page.url == server.base + "/portal/keys"

    def goto(self, path):
        return self.page.goto(self.server.base + path)

    def create_key(self, name, key_type="Secret", scopes=(), expires_on=None):
        """Creates a key through the form; returns the secret read from the page."""
        page = self.page
        self.goto("/portal/keys")
        page.get_by_role("button", name="Create API key").click()
        page.get_by_label("Name").fill(name)
        page.get_by_label("Type", exact=True).select_option(label=key_type)
        for scope in scopes:
            page.get_by_label(scope, exact=True).check()
        if expires_on:
            page.get_by_label("Expiration").fill(expires_on)
        page.get_by_role("button", name="Create", exact=True).click()
        return page.get_by_label("Your new API key").input_value()

    def row(self, name):
        return self.page.get_by_role("row").filter(has=self.page.get_by_role("link", name=name, exact=True))

    def action(self, key_name, item):
        """Opens the key's Actions menu and picks `item`."""
        self.page.get_by_role("button", name=f"Actions for {key_name}").click()
        self.page.get_by_role("menuitem", name=item).click()

    def key_id(self, name):
        status, body = self.server.api("GET", "/v1/keys?limit=100", self.admin)
        return next(k["id"] for k in body["data"] if k["name"] == name)

    def wait_for_usage(self, key_id, total):
        """Waits until the key's usage counts `total` requests (usage is
        flushed every second): Playwright polls the API from a page of this
        origin that has no CSP of the portal's (`/healthz`)."""
        probe = self.context.new_page()
        probe.goto(self.server.base + "/healthz")
        # The predicate is synchronous (a promise would count as true): each
        # poll reads the last answer and asks again once it came.
        probe.wait_for_function(
            """([path, key, total]) => {
                const seen = window.usageSeen || (window.usageSeen = {asking: false, total: null});
                if (!seen.asking) {
                    seen.asking = true;
                    fetch(path, {headers: {Authorization: `Bearer ${key}`}})
                        .then((answer) => answer.ok ? answer.json() : {})
                        .then((body) => { seen.total = body.total_requests; })
                        .finally(() => { seen.asking = false; });
                }
                return seen.total === total;
            }""",
            arg=[f"/v1/keys/{key_id}/usage", self.admin, total], polling=100, timeout=15000)
        probe.close()

    def close(self):
        assert not self.csp_errors, self.csp_errors
        self.context.close()


@pytest.fixture
def portal(server, browser):
    p = Portal(server, browser)
    yield p
    p.close()


def screenshot(page, name):
    """Saves a screenshot for the README when UPDATE_SCREENSHOTS=1."""
    if os.environ.get("UPDATE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def axe_violations(page):
    """Serious and critical accessibility violations axe-core finds on the page."""
    page.evaluate(AXE.read_text())
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']} ({v['impact']}): {v['help']} — " + "; ".join(n["target"][0] for n in v["nodes"][:3])
        for v in result["violations"] if v["impact"] in ("serious", "critical")
    ]


KEY_PATTERN = re.compile(r"^sk_live_[0-9A-Za-z]{49}$")
