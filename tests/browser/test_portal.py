"""The portal, as a customer uses it: every flow of the API keys page in a real
browser, checked against what the API and /v1/verify then say."""
import datetime
import re
import urllib.request

from playwright.sync_api import expect

from conftest import KEY_PATTERN, Portal, Server, axe_violations, screenshot

FIVE_COLUMNS = ["Name", "Type", "Created", "Last used", "Status"]


def in_a_month():
    return (datetime.date.today() + datetime.timedelta(days=30)).isoformat()


def test_a_minted_link_signs_in_with_a_strict_http_only_cookie_and_a_strict_csp(server, portal):
    page = portal.page
    expect(page.get_by_role("heading", name="API keys", level=1)).to_be_visible()
    cookie = next(c for c in portal.context.cookies() if c["name"] == "keyledger_portal")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]
    answer = page.goto(server.base + "/portal/keys")
    csp = answer.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert answer.headers["cache-control"] == "no-store"
    assert "connect-src" not in csp and "data:" not in csp, "no source the pages do not use"
    assert "alice@acme.example" in page.content()
    # Assets are named by their content and kept for a year.
    href = page.locator('link[rel="stylesheet"]').get_attribute("href")
    assert re.fullmatch(r"/portal/assets/portal\.[0-9a-f]{12}\.css", href), href
    asset = portal.context.request.get(server.base + href)
    assert asset.ok and asset.headers["cache-control"] == "public, max-age=31536000, immutable"


def test_create_a_secret_key_with_two_permissions_and_an_expiration_then_verify_it(server, portal):
    page = portal.page
    secret = portal.create_key("Checkout backend", scopes=["read:experiences", "write:consumers"],
                               expires_on=in_a_month())
    assert KEY_PATTERN.match(secret)
    expect(page.get_by_text("It will not be shown again.")).to_be_visible()
    expect(page.get_by_role("button", name="Copy")).to_be_visible()
    assert server.verify(secret, ["read:experiences", "write:consumers"]) == "VALID"
    assert server.verify(secret, ["admin"]) == "INSUFFICIENT_SCOPE"
    status, key = server.api("GET", f"/v1/keys/{portal.key_id('Checkout backend')}", portal.admin)
    assert key["scopes"] == ["read:experiences", "write:consumers"]
    assert key["expires_at"].startswith(in_a_month())
    screenshot(page, "new-key")
    # The secret is in no later page, and in no URL.
    page.get_by_role("link", name="Done").click()
    assert secret not in page.content() and secret not in page.url
    portal.goto("/portal/keys")
    assert secret not in page.content()
    # The list shows it with the five columns.
    headers = page.get_by_role("columnheader").all_inner_texts()
    assert [h.strip().lower() for h in headers[:5]] == [c.lower() for c in FIVE_COLUMNS]
    row = portal.row("Checkout backend")
    expect(row.get_by_role("cell").nth(1)).to_have_text("Secret")
    expect(row.get_by_role("cell").nth(4)).to_have_text("Active")
    expect(row).to_contain_text("write:consumers")
    expect(row).to_contain_text(datetime.date.today().strftime("%b %Y"))
    screenshot(page, "keys")
    assert secret not in server.log_text()


def test_deactivate_and_activate_from_the_actions_menu(server, portal):
    secret = portal.create_key("Worker", scopes=["read:analytics"])
    portal.goto("/portal/keys")
    portal.action("Worker", "Deactivate")
    expect(portal.row("Worker")).to_contain_text("Inactive")
    assert server.verify(secret) == "INACTIVE"
    # The verification's usage may be flushed while Activate runs: the
    # command decides again rather than answering 409.
    portal.action("Worker", "Activate")
    expect(portal.row("Worker")).to_contain_text("Active")
    assert server.verify(secret) == "VALID"


def test_the_actions_menu_works_from_the_keyboard(server, portal):
    portal.create_key("Keyboard")
    page = portal.page
    portal.goto("/portal/keys")
    button = page.get_by_role("button", name="Actions for Keyboard")
    button.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("menuitem", name="Edit")).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(page.get_by_role("menuitem", name="Regenerate")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.get_by_role("menu")).to_be_hidden()
    expect(button).to_be_focused()
    expect(button).to_have_attribute("aria-expanded", "false")


