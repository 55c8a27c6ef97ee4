"""The side-by-side player: one Streamlit custom component (v2) holding both clips and the answers.

Everything time-critical happens in the browser, inside this one component:

- two buffers of two ``<video>`` elements each: the front buffer plays the current pair, the back
  buffer has the next pair loaded, so an answer switches to the next pair at once;
- both clips of a pair start together, hold their last frame for a moment and loop together, at
  1x, 0.5x or 0.25x speed;
- answers by button or key (arrows or 1-4, U to undo) carry the response time measured from the
  moment both clips were playable;
- answers are kept in an outbox and re-sent until the server acknowledges their sequence number,
  so none is lost when a message is dropped, and none counts twice;
- "Your answers today" counts an answer the moment it is given (the server's count plus the
  answers still on their way), not one round trip later;
- an answer within the reflex guard (a double press as a pair appears) or before the clips play
  is not taken, and the player says so instead of staying silent.

Python sends ``{"ack", "pair", "next", "today"}`` (see :func:`player_data`) and receives one trigger,
``actions``: ``{"items": [action, ...], "sent": ms}`` with the actions of
:meth:`prefloop.apps.rating.RaterSession.apply`.
"""

from __future__ import annotations

from typing import Any

import streamlit as st
from prefloop.apps.rating import RaterSession

COMPONENT_NAME = "prefloop_rater_player"
PLAYER_KEY = "rater_player"

_HTML = """
<div class="pl-root" data-state="loading">
  <div class="pl-stage">
    <figure class="pl-side" data-side="left">
      <figcaption>Left</figcaption>
      <div class="pl-frame">
        <video class="pl-video" data-buf="0" data-side="left" muted playsinline preload="auto"></video>
        <video class="pl-video" data-buf="1" data-side="left" muted playsinline preload="auto"></video>
      </div>
      <div class="pl-track"><div class="pl-pos"></div></div>
    </figure>
    <figure class="pl-side" data-side="right">
      <figcaption>Right</figcaption>
      <div class="pl-frame">
        <video class="pl-video" data-buf="0" data-side="right" muted playsinline preload="auto"></video>
        <video class="pl-video" data-buf="1" data-side="right" muted playsinline preload="auto"></video>
      </div>
      <div class="pl-track"><div class="pl-pos"></div></div>
    </figure>
    <div class="pl-overlay"><span class="pl-overlay-text">Loading clips…</span></div>
  </div>
  <div class="pl-answers">
    <button type="button" class="pl-answer pl-left" data-choice="left" tabindex="-1">
      <span class="pl-label">Left is better</span><kbd>←</kbd><kbd>1</kbd></button>
    <button type="button" class="pl-answer pl-mid" data-choice="equal" tabindex="-1">
      <span class="pl-label">About the same</span><kbd>↑</kbd><kbd>3</kbd></button>
    <button type="button" class="pl-answer pl-mid" data-choice="cant_tell" tabindex="-1">
      <span class="pl-label">Can't tell</span><kbd>↓</kbd><kbd>4</kbd></button>
    <button type="button" class="pl-answer pl-right" data-choice="right" tabindex="-1">
      <span class="pl-label">Right is better</span><kbd>→</kbd><kbd>2</kbd></button>
  </div>
  <div class="pl-bar">
    <div class="pl-speed" role="group" aria-label="Playback speed">
      <span class="pl-muted">Speed</span>
      <button type="button" data-speed="1" tabindex="-1">1×</button>
      <button type="button" data-speed="0.5" tabindex="-1">½×</button>
      <button type="button" data-speed="0.25" tabindex="-1">¼×</button>
      <button type="button" class="pl-pause" tabindex="-1" title="Pause / play (Space)">❚❚</button>
    </div>
    <span class="pl-status pl-muted" aria-live="polite"></span>
    <span class="pl-count pl-muted">Your answers today: <b class="pl-today">–</b></span>
    <button type="button" class="pl-undo" tabindex="-1">↶ Undo last answer <kbd>U</kbd></button>
  </div>
</div>
"""

