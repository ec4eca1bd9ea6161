// The fleet view (/): counts on top, one row per server, updated live.
// Rows are keyed by server name and only changed rows touch the DOM. The whole
// /api/status is fetched at the start and on every (re)connection of the stream;
// an event refetches only its server's row (/api/status?server=NAME), so a
// 5,000-server fleet journaling dozens of events a second costs the page (and the
// daemon) a few rows per event, not 2 MB of JSON.
import {
  FAILING_HEALTH,
  coalesce,
  el,
  followStream,
  formatAgo,
  formatDuration,
  formatStamp,
  getJSON,
  healthInfo,
  markReady,
  noteServerTime,
  parseTime,
  readJSON,
  serverNow,
  setText,
  showError,
} from "./common.js";

const fleetEl = document.getElementById("fleet");
const emptyEl = document.getElementById("empty");
const filterEl = document.getElementById("filter");
const shownEl = document.getElementById("shown");

/** server name -> { node, refs, sig, row, sev, phaseSince, restoreSince } */
const rows = new Map();
/** row node -> its entry (for the rows coming into view). */
const byNode = new WeakMap();
let order = [];
let filterText = "";
/** restore_id -> the restores --json row of a failed restore (its reason). */
const failedRestores = new Map();
let needFailed = true;

function failedRestore(row) {
  return row.restore_id && !row.restore_active ? failedRestores.get(row.restore_id) : undefined;
}

/** Failing (the count): a health word that fails. A server whose last restore
 * failed is not failing now; its row stands out and says why instead. */
function isFailing(row) {
  return FAILING_HEALTH.has(row.health);
}

function severity(row) {
  if (isFailing(row) || failedRestore(row) !== undefined) return 0;
  if (row.stalled) return 1;
  if (row.health === "restarting" || row.restore_active) return 2;
  if (row.health !== "ok") return 3;
  return 4;
}

function reasonText(row) {
  if (FAILING_HEALTH.has(row.health) || row.health === "unknown") {
    if (row.last_error) return row.last_error;
    if (row.last_failure) return `last poll failed (${row.last_failure})`;
    return row.health === "unknown" ? "" : healthInfo(row.health).label;
  }
  if (row.stalled) {
    return row.phase ? `stalled in ${row.phase}` : "stalled";
  }
  if (row.health === "restarting") return "restarting after the restore";
  const failed = failedRestore(row);
  if (failed) return `restore failed: ${failed.reason || "ended without COMPLETED"}`;
  return "";
}

// What a row shows, as one string: an unchanged row costs one comparison.
function signature(row) {
  return [
    row.health,
    row.phase,
    row.code,
    row.step,
    row.phase_since,
    row.restore_id,
    row.restore_active,
    row.restore_since,
    row.stalled,
    row.failures,
    row.last_error,
    row.last_failure,
    failedRestore(row) ? "failed" : "",
  ].join("\u0001");
}

// One row, cloned for every server: cloneNode is far cheaper than building the
// elements by hand 5,000 times. Eight elements a row: glyphs, tones, the
// "stalled" tag and the progress bar are CSS keyed on attributes (the bar is the
// step cell's ::before, sized by its aria-valuenow), which keeps rows small; a
// <progress> would be a shadow tree per row.
const TEMPLATE = (() => {
  const node = el("div", "server");
  node.setAttribute("role", "listitem");
  const prog = el("span", "progress-cell");
  prog.setAttribute("role", "progressbar");
  prog.setAttribute("aria-valuemin", "0");
  prog.setAttribute("aria-valuemax", "7");
  prog.setAttribute("aria-valuenow", "0");
  node.append(
    el("span", "name"),
    el("span", "badge health"),
    el("span", "phase"),
    prog,
    el("span", "in-phase"),
    el("span", "since"),
    el("span", "reason"),
  );
  return node;
})();

function buildRow(name) {
  const node = TEMPLATE.cloneNode(true);
  node.setAttribute("data-server", name);
  const [nameEl, health, phase, progress, inPhase, since, reason] = node.children;
  nameEl.textContent = name;
  nameEl.title = name;
  const entry = {
    node,
    refs: { health, phase, progress, inPhase, since, reason },
    sig: "",
    row: null,
    sev: -1,
    asOf: -Infinity,
    phaseSince: NaN,
    restoreSince: NaN,
  };
  byNode.set(node, entry);
  return entry;
}

/** Set an attribute only when it changed (attributes, not dataset: cheaper). */
function setAttr(node, name, value) {
  if (node.getAttribute(name) !== value) node.setAttribute(name, value);
}