def test_regenerate_with_a_one_hour_grace_keeps_both_secrets_working(server, portal):
    old = portal.create_key("Rotating", scopes=["read:consumers"])
    page = portal.page
    portal.goto("/portal/keys")
    portal.action("Rotating", "Regenerate")
    dialog = page.get_by_role("dialog")
    for label in ["None", "1 hour", "24 hours", "7 days"]:
        expect(dialog.get_by_label(label, exact=True)).to_have_count(1)
    expect(dialog.get_by_label("None", exact=True)).to_be_checked()
    dialog.get_by_label("1 hour", exact=True).check()
    dialog.get_by_role("button", name="Regenerate").click()
    new = page.get_by_label("Your new API key").input_value()
    assert KEY_PATTERN.match(new) and new != old
    expect(page.get_by_text("keeps working for 1 hour")).to_be_visible()
    # The time said is the one the event recorded.
    key_id = portal.key_id("Rotating")
    events = server.api("GET", f"/v1/keys/{key_id}/events", portal.admin)[1]["data"]
    until = datetime.datetime.fromisoformat(events[-1]["data"]["previous_valid_until"].replace("Z", "+00:00"))
    expect(page.get_by_text(until.strftime("until %-d %b %Y, %H:%M UTC"))).to_be_visible()
    assert server.verify(new) == "VALID"
    assert server.verify(old) == "VALID"
    # Without a grace period the old secret stops at once.
    portal.goto("/portal/keys")
    portal.action("Rotating", "Regenerate")
    page.get_by_role("dialog").get_by_role("button", name="Regenerate").click()
    newest = page.get_by_label("Your new API key").input_value()
    assert server.verify(newest) == "VALID" and server.verify(new) == "NOT_FOUND"


def test_edit_a_key_name_and_permissions(server, portal):
    portal.create_key("Old name", scopes=["read:experiences"])
    page = portal.page
    portal.goto("/portal/keys")
    portal.action("Old name", "Edit")
    page.get_by_label("Name").fill("New name")
    page.get_by_label("read:analytics", exact=True).check()
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Changes saved.")).to_be_visible()
    expect(page.get_by_role("heading", level=1)).to_contain_text("New name")
    status, key = server.api("GET", f"/v1/keys/{portal.key_id('New name')}", portal.admin)
    assert key["scopes"] == ["read:experiences", "read:analytics"]
    events = server.api("GET", f"/v1/keys/{key['id']}/events", portal.admin)[1]["data"]
    assert events[-1]["type"] == "key.updated" and events[-1]["actor"] == "portal:alice@acme.example"
    expect(page.get_by_role("table").filter(has_text="Edited")).to_contain_text("alice@acme.example (portal)")


def test_delete_needs_the_key_name_typed(server, portal):
    secret = portal.create_key("Doomed")
    page = portal.page
    portal.goto("/portal/keys")
    portal.action("Doomed", "Delete")
    dialog = page.get_by_role("dialog")
    dialog.get_by_role("textbox").fill("doomed")
    dialog.get_by_role("button", name="Delete").click()
    expect(dialog.get_by_text("Type the key's name exactly")).to_be_visible()
    assert server.verify(secret) == "VALID"
    dialog.get_by_role("textbox").fill("Doomed")
    dialog.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("Key deleted")).to_be_visible()
    expect(page.get_by_role("link", name="Doomed", exact=True)).to_have_count(0)
    assert server.verify(secret) == "NOT_FOUND"


