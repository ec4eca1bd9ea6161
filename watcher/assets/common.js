// Shared helpers for the sklm-watcher dashboard pages.
// No framework and no build step: plain ES modules served from /assets/.
// Every string that comes from an SKLM server or the config goes into the DOM
// through textContent / createTextNode only (never innerHTML): the CSP forbids
// inline script, and this keeps a hostile error message inert text.

/** Create an element with optional class and text (text via textContent). */
export function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** Create an SVG element with attributes (attribute values, never markup). */
export function svg(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  }
  return node;
}

/** Set textContent only when it changed (cheap DOM updates for 5,000 rows). */
export function setText(node, text) {
  const value = text === undefined || text === null ? "" : String(text);
  if (node.textContent !== value) node.textContent = value;
}

/** Set a data-* attribute only when it changed. */
export function setData(node, key, value) {
  const v = String(value);
  if (node.dataset[key] !== v) node.dataset[key] = v;
}

/** An error carrying the HTTP status of a failed API call. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** GET a JSON document from the daemon; throws ApiError on a non-2xx answer. */
export async function getJSON(url) {
  return readJSON(
    fetch(url, {
      headers: { Accept: "application/json" },
      credentials: "same-origin",
      cache: "no-store",
    }),
  );
}

/** The JSON of a fetch() already started; throws ApiError on a non-2xx answer. */
export async function readJSON(pending) {
  const resp = await pending;
  if (!resp.ok) {
    let message = `HTTP ${resp.status}`;
    try {
      const body = await resp.json();
      if (body && typeof body.error === "string") message = body.error;
    } catch (_) {
      // the body was not JSON; the status line says enough
    }
    throw new ApiError(resp.status, message);
  }
  return resp.json();
}

/**
 * Wrap an async refresh so that at most one runs at a time and at most one more
 * is queued: a burst of 200 events costs two fetches, not 200.
 */
export function coalesce(fn) {
  let running = null;
  let queued = false;
  const run = async () => {
    if (running) {
      queued = true;
      return running;
    }
    running = (async () => {
      try {
        do {
          queued = false;
          try {
            await fn();
          } catch (err) {
            console.error(err);
          }
        } while (queued);
      } finally {
        running = null;
      }
    })();
    return running;
  };
  return run;
}

// --- time ---------------------------------------------------------------------

/**
 * Estimated offset between the daemon's clock and this browser's (ms to add to
 * Date.now()). Relative times are computed on the daemon's clock so a laptop
 * whose clock is off still shows "in phase for 12s" correctly.
 */
let skewMs = 0;

/** Record the daemon's clock: `serverNowMs` was the daemon's time when `atPerf` (performance.now()). */
export function noteServerTime(serverNowMs, atPerf) {
  if (!Number.isFinite(serverNowMs)) return;
  const clientAt = Date.now() - (performance.now() - atPerf);
  skewMs = serverNowMs - clientAt;
}

/** The daemon's "now" in epoch milliseconds. */
export function serverNow() {
  return Date.now() + skewMs;
}

/** Parse a contract time ("2026-11-29T10:00:01.250Z") to epoch ms, or NaN. */
export function parseTime(text) {
  if (typeof text !== "string" || !text) return NaN;
  return Date.parse(text);
}

const pad = (n, w = 2) => String(n).padStart(w, "0");

/** A duration in seconds as compact text: "850 ms", "42s", "3m 02s", "1h 04m", "2d 03h". */
export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "";
  if (seconds < 0) seconds = 0;
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 10) return `${seconds.toFixed(1)}s`;
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${pad(s % 60)}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${pad(m % 60)}m`;
  return `${Math.floor(h / 24)}d ${pad(h % 24)}h`;
}

/** Seconds from a time to the daemon's now, or null. */
export function ageSeconds(text) {
  const at = parseTime(text);
  if (!Number.isFinite(at)) return null;
  return Math.max(0, (serverNow() - at) / 1000);
}

/** "3m 02s ago" for a contract time, "" for none. */
export function formatAgo(text) {
  const age = ageSeconds(text);
  return age === null ? "" : `${formatDuration(age)} ago`;
}

/** A contract time as UTC clock text "10:00:01.250" (the audit log's zone). */
export function formatClock(text, withMs = true) {
  const at = parseTime(text);
  if (!Number.isFinite(at)) return "";
  const d = new Date(at);
  const base = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  return withMs ? `${base}.${pad(d.getUTCMilliseconds(), 3)}` : base;
}

/** A contract time as "2026-11-29 10:00:01 UTC". */
export function formatStamp(text) {
  const at = parseTime(text);
  if (!Number.isFinite(at)) return "";
  const d = new Date(at);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ${formatClock(text, false)} UTC`;
}

