"""A run's preferences as a portable dataset folder: export, validate, load, import.

Researchers take a run's segments, pairs and labels elsewhere (another machine, another store,
another tool) and can re-run a human experiment from them (see :mod:`prefloop.teachers.recorded`). The
format is open and never uses pickle: JSON, JSON Lines and one NumPy ``.npz`` of plain numeric
arrays, which any language with a zip and ``.npy`` reader can open.

    dataset/
      manifest.json    format "prefloop.preferences" version 1: where it came from (run name,
                       env_spec, render_fps, guideline, the run's config), counts, file checksums,
                       and a description of every file, array and field
      segments.npz     the segments' arrays, row i of every array belongs to segment_id[i]
      segments.jsonl   one JSON object per segment (same order), its scalar fields and provenance
      pairs.jsonl      one JSON object per pair shown to raters
      labels.jsonl     one JSON object per label, retracted ones included (they are kept, marked)
      checks.jsonl     one JSON object per rater check (a gold pair or a repeat asked only to
                       measure a rater; not a label): the evidence behind each rater's
                       reliability estimate. Exports from before checks have none (loaded as none)

Ids in the files are the source store's ids; importing gives new ids in the target store and keeps
everything else as it was: arrays bit for bit (dtypes too), rater ids, choices, response times,
timestamps and the retracted state of every label, and every rater check (into the importing run).

Everything a file holds is validated on loading, before a store is touched; a problem raises
:class:`DatasetError` naming the file, the line or array, the field, and the fix.

The modules, in the order a dataset goes through them:

- :mod:`~prefloop.datasets.format`: file names, version, field descriptions, the records.
- :mod:`~prefloop.datasets.export`: a run of a store to a dataset folder.
- :mod:`~prefloop.datasets.records`: the checks every segment, pair and label gets on loading.
- :mod:`~prefloop.datasets.rater_checks`: rater checks read for export, checked, imported.
- :mod:`~prefloop.datasets.load`: reading a folder or zip as hostile input, through those checks.
- :mod:`~prefloop.datasets.importing`: a loaded dataset into a run of a store.
- :mod:`~prefloop.datasets.parquet`: the same records as Parquet tables (``prefloop export
  --format parquet``), read back through the same checks; needs ``prefloop[data]``.
- :mod:`~prefloop.datasets.episodes`: a run's episodes as a Minari dataset (``--format minari``);
  needs ``prefloop[data]``.
"""

from __future__ import annotations

from prefloop.datasets.export import export_dataset
from prefloop.datasets.format import (
    CHECKS_JSONL,
    CHECKS_PARQUET,
    DATA_FILES,
    FILE_DESCRIPTIONS,
    FORMAT_NAME,
    FORMAT_VERSION,
    LABELS_JSONL,
    LABELS_PARQUET,
    LAYOUT_PARQUET,
    MANIFEST,
    PAIRS_JSONL,
    PAIRS_PARQUET,
    PARQUET_FILE_DESCRIPTIONS,
    PARQUET_FILES,
    SEGMENTS_JSONL,
    SEGMENTS_NPZ,
    SEGMENTS_PARQUET,
    DatasetCheck,
    DatasetError,
    DatasetPair,
    DatasetSummary,
    PreferenceDataset,
)
from prefloop.datasets.importing import (
    import_dataset,
    import_loaded_dataset,
    store_of_run_dir,
)
from prefloop.datasets.load import (
    DEFAULT_MAX_DATASET_BYTES,
    MAX_IMPORTED_GUIDELINE_CHARS,
    MAX_MANIFEST_BYTES,
    MAX_SOURCE_RUN_NAME_CHARS,
    load_dataset,
)
from prefloop.datasets.records import MAX_JSONL_LINE_BYTES

__all__ = [
    "CHECKS_JSONL",
    "CHECKS_PARQUET",
    "DATA_FILES",
    "DEFAULT_MAX_DATASET_BYTES",
    "FILE_DESCRIPTIONS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LABELS_JSONL",
    "LABELS_PARQUET",
    "LAYOUT_PARQUET",
    "MANIFEST",
    "MAX_IMPORTED_GUIDELINE_CHARS",
    "MAX_JSONL_LINE_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_SOURCE_RUN_NAME_CHARS",
    "PAIRS_JSONL",
    "PAIRS_PARQUET",
    "PARQUET_FILES",
    "PARQUET_FILE_DESCRIPTIONS",
    "SEGMENTS_JSONL",
    "SEGMENTS_NPZ",
    "SEGMENTS_PARQUET",
    "DatasetCheck",
    "DatasetError",
    "DatasetPair",
    "DatasetSummary",
    "PreferenceDataset",
    "export_dataset",
    "import_dataset",
    "import_loaded_dataset",
    "load_dataset",
    "store_of_run_dir",
]