def test_usage_on_the_key_page_follows_verifications(server, portal):
    secret = portal.create_key("Busy", scopes=["read:experiences"])
    page = portal.page
    key_id = portal.key_id("Busy")
    portal.goto(f"/portal/keys/{key_id}")
    stat = lambda label: page.locator(".stat").filter(has=page.get_by_text(label, exact=True)).locator(".stat-value")
    expect(stat("Total requests")).to_have_text("0")
    expect(stat("Success rate")).to_have_text("—")
    for _ in range(3):
        assert server.verify(secret, ["read:experiences"]) == "VALID"
    assert server.verify(secret, ["write:experiences"]) == "INSUFFICIENT_SCOPE"
    # Usage is flushed every second (KEYLEDGER_USAGE_FLUSH_SECONDS=1): once
    # the key's page counts it, reload and read it.
    portal.wait_for_usage(key_id, 4)
    portal.goto(f"/portal/keys/{key_id}")
    expect(stat("Total requests")).to_have_text("4")
    expect(stat("Success rate")).to_have_text("75%")
    expect(stat("Error rate")).to_have_text("25%")
    expect(stat("Last used")).not_to_have_text("Never")
    assert page.locator("svg.chart-svg rect.bar-ok").count() >= 1
    assert page.locator("svg.chart-svg rect.bar-failed").count() >= 1
    page.get_by_role("link", name="7 days").click()
    expect(stat("Total requests")).to_have_text("4")
    expect(page.get_by_role("table").filter(has_text="Created")).to_contain_text("alice@acme.example (portal)")
    screenshot(page, "key-usage")


def test_settings_are_saved_and_read_back_over_the_api(server, portal):
    page = portal.page
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_text("10,000 requests per minute")).to_be_visible()
    page.get_by_label("Alert recipients", exact=True).fill("ops@acme.example\nsecurity@acme.example")
    page.get_by_label("Rotation days").fill("30")
    page.get_by_label("Error rate (%)").fill("25")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Settings saved.")).to_be_visible()
    # The addresses are listed as the API has them: new ones wait for their
    # confirmation link to be followed.
    listed = page.get_by_role("listitem").filter(has_text="security@acme.example")
    expect(listed).to_have_count(1)
    expect(listed.get_by_text("Waiting for confirmation")).to_be_visible()
    expect(page.get_by_text("Confirmed", exact=True)).to_have_count(0)
    screenshot(page, "settings")
    status, org = server.api("GET", "/v1/org", portal.admin)
    assert org["alert_emails"] == ["ops@acme.example", "security@acme.example"]
    assert [r["confirmed_at"] for r in org["alert_recipients"]] == [None, None]
    assert org["rotation_days"] == 30 and org["alert_settings"]["error_rate_percent"] == 25
    # A refused value changes nothing and says why.
    page.get_by_label("Rotation days").fill("99999")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("must be from 0 (off) to 3650")).to_be_visible()
    assert server.api("GET", "/v1/org", portal.admin)[1]["rotation_days"] == 30


def test_another_organization_sees_none_of_the_first_ones_keys(server, browser, portal):
    portal.create_key("Acme secret")
    acme_key = portal.key_id("Acme secret")
    other = Portal(server, browser, name="Globex")
    try:
        page = other.page
        csrf = page.locator('input[name="csrf"]').first.input_value()
        expect(page.get_by_role("link", name="Admin key")).to_have_count(1)  # its own, from org create
        assert "Acme secret" not in page.content()
        assert other.goto(f"/portal/keys/{acme_key}").status == 404
        assert other.goto(f"/portal/keys/{acme_key}/edit").status == 404
        # Forms posted to the first organization's key from the second one's
        # session, with its valid CSRF token: not found, and nothing changes.
        before = server.api("GET", f"/v1/keys/{acme_key}", portal.admin)[1]
        for action, fields in [("deactivate", {}), ("regenerate", {"grace": "none", "nonce": "n" * 64}),
                               ("delete", {"confirm_name": "Acme secret"}),
                               ("edit", {"name": "Taken", "scopes": "admin"})]:
            answer = other.context.request.post(f"{server.base}/portal/keys/{acme_key}/{action}",
                                                form={"csrf": csrf, **fields})
            assert answer.status == 404, (action, answer.status)
        after = server.api("GET", f"/v1/keys/{acme_key}", portal.admin)[1]
        assert after == before
    finally:
        other.close()


