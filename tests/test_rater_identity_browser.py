"""Raters you can trust, in the real browser (Debian's Chromium via Playwright against a served
app): a second browser cannot act as another rater, a closed tab's pairs go back to the queue,
and the stored response time is the server's. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import RatedStore
from sqlalchemy import create_engine, select
from test_app_browser import (  # noqa: F401
    ARTIFACTS,
    CHROMIUM_ARGS,
    body_text,
    chromium,
    claimed_by,
    eventually,
    serve_app,
    shown_pair,
)

from prefloop.cli.raters import invite_link
from prefloop.store import PreferenceStore, pairs_table
from prefloop.store.identity import invite
from prefloop.types import Label

LEASE_S = 6.0


@pytest.fixture
def served(rated_store: RatedStore, tmp_path: Path) -> Iterator[tuple[str, RatedStore]]:
    with serve_app(rated_store, tmp_path / "app.log", lease_seconds=LEASE_S) as url:
        yield url, rated_store


@contextmanager
def chromium_browser(chromium: str) -> Iterator[object]:
    """Debian's Chromium, launched by Playwright with the project's flags."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def labels_of(rated: RatedStore, rater: str, include_retracted: bool = False) -> list[Label]:
    with PreferenceStore(rated.url, rated.run_name) as store:
        return store.labels(rater_id=rater, include_retracted=include_retracted)


def lease_ends(rated: RatedStore, pair_ids: set[int]) -> float:
    """The latest lease end of these pairs (unix seconds)."""
    engine = create_engine(rated.url)
    try:
        with engine.connect() as conn:
            ends = conn.scalars(select(pairs_table.c.lease_expires_at).where(pairs_table.c.id.in_(pair_ids))).all()
    finally:
        engine.dispose()
    return max(e or 0.0 for e in ends)


def answer_by_key(page, key: str) -> int:
    before = shown_pair(page)
    time.sleep(0.4)  # a rater looks before answering (the player ignores answers within 0.25 s)
    page.keyboard.press(key)
    return eventually(lambda: (p := shown_pair(page)) != before and p, what="the next pair")


def test_a_second_browser_cannot_answer_undo_or_read_as_another_rater(served, chromium: str) -> None:
    url, rated = served
    ARTIFACTS.mkdir(exist_ok=True)
    with PreferenceStore(rated.url, rated.run_name) as store:
        name, secret = invite(store, "alice")  # `prefloop raters add alice`
    with chromium_browser(chromium) as browser:
        alice = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
        alice.goto(invite_link(url, name, secret))
        answer_by_key(alice, "ArrowLeft")
        answer_by_key(alice, "ArrowRight")
        answered = eventually(lambda: len(found := labels_of(rated, "alice")) == 2 and found,
                              what="alice's two answers")

        # The attack as measured: another browser opens ?rater=alice and presses Undo six times.
        intruder = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
        for link in (url + "?rater=alice", url + "?rater=alice&key=guessed-key-123"):
            intruder.goto(link)
            intruder.get_by_text("already taken").wait_for(timeout=20_000)
            for _ in range(6):
                intruder.keyboard.press("u")
            assert intruder.locator(".pl-root").count() == 0  # no clips, no buttons
            assert "Your answers today" not in body_text(intruder)  # nothing of alice's to read
        intruder.screenshot(path=str(ARTIFACTS / "identity-second-browser.png"))

        # A look-alike name typed into the form is refused with one clear line.
        intruder.get_by_label("Your name (or a nickname)").fill("\u0430lice")
        intruder.get_by_role("button", name="Start comparing").click()
        intruder.get_by_text("different alphabets").wait_for(timeout=20_000)
        intruder.screenshot(path=str(ARTIFACTS / "identity-look-alike.png"))

        time.sleep(1.0)
        assert labels_of(rated, "alice") == answered  # untouched: none retracted, none rewritten
        assert labels_of(rated, "alice", include_retracted=True) == answered

        # alice's own page still works, and her Undo reaches her latest answer only.
        alice.keyboard.press("u")
        eventually(lambda: len(labels_of(rated, "alice")) == 1, what="alice's own undo")
        assert labels_of(rated, "alice") == answered[:1]
        alice.screenshot(path=str(ARTIFACTS / "identity-alice.png"))