/** Set a property (title) only when it changed: an empty one adds no attribute. */
function setTitle(node, value) {
  if (node.title !== value) node.title = value;
}

function applyRow(entry, row) {
  const { node, refs } = entry;
  const stalled = row.stalled === true;
  setAttr(node, "data-health", String(row.health || "unknown"));
  setAttr(node, "data-phase", String(row.phase || ""));
  setAttr(node, "data-stalled", stalled ? "true" : "false");
  setAttr(node, "data-restoring", row.restore_active ? "true" : "false");
  const failed = failedRestore(row);
  setAttr(node, "data-last-restore", failed ? "failed" : "");
  setText(refs.health, healthInfo(row.health).label);
  const failing = row.failures > 0 && FAILING_HEALTH.has(row.health);
  setAttr(refs.health, "data-failures", failing ? `\u00d7${row.failures}` : "");
  setTitle(refs.health, failing ? `${row.failures} consecutive failed polls` : "");
  setText(refs.phase, row.phase || "");
  const code = Number.isInteger(row.code) ? row.code : 0;
  setAttr(refs.progress, "aria-valuenow", String(code));
  setText(refs.progress, row.step || "");
  setText(refs.reason, reasonText(row));
  setTitle(refs.reason, row.last_error || (failed && failed.reason) || "");
  // The restore cell links to its timeline.
  const link = refs.since.firstChild;
  if (!row.restore_id) {
    if (link) refs.since.textContent = "";
  } else {
    const a = link && link.nodeType === 1 ? link : el("a", "restore-link");
    const href = `/restores/${encodeURIComponent(row.restore_id)}`;
    if (a.getAttribute("href") !== href) a.setAttribute("href", href);
    setTitle(a, row.restore_since ? `restore ${row.restore_id} since ${formatStamp(row.restore_since)}` : String(row.restore_id));
    if (a !== link) {
      refs.since.textContent = "";
      refs.since.append(a);
    }
  }
  entry.row = row;
  entry.sev = severity(row);
  entry.phaseSince = row.phase ? parseTime(row.phase_since) : NaN;
  entry.restoreSince = parseTime(row.restore_since);
  tickRow(entry, serverNow());
}

function tickRow(entry, now) {
  const { row, refs } = entry;
  if (!row) return;
  if (Number.isFinite(entry.phaseSince)) {
    setText(refs.inPhase, formatDuration(Math.max(0, (now - entry.phaseSince) / 1000)));
  } else if (row.phase && typeof row.in_phase_for === "number") {
    setText(refs.inPhase, formatDuration(row.in_phase_for));
  } else {
    setText(refs.inPhase, "");
  }
  if (!row.restore_id) return;
  const target = refs.since.firstChild || refs.since;
  if (Number.isFinite(entry.restoreSince)) {
    const ago = `${formatDuration(Math.max(0, (now - entry.restoreSince) / 1000))} ago`;
    setText(target, row.restore_active ? ago : `last \u00b7 ${ago}`);
  } else {
    setText(target, "timeline");
  }
}

function matches(name, entry) {
  if (!filterText) return true;
  const r = entry.row;
  return (
    name.toLowerCase().includes(filterText) ||
    (r && (String(r.health).includes(filterText) || String(r.phase || "").toLowerCase().includes(filterText)))
  );
}

function applyFilter() {
  let shown = 0;
  for (const [name, entry] of rows) {
    const visible = matches(name, entry);
    if (entry.node.hidden === visible) entry.node.hidden = !visible;
    if (visible) shown += 1;
  }
  shownEl.textContent = filterText ? `${shown} of ${rows.size} shown` : "";
}

// The first paint of a big fleet: the counts and the first rows (problems first)
// go on screen at once, the rest follow in chunks between frames, so 5,000
// servers show something in well under a second on a slow machine too, and the
// page stays responsive while the rest is built. FIRST_CHUNK is more than a
// screenful on a large monitor (a row is ~46 px); a CHUNK takes ~30-60 ms with its layout.
// Every row is in the DOM at the end (find-in-page finds any server; rows off
// screen skip layout and paint through content-visibility: auto).
const FIRST_CHUNK = 60;
const CHUNK = 500;

function nextFrame() {
  // rAF alone never fires in a hidden tab; the timeout keeps the render going.
  return new Promise((resolve) => {
    let done = false;
    const go = () => {
      if (!done) {
        done = true;
        resolve();
      }
    };
    requestAnimationFrame(() => setTimeout(go, 0));
    setTimeout(go, 50);
  });
}