def test_a_forged_form_post_without_the_csrf_token_changes_nothing(server, portal):
    secret = portal.create_key("Target")
    key_id = portal.key_id("Target")
    request = portal.context.request  # carries the session cookie
    forged = request.post(f"{server.base}/portal/keys/{key_id}/deactivate", form={"return_to": "/portal/keys"})
    assert forged.status == 403
    wrong = request.post(f"{server.base}/portal/keys/{key_id}/deactivate", form={"csrf": "0" * 64})
    assert wrong.status == 403
    other_site = request.post(f"{server.base}/portal/keys/{key_id}/deactivate",
                              headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"},
                              form={"csrf": portal.page.locator('input[name="csrf"]').first.input_value()})
    assert other_site.status == 403
    # A forwarded host makes no other site this one.
    forwarded = request.post(f"{server.base}/portal/keys/{key_id}/deactivate",
                             headers={"Origin": "https://evil.example", "X-Forwarded-Host": "evil.example",
                                      "X-Forwarded-Proto": "https"},
                             form={"csrf": portal.page.locator('input[name="csrf"]').first.input_value()})
    assert forwarded.status == 403
    assert server.verify(secret) == "VALID"
    status, key = server.api("GET", f"/v1/keys/{key_id}", portal.admin)
    assert key["status"] == "active"


def test_used_and_unknown_sign_in_links_are_refused(server, browser):
    created = server.org("Reuse")
    url = server.mint(created["key"]["key"])
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    expect(page.get_by_role("heading", name="API keys", level=1)).to_be_visible()
    second = browser.new_context().new_page()
    answer = second.goto(url)
    assert answer.status == 410
    expect(second.get_by_role("heading", level=1)).to_contain_text("expired or was already used")
    assert second.context.cookies() == []
    assert second.goto(url[:-4] + "0000").status == 410
    # org create's own link works once too.
    assert second.goto(created["portal_url"]).status == 200
    assert second.url.endswith("/portal/keys")
    context.close()
    second.context.close()


def test_an_expired_sign_in_link_is_refused(browser):
    # Links of this server expire as they are made (KEYLEDGER_PORTAL_LINK_SECONDS=0).
    short = Server({"KEYLEDGER_PORTAL_LINK_SECONDS": "0"})
    try:
        created = short.org("Late")
        page = browser.new_page()
        answer = page.goto(short.mint(created["key"]["key"]))
        assert answer.status == 410
        # The page says the lifetime this server gives its links.
        expect(page.get_by_text("Sign-in links work once and expire 0 seconds after they are made")).to_be_visible()
        page.goto(short.base + "/portal/keys")
        assert page.url.endswith("/portal/sign-in")
        page.context.close()
    finally:
        short.stop()


def test_without_a_session_every_page_says_how_to_sign_in_and_sign_out_ends_it(server, browser, portal):
    page = browser.new_page()
    for path in ["/portal/keys", "/portal/settings", "/portal/alerts", "/portal/keys/new", "/portal"]:
        page.goto(server.base + path)
        assert page.url == server.base + "/portal/sign-in"
        expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to manage your API keys")
    assert page.request.post(server.base + "/portal/keys", form={"name": "x"}).url.endswith("/portal/sign-in")
    page.context.close()
    old_cookie = next(c for c in portal.context.cookies() if c["name"] == "keyledger_portal")
    portal.page.get_by_role("button", name="Sign out").click()
    expect(portal.page.get_by_role("heading", level=1)).to_have_text("You are signed out")
    portal.goto("/portal/keys")
    assert portal.page.url.endswith("/portal/sign-in")
    # The old cookie, sent again, opens nothing: the session ended on the server.
    replay = browser.new_context()
    replay.add_cookies([old_cookie])
    answer = replay.request.get(server.base + "/portal/keys", max_redirects=0)
    assert answer.status == 303 and answer.headers["location"] == "/portal/sign-in"
    replay.close()