def test_a_closed_tabs_pairs_go_back_to_the_queue_within_the_lease(served, chromium: str) -> None:
    url, rated = served
    with chromium_browser(chromium) as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        bob = context.new_page()
        bob.goto(url + "?rater=bob")
        shown = shown_pair(bob)
        held = {pid for pid, who in claimed_by(rated).items() if who == "bob"}
        assert shown in held and len(held) == 2  # the pair on screen and the one ready next

        time.sleep(2 * LEASE_S)  # the open page's heartbeat keeps them past the lease
        with PreferenceStore(rated.url, rated.run_name) as store:
            other = store.claim_next("carol", 5.0)
            assert other.id not in held
            store.release(other.id, "carol")

        context.close()  # the tab closes: the heartbeat stops
        closed = time.monotonic()
        eventually(lambda: lease_ends(rated, held) < time.time(), timeout=3 * LEASE_S,
                   what="bob's leases to run out")
        released_after = time.monotonic() - closed
        assert released_after <= LEASE_S + 2.0
        with PreferenceStore(rated.url, rated.run_name) as store:  # another rater gets them now
            taken = {store.claim_next("carol", 5.0).id, store.claim_next("dave", 5.0).id}
        assert taken == held


def test_the_stored_response_time_is_the_servers_not_the_browsers_claim(served, chromium: str) -> None:
    """A hand-made message claiming 30 s for a pair served a moment ago stores the moment, and
    keeps the claim as a flag."""
    url, rated = served
    with chromium_browser(chromium) as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        opened = time.monotonic()
        page.goto(url + "?rater=mallory")
        pair_id = shown_pair(page)
        page.locator(".pl-root").evaluate(
            """(root, pairId) => {
                const p = root.__player;
                p.outbox.push({seq: ++p.seq, type: 'answer', pair_id: pairId, choice: 'left',
                               response_time_s: 30});
                p.send('actions', {items: p.outbox.slice(), sent: Date.now()});
            }""",
            pair_id,
        )
        (label,) = eventually(lambda: labels_of(rated, "mallory"), what="the forged answer stored")
        elapsed = time.monotonic() - opened
        assert label.pair_id == pair_id and label.response_time_s <= elapsed < 30
        # The flag is written just after the label, in its own transaction: wait for it too.
        def flags() -> dict[str, float | None]:
            with PreferenceStore(rated.url, rated.run_name) as store:
                return store.label_flags().get(label.id, {})

        assert eventually(flags, what="the time_cut flag")["time_cut"] == 30.0


def test_the_guideline_page_renders_safely_in_the_browser(served, chromium: str) -> None:
    """A hostile guideline page: in Chromium nothing remote is loaded, no script runs, no link
    leaves the app; the Markdown and the example pair's clips show."""
    from test_rater_identity import HOSTILE_GUIDE

    url, rated = served
    with PreferenceStore(rated.url, rated.run_name) as store:
        store.set_meta("guideline_page", HOSTILE_GUIDE)
    requested: list[str] = []
    with chromium_browser(chromium) as browser:
        page = browser.new_context(viewport={"width": 1280, "height": 1300}).new_page()
        page.on("request", lambda request: requested.append(request.url))
        page.goto(url + "?rater=reader")
        shown_pair(page)
        page.get_by_text("How to judge (guidelines)").wait_for()
        page.locator("strong", has_text="pole").wait_for()
        eventually(lambda: page.locator("[data-testid='stExpander'] video").count() == 2, what="the example clips")
        time.sleep(1.0)
        page.screenshot(path=str(ARTIFACTS / "guideline.png"), full_page=True)
        assert page.evaluate("window.__pwned === undefined")
        assert page.locator("[data-testid='stExpander'] img, [data-testid='stExpander'] iframe").count() == 0
        assert page.locator("[data-testid='stExpander'] a").count() == 0
        assert not [u for u in requested if "example" in u.split("/")[2]]  # nothing fetched from elsewhere