async function firstRender(list) {
  renderCounts(list);
  const sorted = list.slice().sort(compareRows);
  let i = 0;
  while (i < sorted.length) {
    const end = Math.min(sorted.length, i === 0 ? FIRST_CHUNK : i + CHUNK);
    const fragment = document.createDocumentFragment();
    for (; i < end; i += 1) {
      const row = sorted[i];
      const name = String(row.server);
      if (rows.has(name)) continue;
      const entry = buildRow(name);
      rows.set(name, entry);
      entry.sig = signature(row);
      applyRow(entry, row);
      fragment.append(entry.node);
    }
    fleetEl.append(fragment);
    if (i === Math.min(sorted.length, FIRST_CHUNK)) markFirstRows();
    if (i < sorted.length) await nextFrame();
  }
  order = [...rows.values()];
}

/** The counts and the first screenful of rows are in the DOM (the benchmark's
 * "first paint of the fleet" is the frame after this). */
function markFirstRows() {
  performance.mark("fleet:first-rows");
  if (document.body.dataset.firstRows !== "true") document.body.dataset.firstRows = "true";
}

async function renderStatus(list) {
  if (rows.size === 0 && list.length > FIRST_CHUNK) {
    await firstRender(list);
    emptyEl.hidden = true;
    if (filterText) applyFilter();
    renderCounts();
    return;
  }
  const seen = new Set();
  for (const row of list) {
    const name = String(row.server);
    seen.add(name);
    let entry = rows.get(name);
    if (!entry) {
      entry = buildRow(name);
      rows.set(name, entry);
    }
    // An answer older than what the row shows is skipped, unless the row shows
    // nothing yet (a new row must have a state to sort and count by).
    if ((isStale(entry, row) || behind(name, row)) && entry.row !== null) continue;
    const sig = signature(row);
    if (sig !== entry.sig) {
      entry.sig = sig;
      applyRow(entry, row);
    } else {
      entry.row = row;
    }
  }
  for (const [name, entry] of rows) {
    if (!seen.has(name)) {
      entry.node.remove();
      rows.delete(name);
      if (inView) inView.delete(entry);
    }
  }
  reorder();
  emptyEl.hidden = rows.size > 0;
  if (filterText) applyFilter();
  renderCounts();
  markFirstRows();
}

/** Whether `row` is older than what its entry shows (fetches overlap: an answer
 * started before another may arrive after it). Marks the entry with its time. */
function isStale(entry, row) {
  const at = parseTime(row.as_of);
  if (!Number.isFinite(at)) return false;
  if (at < entry.asOf) return true;
  entry.asOf = at;
  return false;
}

/** Apply some servers' rows (an answer to /api/status?server=...): only those
 * rows change; the order changes only when a row's severity did. */
function renderSome(list) {
  let moved = false;
  for (const row of list) {
    const name = String(row.server);
    let entry = rows.get(name);
    if (!entry) {
      // A server a reload added: a new row (a full refresh would place it too).
      entry = buildRow(name);
      rows.set(name, entry);
      moved = true;
    }
    // An answer older than what the row shows is skipped, unless the row shows
    // nothing yet (a new row must have a state to sort and count by).
    if ((isStale(entry, row) || behind(name, row)) && entry.row !== null) continue;
    const sig = signature(row);
    if (sig !== entry.sig) {
      const before = entry.sev;
      entry.sig = sig;
      applyRow(entry, row);
      if (entry.sev !== before) moved = true;
    } else {
      entry.row = row;
    }
  }
  if (moved) reorder();
  emptyEl.hidden = rows.size > 0;
  if (filterText) applyFilter();
  renderCounts();
}

// Problems first, then restores, then the quiet rest, each by name. Only nodes
// out of place are moved.
function compareRows(a, b) {
  const d = severity(a) - severity(b);
  if (d) return d;
  const x = String(a.server);
  const y = String(b.server);
  return x < y ? -1 : x > y ? 1 : 0;
}

function reorder() {
  const next = [...rows.values()].sort((a, b) => compareRows(a.row, b.row));
  const same = next.length === order.length && next.every((e, i) => e === order[i]);
  if (same) return;
  order = next;
  if (!fleetEl.firstChild) {
    // First paint: one fragment in the final order, one insertion.
    const fragment = document.createDocumentFragment();
    for (const entry of next) fragment.append(entry.node);
    fleetEl.append(fragment);
    return;
  }
  let cursor = fleetEl.firstChild;
  for (const entry of next) {
    if (entry.node === cursor) {
      cursor = cursor.nextSibling;
    } else {
      fleetEl.insertBefore(entry.node, cursor);
    }
  }
}

