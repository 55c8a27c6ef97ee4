"""The rater app in a real browser: Debian's Chromium, driven by Playwright, against a served app.

Checks what only a browser can: the clips decode and play, keys and clicks answer, the next pair
appears, two raters see different pairs. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import RATED_GUIDELINE, RatedStore, free_port
from prefloop.apps.launch import launch_rater_app, wait_until_ready
from sqlalchemy import create_engine, select

from prefloop.store import PreferenceStore, pairs_table
from prefloop.types import Choice, Label

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def chromium() -> str:
    if Path(CHROMIUM).is_file() or shutil.which("chromium"):
        return CHROMIUM if Path(CHROMIUM).is_file() else str(shutil.which("chromium"))
    message = f"Debian's chromium is not installed ({CHROMIUM}); `make test` installs it"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@contextmanager
def serve_app(rated: RatedStore, log: Path, **options: object) -> Iterator[str]:
    """The rater app for ``rated`` on a free loopback port (``options`` go to launch_rater_app);
    yields its URL."""
    port = free_port()
    app = launch_rater_app(rated.url, rated.run_name, port=port, log_path=log, **options)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_ready(url, timeout=60, process=app)
        yield url
    finally:
        app.terminate()
        app.wait(timeout=30)


@pytest.fixture
def served(rated_store: RatedStore, tmp_path: Path) -> Iterator[tuple[str, RatedStore]]:
    with serve_app(rated_store, tmp_path / "app.log") as url:
        yield url, rated_store


def eventually(check: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def live_labels(rated: RatedStore) -> list[Label]:
    with PreferenceStore(rated.url, rated.run_name) as store:
        return store.labels()


def claimed_by(rated: RatedStore) -> dict[int, str | None]:
    engine = create_engine(rated.url)
    try:
        with engine.connect() as conn:
            return dict(conn.execute(select(pairs_table.c.id, pairs_table.c.claimed_by)).all())
    finally:
        engine.dispose()


def shown_pair(page) -> int:
    """Wait until the player shows a pair whose two clips are playing; return its id."""
    page.wait_for_function("window.__prefloopRater && window.__prefloopRater.ready", timeout=20_000)
    return page.evaluate("window.__prefloopRater.pairId")


def front_videos(page) -> list[dict]:
    return page.locator("video.pl-front").evaluate_all(
        "vs => vs.map(v => ({ready: v.readyState, width: v.videoWidth, t: v.currentTime, paused: v.paused,"
        " side: v.dataset.side, rate: v.playbackRate, webm: v.canPlayType('video/webm; codecs=\"vp9\"')}))"
    )


def test_raters_watch_both_clips_and_answer_by_key_and_click(served, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    url, rated = served
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            alice_context = browser.new_context(viewport={"width": 1280, "height": 860})
            alice = alice_context.new_page()
            alice.goto(url + "?rater=alice")
            first = shown_pair(alice)
            alice.get_by_text(RATED_GUIDELINE).wait_for()

            videos = front_videos(alice)
            assert [v["side"] for v in videos] == ["left", "right"]
            assert all(v["ready"] >= 2 and v["width"] > 0 and v["webm"] == "probably" for v in videos), videos
            started = [v["t"] for v in videos]
            # 45 s: headless Chromium decodes on a 2-core CI whose other pytest worker may be running a
            # trainer and its background fit process (it timed out at 15 s once in such a run).
            eventually(lambda: all(v["t"] > t + 0.1 for v, t in zip(front_videos(alice), started)),
                       timeout=45.0, what="both clips to play")
            alice.screenshot(path=str(ARTIFACTS / "rater.png"))
            alice.locator("button[data-speed='0.25']").click()  # slow motion for both clips
            assert {v["rate"] for v in front_videos(alice)} == {0.25}
            alice.locator("button[data-speed='1']").click()

            time.sleep(0.3)  # a rater looks before answering (answers within 0.25 s are ignored)
            alice.keyboard.press("ArrowLeft")
            second = shown_pair(alice)
            assert second != first
            (label,) = eventually(lambda: live_labels(rated), what="the keyboard answer in the store")
            assert (label.pair_id, label.rater_id, label.choice) == (first, "alice", Choice.LEFT)
            assert 0.3 <= label.response_time_s < 60

            time.sleep(0.3)
            alice.locator("button.pl-answer[data-choice='right']").click()
            third = eventually(lambda: (p := shown_pair(alice)) != second and p, what="the third pair")
            labels = eventually(lambda: (found := live_labels(rated)) and len(found) == 2 and found,
                                what="the clicked answer in the store")
            assert [(l.pair_id, l.rater_id, l.choice) for l in labels][1] == (second, "alice", Choice.RIGHT)
            eventually(lambda: "All answers saved" in alice.locator(".pl-status").inner_text(), what="saved status")

            bob = browser.new_context(viewport={"width": 1280, "height": 860}).new_page()
            bob.goto(url + "?rater=bob")
            bobs = shown_pair(bob)
            assert bobs not in (first, second, third)
            holders = claimed_by(rated)
            assert holders[bobs] == "bob" and holders[third] == "alice"
            assert all(v["ready"] >= 2 for v in front_videos(bob))

            with PreferenceStore(rated.url, rated.run_name) as store:  # what the trainer reports
                store.set_meta("progress", json.dumps({
                    "status": "waiting_for_labels", "env_step": 30_000, "total_steps": 100_000,
                    "updated_at": time.time(),
                    "fit_history": [{"env_step": s, "labels": s // 500, "val_accuracy": 0.55 + s / 100_000}
                                    for s in range(5_000, 30_001, 5_000)],
                    "curve": [{"env_step": s, "true_return": 20 + s / 200, "learned_return": s / 1000}
                              for s in range(0, 30_001, 2_500)],
                }))
            alice.set_viewport_size({"width": 1280, "height": 1700})
            alice.goto(url + "dashboard?rater=alice")
            alice.get_by_text("Run dashboard").wait_for()
            alice.locator("canvas, svg.marks").first.wait_for(timeout=20_000)
            time.sleep(0.5)  # charts fade in
            alice.screenshot(path=str(ARTIFACTS / "dashboard.png"))
        finally:
            browser.close()


def body_text(page) -> str:
    return page.locator("body").inner_text()


def today_count(page) -> str:
    """The player's "Your answers today" number."""
    return page.locator(".pl-today").inner_text()


