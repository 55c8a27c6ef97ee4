"""The rater app: people compare two clips of the agent and say which is better.

Start it with ``prefloop rate --run-dir RUN_FOLDER`` (or ``apps/launch.py``); by hand:
``streamlit run apps/rater_app.py -- --db-url URL --run-name NAME [--token T] [--admin-token T]
[--lease-seconds S]``. The process only reads pairs and clips from the store and writes labels;
the trainer and the clip worker run elsewhere.

This file is the thin Streamlit glue; the logic lives in ``rating`` (the rater's queue),
``player`` (the side-by-side clip player), ``access`` (config, tokens, names) and ``dashboard``.
"""

from __future__ import annotations

import logging
import re
import sys
import unicodedata
from collections.abc import Sequence

import streamlit as st
from prefloop.apps.access import (
    AppConfig,
    AppConfigError,
    check_exposure,
    parse_app_args,
    token_matches,
)
from prefloop.apps.dashboard import parse_progress, render_dashboard
from prefloop.apps.export_download import render_export_download
from prefloop.apps.guideline import (
    GUIDELINE_META,
    render_guideline_page,
    show_pair_clips,
)
from prefloop.apps.onboarding import Onboarding, start_onboarding
from prefloop.apps.player import PLAYER_KEY, render_player
from prefloop.apps.rater_key import credentials_from_cookie, forget_cookie, remember_in_cookie
from prefloop.apps.rating import DB_TROUBLE, Notice, RaterSession
from prefloop.apps.run_end import LABELLING_OVER, finished_view, waiting_view, watch_for_run_end
from sqlalchemy.exc import SQLAlchemyError
from streamlit import config as st_config

from prefloop.store import PreferenceStore, StoreError
from prefloop.store.identity import IdentityError, sign_in
from prefloop.training.config import MAX_GUIDELINE_CHARS
from prefloop.types import Choice
from prefloop.untrusted import markdown_literal

log = logging.getLogger("prefloop.apps")

DEFAULT_GUIDELINE = "Which clip shows the agent doing the task better?"
_SESSION = "prefloop_rater_session"
# The (name, key) a sign-in wants in the cookie, until the next page run writes it (_signed_in).
_COOKIE_TO_WRITE = "prefloop_cookie_to_write"
# Material icons come with Streamlit's own font; emoji need an emoji font the machine may lack.
_NOTICE_ICONS = {"info": ":material/info:", "success": ":material/check_circle:", "warning": ":material/warning:",
                 "error": ":material/error:"}


@st.cache_resource(show_spinner=False)
def open_store(db_url: str, run_name: str) -> PreferenceStore:
    """One store (one connection pool) per app process, shared by every rater's session; never
    a new run (people must not be served one that does not exist)."""
    return PreferenceStore(db_url, run_name, create_run=False)