const counts = {
  watching: 0,
  restoring: 0,
  failing: 0,
  stalled: 0,
  outbox_pending: null,
  dead_letters: null,
};

// The counts from the rows the page holds (after a full or a partial update).
function renderCounts() {
  let restoring = 0;
  let failing = 0;
  let stalled = 0;
  for (const entry of rows.values()) {
    const r = entry.row;
    if (!r) continue;
    if (r.restore_active) restoring += 1;
    if (isFailing(r)) failing += 1;
    if (r.stalled === true) stalled += 1;
  }
  counts.watching = rows.size;
  counts.restoring = restoring;
  counts.failing = failing;
  counts.stalled = stalled;
  for (const [key, value] of Object.entries(counts)) {
    const node = document.querySelector(`#counts [data-count="${key}"]`);
    if (!node) continue;
    setText(node, value === null ? "\u2013" : String(value));
    const box = node.parentElement;
    box.classList.toggle("nonzero", typeof value === "number" && value > 0);
  }
}

function renderOutbox(outbox) {
  const sinks = Array.isArray(outbox && outbox.sinks) ? outbox.sinks : [];
  counts.outbox_pending = sinks.reduce((n, s) => n + (Number(s.pending) || 0), 0);
  counts.dead_letters = sinks.reduce((n, s) => n + (Number(s.dead) || 0), 0);
  const box = document.getElementById("dead-letters");
  const dead = sinks.filter((s) => Number(s.dead) > 0);
  if (dead.length) {
    setText(
      box,
      `\u2715 Dead letters: ${dead.map((s) => `${s.sink} ${s.dead}`).join(", ")} \u2014 events that could not be delivered; see "sklm-watcher outbox --dead".`,
    );
    box.hidden = false;
  } else {
    box.hidden = true;
  }
  renderCounts();
}

function renderStale(list) {
  const box = document.getElementById("stale");
  const row = list.find((r) => r.daemon_running === false);
  if (row) {
    setText(box, `No daemon running; data as of ${row.as_of ? formatStamp(row.as_of) : "unknown"} (${formatAgo(row.as_of)}).`);
    box.hidden = false;
  } else {
    box.hidden = true;
  }
}

function noteClock(list, atPerf) {
  for (const r of list) {
    const since = parseTime(r.phase_since);
    if (Number.isFinite(since) && typeof r.in_phase_for === "number") {
      noteServerTime(since + r.in_phase_for * 1000, atPerf);
      return;
    }
  }
}

/** Fetch the failed restores (their reasons) when asked: at the start and on
 * every (re)connection (a failure while connected comes with its event).
 * Resolves true when the list arrived (merged into the map). */
async function loadFailed() {
  if (!needFailed) return false;
  needFailed = false;
  try {
    const failed = await getJSON("/api/restores?outcome=failed&limit=1000");
    if (!Array.isArray(failed)) return false;
    // Merged: a failure whose event arrived meanwhile stays (none is ever undone).
    for (const r of failed) failedRestores.set(r.restore_id, r);
    return true;
  } catch (_) {
    needFailed = true; // the next update tries again
    return false;
  }
}

/** Re-apply the rows a new map of failed restores changes (their reason, their
 * place: a failed last restore puts a row with the problems). */
function applyFailed() {
  let moved = false;
  for (const entry of rows.values()) {
    if (!entry.row) continue;
    const sig = signature(entry.row);
    if (sig === entry.sig) continue;
    const before = entry.sev;
    entry.sig = sig;
    applyRow(entry, entry.row);
    if (entry.sev !== before) moved = true;
  }
  if (moved) reorder();
}

/** The first /api/status: the one fleet-boot.js started while the modules loaded
 * (the first paint waits for both), or a new one. */
function statusOnce() {
  const early = window.__fleetStatus;
  window.__fleetStatus = "taken"; // a late fleet-boot.js starts none
  if (early && typeof early.then === "function") {
    return readJSON(early).catch(() => getJSON("/api/status"));
  }
  return getJSON("/api/status");
}

