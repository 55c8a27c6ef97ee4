"""Who a rater is: normalised names, look-alike checks, and per-rater secrets.

A rater name is claimed once per run and bound to a secret only that rater holds: an invite link
made by the run's admin (``prefloop raters add NAME``) or a key the rater app issues on a name's
first visit. The store keeps only the SHA-256 hash of the secret; the secret itself lives in the
rater's link and nowhere else.

Names are normalised to Unicode NFKC, must use letters of one script (``аlice`` with a Cyrillic
``а`` is refused), and a new name whose *skeleton* (case folded, look-alike characters mapped to
one representative, punctuation dropped) equals an existing rater's is refused, so two raters never
look the same on the dashboard.

The look-alike classes come from Unicode's full confusables table (UTS #39 ``confusables.txt``,
about 9,600 characters), as shipped by the ``confusable-homoglyphs`` package (MIT licence; the
data is Unicode's, under the Unicode licence) -- nothing is downloaded at run time. Its pairs are
joined into classes (``l``, ``I``, ``1``, ``|``, ``ǀ``, ``ӏ`` ... are one), and each class is
written as its ASCII member (a lower-case letter first), so a skeleton of a Latin name reads like
the name.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import unicodedata
from functools import cache
from dataclasses import dataclass

from prefloop.store import PreferenceStore

MAX_RATER_NAME_CHARS = 40
SECRET_BYTES = 18  # 144 random bits, 24 URL-safe characters
_NAME_OK = re.compile(r"^[\w .@'-]+$", re.UNICODE)
# Scripts that are commonly written together in one name.
_SCRIPT_FAMILIES = {"HIRAGANA": "CJK", "KATAKANA": "CJK", "CJK": "CJK", "HANGUL": "HANGUL"}
# Look-alikes applied before Unicode's table: digits and a bar read as letters in a name, and
# letters whose class in the table is not the Latin letter they pass for in a name (Unicode puts
# the palochka "ӏ" with "i"; in a name it passes for "l").
_LOOKALIKES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d",
    "ӏ": "l", "һ": "h", "ԛ": "q", "ԝ": "w", "ɡ": "g", "ь": "b", "г": "r",
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "ω": "w", "μ": "u", "ς": "c", "σ": "o",
    "0": "o", "1": "l", "|": "l", "5": "s", "ı": "i",
})


class IdentityError(ValueError):
    """A name or key that cannot be used; the message is one sentence for the person."""


def normalize_rater_name(name: object) -> str:
    """The rater id for a typed, ``?rater=`` or admin-given name: NFKC, trimmed, inner spaces
    collapsed, letters of one script.

    Raises:
        IdentityError: empty, longer than 40 characters, characters other than letters, digits,
            spaces and ``. _ - @ '``, or letters of several scripts (a look-alike name).
    """
    if not isinstance(name, str):
        raise IdentityError("Type your name (or a nickname) to start.")
    cleaned = " ".join(unicodedata.normalize("NFKC", name).split())
    if not cleaned:
        raise IdentityError("Type your name (or a nickname) to start.")
    if len(cleaned) > MAX_RATER_NAME_CHARS:
        raise IdentityError(f"Please use a shorter name (at most {MAX_RATER_NAME_CHARS} characters).")
    if not _NAME_OK.match(cleaned):
        raise IdentityError("Please use only letters, digits, spaces and . _ - @ ' in your name.")
    scripts = sorted({_script(ch) for ch in cleaned if ch.isalpha()})
    if len(scripts) > 1:
        raise IdentityError(
            f"Your name mixes letters of different alphabets ({', '.join(s.title() for s in scripts)}), "
            "so it could look like someone else's; type it in one alphabet."
        )
    return cleaned


def _script(ch: str) -> str:
    first = unicodedata.name(ch, "UNKNOWN").split()[0]
    return _SCRIPT_FAMILIES.get(first, first)


@cache
def confusable_classes() -> dict[str, str]:
    """Every character of Unicode's confusables table mapped to the representative of its
    look-alike class (case folded); characters not in the table are absent. Built once per process
    from the ``confusable-homoglyphs`` package's copy of the table (see the module docstring)."""
    from confusable_homoglyphs import confusables

    parent: dict[str, str] = {}

    def root(ch: str) -> str:
        parent.setdefault(ch, ch)
        while parent[ch] != ch:
            parent[ch] = parent[parent[ch]]
            ch = parent[ch]
        return ch

    for ch, alikes in confusables.confusables_data.items():
        for alike in alikes:
            # Sequences ("rn" for "m") are left to NFKC and the one-script rule: a class of single
            # characters cannot hold them.
            if len(ch) == 1 and len(alike["c"]) == 1:
                parent[root(ch)] = root(alike["c"])
    classes: dict[str, list[str]] = {}
    for ch in list(parent):
        classes.setdefault(root(ch), []).append(ch)

    def preference(ch: str) -> tuple[int, int]:
        ascii_rank = 0 if ch.islower() else 1 if ch.isupper() else 2 if ch.isdigit() else 3
        return (ascii_rank if ch.isascii() else 4, ord(ch))

    return {ch: min(members, key=preference).casefold() for members in classes.values() for ch in members}