def main(argv: Sequence[str]) -> None:
    # An emoji, not a :material/...: icon: Streamlit loads a material favicon from fonts.gstatic.com,
    # and the rater page must work offline (an emoji favicon is an inline data: URL).
    st.set_page_config(page_title="Compare clips · prefloop", page_icon="⚖️", layout="wide")
    try:
        config = parse_app_args(argv)
    except AppConfigError as exc:
        st.error(f"The rater app is not configured correctly: {exc}")
        return

    # Streamlit listens on every interface when no address is set.
    try:
        check_exposure(st_config.get_option("server.address") or "0.0.0.0", config.token, config.admin_token)
    except AppConfigError:
        st.error(
            "This app is reachable from other machines but was started without both an access "
            "token and a different admin token, so it shows nothing. Restart it with "
            "`prefloop rate ... --token TOKEN --admin-token ADMIN_TOKEN` (or bind it to 127.0.0.1)."
        )
        return
    if not _check_token(config.token, "token", "Access token",
                        "This rater app needs an access token. Use the link you were given, or type the token."):
        return
    try:
        store = open_store(config.db_url, config.run_name)
    except (StoreError, SQLAlchemyError) as exc:
        # Details (paths, host names) are for the person running the app, not for raters.
        log.error("cannot open the preference store: %s", exc)
        st.error(
            "Cannot open the label database, so there is nothing to compare right now. The "
            "person running the training can see why in the app's output."
        )
        return

    def rate() -> None:
        _guarded(lambda: rate_page(config, store))

    def dashboard() -> None:
        if _check_token(config.admin_token, "admin_token", "Dashboard token",
                        "The dashboard needs the admin token."):
            _guarded(lambda: render_dashboard(store))
            _guarded(lambda: render_export_download(config.db_url, config.run_name))

    # Less empty space above the page, so clips and answer buttons fit a laptop screen.
    st.html("<style>[data-testid='stMainBlockContainer'] { padding-top: 2.5rem; }</style>")
    # Material icons, not emoji: their font ships with Streamlit, while a browser without an emoji
    # font (Debian's headless Chromium) showed the dashboard's 📊 as an empty box.
    page = st.navigation(
        [
            st.Page(rate, title="Rate clips", icon=":material/balance:", url_path="rate", default=True),
            st.Page(dashboard, title="Dashboard", icon=":material/monitoring:", url_path="dashboard"),
        ],
        position="top",
    )
    page.run()


def _guarded(body) -> None:
    """Run a page so that a failure reaches the person as a sentence, never as a traceback."""
    try:
        body()
    except SQLAlchemyError as exc:
        log.warning("database error: %s", exc)
        st.error(DB_TROUBLE)
        st.button("Try again", key="retry_after_db_error")
    except Exception:
        log.exception("rater app page failed")
        st.error("Something went wrong on our side. Reload the page; every answer you saved is safe.")


def _check_token(expected: str | None, param: str, label: str, prompt: str) -> bool:
    """Ask for a token (``?<param>=`` or a field) when one is configured; True once it matches."""
    if expected is None:
        return True
    ok_key = f"prefloop_{param}_ok"
    if st.session_state.get(ok_key):
        return True
    typed_key = f"prefloop_{param}_typed"
    candidates = [t for t in (st.session_state.get(typed_key), st.query_params.get(param)) if t]
    for given in candidates:
        if token_matches(expected, given):
            st.session_state[ok_key] = True
            if st.query_params.get(param) != given:
                st.query_params[param] = given  # a reload keeps working
            return True
    st.markdown(f"### {prompt}")
    if candidates:
        st.error(
            f"That {label.lower()} is not valid. Ask the person running the training for the "
            "correct link or token."
        )
    st.text_input(label, type="password", key=typed_key)
    return False


# -- the rating page ---------------------------------------------------------------------------


# Markdown that could make the question a link or an image (or an HTML entity spelling one), and
# what GitHub-flavoured Markdown turns into a link by itself: an address or an e-mail.
_LINK_SYNTAX = re.compile(r"([\\\[\]()<>!&])")
_AUTOLINK_TRIGGER = re.compile(r"(?i)(?<=:)(?=//)|(?<=www)(?=\.)|(?<=@)")


def display_guideline(stored: str | None) -> str:
    """The question above the clips: the run's guideline on one line (whitespace and control
    characters collapsed to spaces, at most 500 characters), or the default question when there
    is none. It is shown as Markdown for emphasis only: link, image and HTML syntax is escaped and
    a zero-width space breaks what would become a link by itself (``https://``, ``www.``, ``@``),
    so a guideline from a store or an imported dataset never loads a remote image or shows a link
    that leaves the app. The admin's guideline page (``render_guideline_page``) is the place for
    richer text."""
    text = "".join(" " if unicodedata.category(ch) in ("Cc", "Cs") else ch for ch in stored or "")
    text = " ".join(text.split())[:MAX_GUIDELINE_CHARS]
    if not text:
        return DEFAULT_GUIDELINE
    return _AUTOLINK_TRIGGER.sub("\u200b", _LINK_SYNTAX.sub(r"\\\1", text))