async function refreshAll() {
  const atPerf = performance.now();
  // The rows first, alone: the failed restores and the outbox (journal queries,
  // slow on a big journal) are asked for once the rows are on their way, so they
  // do not compete with them for the daemon, and neither the first paint nor the
  // next update waits for them.
  let list = null;
  try {
    const status = await statusOnce();
    list = Array.isArray(status) ? status : [];
  } catch (err) {
    showError(`Could not load /api/status: ${err.message}`);
    wantAll = true; // the next event or reconnection tries again
  }
  const failed = loadFailed();
  getJSON("/api/outbox").then(renderOutbox, () => {});
  if (list) {
    noteClock(list, atPerf);
    const t0 = performance.now();
    await renderStatus(list);
    // Visible to the benchmark and to DevTools: how long one render took.
    performance.measure("fleet:render", { start: t0, end: performance.now() });
    renderStale(list);
    showError("");
    markReady();
    recheck();
  }
  // Applied between two updates (renders of the rows are synchronous after the
  // first one), never in the middle of one.
  failed.then((changed) => changed && applyFailed());
  return list !== null;
}

// Past this many changed servers (or this long a query) one full fetch is cheaper.
const MAX_SOME = 200;
const MAX_QUERY = 6000;

async function refreshSome(names) {
  const atPerf = performance.now();
  const query = names.map((n) => `server=${encodeURIComponent(n)}`).join("&");
  loadFailed().then((changed) => changed && applyFailed());
  let list;
  try {
    list = await getJSON(`/api/status?${query}`);
  } catch (err) {
    // The stream reconnects (and refetches everything) if the daemon went away.
    wantAll = true;
    throw err;
  }
  if (!Array.isArray(list)) return;
  noteClock(list, atPerf);
  renderSome(list);
  renderStale(list);
  recheck();
}

/** Servers whose events arrived since their rows were last fetched. */
const dirty = new Set();
/** The next update fetches the whole fleet (start, reconnection, a failure). */
let wantAll = true;
/** A whole-fleet refresh is in flight or rendering: partial ones wait for it. */
let allRunning = false;
/** Partial fetches in flight: each event batch gets its own at once (no queue
 * behind the previous one), up to this many; a stale answer is not applied. */
let inFlight = 0;
const MAX_IN_FLIGHT = 4;

// One whole-fleet refresh at a time, at most one queued.
const refreshWhole = coalesce(async () => {
  if (!wantAll) return;
  wantAll = false;
  // Every row is refetched: what was dirty before the fetch is in it.
  dirty.clear();
  allRunning = true;
  let ok = false;
  try {
    ok = await refreshAll();
  } finally {
    allRunning = false;
  }
  // What arrived meanwhile; after a failure the next event or reconnection
  // tries again (no loop against a daemon that is down).
  if (ok) flush();
});

/** Fetch what the events since the last fetch changed. */
function flush() {
  if (allRunning) return;
  if (wantAll) {
    refreshWhole();
    return;
  }
  if (dirty.size === 0 || inFlight >= MAX_IN_FLIGHT) return;
  const names = [...dirty];
  dirty.clear();
  const query = names.reduce((n, name) => n + name.length + 8, 0);
  if (names.length > MAX_SOME || query > MAX_QUERY) {
    wantAll = true;
    refreshWhole();
    return;
  }
  inFlight += 1;
  refreshSome(names)
    .catch((err) => console.error(err))
    .finally(() => {
      inFlight -= 1;
      flush();
    });
}

// Events of a poll that answered: its row's last_ok_at is at least the event's
// time once the daemon holds the state the event came with.
const FROM_AN_ANSWER = new Set([
  "sklm.restore.started",
  "sklm.restore.phase",
  "sklm.restore.completed",
  "sklm.restore.failed",
  "sklm.server.recovered",
  "sklm.server.restarted",
  "sklm.auth.recovered",
]);
/** server -> { at, since }: the time of its newest such event, and when it came. */
const expected = new Map();
/** Give up waiting for a row to catch up with its event after this long (ms). */
const EXPECT_FOR = 5000;
const RETRY_AFTER = 100;
let retryTimer = null;
/** Rows to fetch again when the retry timer fires. */
const retry = new Set();

// The stream may deliver an event a moment before the daemon's state has it (the
// journal is written first): a row fetched for an event and older than it is
// fetched again shortly, until it has caught up.
function recheck() {
  const now = performance.now();
  for (const [name, want] of expected) {
    const entry = rows.get(name);
    const ok = entry && entry.row ? parseTime(entry.row.last_ok_at) : NaN;
    if ((Number.isFinite(ok) && ok >= want.at) || now - want.since > EXPECT_FOR) {
      expected.delete(name);
    } else {
      retry.add(name);
    }
  }
  if (retry.size && retryTimer === null) {
    retryTimer = setTimeout(() => {
      retryTimer = null;
      for (const name of retry) dirty.add(name);
      retry.clear();
      flush();
    }, RETRY_AFTER);
  }
}