// --- vocabulary ---------------------------------------------------------------

/**
 * Health words: a label and a glyph for each, so the state never depends on
 * colour alone (colour-blind operators, monochrome projectors).
 */
export const HEALTH = {
  ok: { label: "OK", icon: "\u2713", tone: "good" },
  restarting: { label: "Restarting", icon: "\u21bb", tone: "info" },
  unreachable: { label: "Unreachable", icon: "\u2715", tone: "bad" },
  auth_failed: { label: "Auth failed", icon: "\u2298", tone: "bad" },
  tls_error: { label: "TLS error", icon: "\u26a0", tone: "bad" },
  protocol_error: { label: "Protocol error", icon: "\u26a0", tone: "bad" },
  unknown: { label: "Unknown", icon: "?", tone: "muted" },
};

/** Health words counted as "failing" in the fleet counts. */
export const FAILING_HEALTH = new Set(["unreachable", "auth_failed", "tls_error", "protocol_error"]);

/** The health entry for a word (unknown words are shown as themselves). */
export function healthInfo(word) {
  return HEALTH[word] || { label: String(word || "unknown"), icon: "?", tone: "muted" };
}

/** Restore outcomes with a glyph and tone. */
export const OUTCOME = {
  completed: { label: "Completed", icon: "\u2713", tone: "good" },
  running: { label: "Running", icon: "\u25b6", tone: "info" },
  failed: { label: "Failed", icon: "\u2715", tone: "bad" },
  stalled: { label: "Stalled", icon: "\u2016", tone: "warn" },
};

/** The outcome entry for a word. */
export function outcomeInfo(word) {
  return OUTCOME[word] || { label: String(word || "\u2014"), icon: "\u2022", tone: "muted" };
}

/** A badge element: glyph (aria-hidden) plus a word. */
export function badge(info, extraClass) {
  const b = el("span", `badge tone-${info.tone}${extraClass ? ` ${extraClass}` : ""}`);
  const icon = el("span", "icon", info.icon);
  icon.setAttribute("aria-hidden", "true");
  b.append(icon, el("span", "word", info.label));
  return b;
}

// --- the live stream ------------------------------------------------------------

/**
 * Follow /api/events/stream. Calls onEvent(cloudEvent) for each message and
 * onOpen() on every (re)connection, so the page refetches what it shows.
 * Marks #stream-state data-state="open" | "reconnecting" ("connecting" before the
 * first open) and shows the reconnecting banner while the stream is down.
 *
 * The browser resends Last-Event-ID itself while one EventSource retries; when it
 * gives up (a 401/5xx answer closes it for good) we open a new one and pass the
 * last id as ?last_event_id= so nothing is missed across that either.
 */
export function followStream({ onEvent, onOpen }) {
  const stateEl = document.getElementById("stream-state");
  let lastId = null;
  let source = null;
  let retryTimer = null;

  const setState = (state) => {
    if (!stateEl) return;
    setData(stateEl, "state", state);
    const text = stateEl.querySelector(".text");
    const words = {
      open: "Live",
      reconnecting: "Reconnecting\u2026",
      connecting: "Connecting\u2026",
    };
    if (text) setText(text, words[state] || state);
    document.body.classList.toggle("stream-down", state === "reconnecting");
  };

  const connect = () => {
    retryTimer = null;
    let url = "/api/events/stream";
    if (lastId !== null) url += `?last_event_id=${encodeURIComponent(lastId)}`;
    source = new EventSource(url);
    source.onopen = () => {
      setState("open");
      if (onOpen) onOpen();
    };
    source.onmessage = (msg) => {
      if (msg.lastEventId) lastId = msg.lastEventId;
      let event = null;
      try {
        event = JSON.parse(msg.data);
      } catch (_) {
        return; // not an event; ignore rather than break the page
      }
      if (onEvent) onEvent(event);
    };
    source.onerror = () => {
      setState("reconnecting");
      if (source.readyState === EventSource.CLOSED && retryTimer === null) {
        source = null;
        retryTimer = setTimeout(connect, 2000);
      }
    };
  };

  setState("connecting");
  connect();
  return {
    close() {
      if (source) source.close();
      if (retryTimer !== null) clearTimeout(retryTimer);
    },
  };
}

/** Show an error message in the page's #error region (text only). */
export function showError(message) {
  const box = document.getElementById("error");
  if (!box) return;
  setText(box, message || "");
  box.hidden = !message;
}

/** Mark the page ready for tests and screenshots (first data rendered). */
export function markReady() {
  if (document.body.dataset.ready !== "true") document.body.dataset.ready = "true";
}
