"""Replaying a recorded experiment: a teacher that answers with the labels of an exported run.

:class:`RecordedTeacher` implements the :class:`~prefloop.teachers.Teacher` protocol from a dataset
folder written by ``prefloop export`` (:mod:`prefloop.datasets`). It recognises a pair by the
*content* of its two segments -- a SHA-256 of their observations, actions, ``n_valid``,
``episode_seed`` and ``start_step`` (:func:`segment_fingerprint`) -- never by store ids, which
differ between stores. A pair asked with its sides swapped gets the swapped answer (LEFT <-> RIGHT).

When does a re-run reproduce the recorded run exactly?
    The loop is deterministic given its config and seed: the envs, the policy, the reward model and
    the query selection are all seeded, so the same config produces the same segments and asks the
    same pairs, *as long as it gets the same answers at the same points*. A recorded teacher gives
    the same answers; what can still differ is *when* they arrived. A human run with
    ``when_behind="wait"`` pauses at every label round until every asked pair is answered, so the
    reward model is always trained on exactly the labels of the rounds so far, however slowly
    people answered -- label arrival timing does not matter, and a re-run with the recorded teacher
    (which answers at once) takes the same path step for step. With ``when_behind="continue"`` the
    policy kept training on whatever labels had arrived at each moment, which depends on the
    raters' speed; a re-run cannot know those moments, so it diverges from the first late label
    and soon asks pairs the recording does not have (:class:`UnrecordedPairError`).

    So re-run with the original config: the same env, seed, label budget and schedule, segment
    length, algorithm and hyper-parameters (the dataset's ``manifest.json`` holds the config), and
    only ``teacher="recorded:<dataset dir>"`` changed. Two more conditions for a human run:
    ``gold_fraction=0`` (the loop asks gold pairs only of human raters, so a re-run would otherwise
    select different pairs from the first round) and ``raters_per_pair=1`` (the run trained on the
    mean of several raters' labels, the replay gives one label per pair). A simulated-teacher run
    replays exactly under the same config.

Several labels on one pair are combined by ``rule``: ``"majority"`` (default) -- the most common
of the live LEFT/RIGHT/EQUAL labels, a tie giving EQUAL, and CANT_TELL only when every live label
is CANT_TELL -- or ``"first"``, the earliest live label. Retracted labels never count.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prefloop.datasets import (
    MANIFEST,
    DatasetError,
    PreferenceDataset,
    export_dataset,
    load_dataset,
    store_of_run_dir,
)
from prefloop.types import Choice, Label, Segment
from prefloop.untrusted import excerpt

log = logging.getLogger("prefloop")

__all__ = [
    "RULES",
    "RecordedTeacher",
    "UnrecordedPairError",
    "combine",
    "make_recorded_teacher",
    "replay_caveats",
    "segment_fingerprint",
]

RULES = ("majority", "first")
ON_MISSING = ("raise", "cant_tell")
_FINGERPRINT_TAG = b"prefloop.segment.v1"
_SWAP = {Choice.LEFT: Choice.RIGHT, Choice.RIGHT: Choice.LEFT}
# TrainConfig fields that do not change which pairs a run with a (recorded) teacher asks: where it
# writes, what it shows people, and settings only the human-rater path reads.
_IRRELEVANT_TO_REPLAY = frozenset({
    "teacher", "teacher_params", "run_dir", "run_name", "db_url", "progress_bar", "eval_episodes",
    "guideline", "when_behind", "min_initial_labels", "gold_fraction", "checkpoint_every",
    "probation_checks",
})


class UnrecordedPairError(DatasetError):
    """The re-run asked for a pair the recording does not have (or has no live label on)."""


def segment_fingerprint(segment: Segment) -> str:
    """A hex SHA-256 of what makes a segment itself: its obs and actions (dtype, shape and bytes),
    ``n_valid``, ``episode_seed`` and ``start_step``. Equal for the same segment recorded by a
    deterministic re-run, whatever store id it has."""
    digest = hashlib.sha256(_FINGERPRINT_TAG)
    for name in ("obs", "actions"):
        array = np.asarray(getattr(segment, name))
        # Little-endian C order, so the same values hash the same whatever the array's layout.
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        digest.update(f"{name}:{array.dtype.str}:{array.shape}:".encode())
        digest.update(array.tobytes())
    scalars = np.array([segment.n_valid, segment.episode_seed, segment.start_step], dtype="<i8")
    digest.update(b"scalars:")
    digest.update(scalars.tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class _Recorded:
    """One recorded pair: its dataset id, the fingerprints of its sides, and its answer."""

    pair_id: int
    left: str
    right: str
    choice: Choice | None  # None: recorded but no live label


class RecordedTeacher:
    """Answers pairs with the labels recorded in a dataset (see the module docstring).

    Args:
        dataset: a loaded dataset (:func:`prefloop.datasets.load_dataset`).
        rule: ``"majority"`` or ``"first"``, how several labels on one pair become one answer.
        on_missing: ``"raise"`` (default) raises :class:`UnrecordedPairError` for a pair the
            recording does not have; ``"cant_tell"`` answers CANT_TELL (the loop then trains
            without that pair; the run is no longer a replay).
        rater_id: stored with every label it gives (default ``"recorded"``).

    A pair recorded several times (the same two segments asked in several rounds) is answered with
    its n-th recording the n-th time it is asked.
    """

    def __init__(
        self,
        dataset: PreferenceDataset,
        *,
        rule: str = "majority",
        on_missing: str = "raise",
        rater_id: str = "recorded",
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if on_missing not in ON_MISSING:
            raise ValueError(f"on_missing must be one of {ON_MISSING}, got {on_missing!r}")
        if not isinstance(rater_id, str) or not rater_id.strip():
            raise ValueError(f"rater_id must be a non-empty string, got {rater_id!r}")
        self.rater_id = rater_id
        self.rule = rule
        self.on_missing = on_missing
        self.source_run = dataset.run_name
        config = dataset.manifest.get("config")
        self.recorded_config: dict | None = config if isinstance(config, dict) else None
        self.caveats = replay_caveats(self.recorded_config)
        self.asked = 0
        self.missing = 0
        fingerprints = {int(s.id): segment_fingerprint(s) for s in dataset.segments}  # type: ignore[arg-type]
        live = dataset.live_labels()
        # Keyed by the unordered pair of fingerprints, recordings in the order they were asked.
        self._recorded: dict[tuple[str, str], list[_Recorded]] = {}
        for pair in dataset.pairs:
            left, right = fingerprints[pair.left_segment_id], fingerprints[pair.right_segment_id]
            entry = _Recorded(pair.id, left, right, combine(live.get(pair.id, []), rule))
            self._recorded.setdefault(_key(left, right), []).append(entry)
        self._times_asked: Counter[tuple[str, str]] = Counter()

    def config_differences(self, config_json: dict) -> list[str]:
        """Settings of a re-run's config (``TrainConfig.to_json()``) that differ from the recorded
        run's and change which pairs it asks, e.g. ``["seed: recorded 0, now 1"]``; empty when
        they all match or the dataset has no config."""
        if self.recorded_config is None:
            return []
        config_json = json.loads(json.dumps(config_json))  # tuples -> lists, as recorded
        keys = sorted((set(self.recorded_config) | set(config_json)) - _IRRELEVANT_TO_REPLAY)
        return [
            f"{key}: recorded {excerpt(self.recorded_config.get(key))}, now {excerpt(config_json.get(key))}"
            for key in keys
            if self.recorded_config.get(key) != config_json.get(key)
        ]

    def __len__(self) -> int:
        """How many recorded pairs it can answer."""
        return sum(1 for entries in self._recorded.values() for e in entries if e.choice is not None)

    def compare(self, left: Segment, right: Segment) -> Choice:
        """The recorded answer for this pair of segments, swapped if they come in the other order.

        Raises:
            UnrecordedPairError: the recording has no (live) label for this pair and
                ``on_missing="raise"``.
        """
        self.asked += 1
        fp_left, fp_right = segment_fingerprint(left), segment_fingerprint(right)
        key = _key(fp_left, fp_right)
        entries = self._recorded.get(key)
        if not entries:
            return self._missing(left, right, "the recording has no pair of these two segments")
        entry = entries[min(self._times_asked[key], len(entries) - 1)]
        self._times_asked[key] += 1
        if entry.choice is None:
            return self._missing(
                left, right, f"recorded pair {entry.pair_id} has no live label (never answered, or retracted)"
            )
        if (entry.left, entry.right) == (fp_left, fp_right):
            return entry.choice
        return _SWAP.get(entry.choice, entry.choice)

    def set_return_scale(self, scale: float) -> None:
        """Accepted and ignored: recorded answers do not depend on B-Pref's thresholds (the loop
        calls this on every teacher that is not human)."""

    def _missing(self, left: Segment, right: Segment, why: str) -> Choice:
        self.missing += 1
        if self.on_missing == "cant_tell":
            return Choice.CANT_TELL
        raise UnrecordedPairError(
            f"the re-run asked a pair the recording of run {self.source_run!r} does not have: {why} "
            f"(left: episode_seed {left.episode_seed} start_step {left.start_step}, env_step "
            f"{left.env_step}; right: episode_seed {right.episode_seed} start_step "
            f"{right.start_step}, env_step {right.env_step}). The re-run has diverged from the "
            "recorded run. Re-run with the recorded run's config (same seed, env, label budget "
            "and schedule; the dataset's manifest.json has it), from a run recorded with "
            "--when-behind wait, or use a simulated teacher instead"
            + ("; note: " + "; ".join(self.caveats) if self.caveats else "")
        )

    def __repr__(self) -> str:
        return (
            f"RecordedTeacher(rater_id={self.rater_id!r}, source_run={self.source_run!r}, "
            f"pairs={len(self)}, rule={self.rule!r}, on_missing={self.on_missing!r})"
        )


def combine(labels: list[Label], rule: str = "majority") -> Choice | None:
    """One answer from a pair's live labels (see the module docstring); None when there are none."""
    if not labels:
        return None
    if rule == "first":
        return min(labels, key=lambda lab: (lab.created_at, lab.id or 0)).choice
    votes = Counter(lab.choice for lab in labels if lab.choice is not Choice.CANT_TELL)
    if not votes:
        return Choice.CANT_TELL
    ranked = votes.most_common()
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return Choice.EQUAL
    return ranked[0][0]


