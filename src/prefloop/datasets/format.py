"""The dataset format: file names, version, what every file and field means, and the records a
loaded dataset is made of.

A dataset folder holds one run's segments, pairs, labels and rater checks (see :mod:`prefloop.datasets`). Ids in
the files are the source store's ids; importing gives new ids in the target store and keeps
everything else as it was.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefloop.store.schema import CHECK_KINDS
from prefloop.types import Choice, Label, Segment

FORMAT_NAME = "prefloop.preferences"
FORMAT_VERSION = 1

MANIFEST = "manifest.json"
SEGMENTS_NPZ = "segments.npz"
SEGMENTS_JSONL = "segments.jsonl"
PAIRS_JSONL = "pairs.jsonl"
LABELS_JSONL = "labels.jsonl"
DATA_FILES = (SEGMENTS_NPZ, SEGMENTS_JSONL, PAIRS_JSONL, LABELS_JSONL)
# The rater checks (prefloop.store.rater_checks): written by every export since they were added,
# read when present. A version-1 export from before has no checks file and loads with no checks.
CHECKS_JSONL = "checks.jsonl"

# The Parquet layout (manifest "layout": "parquet"): the same records as three tables that
# pandas, Hugging Face `datasets`, DuckDB or Spark read directly.
LAYOUT_PARQUET = "parquet"
SEGMENTS_PARQUET = "segments.parquet"
PAIRS_PARQUET = "pairs.parquet"
LABELS_PARQUET = "labels.parquet"
PARQUET_FILES = (SEGMENTS_PARQUET, PAIRS_PARQUET, LABELS_PARQUET)
CHECKS_PARQUET = "checks.parquet"
# segments.parquet's schema metadata key: per array column, the shape of one row and the dtype.
ARRAYS_METADATA_KEY = "prefloop.arrays"

# Run meta keys (written by prefloop.training.loop.publish_run_info) carried in the manifest.
# "guideline_page": the rater guideline's Markdown page (rendered safely by the rater app).
META_KEYS = ("config", "env_spec", "render_fps", "guideline", "guideline_page")
IMPORT_META_KEY = "import_source"

CHOICES = [c.value for c in Choice]
INT_ARRAYS = ("segment_id", "n_valid", "episode_seed", "start_step", "env_step")

FILE_DESCRIPTIONS: dict[str, Any] = {
    MANIFEST: {
        "description": "this file: format, provenance, counts, checksums and the meaning of every field",
    },
    SEGMENTS_NPZ: {
        "description": (
            "NumPy npz (zip of .npy files, no pickle: load with allow_pickle=False). N segments of "
            "length L; row i of every per-segment array belongs to segment_id[i]"
        ),
        "arrays": {
            "segment_id": "(N,) int64, the segment's id in the source store",
            "obs": "(N, L, *obs_shape), the observation each action was taken in (float32, or uint8 for images, as recorded); "
            "for a Dict or Tuple observation space (N, L, D), gymnasium.spaces.flatten's float32 vector "
            "(docs/observations.md)",
            "actions": "(N, L, *act_shape), the actions (int64 for Discrete, float32 for Box)",
            "true_rewards": "(N, L) float32, the environment's reward (0 on absorbing steps)",
            "n_valid": "(N,) int64, real steps; steps from n_valid on are the absorbing state "
            "after termination (obs and actions zero)",
            "terminated": "(N,) bool, the episode terminated at step n_valid - 1 of the segment",
            "episode_seed": "(N,) int64, the seed the episode was reset with",
            "start_step": "(N,) int64, index of the segment's first step within its episode",
            "env_step": "(N,) int64, the agent's total env steps when the segment was recorded",
            "episode_actions": "(sum of start_step + n_valid, *act_shape), every action from each "
            "episode's reset to its segment's last real step, segments concatenated in row order; "
            "with episode_seed it replays the episode exactly (how clips are rendered)",
            "episode_actions_offsets": "(N + 1,) int64, segment i's episode actions are "
            "episode_actions[offsets[i]:offsets[i + 1]]",
        },
    },
    SEGMENTS_JSONL: {
        "description": "one JSON object per line, one line per segment, in the order of segments.npz",
        "fields": {
            "id": "int, the segment's id in the source store (= segment_id in segments.npz)",
            "env_id": "str or null, the Gymnasium id of the env it was recorded in",
            "episode_seed": "int", "start_step": "int", "n_valid": "int", "terminated": "bool",
            "env_step": "int, provenance: the policy had trained this many env steps when it "
            "played the segment (random-policy segments come first)",
            "run_name": "str, provenance: the run whose policy played it",
            "created_at": "float, unix seconds when it was stored",
        },
    },
    PAIRS_JSONL: {
        "description": "one JSON object per line, one line per pair shown to raters, by id",
        "fields": {
            "id": "int, the pair's id in the source store",
            "left_segment_id": "int, a segment id of segments.jsonl",
            "right_segment_id": "int, a segment id of segments.jsonl",
            "labels_per_pair": "int >= 1, how many different raters were to label it",
            "gold_choice": "null or 'left'/'right'/'equal': the known answer of a quality-control pair",
            "score": "float, the query selector's acquisition score",
            "created_at": "float, unix seconds when it was queued",
            "status": "'pending', 'claimed', 'answered' or 'withdrawn' at export; an import "
            "recomputes it from the labels (keeping 'withdrawn') and never carries leases",
        },
    },
    LABELS_JSONL: {
        "description": "one JSON object per line, one line per label, in the order they were given",
        "fields": {
            "id": "int, the label's id in the source store",
            "pair_id": "int, a pair id of pairs.jsonl",
            "rater_id": "str, who answered",
            "choice": f"one of {CHOICES}: which segment is better ('cant_tell': no answer)",
            "response_time_s": "float >= 0, seconds the rater took",
            "created_at": "float, unix seconds when it was given",
            "retracted_at": "null, or unix seconds when the rater undid it (not used for training)",
        },
    },
    CHECKS_JSONL: {
        "description": "one JSON object per line, one line per rater check, by id: a pair asked of a "
        "rater only to measure them (never a label, never trains the reward model; the evidence "
        "behind each rater's reliability estimate). Absent from exports made before checks existed",
        "fields": {
            "id": "int, the check's id in the source store",
            "pair_id": "int, a pair id of pairs.jsonl",
            "rater_id": "str, who was asked",
            "kind": f"one of {list(CHECK_KINDS)}: 'gold', a gold pair (is the rater right?); 'repeat', a "
            "pair the rater labelled before, shown again with left and right swapped (do they answer the same?)",
            "swapped": "bool, the pair was shown with left and right swapped",
            "expected": "'left'/'right'/'equal': the gold answer, or the rater's earlier label",
            "choice": f"null (served, not answered yet: on the rater's screen) or one of {CHOICES}: the "
            "answer, in the pair's own orientation (a swapped repeat is stored un-swapped)",
            "response_time_s": "null (not answered) or float >= 0, seconds the rater took",
            "served_at": "float, unix seconds when it was (last) shown to the rater",
            "answered_at": "null (not answered, or the answer was undone) or unix seconds when it was answered",
        },
    },
}


class DatasetError(ValueError):
    """A dataset folder is missing, malformed or cannot go where it was asked to; the message names
    the file and field and says how to fix it."""


@dataclass(frozen=True)
class DatasetPair:
    """One pair of a dataset; segment ids refer to :attr:`PreferenceDataset.segments`."""

    id: int
    left_segment_id: int
    right_segment_id: int
    labels_per_pair: int
    gold_choice: Choice | None
    score: float
    created_at: float
    status: str | None = None


@dataclass(frozen=True)
class DatasetCheck:
    """One rater check of a dataset (see :data:`FILE_DESCRIPTIONS` ``checks.jsonl``); ``pair_id``
    is a dataset pair id; ``choice``, ``response_time_s`` and ``answered_at`` are None while the
    check is open (served, not answered)."""

    id: int
    pair_id: int
    rater_id: str
    kind: str
    swapped: bool
    expected: Choice
    choice: Choice | None
    response_time_s: float | None
    served_at: float
    answered_at: float | None


@dataclass
class PreferenceDataset:
    """A dataset folder in memory.

    Attributes:
        manifest: the parsed ``manifest.json``.
        segments: every segment, ``id`` set to its dataset (source store) id.
        pairs: by id.
        labels: in the order given; ``pair_id`` and ``id`` are dataset ids, retracted ones included
            when the export included them.
        segment_created_at: when each segment (by id) was first stored, unix seconds.
        checks: the rater checks, by id (none for an export from before checks existed).
    """

    manifest: dict[str, Any]
    segments: list[Segment]
    pairs: list[DatasetPair]
    labels: list[Label]
    segment_created_at: dict[int, float] = field(default_factory=dict)
    checks: list[DatasetCheck] = field(default_factory=list)

    @property
    def run_name(self) -> str | None:
        """The run the dataset was exported from."""
        return self.manifest.get("source", {}).get("run_name")

    @property
    def env_spec(self) -> dict[str, Any] | None:
        return self.manifest.get("env_spec")

    def segment_by_id(self) -> dict[int, Segment]:
        return {int(s.id): s for s in self.segments}  # type: ignore[arg-type]

    def live_labels(self) -> dict[int, list[Label]]:
        """Non-retracted labels by pair id, in the order given."""
        out: dict[int, list[Label]] = {}
        for label in self.labels:
            if label.retracted_at is None:
                out.setdefault(label.pair_id, []).append(label)
        return out


@dataclass
class DatasetSummary:
    """What an export or import moved.

    ``segment_ids``, ``pair_ids``, ``label_ids`` and ``check_ids`` map dataset ids to the target
    store's ids (import only; empty after an export, whose files keep the store's ids). ``checks``:
    rater checks moved (answered or open).
    """

    path: Path
    run_name: str
    segments: int
    pairs: int
    labels: int
    retracted_labels: int
    raters: list[str]
    segment_ids: dict[int, int] = field(default_factory=dict)
    pair_ids: dict[int, int] = field(default_factory=dict)
    label_ids: dict[int, int] = field(default_factory=dict)
    checks: int = 0
    check_ids: dict[int, int] = field(default_factory=dict)

    def to_text(self) -> str:
        return (
            f"{self.segments} segments, {self.pairs} pairs, {self.labels} labels "
            f"({self.retracted_labels} retracted) from {len(self.raters)} rater(s)"
            + (f", {self.checks} rater checks" if self.checks else "")
        )


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes, as 64 hex digits (the manifest's checksums)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def json_or_none(text: str | None) -> Any:
    """A run meta value parsed as JSON, or None when it is empty or not JSON."""
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


NPZ_ARRAYS = (
    "segment_id", "obs", "actions", "true_rewards", "n_valid", "terminated", "episode_seed",
    "start_step", "env_step", "episode_actions", "episode_actions_offsets",
)


def data_files(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The data files a manifest's layout always has (JSONL + npz unless it says ``"layout":
    "parquet"``); the checks file (:func:`checks_file`) may come with them."""
    return PARQUET_FILES if manifest.get("layout") == LAYOUT_PARQUET else DATA_FILES