def identify(store: PreferenceStore, config: AppConfig) -> str | None:
    """The rater this browser session acts as, or None while there is none.

    A name is bound to a secret key: ``?rater=NAME&key=KEY`` (an invite link from
    ``prefloop raters add``), or the key this page issued on the name's first visit. Another
    browser with the name but without its key cannot act as that rater. Once verified, the
    session keeps the name and the key moves from the address bar into a cookie of this run
    (``prefloop.apps.rater_key``): a reload signs in from the cookie, and a copied address or a
    screenshot of the page does not carry the key.
    """
    if st.session_state.get("prefloop_rater"):
        return _signed_in(store)
    problem = None
    from_url = st.query_params.get("rater")
    from_cookie = credentials_from_cookie(store.run_name)
    if st.session_state.get("prefloop_signed_out"):
        from_cookie = None  # "Not NAME?" was pressed: the cookie is being deleted
        forget_cookie(store.run_name)
    if from_url and st.query_params.get("key"):
        problem = _sign_in(store, config, from_url, st.query_params.get("key"))
    elif from_cookie is not None and (not from_url or from_url == from_cookie[0]):
        problem = _sign_in(store, config, *from_cookie)
        if problem is not None:
            problem = None  # a stale cookie (a new invite replaced the key): sign in afresh
            forget_cookie(store.run_name)
    elif from_url:
        problem = _sign_in(store, config, from_url, None)
    if st.session_state.get("prefloop_rater"):
        return _signed_in(store)
    st.markdown("## Welcome! Help teach an agent by comparing short clips")
    st.markdown(
        "You will see two short clips of the agent side by side and say which one does the "
        "task better. Each answer takes a few seconds; stop whenever you like, your answers "
        "are saved as you go."
    )
    if config.invite_only and problem is None:
        st.info("This run rates by invitation: open the personal link you were given.")
    form_column, _ = st.columns([2, 3])
    with form_column, st.form("rater_name_form", border=False):
        name = st.text_input("Your name (or a nickname)", max_chars=40, key="rater_name_input",
                             placeholder="e.g. alex")
        submitted = st.form_submit_button("Start comparing", type="primary")
    if submitted:
        problem = _sign_in(store, config, name, None)
        if problem is None:
            st.rerun()
    if problem:
        st.warning(markdown_literal(problem, 500))  # the name is the rater's text: never Markdown
    return None


def _sign_in(store: PreferenceStore, config: AppConfig, name: object, key: object) -> str | None:
    """Verify or claim ``name``; on success remember it in the session and queue its key (given or
    newly issued) for the cookie. Returns the problem to show, or None."""
    try:
        signed = sign_in(store, name, key, open_enrolment=not config.invite_only)
    except IdentityError as exc:
        return str(exc)
    st.session_state["prefloop_rater"] = signed.name
    st.session_state.pop("prefloop_signed_out", None)
    st.query_params["rater"] = signed.name  # a reload keeps the name; the key goes to the cookie
    st.query_params.pop("key", None)
    if signed.issued_key is not None:
        st.session_state["prefloop_new_key"] = True
    if signed.issued_key is not None or isinstance(key, str) and key:
        st.session_state[_COOKIE_TO_WRITE] = (signed.name, signed.issued_key or key)
    return None


def _signed_in(store: PreferenceStore) -> str:
    """The signed-in rater's name, after writing the cookie ``_sign_in`` queued. The run that shows
    the rater's page writes it, not ``_sign_in`` itself: the name form signs in and then calls
    ``st.rerun()``, and a new run drops what the old one had not yet sent to the browser (Streamlit
    clears the session's outgoing queue when a run starts), so the cookie would be set only when
    the browser happened to be quick."""
    queued = st.session_state.pop(_COOKIE_TO_WRITE, None)
    if queued is not None:
        remember_in_cookie(store.run_name, *queued)
    return st.session_state["prefloop_rater"]


