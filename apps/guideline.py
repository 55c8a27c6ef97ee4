"""The run's rating guideline: a short Markdown page, rendered safely, with example clips.

The admin writes the page (``prefloop raters guideline --run-dir DIR --file guide.md``); raters
read it above the clips (the one-line question stays the page's heading). Rendering is safe by
construction:

- raw HTML is never passed through (markdown-it with ``html`` off escapes it);
- images are never loaded: a remote or local image becomes its alt text;
- links never leave the app: a link becomes its text;
- an image whose address is ``pair:N`` (``![The left cart keeps the pole up](pair:12)``) becomes an
  example: that pair's two clips from the run's own store, shown side by side with the caption.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

from markdown_it import MarkdownIt

GUIDELINE_META = "guideline_page"
MAX_GUIDELINE_PAGE_CHARS = 20_000
MAX_EXAMPLES = 12
_EXAMPLE = re.compile(r"^pair:(\d{1,9})$")


@dataclass(frozen=True)
class HtmlBlock:
    """Safe HTML made from the page's Markdown."""

    html: str


@dataclass(frozen=True)
class ExampleBlock:
    """An example pair: its id and the caption (plain text)."""

    pair_id: int
    caption: str


def _renderer() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})

    def image(renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        token = tokens[idx]
        alt = "".join(child.content for child in (token.children or []))
        found = _EXAMPLE.match(token.attrGet("src") or "")
        if found and len(env.setdefault("examples", [])) < MAX_EXAMPLES:
            env["examples"].append(ExampleBlock(int(found.group(1)), alt))
            return f"\x00example{len(env['examples']) - 1}\x00"
        return html.escape(alt)  # never loaded: a remote image could track who reads the page

    md.add_render_rule("image", image)
    md.add_render_rule("link_open", lambda *args: "")  # links never leave the app: text only
    md.add_render_rule("link_close", lambda *args: "")
    return md


_MD = _renderer()


def render_guideline(text: str) -> list[HtmlBlock | ExampleBlock]:
    """The page as safe HTML blocks and example pairs, in order."""
    env: dict[str, Any] = {}
    rendered = _MD.render(text[:MAX_GUIDELINE_PAGE_CHARS], env)
    examples = env.get("examples", [])
    blocks: list[HtmlBlock | ExampleBlock] = []
    for index, part in enumerate(re.split(r"\x00example(\d+)\x00", rendered)):
        if index % 2:
            blocks.append(examples[int(part)])
        else:
            # An example inside a paragraph splits it: close and reopen the paragraph around it.
            cleaned = re.sub(r"^\s*</p>|<p>\s*$", "", part.strip()).strip()
            opened, closed = cleaned.count("<p>"), cleaned.count("</p>")
            cleaned = "<p>" * max(0, closed - opened) + cleaned + "</p>" * max(0, opened - closed)
            if cleaned:
                blocks.append(HtmlBlock(cleaned))
    return blocks


def render_guideline_page(store: Any, text: str) -> None:
    """Draw the guideline with Streamlit: HTML blocks and example pairs (their clips from the
    store; an example whose pair or clips are missing says so)."""
    import streamlit as st

    from prefloop.untrusted import plain_text

    for number, block in enumerate(render_guideline(text), start=1):
        if isinstance(block, HtmlBlock):
            st.html(f"<div class='prefloop-guideline'>{block.html}</div>")
            continue
        if not show_pair_clips(store, block.pair_id, f"Example {number}"):
            st.caption(f"(Example pair {block.pair_id} is not available.)")
        elif block.caption:
            st.text(plain_text(block.caption, 300))


def show_pair_clips(store: Any, pair_id: int, what: str) -> bool:
    """Draw a pair's two clips side by side, looping (plain videos: for examples and practice,
    not the synchronised rating player). ``what`` names them for screen readers (and keeps two
    showings of one clip apart). False when the pair or a clip is missing."""
    import streamlit as st

    try:
        pair = store.get_pair(pair_id)
        clips = store.get_clips([pair.left.id, pair.right.id])
    except Exception:  # noqa: BLE001 -- a wrong number in the page is the admin's typo
        return False
    if pair.left.id not in clips or pair.right.id not in clips:
        return False
    left, right = st.columns(2)
    for column, segment_id, side in ((left, pair.left.id, "Left"), (right, pair.right.id, "Right")):
        data, mime = clips[segment_id]
        column.caption(side)
        column.video(data, format=mime, loop=True, autoplay=True, muted=True, alt=f"{what}: the {side.lower()} clip")
    return True