_CSS = """
.pl-root { font-family: var(--st-font, sans-serif); color: var(--st-text-color, #222); user-select: none; }
.pl-stage { position: relative; display: grid; grid-template-columns: 1fr 1fr; gap: 14px; }
.pl-side { margin: 0; }
.pl-side figcaption { font-weight: 600; font-size: 0.95rem; letter-spacing: 0.06em; text-transform: uppercase;
  margin: 0 0 4px 2px; opacity: 0.75; }
.pl-frame { position: relative; width: 100%; aspect-ratio: 3 / 2; max-height: 52vh; margin: 0 auto; background: #f3f3f3;
  border: 1px solid rgba(128,128,128,0.35); border-radius: 8px; overflow: hidden; }
.pl-track { height: 4px; margin-top: 4px; border-radius: 2px; background: rgba(128,128,128,0.2); overflow: hidden; }
.pl-pos { height: 100%; width: 0%; background: var(--st-primary-color, #ff4b4b); opacity: 0.7; }
.pl-video { position: absolute; inset: 0; width: 100%; height: 100%; object-fit: contain; visibility: hidden; }
.pl-video.pl-front { visibility: visible; }
.pl-overlay { position: absolute; inset: 0; display: none; align-items: center; justify-content: center;
  background: rgba(255,255,255,0.6); border-radius: 8px; font-size: 1.05rem; }
.pl-root[data-state="loading"] .pl-overlay, .pl-root[data-state="waiting"] .pl-overlay { display: flex; }
.pl-answers { display: grid; grid-template-columns: 1.4fr 1fr 1fr 1.4fr; gap: 10px; margin-top: 12px; }
.pl-answer { display: flex; align-items: center; justify-content: center; gap: 6px; padding: 14px 8px;
  font-size: 1.05rem; border-radius: 8px; cursor: pointer; border: 1px solid rgba(128,128,128,0.45);
  background: var(--st-secondary-background-color, #f0f2f6); color: inherit; font-family: inherit; }
.pl-answer.pl-left, .pl-answer.pl-right { font-weight: 600; border-color: var(--st-primary-color, #ff4b4b); }
.pl-answer:hover { filter: brightness(0.95); }
.pl-answer.pl-chosen { background: var(--st-primary-color, #ff4b4b); color: white; }
.pl-root[data-state="loading"] .pl-answer, .pl-root[data-state="waiting"] .pl-answer { opacity: 0.5; cursor: progress; }
kbd { font-family: ui-monospace, monospace; font-size: 0.8rem; padding: 1px 5px; border-radius: 4px;
  border: 1px solid rgba(128,128,128,0.6); background: rgba(255,255,255,0.7); color: #333; }
.pl-bar { display: flex; align-items: center; justify-content: space-between; gap: 12px; margin-top: 10px; flex-wrap: wrap; }
.pl-speed { display: flex; align-items: center; gap: 4px; }
.pl-bar button { padding: 4px 10px; border-radius: 6px; border: 1px solid rgba(128,128,128,0.45);
  background: transparent; color: inherit; cursor: pointer; font-family: inherit; font-size: 0.9rem; }
.pl-speed button.pl-on { background: var(--st-secondary-background-color, #f0f2f6); font-weight: 700;
  border-color: var(--st-text-color, #333); }
.pl-muted { opacity: 0.7; font-size: 0.9rem; }
.pl-status.pl-saving { color: #b26b00; opacity: 1; }
.pl-status.pl-hint { color: #b26b00; opacity: 1; font-weight: 600; }
.pl-root.pl-too-soon .pl-answers { animation: pl-nudge 0.3s ease-in-out; }
@keyframes pl-nudge { 0%, 100% { transform: translateX(0); } 25% { transform: translateX(-6px); } 75% { transform: translateX(6px); } }
"""

