"""Reading files nobody vouches for (a dataset someone sent you) with bounded memory.

Every reader here refuses before it allocates: a file's size is checked before it is read, a JSON
document's numbers and nesting before they become Python objects, and a ``.npz`` archive's central
directory, member sizes and ``.npy`` headers before any array is decoded. A symbolic link, a FIFO
or a device is never opened for reading (so nothing outside the folder is read or echoed), and an
error quotes at most :data:`EXCERPT_CHARS` characters of the value it is about.

Problems raise :class:`UntrustedInputError` whose message is one line naming the file and the
problem; callers add the fix that fits their command.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import unicodedata
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "EXCERPT_CHARS",
    "MAX_INT_DIGITS",
    "MAX_JSON_DEPTH",
    "TooLargeError",
    "BIDI_CONTROLS",
    "UntrustedInputError",
    "check_finite",
    "excerpt",
    "extract_zip",
    "iter_jsonl",
    "open_regular_file",
    "parse_json",
    "markdown_literal",
    "plain_text",
    "read_npz",
    "read_regular_file",
    "read_users_text",
]

EXCERPT_CHARS = 80
MAX_JSON_DEPTH = 32  # a prefloop manifest nests 4 deep
MAX_INT_DIGITS = 20  # any int64 (19 digits and a sign); Python itself refuses > 4300 digits
MAX_NPZ_MEMBERS = 64
MAX_NPZ_DIRECTORY_BYTES = 1 << 20  # the zip's central directory, read whole by zipfile
MAX_NPY_DIMS = 8
# Characters that reorder the text around them: a name holding one can show as another name.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_ALLOWED_KINDS = "biuf"  # bool, integers, floats: no objects (pickle), strings, voids or complex


class UntrustedInputError(ValueError):
    """An untrusted file is unsafe or malformed; the message is one line naming file and problem."""


class TooLargeError(UntrustedInputError):
    """An untrusted file (or what it says it holds) is larger than the caller allows."""


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters: what an error may quote of an
    untrusted value (a megabyte string or a 4000-digit integer is never echoed whole)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'} of {len(value)} items"
    try:
        text = repr(value[: limit + 1] if isinstance(value, str) else value)
    except Exception:  # noqa: BLE001 -- a value too odd to print
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plain_text(text: str, limit: int = 200) -> str:
    """Text from a store or a dataset made fit for one line of a page: control characters become
    spaces, :data:`BIDI_CONTROLS` are dropped, runs of spaces collapse, and it is cut to ``limit``
    characters. Show it as text (``st.text``), never as Markdown or HTML, so a link or an image
    in it stays text."""
    cleaned = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cs") else ch for ch in text if ch not in BIDI_CONTROLS
    )
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$&:])")


def markdown_literal(text: str, limit: int = 200) -> str:
    """:func:`plain_text` with Markdown's special characters escaped, for the few places that
    render Markdown around untrusted text (a button label, a message naming a rater): ``__bold__``
    shows as typed, never bold, a link or an image stays text."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", plain_text(text, limit))


# -- files --------------------------------------------------------------------------------------


