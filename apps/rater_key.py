"""The rater's key kept in a browser cookie instead of the address bar.

After the first visit (an invite link, or the key the app issues on a name's first visit) the key
is written into a cookie of this run and removed from the address, so a screenshot or a copied
address of the rating page does not hand over the identity; a reload signs the rater in from the
cookie.

Why not an HttpOnly cookie: Streamlit gives an app no say over its HTTP responses (no
``Set-Cookie``); it only reads the request's cookies (``st.context.cookies``). The cookie is
therefore set by a script in the page (``SameSite=Strict``, ``Secure`` over HTTPS, a year), which
the page's own scripts can read -- the page renders every rater text as plain text, so no
injected script runs there. The key still never appears in the address bar, a log or a page.
"""

from __future__ import annotations

import base64
import hashlib
import json

import streamlit as st

COOKIE_MAX_AGE_S = 365 * 24 * 3600


def cookie_name(run_name: str) -> str:
    """One cookie per run (a rater may be in several runs on one server): ``prefloop_rater_<hash>``."""
    return "prefloop_rater_" + hashlib.sha256(run_name.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def encode_credentials(name: str, key: str) -> str:
    """The cookie value: URL-safe base64 of ``{"n": name, "k": key}`` (cookie-safe for any name)."""
    raw = json.dumps({"n": name, "k": key}, ensure_ascii=True).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_credentials(value: object) -> tuple[str, str] | None:
    """``(name, key)`` from a cookie value, or None when it is missing or not one of ours."""
    if not isinstance(value, str) or not 0 < len(value) <= 600:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (ValueError, TypeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("n"), str) or not isinstance(data.get("k"), str):
        return None
    return data["n"], data["k"]


def credentials_from_cookie(run_name: str) -> tuple[str, str] | None:
    """The ``(name, key)`` this browser's cookie holds for the run, or None."""
    try:
        value = st.context.cookies.get(cookie_name(run_name))
    except Exception:  # noqa: BLE001 -- no request context (a bare script run): no cookie
        return None
    return decode_credentials(value)


def remember_in_cookie(run_name: str, name: str, key: str) -> None:
    """Write the cookie from a script in the page (see the module docstring for why a script)."""
    _set_cookie(cookie_name(run_name), encode_credentials(name, key), COOKIE_MAX_AGE_S)


def forget_cookie(run_name: str) -> None:
    """Delete the run's cookie ("Not NAME?")."""
    _set_cookie(cookie_name(run_name), "", 0)


def _set_cookie(name: str, value: str, max_age_s: int) -> None:
    # name and value are [A-Za-z0-9_-] only (hex and URL-safe base64): nothing to escape. The script
    # then removes itself, so the value does not stay in the page's HTML (a saved page, devtools'
    # Elements tab) until the next rerun replaces the element.
    script = (
        "<script>(function(){"
        f"var c='{name}={value}; Path=/; Max-Age={int(max_age_s)}; SameSite=Strict';"
        "if(window.location.protocol==='https:'){c+='; Secure';}document.cookie=c;"
        "if(document.currentScript){document.currentScript.remove();}})();</script>"
    )
    st.html(script, unsafe_allow_javascript=True)