/** Whether `row` predates an event of its server the page has already had (it
 * is then not shown: the event's phase stays until the daemon's row catches up). */
function behind(name, row) {
  const want = expected.get(name);
  if (!want) return false;
  const ok = parseTime(row.last_ok_at);
  return !(Number.isFinite(ok) && ok >= want.at);
}

/** A phase event shown at once on its row (phase, k/7, time in phase); the row
 * fetched for it fills in the rest. */
function showPhase(name, data, time) {
  const entry = rows.get(name);
  // During a whole-fleet refresh the row may not exist yet: that fetch shows it.
  if (!entry || !entry.row || allRunning) return;
  const code = Number.isInteger(data.code) ? data.code : entry.row.code;
  const row = {
    ...entry.row,
    phase: data.phase,
    code,
    step: Number.isInteger(code) ? `${code}/7` : entry.row.step,
    phase_since: typeof time === "string" ? time : entry.row.phase_since,
  };
  if (typeof data.restore_id === "string" && data.restore_id) row.restore_id = data.restore_id;
  const sig = signature(row);
  if (sig === entry.sig) return;
  const before = entry.sev;
  entry.sig = sig;
  applyRow(entry, row);
  if (entry.sev !== before) reorder();
}

function onEvent(event) {
  if (!event || typeof event !== "object") return;
  const data = event.data && typeof event.data === "object" ? event.data : {};
  if (event.type === "sklm.restore.failed") {
    // The event carries what the row shows (its reason): no journal query per
    // failure (the whole list is fetched at the start and on reconnection).
    if (typeof data.restore_id === "string" && data.restore_id) {
      failedRestores.set(data.restore_id, {
        restore_id: data.restore_id,
        server: data.server,
        reason: typeof data.reason === "string" ? data.reason : "",
      });
    } else {
      needFailed = true;
    }
  }
  const server = typeof data.server === "string" ? data.server : event.subject;
  if (typeof server === "string" && server) {
    dirty.add(server);
    const at = parseTime(event.time);
    const want = expected.get(server);
    if (FROM_AN_ANSWER.has(event.type) && Number.isFinite(at) && !(want && want.at >= at)) {
      expected.set(server, { at, since: performance.now() });
    }
    if (event.type === "sklm.restore.phase" && typeof data.phase === "string") {
      showPhase(server, data, event.time);
    }
  } else {
    wantAll = true; // an event about no one server: everything may have changed
  }
  flush();
}

filterEl.addEventListener("input", () => {
  filterText = filterEl.value.trim().toLowerCase();
  applyFilter();
});

// Relative times tick every second on the client; the daemon is not asked. Only
// the rows on screen tick where the browser says which those are (rows are
// content-visibility: auto; a row coming into view is brought up to date at
// once): 5,000 rows changing their text every second would keep the page busy.
const inView = typeof ContentVisibilityAutoStateChangeEvent === "function" ? new Set() : null;
if (inView) {
  // Not bubbling: caught on the way down.
  fleetEl.addEventListener(
    "contentvisibilityautostatechange",
    (event) => {
      const entry = byNode.get(event.target);
      if (!entry) return;
      if (event.skipped) {
        inView.delete(entry);
      } else {
        inView.add(entry);
        tickRow(entry, serverNow());
      }
    },
    true,
  );
}
setInterval(() => {
  const now = serverNow();
  for (const entry of inView || rows.values()) {
    if (entry.row && (entry.row.phase || entry.row.restore_id)) tickRow(entry, now);
  }
}, 1000);

// The outbox emits no audit event when a delivery succeeds; a slow refresh keeps
// its count honest without polling the status of 5,000 servers.
setInterval(() => {
  getJSON("/api/outbox").then(renderOutbox, () => {});
}, 15000);

// A reload that adds or removes servers journals no event: a full fetch now and
// then brings the list of rows in line (cheap once the rows exist).
setInterval(() => {
  wantAll = true;
  flush();
}, 60000);

refreshWhole();
followStream({
  onEvent,
  onOpen: () => {
    // What happened while the stream was down (or before it first opened).
    needFailed = true;
    wantAll = true;
    refreshWhole();
  },
});
