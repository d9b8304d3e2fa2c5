"""The portal's Webhooks page in a real browser: add an endpoint (its signing
secret shown once), receive a signed delivery in a real HTTP receiver, read
the delivery log, replay, edit, disable/enable, delete — against `keyledger
dev`, whose worker really delivers (private destinations allowed, so the
receiver can listen on 127.0.0.1)."""
import base64
import hashlib
import hmac
import http.server
import json
import re
import threading
import time

import pytest
from playwright.sync_api import expect

from conftest import Server, axe_violations, screenshot

SECRET_PATTERN = re.compile(r"^whsec_[A-Za-z0-9+/]{43}=$")


class Receiver:
    """A real HTTP server on 127.0.0.1 that records what it receives."""

    def __init__(self):
        self.got = []
        received = self.got

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict((k.lower(), v) for k, v in self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="module")
def server():
    s = Server({"KEYLEDGER_WEBHOOK_ALLOW_PRIVATE": "true", "KEYLEDGER_WEBHOOK_RETRY_SECONDS": "1"})
    yield s
    s.stop()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def add_endpoint(portal, url, events=(), description=""):
    """Adds an endpoint through the form; returns the secret read from the page."""
    page = portal.page
    portal.goto("/portal/webhooks")
    page.get_by_role("button", name="Add endpoint").first.click()
    page.get_by_label("URL").fill(url)
    if events:
        page.get_by_label("All events").uncheck()
        for event in events:
            page.get_by_label(event, exact=True).check()
    if description:
        page.get_by_label("Description").fill(description)
    page.get_by_role("button", name="Add endpoint").click()
    return page.get_by_label("Signing secret").input_value()


def verify(secret, headers, body):
    """The Standard Webhooks check, written here from the specification."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(sig == f"v1,{expected}" for sig in headers["webhook-signature"].split(" "))


def wait_until(condition, seconds=15):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.1)


def test_add_an_endpoint_see_its_secret_once_and_its_signed_delivery_in_the_log(server, portal, receiver):
    page = portal.page
    secret = add_endpoint(portal, receiver.url, events=["key.deactivated"], description="SIEM")
    assert SECRET_PATTERN.match(secret), secret
    expect(page.get_by_text("It will not be shown again.")).to_be_visible()
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    status, listed = server.api("GET", "/v1/webhooks", portal.admin)
    assert [e["events"] for e in listed["data"]] == [["key.deactivated"]]
    endpoint_id = listed["data"][0]["id"]
    page.get_by_role("link", name="Done").click()
    assert secret not in page.content() and secret not in page.url
    portal.goto("/portal/webhooks")
    assert secret not in page.content()
    expect(page.get_by_role("link", name=receiver.url)).to_be_visible()

    status, key = server.api("POST", "/v1/keys", portal.admin, {"name": "Hooked", "type": "secret"})
    server.api("POST", f"/v1/keys/{key['id']}/deactivate", portal.admin, {})
    wait_until(lambda: len(receiver.got) == 1)
    headers, body = receiver.got[0]
    assert verify(secret, headers, body)
    assert json.loads(body)["type"] == "key.deactivated"
    assert key["key"][8:] not in body.decode()

    portal.goto(f"/portal/webhooks/{endpoint_id}")
    expect(page.get_by_role("heading", name="Delivery log")).to_be_visible()
    row = page.get_by_role("row").filter(has_text="key.deactivated")
    expect(row).to_contain_text("Delivered")
    expect(row).to_contain_text("200")
    expect(row).to_contain_text(headers["webhook-id"])
    screenshot(page, "webhook-deliveries")
    assert secret not in server.log_text()


def test_replay_edit_disable_enable_and_delete(server, portal, receiver):
    page = portal.page
    add_endpoint(portal, receiver.url)
    page.get_by_role("link", name="Done").click()
    server.api("POST", "/v1/keys", portal.admin, {"name": "Replayed", "type": "secret"})
    wait_until(lambda: len(receiver.got) == 1)

    page.get_by_label("Deliver again every event since (UTC)").fill("2000-01-01T00:00")
    page.get_by_role("button", name="Replay").click()
    expect(page.get_by_text("must be within the last 30 days")).to_be_visible()
    page.get_by_label("Deliver again every event since (UTC)").fill(
        time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 600)))
    page.get_by_role("button", name="Replay").click()
    # The organization's first admin key (created minutes ago) and "Replayed".
    expect(page.get_by_role("status")).to_contain_text("Replay queued: 2 event(s)")
    wait_until(lambda: len(receiver.got) == 3)
    assert receiver.got[0][0]["webhook-id"] == receiver.got[2][0]["webhook-id"]

    page.get_by_role("link", name="Edit").click()
    page.get_by_label("URL").fill("ftp://nowhere")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("must be an https URL")).to_be_visible()
    page.get_by_label("URL").fill(receiver.url + "?edited=1")
    page.get_by_label("Description").fill("Edited")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("Changes saved.")

    page.get_by_role("button", name="Disable").click()
    expect(page.get_by_role("status")).to_contain_text("Endpoint disabled")
    status, listed = server.api("GET", "/v1/webhooks", portal.admin)
    assert listed["data"][0]["disabled"] is True and listed["data"][0]["url"].endswith("?edited=1")
    page.get_by_role("button", name="Enable").click()
    expect(page.get_by_role("status")).to_contain_text("Endpoint enabled")

    page.get_by_role("link", name="Delete").click()
    expect(page.get_by_role("heading", name="Delete this endpoint?")).to_be_visible()
    page.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("status")).to_contain_text("Endpoint deleted.")
    status, listed = server.api("GET", "/v1/webhooks", portal.admin)
    assert listed["data"] == []


def test_no_serious_accessibility_violation_on_the_webhook_pages(server, portal, receiver):
    add_endpoint(portal, receiver.url)
    problems = {}
    if found := axe_violations(portal.page):
        problems["shown secret"] = found
    status, listed = server.api("GET", "/v1/webhooks", portal.admin)
    endpoint_id = listed["data"][0]["id"]
    for path in ["/portal/webhooks", "/portal/webhooks/new", f"/portal/webhooks/{endpoint_id}",
                 f"/portal/webhooks/{endpoint_id}/edit", f"/portal/webhooks/{endpoint_id}/delete"]:
        portal.goto(path)
        if found := axe_violations(portal.page):
            problems[path] = found
    assert problems == {}