def test_a_key_named_like_a_script_is_shown_as_text(server, portal):
    name = "<script>alert('x')</script><img src=x onerror=alert(1)>"
    dialogs = []
    portal.page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    portal.create_key(name)
    page = portal.page
    portal.goto("/portal/keys")
    expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    expect(page.get_by_role("button", name=f"Actions for {name}")).to_be_visible()
    portal.action(name, "Delete")
    expect(page.get_by_role("dialog").get_by_role("heading")).to_contain_text(name)
    page.keyboard.press("Escape")
    page.get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(name)
    assert page.locator("img[src=x]").count() == 0 and dialogs == []


def test_filters_pages_and_empty_states(server, portal):
    page = portal.page
    admin_key = portal.key_id("Admin key")
    # With every key deleted, the page says what to do.
    assert server.api("DELETE", f"/v1/keys/{admin_key}", portal.admin)[0] == 204
    portal.goto("/portal/keys")
    expect(page.get_by_role("heading", name="No keys yet")).to_be_visible()
    expect(page.get_by_role("heading", name="API keys")).to_have_count(1)
    expect(page.get_by_role("button", name="Create your first API key")).to_be_visible()
    portal.admin = portal.create_key("Manager")  # secret keys default to admin
    for i in range(21):
        status, _ = server.api("POST", "/v1/keys", portal.admin, {"name": f"Bulk {i:02}", "type": "test"})
        assert status == 201
    server.api("POST", "/v1/keys", portal.admin, {"name": "Widget", "type": "public"})
    portal.goto("/portal/keys")
    # Choosing a filter changes nothing until Apply (no change of context on input).
    page.get_by_label("Type", exact=True).select_option("public")
    expect(page.get_by_role("link", name="Bulk 20")).to_have_count(1)
    assert page.url == server.base + "/portal/keys"
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_role("link", name="Widget", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Bulk 20")).to_have_count(0)
    page.get_by_label("Status", exact=True).select_option("inactive")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.get_by_text("No keys match these filters")).to_be_visible()
    portal.goto("/portal/keys?type=test")
    expect(page.get_by_role("row")).to_have_count(21)  # header + 20
    page.get_by_role("link", name="Next page").click()
    expect(page.get_by_role("link", name="Bulk 00", exact=True)).to_be_visible()
    expect(page.get_by_role("row")).to_have_count(2)


def test_create_and_deactivate_work_without_javascript(server, browser):
    portal = Portal(server, browser, name="NoScript", javascript=False)
    try:
        page = portal.page
        page.get_by_role("button", name="Create API key").click()
        page.get_by_label("Name").fill("Plain HTML")
        page.get_by_label("Type", exact=True).select_option("secret")
        page.get_by_label("read:consumers", exact=True).check()
        page.get_by_role("button", name="Create", exact=True).click()
        secret = page.get_by_label("Your new API key").input_value()
        assert server.verify(secret, ["read:consumers"]) == "VALID"
        portal.goto("/portal/keys")
        page.get_by_role("button", name="Actions for Plain HTML").click()  # the actions page
        expect(page.get_by_role("heading", level=1)).to_have_text("Actions for Plain HTML")
        page.get_by_role("button", name="Deactivate").click()
        expect(page.get_by_text("Key deactivated")).to_be_visible()
        assert server.verify(secret) == "INACTIVE"
        # A refused form keeps what was typed and says what is wrong.
        portal.goto("/portal/keys/new")
        page.get_by_label("Name").fill("Browser")
        page.get_by_label("Type", exact=True).select_option("public")
        page.get_by_label("admin", exact=True).check()
        page.get_by_role("button", name="Create", exact=True).click()
        expect(page.get_by_text("may not hold 'admin'")).to_be_visible()
        expect(page.get_by_label("Name")).to_have_value("Browser")
    finally:
        portal.close()