def test_the_key_moves_from_the_address_into_a_cookie(served, chromium: str) -> None:
    """After an invite link is opened the address bar holds no key (a copied address or a
    screenshot hands nothing over); the key is in a cookie of this run, a reload of the bare address
    signs the rater in from it, and the copied address in another browser cannot answer as them."""
    from prefloop.apps.rater_key import cookie_name, decode_credentials

    url, rated = served
    ARTIFACTS.mkdir(exist_ok=True)
    with PreferenceStore(rated.url, rated.run_name) as store:
        name, secret = invite(store, "carol")
    with chromium_browser(chromium) as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        carol = context.new_page()
        carol.goto(invite_link(url, name, secret))
        answer_by_key(carol, "ArrowLeft")
        eventually(lambda: "key=" not in carol.url and "rater=carol" in carol.url, what="the key leaving the address")
        assert secret not in carol.url and secret not in body_text(carol)
        cookie = eventually(lambda: [c for c in context.cookies() if c["name"] == cookie_name(rated.run_name)],
                            what="the rater cookie")[0]
        assert decode_credentials(cookie["value"]) == ("carol", secret)
        assert cookie["sameSite"] == "Strict"
        assert secret not in carol.content() and cookie["value"] not in carol.content()  # not in the HTML
        carol.screenshot(path=str(ARTIFACTS / "identity-cookie.png"))
        copied = carol.url

        carol.goto(url)  # the bare address, no name, no key: the cookie signs carol in
        answer_by_key(carol, "ArrowRight")
        eventually(lambda: len(labels_of(rated, "carol")) == 2, what="carol's answer after the reload")

        other = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
        other.goto(copied)
        other.get_by_text("already taken").wait_for(timeout=20_000)
        assert other.locator(".pl-root").count() == 0
        assert len(labels_of(rated, "carol")) == 2

        # "Not carol?" deletes the cookie: a reload of the bare address is a stranger's page.
        carol.get_by_role("button", name="Not carol?").click()
        eventually(lambda: not [c for c in context.cookies() if c["name"] == cookie_name(rated.run_name)],
                   what="the rater cookie deleted")
        carol.goto(url)
        carol.get_by_label("Your name (or a nickname)").wait_for(timeout=20_000)
        assert carol.locator(".pl-root").count() == 0


def test_a_name_typed_on_the_first_page_is_remembered_by_a_cookie(served, chromium: str) -> None:
    """The name form claims a name and reruns the page; the key the page issued still reaches the
    cookie (the rerun would drop a cookie script sent from the form's run), never the address or the
    page, and the page says once where the key lives."""
    from prefloop.apps.rater_key import cookie_name, decode_credentials

    url, rated = served
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium_browser(chromium) as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 860})
        erin = context.new_page()
        erin.goto(url)
        erin.get_by_label("Your name (or a nickname)").fill("erin")
        erin.get_by_role("button", name="Start comparing").click()
        erin.get_by_text("this browser remembers it").wait_for(timeout=20_000)
        cookie = eventually(lambda: [c for c in context.cookies() if c["name"] == cookie_name(rated.run_name)],
                            what="the rater cookie")[0]
        name, key = decode_credentials(cookie["value"])  # type: ignore[misc]
        assert name == "erin" and key not in erin.url and key not in body_text(erin)
        assert cookie["value"] not in erin.content()  # the cookie script removed itself
        erin.screenshot(path=str(ARTIFACTS / "identity-name-form-cookie.png"))
        answer_by_key(erin, "ArrowLeft")

        erin.goto(url)  # a reload signs erin in from the cookie, and says nothing about keys again
        answer_by_key(erin, "ArrowRight")
        eventually(lambda: len(labels_of(rated, "erin")) == 2, what="erin's answer after the reload")
        assert "remembers" not in body_text(erin)