def open_regular_file(folder: Path, name: str, max_bytes: int) -> BinaryIO:
    """Open ``folder/name`` for reading, refusing a symbolic link (never followed), anything that is
    not a regular file (FIFO, device, folder) and a file larger than ``max_bytes``.

    ``name`` is a plain file name: a path with separators or ``..`` is refused.
    """
    if not name or name in (".", "..") or "/" in name or os.sep in name or "\x00" in name:
        raise UntrustedInputError(f"{excerpt(name)} is not a plain file name inside the folder")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        folder_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        raise UntrustedInputError(f"cannot open folder {folder}: {exc.strerror}") from None
    try:
        if stat.S_ISLNK(os.lstat(name, dir_fd=folder_fd).st_mode):
            raise UntrustedInputError(
                f"{name} is a symbolic link; a dataset's files must be regular files inside its "
                "folder (links are never followed)"
            )
        fd = os.open(name, flags, dir_fd=folder_fd)
    except FileNotFoundError:
        raise UntrustedInputError(f"{name} is missing") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a link after the check above
            raise UntrustedInputError(f"{name} is a symbolic link; links are never followed") from None
        raise UntrustedInputError(f"cannot open {name}: {exc.strerror}") from None
    finally:
        os.close(folder_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedInputError(f"{name} is not a regular file (a folder, FIFO or device)")
        if info.st_size > max_bytes:
            raise TooLargeError(
                f"{name} is {info.st_size:,} bytes, more than the limit of {max_bytes:,}"
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(folder: Path, name: str, max_bytes: int) -> bytes:
    """The bytes of ``folder/name`` (see :func:`open_regular_file`), at most ``max_bytes`` even if
    the file grows while it is read."""
    with open_regular_file(folder, name, max_bytes) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLargeError(f"{name} grew beyond the limit of {max_bytes:,} bytes while read")
    return data


def read_users_text(path: Path, max_chars: int) -> str:
    """A text file the user names on the command line (links followed), read no further than
    ``max_chars`` UTF-8 characters can take, so ``/dev/zero`` or a huge file costs no memory.

    Raises:
        TooLargeError: the file holds more than ``max_chars`` characters.
        OSError, UnicodeDecodeError: as ``Path.read_text`` would.
    """
    max_bytes = 4 * max_chars  # UTF-8 takes at most 4 bytes a character
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    text = data[:max_bytes].decode("utf-8", errors="ignore" if len(data) > max_bytes else "strict")
    if len(data) > max_bytes or len(text) > max_chars:
        raise TooLargeError(f"{path} holds more than {max_chars:,} characters")
    return text


# -- JSON ---------------------------------------------------------------------------------------


def _parse_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise UntrustedInputError(f"holds an integer of {digits} digits (at most {MAX_INT_DIGITS})")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text[:400]) if len(text) <= 400 else math.inf
    if not math.isfinite(value):
        raise UntrustedInputError(f"holds the number {excerpt(text, 40)}, too large for a double")
    return value


def _parse_constant(text: str) -> float:
    raise UntrustedInputError(f"holds {text}, which is not a number in standard JSON")


def parse_json(text: str, where: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse one JSON document from an untrusted source.

    Refuses ``NaN``/``Infinity`` and numbers that overflow a double, integers of more than
    :data:`MAX_INT_DIGITS` digits, and nesting deeper than ``max_depth``; ``where`` names the file
    (and line) in the message.
    """
    try:
        value = json.loads(
            text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
        )
    except UntrustedInputError as exc:
        raise UntrustedInputError(f"{where} {exc}") from None
    except RecursionError:
        raise UntrustedInputError(f"{where} is nested deeper than {max_depth} levels") from None
    except json.JSONDecodeError as exc:
        raise UntrustedInputError(f"{where} is not valid JSON ({exc.msg} at character {exc.pos})") from None
    except ValueError as exc:  # e.g. Python's own integer-length limit, if ever reached
        raise UntrustedInputError(f"{where} is not usable JSON ({excerpt(str(exc), 60)})") from None
    if _depth_exceeds(value, max_depth):
        raise UntrustedInputError(f"{where} is nested deeper than {max_depth} levels")
    return value


def _depth_exceeds(value: Any, max_depth: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def iter_jsonl(data: bytes, name: str, max_line_bytes: int) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` for each non-blank line of a UTF-8 JSON Lines file already read
    into ``data``; a line longer than ``max_line_bytes`` is refused before it is parsed."""
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if len(raw) > max_line_bytes:
            raise UntrustedInputError(
                f"{name} line {number} is {len(raw):,} bytes long, more than {max_line_bytes:,}"
            )
        if not raw.strip():
            continue
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UntrustedInputError(
                f"{name} line {number} is not UTF-8 text (byte {exc.start})"
            ) from None
        yield number, parse_json(line, f"{name} line {number}")


# -- npz ----------------------------------------------------------------------------------------


# What a damaged or hostile zip makes zipfile and numpy raise (RuntimeError: an encrypted member).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError, NotImplementedError, RuntimeError)


def _zip_failure(name: str, verb: str, exc: BaseException) -> UntrustedInputError:
    return UntrustedInputError(f"{name} cannot be {verb} ({type(exc).__name__}: {excerpt(str(exc), 60)})")


def _check_zip_directory(handle: BinaryIO, name: str, kind: str) -> None:
    """Refuse a zip whose central directory (which ``zipfile`` reads whole on opening) is large or
    lists more than :data:`MAX_NPZ_MEMBERS` members, before opening it."""
    try:
        endrec = zipfile._EndRecData(handle)  # type: ignore[attr-defined]  # stable since 2.x
    except OSError:
        endrec = None
    if not endrec:
        raise UntrustedInputError(f"{name} cannot be read: it is not a zip ({kind}) file, or it is truncated")
    if endrec[zipfile._ECD_SIZE] > MAX_NPZ_DIRECTORY_BYTES or endrec[zipfile._ECD_ENTRIES_TOTAL] > MAX_NPZ_MEMBERS:  # type: ignore[attr-defined]
        raise UntrustedInputError(
            f"{name} lists {endrec[zipfile._ECD_ENTRIES_TOTAL]:,} members; a {kind} of a dataset has "  # type: ignore[attr-defined]
            f"at most {MAX_NPZ_MEMBERS}"
        )
    handle.seek(0)


def extract_zip(handle: BinaryIO, name: str, allowed: Sequence[str], dest: Path, max_bytes: int) -> Path:
    """Unpack a zipped folder of plain files into ``dest``, checked before anything is written.

    The archive may hold only the files named in ``allowed``, at its top or in one top folder
    (as ``prefloop export`` output zipped, or the dashboard's download): no other names, no
    ``..``, absolute paths, links or duplicates, and declared sizes summing to at most
    ``max_bytes``. Each member is copied with its declared size as the bound. Returns the folder
    holding the files.
    """
    _check_zip_directory(handle, name, "zip")
    try:
        with zipfile.ZipFile(handle) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
            names = [info.filename for info in infos]
            tops = {n.split("/", 1)[0] for n in names if "/" in n}
            prefix = f"{next(iter(tops))}/" if len(tops) == 1 and all("/" in n for n in names) else ""
            for info in infos:
                inner = info.filename[len(prefix):] if info.filename.startswith(prefix) else info.filename
                if inner not in allowed or info.filename.startswith("/") or "\\" in info.filename:
                    raise UntrustedInputError(
                        f"{name} holds {excerpt(info.filename)}; a zipped dataset holds only "
                        f"{', '.join(allowed)} (in one folder at most)"
                    )
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise UntrustedInputError(f"{name}: {excerpt(info.filename)} is a symbolic link; links are never unpacked")
            if len(set(names)) != len(names):
                raise UntrustedInputError(f"{name} holds a file twice")
            total = sum(info.file_size for info in infos)
            if total > max_bytes:
                raise TooLargeError(f"{name} unpacks to {total:,} bytes, more than the limit of {max_bytes:,}")
            folder = dest / "dataset"
            folder.mkdir()
            for info in infos:
                target = folder / info.filename[len(prefix):]
                with archive.open(info) as source, open(target, "xb") as out:
                    left = info.file_size
                    while block := source.read(min(1 << 20, left + 1)):
                        left -= len(block)
                        if left < 0:
                            raise UntrustedInputError(f"{name}: {excerpt(info.filename)} is larger than it says")
                        out.write(block)
            return folder
    except UntrustedInputError:
        raise
    except _ZIP_ERRORS as exc:
        raise _zip_failure(name, "unpacked", exc) from None


def read_npz(handle: BinaryIO, name: str, arrays: Sequence[str], max_bytes: int) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz`` archive, read only after its layout has been checked.

    Before any array is decoded: the central directory is small and lists at most
    :data:`MAX_NPZ_MEMBERS` members; the members read are plain ``.npy`` files whose uncompressed
    sizes sum to at most ``max_bytes``; each ``.npy`` header gives a numeric dtype and a shape
    whose size is exactly what the member holds (so a header claiming terabytes is refused without
    allocating). Members not in ``arrays`` are not read. Pickle is never allowed.
    """
    _check_zip_directory(handle, name, "npz")
    try:
        with zipfile.ZipFile(handle) as archive:
            members = {info.filename: info for info in archive.infolist()}
            missing = [a for a in arrays if f"{a}.npy" not in members]
            if missing:
                raise UntrustedInputError(f"{name}: arrays {missing} are missing")
            infos = [members[f"{a}.npy"] for a in arrays]
            total = sum(info.file_size for info in infos)
            if total > max_bytes:
                raise TooLargeError(
                    f"{name} holds {total:,} bytes of arrays uncompressed, more than the limit of "
                    f"{max_bytes:,}"
                )
            for array, info in zip(arrays, infos):
                with archive.open(info) as member:
                    _check_npy_header(member, f"{name}: array {array!r}", info.file_size)
            out = {}
            for array, info in zip(arrays, infos):
                with archive.open(info) as member:
                    out[array] = np.lib.format.read_array(member, allow_pickle=False)
            return out
    except UntrustedInputError:
        raise
    except _ZIP_ERRORS as exc:
        raise _zip_failure(name, "read", exc) from None


def _check_npy_header(member: BinaryIO, where: str, member_bytes: int) -> None:
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise UntrustedInputError(f"{where} has .npy format version {version}")
    except UntrustedInputError:
        raise
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise UntrustedInputError(f"{where} has no valid .npy header ({excerpt(str(exc), 60)})") from None
    if dtype.hasobject or dtype.kind not in _ALLOWED_KINDS or dtype.subdtype is not None:
        raise UntrustedInputError(f"{where} has dtype {excerpt(str(dtype), 40)}; only numeric and bool arrays are allowed")
    if len(shape) > MAX_NPY_DIMS or any(not isinstance(n, int) or n < 0 for n in shape):
        raise UntrustedInputError(f"{where} has the shape {excerpt(shape, 60)}")
    claimed = math.prod(shape) * dtype.itemsize
    header_end = member.tell()
    if claimed != member_bytes - header_end:
        raise UntrustedInputError(
            f"{where}: its header claims shape {excerpt(shape, 60)} ({claimed:,} bytes) but it holds "
            f"{max(0, member_bytes - header_end):,} bytes"
        )


def check_finite(array: np.ndarray) -> bool:
    """True when a numeric array has no NaN or infinity (integer and bool arrays always)."""
    return array.dtype.kind not in "fc" or bool(np.isfinite(array).all())