_JS = r"""
const ANSWER_KEYS = {ArrowLeft: "left", "1": "left", ArrowRight: "right", "2": "right",
                     ArrowUp: "equal", "3": "equal", ArrowDown: "cant_tell", "4": "cant_tell"};
const HOLD_END_MS = 500;      // the last frame stays up this long (at 1x) before the loop restarts
const MIN_VIEW_MS = 250;      // answers faster than this after a pair appears are double presses
const RESEND_MS = 2500;       // unacknowledged actions are sent again after this long
const HINT_MS = 1800;         // how long "not taken" hints stay up

function b64ToUrl(b64, mime) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return URL.createObjectURL(new Blob([bytes], {type: mime}));
}

// The chosen speed survives a reload; storage may be unavailable (private windows).
function readSetting(key) { try { return localStorage.getItem(key); } catch (e) { return null; } }
function writeSetting(key, value) { try { localStorage.setItem(key, value); } catch (e) { /* ignore */ } }

function createPlayer(root) {
  const videos = (buf) => ["left", "right"].map(
    (side) => root.querySelector(`video[data-buf="${buf}"][data-side="${side}"]`));
  const bufs = [0, 1].map((i) => ({index: i, pairId: null, urls: [], videos: videos(i), ready: false}));
  const speedKey = "prefloop.rater.speed";
  const p = {
    root, bufs, front: 0, send: null, seq: 0, outbox: [], lastSent: 0, ack: 0,
    serverNext: null, shownAt: 0, playableAt: null, paused: false, holdUntil: null,
    speed: Number(readSetting(speedKey)) || 1, raf: 0, timer: 0, answeredAt: null,
    today: 0, hintUntil: 0,
    // Read by tests and the latency benchmark: what is shown, and how fast things happened (ms).
    pub: {pairId: null, ready: false, shownAt: 0, readyAt: 0, answeredAt: 0, answers: 0, refused: 0,
          latencies: [], saveLatencies: [], frontVideos: () => bufs[p.front].videos},
  };
  window.__prefloopRater = p.pub;

  const state = (s) => { root.dataset.state = s; };
  const overlay = (text) => { root.querySelector(".pl-overlay-text").textContent = text; };
  const status = () => {
    // Today's answers: the server's count, plus what is on its way, less undos on their way.
    const pending = p.outbox.reduce((n, a) => n + (a.type === "answer" ? 1 : a.type === "undo" ? -1 : 0), 0);
    root.querySelector(".pl-today").textContent = String(Math.max(0, p.today + pending));
    if (performance.now() < p.hintUntil) return;  // a hint stays up for a moment
    const el = root.querySelector(".pl-status");
    el.classList.remove("pl-hint");
    if (p.outbox.length) { el.textContent = "Saving…"; el.classList.add("pl-saving"); }
    else { el.textContent = p.pub.answers ? "All answers saved ✓" : ""; el.classList.remove("pl-saving"); }
  };

  // An answer that was not taken says why, next to the buttons, for a moment.
  function hint(text) {
    p.pub.refused += 1;
    p.hintUntil = performance.now() + HINT_MS;
    const el = root.querySelector(".pl-status");
    el.textContent = text;
    el.classList.remove("pl-saving");
    el.classList.add("pl-hint");
    root.classList.remove("pl-too-soon");
    void root.offsetWidth;  // restart the nudge animation
    root.classList.add("pl-too-soon");
    setTimeout(() => { if (performance.now() >= p.hintUntil) status(); }, HINT_MS + 50);
  }

  function setSpeed(rate) {
    p.speed = rate;
    writeSetting(speedKey, String(rate));
    // load() resets playbackRate to defaultPlaybackRate, so set both.
    for (const b of bufs) for (const v of b.videos) { v.defaultPlaybackRate = rate; v.playbackRate = rate; }
    root.querySelectorAll("[data-speed]").forEach((el) =>
      el.classList.toggle("pl-on", Number(el.dataset.speed) === rate));
  }

  function load(buf, pair) {
    for (const url of buf.urls) URL.revokeObjectURL(url);
    buf.pairId = pair.id;
    buf.ready = false;
    buf.urls = [b64ToUrl(pair.left, pair.mime), b64ToUrl(pair.right, pair.mime)];
    buf.videos.forEach((v, i) => {
      v.pause();
      v.src = buf.urls[i];
      v.defaultPlaybackRate = p.speed;
      v.load();
    });
  }

  function checkReady(buf) {
    if (buf.ready || buf.pairId === null) return;
    if (buf.videos.every((v) => v.readyState >= 2)) {
      buf.ready = true;
      if (buf.index === p.front) startFront();
    }
  }

  function startFront() {
    const buf = bufs[p.front];
    p.holdUntil = null;
    buf.videos.forEach((v) => { v.currentTime = 0; v.playbackRate = p.speed; });
    if (!p.paused) buf.videos.forEach((v) => v.play().catch(() => {}));
    p.playableAt = performance.now();
    p.pub.ready = true;
    p.pub.readyAt = p.playableAt;
    if (p.answeredAt !== null) {
      p.pub.latencies.push(p.playableAt - p.answeredAt);
      p.answeredAt = null;
    }
    state("ready");
  }

  function showBuffer(index) {
    p.front = index;
    bufs.forEach((b) => b.videos.forEach((v) => {
      v.classList.toggle("pl-front", b.index === index);
      if (b.index !== index) v.pause();
    }));
    const buf = bufs[index];
    p.shownAt = performance.now();
    p.playableAt = null;
    p.pub.pairId = buf.pairId;
    p.pub.ready = false;
    p.pub.shownAt = p.shownAt;
    root.querySelectorAll(".pl-chosen").forEach((el) => el.classList.remove("pl-chosen"));
    if (buf.ready) startFront(); else { state("loading"); overlay("Loading clips…"); }
  }

  function show(pair) {
    if (bufs[p.front].pairId === pair.id) return;
    const other = 1 - p.front;
    if (bufs[other].pairId !== pair.id) load(bufs[other], pair);
    showBuffer(other);
  }

  function preload(pair) {
    const back = bufs[1 - p.front];
    if (pair && back.pairId !== pair.id) load(back, pair);
  }

  function sendOutbox() {
    if (!p.send || !p.outbox.length) return;
    p.lastSent = Date.now();
    p.send("actions", {items: p.outbox.slice(), sent: p.lastSent});
    status();
  }

  function answer(choice) {
    const front = bufs[p.front];
    if (front.pairId === null) return;
    if (root.dataset.state !== "ready") {
      hint(root.dataset.state === "loading" ? "Not taken: the clips are still loading — answer once they play."
                                            : "Not taken: wait for the next pair to appear.");
      return;
    }
    const now = performance.now();
    if (now - p.shownAt < MIN_VIEW_MS) {
      hint("Not taken: too quick — a new pair just appeared. Watch it, then answer.");
      return;
    }
    const since = p.playableAt === null ? p.shownAt : p.playableAt;
    p.outbox.push({seq: ++p.seq, type: "answer", pair_id: front.pairId, choice,
                   response_time_s: (now - since) / 1000, at: now});
    p.pub.answers += 1;
    p.pub.answeredAt = now;
    p.answeredAt = now;
    const button = root.querySelector(`.pl-answer[data-choice="${choice}"]`);
    if (button) button.classList.add("pl-chosen");
    sendOutbox();
    const back = bufs[1 - p.front];
    if (p.serverNext !== null && back.pairId === p.serverNext) {
      p.serverNext = null;
      showBuffer(back.index);
    } else {
      state("waiting");
      overlay("Loading the next pair…");
    }
  }

  function undo() {
    if (root.dataset.state === "waiting") return;
    p.outbox.push({seq: ++p.seq, type: "undo"});
    sendOutbox();
    p.answeredAt = null;
    state("waiting");
    overlay("Taking back your last answer…");
  }

  function togglePause() {
    p.paused = !p.paused;
    root.querySelector(".pl-pause").textContent = p.paused ? "▶" : "❚❚";
    const buf = bufs[p.front];
    buf.videos.forEach((v) => { if (p.paused) v.pause(); else if (buf.ready) v.play().catch(() => {}); });
  }

  const positions = root.querySelectorAll(".pl-pos");

  // Keep the two front clips in step: restart both together after holding the last frame.
  function tick() {
    p.raf = requestAnimationFrame(tick);
    const buf = bufs[p.front];
    if (!buf.ready) return;
    const [a, b] = buf.videos;
    const share = a.duration > 0 ? Math.min(1, a.currentTime / a.duration) : 0;
    positions.forEach((el) => { el.style.width = `${(share * 100).toFixed(1)}%`; });
    if (p.paused) return;
    if (a.ended && b.ended) {
      if (p.holdUntil === null) p.holdUntil = performance.now() + HOLD_END_MS / p.speed;
      else if (performance.now() >= p.holdUntil) {
        p.holdUntil = null;
        buf.videos.forEach((v) => { v.currentTime = 0; v.play().catch(() => {}); });
      }
    } else if (!a.paused && !b.paused && Math.abs(a.currentTime - b.currentTime) > 0.1) {
      b.currentTime = a.currentTime;
    }
  }

  function onKey(e) {
    if (!root.isConnected) { document.removeEventListener("keydown", onKey); return; }
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.composedPath ? e.composedPath()[0] : e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT" || t.isContentEditable)) return;
    let handled = true;
    if (e.key in ANSWER_KEYS) { if (!e.repeat) answer(ANSWER_KEYS[e.key]); }
    else if (e.key === "u" || e.key === "U") { if (!e.repeat) undo(); }
    else if (e.key === " ") { if (!e.repeat) togglePause(); }
    else handled = false;
    if (handled) e.preventDefault();
  }

  for (const buf of bufs) {
    for (const v of buf.videos) {
      v.muted = true;
      v.addEventListener("loadeddata", () => checkReady(buf));
      v.addEventListener("canplay", () => checkReady(buf));
      v.addEventListener("error", () => {
        if (buf.index !== p.front || buf.pairId === null) return;
        state("ready");
        const el = root.querySelector(".pl-status");
        el.textContent = "A clip could not be played in this browser: answer “Can't tell”.";
      });
      v.addEventListener("loadedmetadata", () => {
        if (v.videoWidth && v.videoHeight)
          v.parentElement.style.aspectRatio = `${v.videoWidth} / ${v.videoHeight}`;
      });
    }
  }
  root.querySelectorAll(".pl-answer").forEach((el) => {
    el.addEventListener("mousedown", (e) => e.preventDefault());
    el.addEventListener("click", () => answer(el.dataset.choice));
  });
  root.querySelectorAll("[data-speed]").forEach((el) => {
    el.addEventListener("mousedown", (e) => e.preventDefault());
    el.addEventListener("click", () => setSpeed(Number(el.dataset.speed)));
  });
  root.querySelector(".pl-undo").addEventListener("click", undo);
  root.querySelector(".pl-pause").addEventListener("click", togglePause);
  document.addEventListener("keydown", onKey);
  p.raf = requestAnimationFrame(tick);
  p.timer = setInterval(() => {
    if (p.outbox.length && Date.now() - p.lastSent > RESEND_MS) {
      sendOutbox();
      if (root.dataset.state === "waiting") overlay("Still saving your answer… retrying (see the message at the top right)");
    }
  }, 500);
  setSpeed(p.speed);

  p.update = (data) => {
    p.ack = Math.max(p.ack, data.ack || 0);
    if (typeof data.today === "number") p.today = data.today;
    const now = performance.now();
    for (const a of p.outbox) if (a.seq <= p.ack && a.at) p.pub.saveLatencies.push(now - a.at);
    p.outbox = p.outbox.filter((a) => a.seq > p.ack);
    p.seq = Math.max(p.seq, p.ack);
    status();
    if (p.outbox.length) return;  // the server has not seen our latest action yet: keep our view
    p.serverNext = data.next ? data.next.id : null;
    if (data.pair) show(data.pair);
    preload(data.next);
    if (root.dataset.state === "waiting") {
      const buf = bufs[p.front];
      if (buf.ready) startFront(); else { state("loading"); overlay("Loading clips…"); }
    }
  };
  p.cleanup = () => {
    document.removeEventListener("keydown", onKey);
    cancelAnimationFrame(p.raf);
    clearInterval(p.timer);
    for (const b of bufs) for (const url of b.urls) URL.revokeObjectURL(url);
  };
  return p;
}

export default function (component) {
  const { data, setTriggerValue, parentElement } = component;
  const root = parentElement.querySelector(".pl-root");
  if (!root.__player) root.__player = createPlayer(root);
  const player = root.__player;
  player.send = setTriggerValue;
  if (data) player.update(data);
  return player.cleanup;
}
"""