def replay_caveats(config: dict | None) -> list[str]:
    """Why a run recorded with ``config`` (its ``TrainConfig.to_json()``) cannot be replayed exactly
    by a recorded teacher; empty when it can (see the module docstring)."""
    if not config or config.get("teacher") != "human":
        return []
    caveats = []
    if config.get("when_behind", "continue") != "wait":
        caveats.append(
            f"the recorded run used when_behind={config.get('when_behind', 'continue')!r}, so its labels' arrival times shaped it "
            "and a replay diverges once a label came late"
        )
    if config.get("gold_fraction", 0) not in (0, 0.0):
        caveats.append(
            f"the recorded run mixed in gold pairs (gold_fraction={excerpt(config['gold_fraction'])}), which "
            "a re-run with a teacher does not ask, so it selects other pairs"
        )
    if config.get("raters_per_pair", 1) != 1:
        caveats.append(
            f"the recorded run had {excerpt(config['raters_per_pair'])} raters per pair; a replay gives one "
            "combined label per pair, so its training targets differ"
        )
    return caveats


def _load_recording(folder: Path) -> PreferenceDataset:
    if (folder / MANIFEST).exists() or os.path.lexists(folder / MANIFEST) or not folder.is_dir():
        return load_dataset(folder)
    if not (folder / "prefs.sqlite").is_file() and not (folder / "config.json").is_file():
        raise DatasetError(
            f"{folder} is neither a dataset folder (no {MANIFEST}) nor a run folder (no prefs.sqlite "
            "or config.json); pass the folder `prefloop export --out` or `prefloop import --run-dir` wrote"
        )
    url, run_name = store_of_run_dir(folder, None, None)
    with tempfile.TemporaryDirectory(prefix="prefloop-recording-") as tmp:
        export_dataset(url, run_name, Path(tmp) / "dataset")
        return load_dataset(Path(tmp) / "dataset")


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def make_recorded_teacher(
    dataset_dir: str | os.PathLike[str],
    *,
    rule: str = "majority",
    on_missing: str = "raise",
    rater_id: str = "recorded",
) -> RecordedTeacher:
    """A :class:`RecordedTeacher` from a dataset folder (validated by ``load_dataset``), or from a
    run folder -- an imported run, or any run with a store -- whose run is read as its export
    would be written (and validated the same way).

    Raises:
        prefloop.datasets.DatasetError: the folder is not a valid dataset or run.
    """
    teacher = RecordedTeacher(_load_recording(Path(dataset_dir)), rule=rule, on_missing=on_missing, rater_id=rater_id)
    for caveat in teacher.caveats:
        log.warning("recorded teacher %s: not an exact replay: %s", dataset_dir, caveat)
    return teacher