def onboarded(store: PreferenceStore, rater: str) -> bool:
    """True once ``rater`` may give labels: onboarding is off, there are not enough gold pairs
    for it, or they passed it. Otherwise draws the practice round and returns False."""
    if st.session_state.get("prefloop_onboarded") == rater:
        return True
    record = store.rater(rater)
    practice = st.session_state.get("prefloop_onboarding")
    if record is not None and record["onboarded_at"] is None:
        if not (isinstance(practice, tuple) and practice[0] == rater):
            started = start_onboarding(store, display_guideline(store.get_meta("guideline")))
            practice = (rater, started)
            st.session_state["prefloop_onboarding"] = practice
        if practice[1] is not None and practice[1].available:
            _practice_view(store, rater, practice[1])
            return False
    st.session_state["prefloop_onboarded"] = rater
    return True


def _practice_view(store: PreferenceStore, rater: str, practice: Onboarding) -> None:
    st.markdown(f"### {display_guideline(store.get_meta('guideline'))}")
    st.caption(f"Practice first: {len(practice.pairs)} pairs whose answer is known. After each you see which "
               f"clip was better and why; with {practice.plan.to_pass} right your answers start to count.")
    _guideline_page(store, expanded=False)
    feedback = st.session_state.get("prefloop_feedback")
    if feedback is not None:
        (st.success if feedback.correct else st.warning)(feedback.text)
        if not practice.finished:
            if st.button("Next practice pair", key="practice_next", type="primary"):
                st.session_state.pop("prefloop_feedback", None)
                st.rerun()
        elif practice.passed:
            st.success(f"You passed ({sum(practice.answers)} of {len(practice.pairs)} right). Your answers count from now on.")
            if st.button("Start rating", key="practice_done", type="primary"):
                store.set_onboarded(rater)
                st.session_state.pop("prefloop_feedback", None)
                st.rerun()
        else:
            st.info(f"{sum(practice.answers)} of {len(practice.pairs)} right; {practice.plan.to_pass} are needed. "
                    "Read the guidelines above and try again.")
            if st.button("Try again", key="practice_again", type="primary"):
                practice.restart()
                st.session_state.pop("prefloop_feedback", None)
                st.rerun()
        return
    st.caption(f"Practice pair {len(practice.answers) + 1} of {len(practice.pairs)}")
    show_pair_clips(store, practice.next_pair(), "Practice pair")
    buttons = st.columns(3)
    for column, (choice, words) in zip(buttons, ((Choice.LEFT, "Left is better"), (Choice.EQUAL, "About the same"),
                                                  (Choice.RIGHT, "Right is better"))):
        if column.button(words, key=f"practice_{choice.value}", width="stretch"):
            st.session_state["prefloop_feedback"] = practice.answer(choice)
            st.rerun()


def get_session(store: PreferenceStore, rater: str, config: AppConfig) -> RaterSession:
    session = st.session_state.get(_SESSION)
    if not isinstance(session, RaterSession) or session.rater_id != rater or session.store is not store:
        session = RaterSession(
            store, rater, lease_seconds=config.lease_seconds, idle_release_s=config.idle_seconds,
            max_answers_per_minute=config.max_answers_per_minute,
        )
        session.refresh()
        st.session_state[_SESSION] = session
    return session


def _on_actions() -> None:
    """The player sent answers or an undo: record them before the page is drawn again."""
    session = st.session_state.get(_SESSION)
    state = st.session_state.get(PLAYER_KEY) or {}
    payload = state.get("actions") if hasattr(state, "get") else None
    if not isinstance(session, RaterSession) or not isinstance(payload, dict):
        return
    try:
        session.apply(payload.get("items") or [])
    except Exception:  # never let a callback traceback reach the rater
        log.exception("handling rater actions failed")
        session.notices.append(Notice("error", "That answer could not be processed; please answer again."))