def test_the_app_killed_right_after_an_answer_stores_it_once_or_not_at_all(
    rated_store: RatedStore, chromium: str, tmp_path: Path
) -> None:
    """SIGKILL the server process just after a key press, start it again on the same store and
    port: the answer is stored once (the page then says so) or not at all (the page shows the same
    pair again), never twice, whatever the browser's outbox re-sends."""
    import signal

    from playwright.sync_api import sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}/"

    def start():
        app = launch_rater_app(rated_store.url, rated_store.run_name, port=port, log_path=tmp_path / "app.log")
        wait_until_ready(url, timeout=60, process=app)
        return app

    def mine(pair_id: int) -> list[Label]:
        return [l for l in live_labels(rated_store) if l.pair_id == pair_id]

    def settled(page) -> int:
        """Wait until the page shows a playable pair and has nothing left to send; its id."""
        eventually(lambda: page.evaluate("window.__prefloopRater && window.__prefloopRater.ready")
                   and "Saving" not in page.locator(".pl-status").inner_text(), timeout=30, what="a settled page")
        return page.evaluate("window.__prefloopRater.pairId")

    app = start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 860})
                page.goto(url + "?rater=ada")
                first = shown_pair(page)

                # 1. The server is frozen when the key is pressed, then killed: nothing is stored,
                #    and the reloaded page (its outbox gone with it) shows the same pair again.
                time.sleep(0.3)
                os.kill(app.pid, signal.SIGSTOP)
                page.keyboard.press("ArrowLeft")
                page.wait_for_function("window.__prefloopRater.answers === 1")
                app.kill()
                app.wait(timeout=30)
                assert mine(first) == []
                app = start()
                page.reload()
                assert settled(page) == first
                eventually(lambda: today_count(page) == "0", what="no answer counted")

                # 2. Killed right after the answer left the browser: it may or may not have been
                #    stored. After the restart the page reconnects by itself and its outbox sends
                #    whatever was not acknowledged again.
                time.sleep(0.3)
                page.keyboard.press("ArrowRight")
                app.kill()
                app.wait(timeout=30)
                assert len(mine(first)) <= 1
                app = start()
                for reloaded in (False, True):
                    shown = settled(page)
                    stored = mine(first)
                    assert len(stored) <= 1 and len(live_labels(rated_store)) == len(stored)
                    if stored:  # saved once, and the page says so
                        assert stored[0].choice is Choice.RIGHT and shown != first
                        eventually(lambda: today_count(page) == "1", what="the saved answer counted")
                    else:  # not saved, and the same pair is asked again
                        assert shown == first
                        eventually(lambda: today_count(page) == "0", what="no answer counted")
                    if not reloaded:
                        page.reload()
                assert len(mine(first)) == 1, "the outbox re-sent the answer after the reconnect"

                # 3. Killed just after the label was committed, before the browser heard back: the
                #    outbox sends it again to the new process, and the store keeps the one label.
                current = settled(page)
                time.sleep(0.3)
                page.keyboard.press("ArrowLeft")
                eventually(lambda: mine(current), timeout=15, what="the answer in the store")
                os.kill(app.pid, signal.SIGSTOP)
                app.kill()
                app.wait(timeout=30)
                app = start()
                assert settled(page) != current
                eventually(lambda: today_count(page) == "2", what="both answers counted")
                assert [l.choice for l in mine(current)] == [Choice.LEFT] and len(live_labels(rated_store)) == 2
            finally:
                browser.close()
    finally:
        if app.poll() is None:
            app.terminate()
            app.wait(timeout=30)