def test_no_serious_accessibility_violation_on_any_page(server, portal):
    portal.create_key("Accessible", scopes=["read:experiences"])
    key_id = portal.key_id("Accessible")
    pages = ["/portal/keys", "/portal/keys/new", f"/portal/keys/{key_id}", f"/portal/keys/{key_id}/edit",
             f"/portal/keys/{key_id}/actions", f"/portal/keys/{key_id}/regenerate", f"/portal/keys/{key_id}/delete",
             "/portal/settings", "/portal/alerts", "/portal/keys?status=expired"]
    problems = {}
    for path in pages:
        portal.goto(path)
        found = axe_violations(portal.page)
        if found:
            problems[path] = found
    # The one-time key display and the dialogs, open.
    secret_page = portal.create_key("Shown")
    assert secret_page
    if found := axe_violations(portal.page):
        problems["shown key"] = found
    portal.goto("/portal/keys")
    portal.action("Accessible", "Regenerate")
    if found := axe_violations(portal.page):
        problems["regenerate dialog"] = found
    signed_out = portal.context.browser.new_page()
    signed_out.goto(server.base + "/portal/sign-in")
    if found := axe_violations(signed_out):
        problems["sign-in"] = found
    signed_out.context.close()
    assert problems == {}


def every_page(portal, key_id):
    return ["/portal/keys", "/portal/keys/new", f"/portal/keys/{key_id}", f"/portal/keys/{key_id}?period=7d",
            f"/portal/keys/{key_id}?period=30d", f"/portal/keys/{key_id}/edit", f"/portal/keys/{key_id}/actions",
            f"/portal/keys/{key_id}/regenerate", f"/portal/keys/{key_id}/delete", "/portal/settings",
            "/portal/alerts", "/portal/keys?status=expired"]


def test_the_portal_fits_a_phone(server, portal):
    portal.create_key("Phone key with a rather long name for a small screen", scopes=["read:experiences"])
    key_id = portal.key_id("Phone key with a rather long name for a small screen")
    page = portal.page
    page.set_viewport_size({"width": 375, "height": 812})
    for path in every_page(portal, key_id) + ["/portal/sign-in"]:
        portal.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px"


def test_reloading_after_a_new_secret_makes_no_other_key(server, portal):
    portal.create_key("Once")
    page = portal.page
    page.reload()
    assert page.url == server.base + "/portal/keys"
    expect(page.get_by_label("Your new API key")).to_have_count(0)
    status, body = server.api("GET", "/v1/keys?limit=100", portal.admin)
    assert sorted(k["name"] for k in body["data"]) == ["Admin key", "Once"]
    # Regenerating too: a reload shows the list and regenerates nothing.
    portal.action("Once", "Regenerate")
    page.get_by_role("dialog").get_by_role("button", name="Regenerate").click()
    secret = page.get_by_label("Your new API key").input_value()
    page.reload()
    expect(page.get_by_label("Your new API key")).to_have_count(0)
    assert server.verify(secret) == "VALID"


def resubmit(page, sent, form_page, button):
    """Sends the form POST `sent` again from the browser, as a reload of its
    answer (or Back and resubmit, or a retry after a lost answer) does: the
    same fields, nonce included, sent from the form's page; shows the answer."""
    page.goto(page.url.split("/portal/")[0] + form_page)
    page.route(sent.url, lambda route: route.continue_(post_data=sent.post_data), times=1)
    page.get_by_role("button", name=button, exact=True).click()


def posted_form(page, path):
    return page.expect_request(lambda r: r.method == "POST" and r.url.endswith(path))


def test_a_create_form_sent_twice_makes_one_key_and_says_so(server, portal):
    page = portal.page
    portal.goto("/portal/keys/new")
    page.get_by_label("Name").fill("Sent twice")
    with posted_form(page, "/portal/keys") as sent:
        page.get_by_role("button", name="Create", exact=True).click()
    secret = page.get_by_label("Your new API key").input_value()
    assert "nonce=" in sent.value.post_data
    resubmit(page, sent.value, "/portal/keys/new", "Create")
    already = page.get_by_role("status").filter(has_text="already created")
    expect(already.get_by_role("heading")).to_have_text("This API key was already created")
    key_id = portal.key_id("Sent twice")
    expect(already.get_by_role("link", name="Sent twice")).to_have_attribute("href", f"/portal/keys/{key_id}")
    # The secret is not shown again, and no other one is.
    expect(page.get_by_label("Your new API key")).to_have_count(0)
    assert secret not in page.content() and not re.search(r"sk_live_[0-9A-Za-z]{49}", page.content())
    expect(portal.row("Sent twice")).to_have_count(1)
    screenshot(page, "already-created")
    assert axe_violations(page) == []
    status, body = server.api("GET", "/v1/keys?limit=100", portal.admin)
    assert sorted(k["name"] for k in body["data"]) == ["Admin key", "Sent twice"]
    assert server.verify(secret) == "VALID"
    # A new form is a new key.
    portal.create_key("Sent twice")
    status, body = server.api("GET", "/v1/keys?limit=100", portal.admin)
    assert [k["name"] for k in body["data"]].count("Sent twice") == 2