def rate_page(config: AppConfig, store: PreferenceStore) -> None:
    rater = identify(store, config)
    if rater is None:
        return
    if not onboarded(store, rater):
        return
    session = get_session(store, rater, config)
    guideline = display_guideline(store.get_meta("guideline"))

    head, who = st.columns([5, 1], vertical_alignment="bottom")
    head.markdown(f"### {guideline}")
    with who:
        if st.button(f"Not {markdown_literal(rater)}?", key="switch_rater", type="tertiary"):
            session.release_all()
            for key in ("prefloop_rater", _SESSION, "prefloop_new_key", _COOKIE_TO_WRITE):
                st.session_state.pop(key, None)
            for param in ("rater", "key"):
                st.query_params.pop(param, None)
            st.session_state["prefloop_signed_out"] = True  # the sign-in page deletes the cookie
            st.rerun()
    if st.session_state.pop("prefloop_new_key", False):
        # Shown once, when the page issued the name's key (a name typed on the first page): the
        # rater has no link to come back with, so say where the key lives and what to do without it.
        st.info(
            f"The name **{markdown_literal(rater)}** is now yours, and this browser remembers it: "
            "come back in this browser and you are signed in. The page's address does not prove who "
            "you are, so sharing it or a screenshot lets no one answer as you. In another browser, "
            "or after clearing this site's cookies, ask the person running the training for a "
            "personal link.",
            icon=":material/key:",
        )

    for notice in session.take_notices():
        st.toast(notice.text, icon=_NOTICE_ICONS[notice.level], duration="long")

    progress = parse_progress(store.get_meta("progress"))
    if progress is not None and progress.status in LABELLING_OVER:
        session.release_all()  # nothing is served once the trainer uses no more labels
        finished_view(session, store)
        return

    if session.paused:
        _paused_view(session, config)
        return
    if session.current is None:
        waiting_view(session, store)
        return

    if session.break_due(config.break_minutes * 60):
        _break_reminder(session, config)
    _guideline_page(store, expanded=not session.own_label_ids)
    waiting = store.counts()
    st.caption(
        f"Watch both clips (they loop together; slow them down if it helps), then pick the "
        f"better one -- or *Can't tell*. Pairs waiting: **{waiting['pending'] + waiting['claimed']}**"
    )
    render_player(session, _on_actions)  # it shows the rater's answers today, counted at once
    _keepalive(session, config.lease_seconds)
    watch_for_run_end(store)


def _break_reminder(session: RaterSession, config: AppConfig) -> None:
    with st.container(border=True):
        st.markdown(
            f"**You have been rating for {_duration(config.break_minutes * 60)}.** A few minutes away from "
            "the screen keep your answers sharp; your answers so far are saved."
        )
        take, go_on, _ = st.columns([1, 1, 3])
        if take.button("Take a break", key="take_break", type="primary"):
            session.pause()
            st.rerun()
        if go_on.button("Keep going", key="keep_going"):
            session.keep_going()
            st.rerun()


def _guideline_page(store: PreferenceStore, expanded: bool) -> None:
    """The run's guideline page (if the admin wrote one) in a fold below the question."""
    page = store.get_meta(GUIDELINE_META)
    if page and page.strip():
        with st.expander("How to judge (guidelines)", expanded=expanded, icon=":material/menu_book:"):
            render_guideline_page(store, page)


def _keepalive(session: RaterSession, lease_seconds: float) -> None:
    """The open page's heartbeat: renews the pairs' leases a few times per lease; when the tab
    closes it stops, and the pairs go back to the queue within ``lease_seconds``."""
    @st.fragment(run_every=max(2.0, lease_seconds / 4))
    def keep_leases() -> None:
        if session.heartbeat():
            st.rerun(scope="app")

    keep_leases()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} seconds" if seconds < 90 else f"{seconds / 60:.0f} minutes"


def _paused_view(session: RaterSession, config: AppConfig) -> None:
    st.info(
        "Paused: no pairs are held for you, so others can rate them (this happens on a break, or "
        f"after {_duration(config.idle_seconds)} without an answer). Press the button when you are back.",
        icon=":material/pause_circle:",
    )
    if st.button("I'm back -- show me a pair", key="resume_rating", type="primary"):
        session.resume()
        st.rerun()


if __name__ == "__main__":
    main(sys.argv[1:])