def checks_file(manifest: dict[str, Any]) -> str:
    """The name of the rater checks file in a manifest's layout."""
    return CHECKS_PARQUET if manifest.get("layout") == LAYOUT_PARQUET else CHECKS_JSONL


def _as_parquet(fields: dict[str, str]) -> dict[str, str]:
    """The JSON Lines field descriptions, naming the Parquet tables they refer to."""
    return {key: text.replace(".jsonl", ".parquet") for key, text in fields.items()}


PARQUET_FILE_DESCRIPTIONS: dict[str, Any] = {
    MANIFEST: FILE_DESCRIPTIONS[MANIFEST],
    SEGMENTS_PARQUET: {
        "description": (
            "Parquet, one row per segment. Array columns are lists flattened in C order; the "
            f"schema metadata key {ARRAYS_METADATA_KEY!r} gives, per array column, the shape of one "
            "row and the dtype (np.asarray(row).reshape(shape))"
        ),
        "columns": {
            "segment_id": "int, the segment's id in the source store (labels' left/right_segment_id)",
            **{k: v for k, v in FILE_DESCRIPTIONS[SEGMENTS_JSONL]["fields"].items() if k != "id"},
            "obs": "list, shape (L, *obs_shape), the observation each action was taken in (dtype as recorded)",
            "actions": "list, shape (L, *act_shape), the actions (int64 for Discrete, float32 for Box)",
            "true_rewards": "list, shape (L,) float32, the environment's reward (0 on absorbing steps)",
            "episode_actions": "list, shape (start_step + n_valid, *act_shape): every action from the "
            "episode's reset to the segment's last real step; with episode_seed it replays the episode",
        },
    },
    PAIRS_PARQUET: {
        "description": "Parquet, one row per pair shown to raters, by id",
        "columns": {
            **_as_parquet(FILE_DESCRIPTIONS[PAIRS_JSONL]["fields"]),
            "query_method": "str or null: 'gold' for a quality-control pair, else the run's "
            "configured query method (null when the run's config does not say)",
        },
    },
    LABELS_PARQUET: {
        "description": "Parquet, one row per label in the order given, with its pair and both "
        "segments' spans beside it (so the table reads alone)",
        "columns": {
            **_as_parquet(FILE_DESCRIPTIONS[LABELS_JSONL]["fields"]),
            "retracted": "bool, retracted_at is not null",
            "left_segment_id": "int, the pair's left segment", "right_segment_id": "int, its right segment",
            **{
                f"{side}_{name}": f"int, the {side} segment's {meaning}"
                for side in ("left", "right")
                for name, meaning in (
                    ("episode_seed", "episode seed (the seed its episode was reset with)"),
                    ("start_step", "first step within its episode"),
                    ("n_valid", "length in real steps (the rest is the absorbing state after termination)"),
                )
            },
            "query_method": "str or null, as in pairs.parquet",
        },
    },
    CHECKS_PARQUET: {
        "description": "Parquet, one row per rater check, by id, with whether the answer agrees "
        "and the pair's segments beside it (checks measure raters; they are not labels)",
        "columns": {
            **_as_parquet(FILE_DESCRIPTIONS[CHECKS_JSONL]["fields"]),
            "agrees": "bool or null: choice equals expected (null while not answered)",
            "left_segment_id": "int, the pair's left segment", "right_segment_id": "int, its right segment",
        },
    },
}


def missing_extra_error(what: str, package: str) -> DatasetError:
    """The one-line error for an optional dependency that is not installed."""
    return DatasetError(
        f"{what} needs the Python package {package!r}, which is not installed; install the "
        "extra with: pip install 'prefloop[data]'"
    )