def name_skeleton(name: str) -> str:
    """How ``name`` looks, for collision checks: case folded, look-alike letters mapped to Latin,
    accents, spaces and punctuation dropped (``"Alice"``, ``"alice."`` and an all-Cyrillic
    ``"аӏісе"`` share the skeleton ``"alice"``)."""
    folded = unicodedata.normalize("NFKD", name.casefold())
    classes = confusable_classes()
    base = "".join(ch for ch in folded if not unicodedata.combining(ch)).translate(_LOOKALIKES)
    return "".join(ch for ch in (classes.get(c, c) for c in base) if ch.isalnum()) or name.casefold()


def new_secret() -> str:
    """A fresh random rater secret (URL-safe text)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(secret: str) -> str:
    """The hex SHA-256 of a secret: what the store keeps. Secrets are 144 random bits, so a fast
    hash is enough; no one can guess one from its hash."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def secret_matches(stored_hash: str, given: object) -> bool:
    """True when ``given`` is the secret whose hash is ``stored_hash`` (constant-time compare)."""
    if not isinstance(given, str) or not given or len(given) > 200:
        return False
    return hmac.compare_digest(hash_secret(given), stored_hash)


def look_alike(store: PreferenceStore, name: str) -> str | None:
    """An existing rater of the run (registered or with labels) who looks like ``name`` but is
    not it, or None."""
    skeleton = name_skeleton(name)
    for other in store.rater_ids():
        if other != name and name_skeleton(other) == skeleton:
            return other
    return None


@dataclass(frozen=True)
class SignIn:
    """A verified rater: ``name``, and ``issued_key`` when this visit claimed the name (the app
    puts it in the rater's link; it is shown nowhere else)."""

    name: str
    issued_key: str | None = None


def invite(store: PreferenceStore, raw_name: str, *, replace: bool = False) -> tuple[str, str]:
    """Register ``raw_name`` for the run and return ``(name, secret)`` for its invite link.

    ``replace``: the name already exists; give it a new secret (its old link stops working).

    Raises:
        IdentityError: a bad or look-alike name, or a name already taken (without ``replace``).
    """
    name = normalize_rater_name(raw_name)
    existing = store.rater(name)
    if existing is not None and not replace:
        raise IdentityError(
            f"rater {name!r} already has a link; pass --new-link to replace it (the old link stops working)"
        )
    other = look_alike(store, name)
    if existing is None and other is not None:
        raise IdentityError(f"{name!r} looks like the existing rater {other!r}; choose a name that looks different")
    secret = new_secret()
    if not store.add_rater(name, name_skeleton(name), hash_secret(secret), replace_secret=replace):
        raise IdentityError(f"rater {name!r} was just registered by someone else; run the command again")
    return name, secret


def sign_in(store: PreferenceStore, raw_name: object, key: object, *, open_enrolment: bool = True) -> SignIn:
    """Check who a browser is.

    A registered name needs its key. A new name (with ``open_enrolment``) is claimed on the spot
    and gets a fresh key, unless it looks like an existing rater's.

    Raises:
        IdentityError: the message says what to do (open your personal link, choose another name).
    """
    name = normalize_rater_name(raw_name)
    record = store.rater(name)
    if record is not None:
        if secret_matches(record["secret_hash"], key):
            return SignIn(name)
        raise IdentityError(
            f"The name {name} is already taken in this run. If it is yours, come back in the browser "
            "you used before (it remembers you), or open your personal link, or ask the person running "
            "the training for a new one; otherwise choose another name."
        )
    if not open_enrolment:
        raise IdentityError(
            "This run rates by invitation: open the personal link you were given, or ask the "
            "person running the training for one."
        )
    other = look_alike(store, name)
    if other is not None:
        raise IdentityError(
            f"The name {name} looks like the name of another rater here; choose a name that looks different."
        )
    secret = new_secret()
    if not store.add_rater(name, name_skeleton(name), hash_secret(secret)):
        raise IdentityError(f"The name {name} was taken a moment ago; choose another name.")
    return SignIn(name, issued_key=secret)