def test_the_counter_counts_each_answer_at_once_a_reflex_press_is_told_and_a_finished_run_says_so(
    served, chromium: str
) -> None:
    from playwright.sync_api import sync_playwright

    url, rated = served
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            outside: list[str] = []  # the rater page works offline: nothing from another host
            page.on("request", lambda request: outside.append(request.url)
                    if urlsplit(request.url).scheme in ("http", "https") and urlsplit(request.url).hostname != "127.0.0.1"
                    else None)
            page.goto(url + "?rater=ada")
            first = shown_pair(page)
            assert today_count(page) == "0"
            eventually(lambda: page.evaluate("document.querySelector(\"link[rel='shortcut icon']\")?.href || ''")
                       .startswith("data:"), timeout=15, what="the page's own (inline) icon")

            time.sleep(1.0)  # a person looks, then answers -- and presses again as the next pair appears
            # (both key presses in one go: on a busy machine two separate presses may be 0.25 s apart)
            page.evaluate("""() => { for (const key of ["ArrowLeft", "ArrowRight"])
                document.dispatchEvent(new KeyboardEvent("keydown", {key, bubbles: true})); }""")
            # Counted the moment it is given, not one round trip (or one answer) later.
            assert today_count(page) == "1"
            assert page.evaluate("window.__prefloopRater.refused") == 1
            assert "Not taken" in page.locator(".pl-status").inner_text()
            page.screenshot(path=str(ARTIFACTS / "rater-reflex-guard.png"))
            second = shown_pair(page)
            assert second != first
            labels = eventually(lambda: live_labels(rated), what="the answer in the store")
            time.sleep(0.5)
            assert [(l.pair_id, l.choice) for l in live_labels(rated)] == [(first, Choice.LEFT)]  # the reflex press was not taken
            eventually(lambda: today_count(page) == "1" and "Saving" not in page.locator(".pl-status").inner_text(),
                       what="the count, confirmed by the server")

            for expected in ("2", "3"):
                shown_pair(page)  # its clips play
                time.sleep(0.5)
                page.keyboard.press("ArrowRight")
                assert today_count(page) == expected
            page.keyboard.press("u")
            assert today_count(page) == "2"
            eventually(lambda: len(live_labels(rated)) == 2 and today_count(page) == "2", what="the undo, saved")

            with PreferenceStore(rated.url, rated.run_name) as store:  # the trainer is done
                store.set_meta("progress", json.dumps({"status": "finished", "eval_return_mean": 500.0,
                                                       "message": "run finished: eval return 500.0"}))
            eventually(lambda: "this run is complete" in (text := body_text(page)) and "500.0" in text,
                       timeout=15, what="the run-complete page with the run's result")
            # no pair is shown any more (the page may take a rerun more to drop it under load)
            eventually(lambda: page.locator(".pl-root").count() == 0, timeout=15, what="the last pair to leave the page")
            assert outside == []
            page.screenshot(path=str(ARTIFACTS / "rater-run-complete.png"))
        finally:
            browser.close()