def test_a_regenerate_form_sent_twice_gives_one_new_secret_and_says_so(server, portal):
    old = portal.create_key("Rotated once")
    key_id = portal.key_id("Rotated once")
    page = portal.page
    portal.goto("/portal/keys")
    portal.action("Rotated once", "Regenerate")
    with posted_form(page, f"/portal/keys/{key_id}/regenerate") as sent:
        page.get_by_role("dialog").get_by_role("button", name="Regenerate").click()
    new = page.get_by_label("Your new API key").input_value()
    resubmit(page, sent.value, f"/portal/keys/{key_id}/regenerate", "Regenerate")
    already = page.get_by_role("status").filter(has_text="already regenerated")
    expect(already.get_by_role("heading")).to_have_text("This key was already regenerated")
    expect(already.get_by_role("link", name="Rotated once")).to_have_attribute("href", f"/portal/keys/{key_id}")
    expect(page.get_by_label("Your new API key")).to_have_count(0)
    assert new not in page.content() and not re.search(r"sk_live_[0-9A-Za-z]{49}", page.content())
    # The first new secret still works: no third secret replaced it.
    assert server.verify(new) == "VALID" and server.verify(old) == "NOT_FOUND"
    events = server.api("GET", f"/v1/keys/{key_id}/events", portal.admin)[1]["data"]
    assert [e["type"] for e in events].count("key.regenerated") == 1


def test_the_create_form_sent_twice_without_javascript_makes_one_key(server, browser):
    portal = Portal(server, browser, name="NoScriptTwice", javascript=False)
    try:
        page = portal.page
        portal.goto("/portal/keys/new")
        page.get_by_label("Name").fill("Plain twice")
        with posted_form(page, "/portal/keys") as sent:
            page.get_by_role("button", name="Create", exact=True).click()
        secret = page.get_by_label("Your new API key").input_value()
        resubmit(page, sent.value, "/portal/keys/new", "Create")
        expect(page.get_by_role("heading", name="This API key was already created")).to_be_visible()
        assert secret not in page.content()
        status, body = server.api("GET", "/v1/keys?limit=100", portal.admin)
        assert sorted(k["name"] for k in body["data"]) == ["Admin key", "Plain twice"]
        # The same nonce with other values: refused, with a new form.
        first_nonce = re.search(r"nonce=([0-9a-f]+)", sent.value.post_data).group(1)
        changed = sent.value.post_data.replace("name=Plain+twice", "name=Changed")
        page.goto(server.base + "/portal/keys/new")
        page.route(sent.value.url, lambda route: route.continue_(post_data=changed), times=1)
        page.get_by_role("button", name="Create", exact=True).click()
        expect(page.get_by_role("alert")).to_contain_text("already sent with other values")
        new_nonce = page.locator('input[name="nonce"]').input_value()
        assert new_nonce and new_nonce != first_nonce
        # A form without its nonce runs nothing.
        csrf = page.locator('input[name="csrf"]').first.input_value()
        answer = portal.context.request.post(server.base + "/portal/keys",
                                             form={"csrf": csrf, "name": "No nonce", "type": "secret"})
        assert answer.status == 400 and "reload the page" in answer.text()
        assert len(server.api("GET", "/v1/keys?limit=100", portal.admin)[1]["data"]) == 2
    finally:
        portal.close()


