"""The portal's IP allowlists and leaked keys, in a real browser: the
allowlist typed on the create and edit forms (refusals shown as the API words
them), shown on the key page and enforced by /v1/verify; a key reported
leaked by a signed report (a P-256 key pair made here, as GitHub signs) marked
in the list and explained on its page; the leak action chosen in settings."""
import base64
import json
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from playwright.sync_api import expect

from conftest import Portal, Server, axe_violations, screenshot

REPORTER_ID = "browser-test-reporter"
SIGNING_KEY = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`keyledger dev` accepting reports signed by SIGNING_KEY."""
    keys = tmp_path_factory.mktemp("leak-keys") / "keys.json"
    pem = SIGNING_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    keys.write_text(json.dumps({"public_keys": [{"key_identifier": REPORTER_ID, "key": pem, "is_current": True}]}))
    s = Server({"KEYLEDGER_LEAK_REPORT_KEYS": str(keys)})
    yield s
    s.stop()


@pytest.fixture
def portal(server, browser):
    p = Portal(server, browser)
    yield p
    p.close()


def report_leak(server, token, url="https://github.com/octocat/hello/blob/abc/deploy/.env"):
    """Sends a signed leak report of `token`, as GitHub does; the answer."""
    body = json.dumps([{"token": token, "type": "keyledger_secret_key", "url": url, "source": "content"}]).encode()
    signature = SIGNING_KEY.sign(body, ec.ECDSA(hashes.SHA256()))
    request = urllib.request.Request(server.base + "/v1/leaks", data=body, method="POST", headers={
        "Content-Type": "application/json",
        "Github-Public-Key-Identifier": REPORTER_ID,
        "Github-Public-Key-Signature": base64.b64encode(signature).decode(),
    })
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def verify_from(server, key, ip):
    status, body = server.api("POST", "/v1/verify", body={"key": key, "ip": ip})
    assert status == 200, body
    return body["code"]


def test_an_allowlist_typed_on_the_create_form_is_enforced_and_shown(server, portal):
    page = portal.page
    portal.goto("/portal/keys/new")
    page.get_by_label("Name").fill("Office backend")
    field = page.get_by_label("Allowed IP addresses")
    expect(field).to_have_count(1)
    # A range with host bits set is refused with the API's words; nothing is made.
    field.fill("203.0.113.7/24\n2001:db8:1::/48")
    page.get_by_role("button", name="Create", exact=True).click()
    expect(page.get_by_text("has host bits set")).to_be_visible()
    expect(page.get_by_label("Allowed IP addresses")).to_have_attribute("aria-invalid", "true")
    assert not any(k["name"] == "Office backend"
                   for k in server.api("GET", "/v1/keys?limit=100", portal.admin)[1]["data"])
    page.get_by_label("Allowed IP addresses").fill("203.0.113.0/24\n2001:db8:1::/48")
    page.get_by_role("button", name="Create", exact=True).click()
    secret = page.get_by_label("Your new API key").input_value()
    key_id = portal.key_id("Office backend")
    status, key = server.api("GET", f"/v1/keys/{key_id}", portal.admin)
    assert key["allowed_ips"] == ["203.0.113.0/24", "2001:db8:1::/48"]
    assert verify_from(server, secret, "198.51.100.9") == "IP_NOT_ALLOWED"
    assert verify_from(server, secret, "203.0.113.7") == "VALID"
    assert verify_from(server, secret, "2001:db8:1::5") == "VALID"
    # The key page lists it.
    portal.goto(f"/portal/keys/{key_id}")
    details = page.get_by_role("region", name="Details")
    expect(details.get_by_text("203.0.113.0/24")).to_be_visible()
    expect(details.get_by_text("2001:db8:1::/48")).to_be_visible()


def test_the_edit_form_changes_and_clears_an_allowlist(server, portal):
    page = portal.page
    status, created = server.api("POST", "/v1/keys", portal.admin,
                                 {"name": "Limited", "type": "secret", "allowed_ips": ["198.51.100.7"]})
    assert status == 201
    secret = created["key"]
    portal.goto(f"/portal/keys/{created['id']}/edit")
    field = page.get_by_label("Allowed IP addresses")
    expect(field).to_have_value("198.51.100.7")
    field.fill("198.51.100.0/24, 10.0.0.0/33")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("'10.0.0.0/33' is not an IP address or CIDR range")).to_be_visible()
    assert server.api("GET", f"/v1/keys/{created['id']}", portal.admin)[1]["allowed_ips"] == ["198.51.100.7"]
    page.get_by_label("Allowed IP addresses").fill("198.51.100.0/24")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Changes saved.")).to_be_visible()
    assert verify_from(server, secret, "198.51.100.9") == "VALID"
    assert verify_from(server, secret, "203.0.113.7") == "IP_NOT_ALLOWED"
    portal.goto(f"/portal/keys/{created['id']}/edit")
    page.get_by_label("Allowed IP addresses").fill("")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("region", name="Details").get_by_text("Any address")).to_be_visible()
    assert server.api("GET", f"/v1/keys/{created['id']}", portal.admin)[1]["allowed_ips"] is None
    assert verify_from(server, secret, "203.0.113.7") == "VALID"


def test_a_key_reported_leaked_is_marked_and_explained_and_axe_stays_clean(server, portal):
    page = portal.page
    secret = portal.create_key("Leaky worker")
    key_id = portal.key_id("Leaky worker")
    answer = report_leak(server, secret)
    assert answer[0]["label"] == "true_positive" and secret not in json.dumps(answer)
    assert server.verify(secret) == "INACTIVE"
    portal.goto("/portal/keys")
    row = portal.row("Leaky worker")
    expect(row.get_by_text("Leaked", exact=True)).to_be_visible()
    expect(row.get_by_text("Inactive", exact=True)).to_be_visible()
    expect(portal.row("Admin key").get_by_text("Leaked", exact=True)).to_have_count(0)
    if found := axe_violations(page):
        pytest.fail(f"key list: {found}")
    page.get_by_role("link", name="Leaky worker", exact=True).click()
    notice = page.get_by_role("region", name="Leaked: this key's secret was found in public")
    expect(notice).to_be_visible()
    link = notice.get_by_role("link", name="https://github.com/octocat/hello/blob/abc/deploy/.env")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(notice).to_contain_text("(content)")
    expect(notice).to_contain_text("deactivated at once")
    expect(page.get_by_role("table").get_by_text("Reported leaked")).to_be_visible()
    expect(page.get_by_text("Secret scanner report").first).to_be_visible()
    screenshot(page, "leaked-key")
    if found := axe_violations(page):
        pytest.fail(f"key page: {found}")
    assert secret not in page.content()
    # Regenerated, the key is no longer marked.
    portal.goto("/portal/keys")
    portal.action("Leaky worker", "Regenerate")
    page.get_by_role("dialog").get_by_role("button", name="Regenerate").click()
    expect(page.get_by_label("Your new API key")).to_be_visible()
    portal.goto(f"/portal/keys/{key_id}")
    expect(page.get_by_role("region", name="Leaked: this key's secret was found in public")).to_have_count(0)
    expect(page.locator(".key-title").get_by_text("Leaked")).to_have_count(0)


def test_the_leak_action_is_chosen_in_settings(server, portal):
    page = portal.page
    portal.goto("/portal/settings")
    group = page.get_by_role("group", name="Leak action")
    expect(group.get_by_label("Deactivate")).to_be_checked()
    if found := axe_violations(page):
        pytest.fail(f"settings: {found}")
    group.get_by_label("Notify only").check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Settings saved.")).to_be_visible()
    assert server.api("GET", "/v1/org", portal.admin)[1]["leak_action"] == "notify"
    expect(page.get_by_role("group", name="Leak action").get_by_label("Notify only")).to_be_checked()
    # Under notify, a reported key keeps working and is still marked.
    secret = portal.create_key("Still working")
    assert report_leak(server, secret)[0]["label"] == "true_positive"
    assert server.verify(secret) == "VALID"
    portal.goto("/portal/keys")
    row = portal.row("Still working")
    expect(row.get_by_text("Leaked", exact=True)).to_be_visible()
    expect(row.get_by_text("Active", exact=True)).to_be_visible()


def test_a_leaked_secret_gets_no_grace_period_when_the_key_is_regenerated(server, portal):
    page = portal.page
    status, _ = server.api("PATCH", "/v1/org", portal.admin, body={"leak_action": "notify"})
    assert status == 200
    secret = portal.create_key("Leaked and rotated")
    assert report_leak(server, secret)[0]["label"] == "true_positive"
    portal.goto("/portal/keys")
    portal.action("Leaked and rotated", "Regenerate")
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("1 hour", exact=True).check()
    dialog.get_by_role("button", name="Regenerate").click()
    new = page.get_by_label("Your new API key").input_value()
    expect(page.get_by_text("The previous secret stopped working at once: it was reported leaked, so it gets "
                            "no grace period.")).to_be_visible()
    expect(page.get_by_text("keeps working for")).to_have_count(0)
    # The leaked secret is not revived for the hour asked for.
    assert server.verify(secret) == "NOT_FOUND"
    assert server.verify(new) == "VALID"
