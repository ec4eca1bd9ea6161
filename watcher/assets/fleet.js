// The fleet view (/): counts on top, one row per server, updated live.
// Rows are keyed by server name and only changed rows touch the DOM, so a
// 5,000-server fleet paints once from a DocumentFragment and then costs little.
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
  serverNow,
  setData,
  setText,
  showError,
} from "./common.js";

const fleetEl = document.getElementById("fleet");
const emptyEl = document.getElementById("empty");
const filterEl = document.getElementById("filter");
const shownEl = document.getElementById("shown");

/** server name -> { node, refs, sig, row } */
const rows = new Map();
let order = [];
let filterText = "";
/** restore_id -> the restores --json row of a failed restore (its reason). */
let failedRestores = new Map();
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

// One row, cloned for every server: cloneNode is far cheaper than building
// ten elements by hand 5,000 times. Glyphs, tones and the "stalled" tag come
// from CSS keyed on the row's data-* attributes, which keeps rows small.
const TEMPLATE = (() => {
  const node = el("div", "server");
  node.setAttribute("role", "listitem");
  const prog = el("span", "progress-cell");
  const bar = el("progress", "bar");
  bar.max = 7;
  bar.value = 0;
  prog.append(bar, el("span", "step"));
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
  node.dataset.server = name;
  const [nameEl, health, phase, prog, inPhase, since, reason] = node.children;
  nameEl.textContent = name;
  nameEl.title = name;
  return {
    node,
    refs: { health, phase, bar: prog.firstChild, step: prog.lastChild, inPhase, since, reason },
    sig: "",
    row: null,
    phaseSince: NaN,
    restoreSince: NaN,
  };
}

function applyRow(entry, row) {
  const { node, refs } = entry;
  const stalled = row.stalled === true;
  setData(node, "health", row.health || "unknown");
  setData(node, "phase", row.phase || "");
  setData(node, "stalled", stalled ? "true" : "false");
  setData(node, "restoring", row.restore_active ? "true" : "false");
  const failed = failedRestore(row);
  setData(node, "lastRestore", failed ? "failed" : "");
  setText(refs.health, healthInfo(row.health).label);
  const failing = row.failures > 0 && FAILING_HEALTH.has(row.health);
  setData(refs.health, "failures", failing ? `\u00d7${row.failures}` : "");
  refs.health.title = failing ? `${row.failures} consecutive failed polls` : "";
  setText(refs.phase, row.phase || "");
  const code = Number.isInteger(row.code) ? row.code : 0;
  if (refs.bar.value !== code) refs.bar.value = code;
  setText(refs.step, row.step || "");
  setText(refs.reason, reasonText(row));
  refs.reason.title = row.last_error || (failed && failed.reason) || "";
  // The restore cell links to its timeline.
  refs.since.textContent = "";
  if (row.restore_id) {
    const a = el("a", "restore-link");
    a.href = `/restores/${encodeURIComponent(row.restore_id)}`;
    a.title = row.restore_since ? `restore ${row.restore_id} since ${formatStamp(row.restore_since)}` : row.restore_id;
    refs.since.append(a);
  }
  entry.row = row;
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
// servers show something in well under a second on a slow machine too.
const FIRST_CHUNK = 150;
const CHUNK = 2500;

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
    if (i < sorted.length) {
      await nextFrame();
      // For the benchmark: the first rows have had a frame to paint in.
      if (i === Math.min(sorted.length, FIRST_CHUNK)) performance.mark("fleet:first-rows");
    }
  }
  order = [...rows.values()];
}

async function renderStatus(list) {
  if (rows.size === 0 && list.length > FIRST_CHUNK) {
    await firstRender(list);
    emptyEl.hidden = true;
    if (filterText) applyFilter();
    renderCounts(list);
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
    }
  }
  reorder();
  emptyEl.hidden = rows.size > 0;
  if (filterText) applyFilter();
  renderCounts(list);
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

function renderCounts(list) {
  if (list) {
    counts.watching = list.length;
    counts.restoring = list.filter((r) => r.restore_active).length;
    counts.failing = list.filter(isFailing).length;
    counts.stalled = list.filter((r) => r.stalled === true).length;
  }
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
  renderCounts(null);
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

const refresh = coalesce(async () => {
  const atPerf = performance.now();
  // Failed restores (for their reason) change only when one fails: fetched at the
  // start, on every (re)connection and on sklm.restore.failed, not per event.
  const wantFailed = needFailed;
  needFailed = false;
  const [status, outbox, failed] = await Promise.allSettled([
    getJSON("/api/status"),
    getJSON("/api/outbox"),
    wantFailed ? getJSON("/api/restores?outcome=failed&limit=1000") : Promise.resolve(null),
  ]);
  if (wantFailed && failed.status === "fulfilled" && Array.isArray(failed.value)) {
    failedRestores = new Map(failed.value.map((r) => [r.restore_id, r]));
  } else if (wantFailed && failed.status === "rejected") {
    needFailed = true;
  }
  if (status.status === "fulfilled") {
    const list = Array.isArray(status.value) ? status.value : [];
    noteClock(list, atPerf);
    const t0 = performance.now();
    await renderStatus(list);
    // Visible to the benchmark and to DevTools: how long one render took.
    performance.measure("fleet:render", { start: t0, end: performance.now() });
    renderStale(list);
    showError("");
  } else {
    showError(`Could not load /api/status: ${status.reason.message}`);
  }
  if (outbox.status === "fulfilled") renderOutbox(outbox.value);
  if (status.status === "fulfilled") markReady();
});

filterEl.addEventListener("input", () => {
  filterText = filterEl.value.trim().toLowerCase();
  applyFilter();
});

// Relative times tick every second on the client; the daemon is not asked.
setInterval(() => {
  const now = serverNow();
  for (const entry of rows.values()) {
    if (entry.row && (entry.row.phase || entry.row.restore_id)) tickRow(entry, now);
  }
}, 1000);

// The outbox emits no audit event when a delivery succeeds; a slow refresh keeps
// its count honest without polling the status of 5,000 servers.
setInterval(() => {
  getJSON("/api/outbox").then(renderOutbox, () => {});
}, 15000);

refresh();
followStream({
  onEvent: (event) => {
    if (event && event.type === "sklm.restore.failed") needFailed = true;
    refresh();
  },
  onOpen: () => {
    needFailed = true;
    refresh();
  },
});