def test_escape_does_not_lose_the_new_key(server, portal):
    secret = portal.create_key("Kept")
    page = portal.page
    for _ in range(3):
        page.keyboard.press("Escape")
        expect(page.get_by_label("Your new API key")).to_be_visible()
    expect(page.get_by_text("Have you copied the key?")).to_be_visible()
    expect(page.get_by_label("Your new API key")).to_have_value(secret)
    page.get_by_role("link", name="Done").click()
    expect(page.get_by_role("heading", level=1)).to_contain_text("Kept")


def test_each_name_of_api_md_labels_exactly_one_field(server, portal):
    page = portal.page
    portal.goto("/portal/keys/new")
    for label in ["Name", "Type", "Permissions", "Expiration"]:
        expect(page.get_by_label(label, exact=True)).to_have_count(1)
        expect(page.get_by_label(label)).to_have_count(1)
    secret = portal.create_key("Exact")
    expect(page.get_by_label("Your new API key", exact=True)).to_have_value(secret)
    portal.goto(f"/portal/keys/{portal.key_id('Exact')}/edit")
    for label in ["Name", "Permissions", "Expiration"]:
        expect(page.get_by_label(label, exact=True)).to_have_count(1)
    portal.goto("/portal/keys")
    portal.action("Exact", "Delete")
    expect(page.get_by_label("Type")).to_have_count(1)  # the filter; the dialog asks for the key name
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Key name", exact=True).fill("Exact")
    dialog.get_by_role("button", name="Delete").click()
    expect(page.get_by_text("Key deleted")).to_be_visible()


def test_an_open_menu_is_the_only_place_of_its_items(server, portal):
    portal.create_key("First")
    portal.create_key("Second")
    page = portal.page
    portal.goto("/portal/keys")
    button = page.get_by_role("button", name="Actions for First")
    button.click()
    menu = page.get_by_role("menu")
    expect(menu).to_have_count(1)
    expect(menu).to_have_attribute("aria-labelledby", button.get_attribute("id"))
    for item in ["Edit", "Regenerate", "Deactivate", "Delete"]:
        expect(page.get_by_role("menuitem", name=item, exact=True)).to_have_count(1)
        expect(page.get_by_text(item, exact=True)).to_have_count(1)
    page.get_by_text("Deactivate", exact=True).click()
    expect(portal.row("First")).to_contain_text("Inactive")
    page.get_by_role("button", name="Actions for First").click()
    expect(page.get_by_text("Activate", exact=True)).to_have_count(1)
    expect(page.get_by_text("Deactivate", exact=True)).to_have_count(0)
    # Tab closes the menu and goes on to the control after its button.
    expect(page.get_by_role("menuitem", name="Edit")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.get_by_role("menu")).to_have_count(0)
    expect(page.get_by_role("link", name="Admin key", exact=True)).to_be_focused()


def test_a_refused_form_puts_the_focus_on_what_to_fix(server, portal):
    page = portal.page
    portal.goto("/portal/keys/new")
    page.get_by_role("button", name="Create", exact=True).click()
    summary = page.get_by_role("alert")
    expect(summary).to_contain_text("The key was not created")
    expect(summary).to_be_focused()


def test_a_form_too_large_is_refused_as_the_senders_problem(server, portal):
    csrf = portal.page.locator('input[name="csrf"]').first.input_value()
    answer = portal.context.request.post(server.base + "/portal/keys",
                                         form={"csrf": csrf, "type": "secret", "name": "x" * 70_000})
    assert answer.status == 413
    assert answer.headers["content-type"].startswith("text/html")
    assert "too large" in answer.text() and "on our side" not in answer.text()


def test_the_audit_trail_names_the_organizations_own_keys(server, portal):
    status, created = server.api("POST", "/v1/keys", portal.admin, {"name": "Made over the API", "type": "secret"})
    assert status == 201
    portal.goto(f"/portal/keys/{created['id']}")
    expect(portal.page.get_by_role("table").filter(has_text="Created")).to_contain_text("API key “Admin key”")
