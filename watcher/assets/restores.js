// The restore history (/restores): a table filtered by server glob and outcome.
// The filters live in the query string, so a filtered view is a link to share.
import {
  badge,
  coalesce,
  el,
  followStream,
  formatDuration,
  formatStamp,
  getJSON,
  markReady,
  outcomeInfo,
  showError,
} from "./common.js";

const form = document.getElementById("filters");
const serverEl = document.getElementById("f-server");
const outcomeEl = document.getElementById("f-outcome");
const limitEl = document.getElementById("f-limit");
const tbody = document.querySelector("table#restores tbody");
const emptyEl = document.getElementById("empty");
const summaryEl = document.getElementById("summary");

function readQuery() {
  const q = new URLSearchParams(location.search);
  serverEl.value = q.get("server") || "";
  const outcome = q.get("outcome") || "";
  // An outcome the select does not know still filters: add it as an option.
  if (outcome && ![...outcomeEl.options].some((o) => o.value === outcome)) {
    outcomeEl.append(new Option(outcome, outcome));
  }
  outcomeEl.value = outcome;
  const limit = q.get("limit") || "";
  if (limit && ![...limitEl.options].some((o) => o.value === limit)) {
    limitEl.append(new Option(limit, limit));
  }
  limitEl.value = limit;
}

function currentParams() {
  const q = new URLSearchParams();
  if (serverEl.value.trim()) q.set("server", serverEl.value.trim());
  if (outcomeEl.value) q.set("outcome", outcomeEl.value);
  if (limitEl.value) q.set("limit", limitEl.value);
  return q;
}

function restoreLink(id, text) {
  const a = el("a", null, text);
  a.href = `/restores/${encodeURIComponent(id)}`;
  return a;
}

function cell(cls, text) {
  return el("td", cls, text);
}

function buildRow(r) {
  const tr = el("tr");
  tr.dataset.restoreId = r.restore_id;
  tr.dataset.outcome = r.outcome || "";
  const server = cell("server-cell", r.server);
  const id = el("td", "mono");
  // Restore ids are UUIDs: the first 8 characters tell them apart on screen,
  // the whole id is the link's tooltip.
  const idText = String(r.restore_id);
  const link = restoreLink(r.restore_id, idText.length > 12 ? `${idText.slice(0, 8)}\u2026` : idText);
  link.title = idText;
  id.append(link);
  const outcome = el("td");
  outcome.append(badge(outcomeInfo(r.outcome)));
  const started = cell(null, formatStamp(r.started_at));
  started.title = r.ended_at ? `ended ${formatStamp(r.ended_at)}` : "not ended";
  const duration = cell("num", r.duration === null || r.duration === undefined ? (r.ended_at ? "" : "running") : formatDuration(r.duration));
  const last = cell("mono", r.last_phase || "");
  const inferred = Number(r.phases_inferred) || 0;
  const phases = cell("num", `${r.phases_observed}${inferred ? ` + ${inferred} inferred` : ""}`);
  const restart = cell(null, r.restarted ? "\u21bb restarted" : "");
  const reason = cell("reason-cell", r.reason || "");
  // Labels for the phone layout, where each row is a card (CSS attr()).
  const labels = ["Server", "Restore", "Outcome", "Started", "Duration", "Last phase", "Phases", "Restart", "Reason"];
  const cells = [server, id, outcome, started, duration, last, phases, restart, reason];
  cells.forEach((td, i) => td.setAttribute("data-label", labels[i]));
  tr.append(...cells);
  return tr;
}

const refresh = coalesce(async () => {
  const q = currentParams().toString();
  try {
    const list = await getJSON(`/api/restores${q ? `?${q}` : ""}`);
    // Newest first: the history is read from the latest restore backwards.
    const rows = (Array.isArray(list) ? list : []).slice().sort((a, b) => {
      const d = (Date.parse(b.started_at) || 0) - (Date.parse(a.started_at) || 0);
      return d || (a.server < b.server ? -1 : a.server > b.server ? 1 : 0);
    });
    const fragment = document.createDocumentFragment();
    for (const r of rows) fragment.append(buildRow(r));
    tbody.replaceChildren(fragment);
    emptyEl.hidden = rows.length > 0;
    summaryEl.textContent = `${rows.length} restore${rows.length === 1 ? "" : "s"}`;
    showError("");
  } catch (err) {
    showError(`Could not load /api/restores: ${err.message}`);
  }
  markReady();
});

form.addEventListener("submit", (ev) => {
  // form-action 'none' in the CSP: filtering never navigates, it refetches.
  ev.preventDefault();
  const q = currentParams().toString();
  history.pushState(null, "", `${location.pathname}${q ? `?${q}` : ""}`);
  refresh();
});
outcomeEl.addEventListener("change", () => form.requestSubmit());
limitEl.addEventListener("change", () => form.requestSubmit());
window.addEventListener("popstate", () => {
  readQuery();
  refresh();
});

readQuery();
refresh();
followStream({
  onEvent: (event) => {
    if (event && typeof event.type === "string" && (event.type.startsWith("sklm.restore.") || event.type === "sklm.server.restarted")) refresh();
  },
  onOpen: () => refresh(),
});
