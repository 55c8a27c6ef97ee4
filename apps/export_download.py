"""The dashboard's "Download preferences" button (admin only): the run's preferences as a zip of
the dataset folder ``prefloop export`` writes, built only when the button is clicked."""

from __future__ import annotations

import io
import logging
import re
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger("prefloop.apps")


def export_file_name(run_name: str) -> str:
    """The download's file name: the run name reduced to ``[A-Za-z0-9._-]`` (at most 80)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", run_name).strip("._")[:80]
    return f"{safe or 'run'}-preferences.zip"


def export_zip(db_url: str, run_name: str) -> bytes:
    """The run's preferences as a zip of the dataset folder ``prefloop export`` writes.

    Args:
        db_url: the store's URL, from the app's own configuration (never from a request).
        run_name: the run, likewise.

    Returns:
        The zip file's bytes: ``<run>-preferences/manifest.json``, ``segments.npz``,
        ``segments.jsonl``, ``pairs.jsonl``, ``labels.jsonl`` (retracted labels included,
        marked) and ``checks.jsonl`` (the raters' gold and repeat checks), readable by :func:`prefloop.datasets.load_dataset` once unpacked.

    Raises:
        prefloop.datasets.DatasetError, prefloop.store.StoreError: the run cannot be exported.
    """
    from prefloop.datasets import export_dataset

    folder = export_file_name(run_name).removesuffix(".zip")
    with tempfile.TemporaryDirectory(prefix="prefloop-export-") as tmp:
        out = Path(tmp) / folder
        export_dataset(db_url, run_name, out)
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(out.iterdir()):
                archive.write(path, arcname=f"{folder}/{path.name}")
        return buffer.getvalue()


def render_export_download(db_url: str, run_name: str) -> None:
    """The dashboard's "Download preferences" button. The export runs only when it is clicked
    (Streamlit calls :func:`export_zip` then); the page shows it only to whoever passed the
    dashboard's admin-token check."""
    import streamlit as st

    def build() -> bytes:
        try:
            return export_zip(db_url, run_name)
        except Exception:
            log.exception("exporting run %r for the dashboard download failed", run_name)
            raise

    st.subheader("Preferences")
    st.download_button(
        "Download preferences",
        data=build,
        file_name=export_file_name(run_name),
        mime="application/zip",
        on_click="ignore",
        icon=":material/download:",
        key="download_preferences",
        help="The run's segments, pairs, labels (retracted ones marked) and rater checks as a zipped dataset "
        "folder, the format of `prefloop export`.",
    )