def _tolerate_hostile_trigger_json() -> None:
    """Make Streamlit read a trigger value it cannot parse as "not JSON" instead of failing the page.

    Streamlit (1.67) parses a component's trigger value with ``json.loads`` and catches only
    ``JSONDecodeError``; a forged message with an integer of more than 4300 digits (``ValueError``)
    or thousands of nested brackets (``RecursionError``) would otherwise end the script run with a
    traceback. Such a value then reaches ``_on_actions`` as a plain string, which it ignores. If a
    later Streamlit moves this function, nothing is patched (and its own handling applies).
    """
    try:
        from streamlit.components.v2.bidi_component import serialization
    except ImportError:
        return
    original = getattr(serialization, "handle_deserialize", None)
    if original is None or getattr(original, "prefloop_tolerant", False):
        return

    def handle_deserialize(s: str | None) -> Any:
        try:
            return original(s)
        except (ValueError, RecursionError):
            return s

    handle_deserialize.prefloop_tolerant = True  # type: ignore[attr-defined]
    serialization.handle_deserialize = handle_deserialize


_tolerate_hostile_trigger_json()
_player = st.components.v2.component(COMPONENT_NAME, html=_HTML, css=_CSS, js=_JS)


def player_data(session: RaterSession) -> dict[str, Any]:
    """What the player needs from the server: acknowledged actions, the two pairs' clips and the
    rater's answers today (counting every acknowledged action)."""
    return {
        "ack": session.acked_seq,
        "pair": session.current.to_player() if session.current else None,
        "next": session.next.to_player() if session.next else None,
        "today": session.labels_today(),  # after every acknowledged action
    }


def render_player(session: RaterSession, on_actions: Any) -> None:
    """Mount the player for ``session``; ``on_actions`` runs (before the page) when the browser
    sends actions, reading them from ``st.session_state[PLAYER_KEY]["actions"]``."""
    _player(key=PLAYER_KEY, data=player_data(session), on_actions_change=on_actions)
