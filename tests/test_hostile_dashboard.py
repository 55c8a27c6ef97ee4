"""The dashboard and the rater page under hostile store contents (issue 12, class 7).

What a store holds may come from an imported dataset, another tool or a hand edit: labels dated in
the year 2286, in 1970, NaN or infinity; rater ids and trainer messages that are Markdown links and
remote images. The dashboard's aggregations stay bounded whatever the timestamps, and such text
shows as text: never as a link or an image that leaves the app.
"""

from __future__ import annotations

import json
import math
import re
import time

import pytest
from conftest import RatedStore
from prefloop.apps.dashboard import (
    MAX_CHART_HOURS,
    agreement,
    labels_left_off_the_chart,
    labels_per_hour,
    parse_progress,
    trainer_status_line,
)
from sqlalchemy import create_engine, update
from test_app import app_test_isolation, make_app, open_page, texts  # noqa: F401 -- the fixture

from prefloop.store import PreferenceStore, labels_table
from prefloop.types import Choice, Label
from prefloop.untrusted import plain_text

NOW = 1_796_000_000.0  # December 2026
HOUR = 3600.0


def label(t: float, rater: str = "ada") -> Label:
    return Label(1, rater, Choice.LEFT, 1.0, t)


HOSTILE_TIMES = {
    "year-2286": 1e10,
    "year-1970": 0.0,
    "nan": math.nan,
    "infinity": math.inf,
    "minus-infinity": -math.inf,
    "negative": -5.0,
    "1e300": 1e300,
    "one-day-ahead": NOW + 23 * HOUR,  # clock skew between machines: still shown
    "ten-years-ago": NOW - 10 * 365 * 24 * HOUR,
}


@pytest.mark.parametrize("when", HOSTILE_TIMES.values(), ids=HOSTILE_TIMES.keys())
def test_one_odd_timestamp_never_builds_more_than_the_window(when: float) -> None:
    labels = [label(NOW - 2 * HOUR), label(NOW - 1), label(when)]
    rows = labels_per_hour(labels, NOW)
    assert 1 <= len(rows) <= MAX_CHART_HOURS
    assert all(math.isfinite(start) and 0 <= start <= NOW + 24 * HOUR for start, _ in rows)
    shown = sum(n for _, n in rows)
    assert shown >= 2  # the real ones are always in the chart
    note = labels_left_off_the_chart(labels, rows, NOW)
    assert (note is None) == (shown == 3)  # whatever is left out is said


def test_labels_over_months_show_the_latest_weeks_and_say_what_is_older() -> None:
    labels = [label(NOW - h * HOUR) for h in range(0, 24 * 90, 5)]  # 90 days, one every 5 hours
    rows = labels_per_hour(labels, NOW)
    assert len(rows) == MAX_CHART_HOURS and rows[-1][0] == (NOW // HOUR) * HOUR
    older = len(labels) - sum(n for _, n in rows)
    assert older > 0 and f"{older} older than the {MAX_CHART_HOURS} hours shown" in labels_left_off_the_chart(labels, rows, NOW)
    assert labels_per_hour([label(math.nan)], NOW) == [] and labels_per_hour([], NOW) == []


def test_agreement_on_a_pair_with_a_hundred_thousand_labels_is_counted_not_enumerated() -> None:
    """An imported pair may ask for up to 2^31 - 1 labels; agreement must not build every pair of
    them (5 * 10^9 here)."""
    labels = [Label(7, f"r{i}", Choice.LEFT if i % 4 else Choice.RIGHT, 1.0, NOW) for i in range(100_000)]
    agree = agreement(labels)
    n, right = 100_000, 25_000
    assert agree.comparisons == n * (n - 1) // 2
    assert agree.pairwise == pytest.approx(((n - right) * (n - right - 1) + right * (right - 1)) / (n * (n - 1)))
    assert (agree.pairs, agree.unanimous) == (1, 0.0)


def test_rater_quality_on_huge_pairs_and_odd_times_is_linear_and_finite() -> None:
    from prefloop.apps.rater_quality import (
        fatigue,
        krippendorff_alpha,
        rating_hours,
        self_consistency,
    )

    units = [["left"] * 150 + ["right"] * 50 + ["equal"] * 7, ["left", "left"], ["right", "equal", "right"]]
    assert krippendorff_alpha(units) == pytest.approx(_alpha_by_enumeration(units), rel=1e-9)
    big = [["left"] * 75_000 + ["right"] * 25_000, ["left", "left"]]  # 10^10 ordered pairs if enumerated
    assert -1.0 <= krippendorff_alpha(big) <= 1.0
    repeats = [Label(i, "ada", Choice.LEFT if i % 2 else Choice.RIGHT, 1.0, NOW) for i in range(60_000)]
    (row,) = self_consistency(repeats, {i: (1, 2) for i in range(60_000)})
    assert row.repeats == 60_000 * 59_999 // 2 and row.consistent == 2 * (30_000 * 29_999 // 2)
    odd = [label(t) for t in (NOW, NOW + 60, math.nan, math.inf, -math.inf, 1e10, 0.0)]
    assert math.isfinite(rating_hours(odd))
    assert fatigue([label(math.inf)] * 8 + [label(math.nan, "bob")] * 8, {}) == []  # no session: no row


def _alpha_by_enumeration(units: list[list[str]]) -> float:
    """Krippendorff's alpha for nominal data, straight from the definition (small inputs only)."""
    import itertools
    from collections import Counter

    coincidence: Counter = Counter()
    for values in units:
        for a, b in itertools.permutations(values, 2):
            coincidence[(a, b)] += 1 / (len(values) - 1)
    n = sum(coincidence.values())
    totals: Counter = Counter()
    for (a, _), c in coincidence.items():
        totals[a] += c
    observed = sum(c for (a, b), c in coincidence.items() if a != b) / n
    expected = sum(totals[a] * totals[b] for a in totals for b in totals if a != b) / (n * (n - 1))
    return 1 - observed / expected


def test_store_text_becomes_one_plain_line() -> None:
    link = "[Session expired - click to log in](https://evil.example/login)"
    assert plain_text(link) == link  # kept as typed: st.text shows it, nothing renders it
    assert plain_text("ada\u202e\u2066nimda\n\x1b[31m") == "adanimda [31m"
    assert plain_text("x" * 10_000, 50) == "x" * 49 + "…"
    progress = parse_progress(json.dumps({"status": "x" * 5000, "message": "![t](https://evil.example/t.png)\n# big"}))
    line = trainer_status_line(progress, NOW)
    assert len(line) < 400 and "\n" not in line


EVIL_RATER = "[Session expired - click to log in](https://evil.example/login)"
EVIL_MESSAGE = "![tracker](https://evil.example/pixel.png) Click [here](https://evil.example)"


def test_the_dashboard_stays_small_and_shows_store_text_as_text(rated_store: RatedStore) -> None:
    clock_2286 = lambda: 1e10  # noqa: E731 -- a store whose clock (or import) says 2286
    with PreferenceStore(rated_store.url, rated_store.run_name, clock=clock_2286) as store:
        first, second, third = rated_store.pair_ids[:3]
        for rater, pair_id in [(EVIL_RATER, first), ("ada", second), ("bob", third)]:
            assert store.claim_next(rater, exclude=[p for p in rated_store.pair_ids if p != pair_id]).id == pair_id
            store.answer(pair_id, rater, Choice.LEFT, 2.0)
        store.set_meta("progress", json.dumps({"status": "training", "message": EVIL_MESSAGE, "updated_at": time.time()}))
    engine = create_engine(rated_store.url)
    with engine.begin() as conn:  # what another tool or a damaged store may hold
        conn.execute(update(labels_table).where(labels_table.c.rater_id == "ada").values(created_at=-math.inf))  # SQLite has no NaN
        conn.execute(update(labels_table).where(labels_table.c.rater_id == "bob").values(created_at=time.time() - 60))
    engine.dispose()

    at = make_app(rated_store, "--admin-token", "admin-token-1", rater="cleo", admin_token="admin-token-1")
    assert not at.exception, at.exception
    open_page(at, "dashboard")
    assert not at.exception and not at.error, texts(at.error)
    assert {m.label: m.value for m in at.metric}["Labels"] == "3"
    rendered = texts(at.markdown) + texts(at.caption) + texts(at.info) + texts(at.warning)
    assert "evil.example" not in rendered  # no link, no image: not in any Markdown element
    plain = texts(at.text)
    assert EVIL_RATER[:39] in plain and "![tracker](https://evil.example/pixel.png)" in plain
    assert "Not in the chart: 2 with a time that is not a date" in texts(at.caption)


GUIDELINE_ATTACKS = [
    "![tracker](https://evil.example/pixel.png) Which cart is better?",
    "[Session expired - click to log in](https://evil.example/login)",
    "Which is better? <https://evil.example/login>",
    "Session expired, log in at https://evil.example/login",
    "Log in at www.evil.example",
    "Write to help@evil.example",
    "https&#58;//evil.example &#91;x&#93;&#40;https://evil.example&#41;",
    "[x][1] [1]: https://evil.example",
    "\\[x\\](https://evil.example) a backslash before the bracket",
    "<img src=https://evil.example/a.png> <a href=https://evil.example>log in</a>",
]


@pytest.mark.parametrize("text", GUIDELINE_ATTACKS)
def test_a_guideline_from_a_store_or_dataset_never_becomes_a_link_or_an_image(text: str) -> None:
    """The one-line question above the clips is Markdown (for emphasis): whatever a store or an
    imported dataset holds, it renders without a link, an image or HTML, and without the address
    and e-mail patterns GitHub-flavoured Markdown links by itself."""
    from markdown_it import MarkdownIt
    from prefloop.apps.rater_app import display_guideline

    shown = display_guideline(text)
    html = MarkdownIt("commonmark").render(f"### {shown}")
    assert "<a " not in html and "<img" not in html and "<b>" not in html
    assert not re.search(r"(?i)https?://|www\.|[\w.+-]@[\w-]", shown)  # GFM's literal autolinks
    assert display_guideline("Which cart is *better*?") == "Which cart is *better*?"  # emphasis kept
