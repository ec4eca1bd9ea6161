// One restore (/restores/<id>): outcome, facts, an SVG timeline with one bar per
// phase (inferred phases hatched, with the two polls that bracket them), and the
// restore's events. Every string goes in through textContent / setAttribute.
import {
  ApiError,
  coalesce,
  el,
  followStream,
  formatClock,
  formatDuration,
  formatStamp,
  getJSON,
  markReady,
  outcomeInfo,
  parseTime,
  serverNow,
  setText,
  showError,
  svg,
} from "./common.js";

const restoreId = (() => {
  const rest = location.pathname.replace(/^\/restores\//, "").replace(/\/+$/, "");
  try {
    return decodeURIComponent(rest);
  } catch (_) {
    return rest;
  }
})();

const timeline = document.getElementById("timeline");
const wrap = document.getElementById("timeline-wrap");
let last = null;

// --- facts -------------------------------------------------------------------

function fact(dl, label, value, cls) {
  const box = el("div", `fact${cls ? ` ${cls}` : ""}`);
  box.append(el("dt", null, label), el("dd", null, value));
  dl.append(box);
  return box;
}

function restartFacts(events) {
  // The restart SKLM does after a restore: sklm.server.restarted carries down_for
  // (null when only a rejected session showed it, or the watcher was down too).
  const restarted = events.filter((e) => e && e.type === "sklm.server.restarted");
  if (!restarted.length) return null;
  const e = restarted[restarted.length - 1];
  const data = e.data || {};
  return { at: e.time, downFor: typeof data.down_for === "number" ? data.down_for : null };
}

function renderFacts(restore, events) {
  const dl = document.getElementById("facts");
  const fragment = document.createDocumentFragment();
  const box = { append: (n) => fragment.append(n) };
  fact(box, "Restore id", restore.restore_id || restoreId, "id-fact");
  fact(box, "Started", formatStamp(restore.started_at) || "\u2014");
  fact(box, "Ended", restore.ended_at ? formatStamp(restore.ended_at) : restore.outcome === "running" ? "still running" : "\u2014");
  let duration = restore.duration;
  if ((duration === null || duration === undefined) && restore.outcome === "running") {
    const start = parseTime(restore.started_at);
    if (Number.isFinite(start)) duration = (serverNow() - start) / 1000;
  }
  fact(box, "Duration", duration === null || duration === undefined ? "\u2014" : formatDuration(duration));
  const inferred = Number(restore.phases_inferred) || 0;
  fact(box, "Phases", `${restore.phases_observed} observed${inferred ? `, ${inferred} inferred` : ""}`);
  const restart = restartFacts(events);
  fact(box, "Restart", restore.restarted ? `\u21bb restarted${restart && restart.at ? ` at ${formatClock(restart.at, false)} UTC` : ""}` : "no restart seen");
  fact(box, "Downtime", restart && restart.downFor !== null ? formatDuration(restart.downFor) : restore.restarted ? "not measured" : "\u2014");
  if (restore.reason) fact(box, "Reason", restore.reason, "reason-fact");
  dl.replaceChildren(fragment);
}

// --- timeline ------------------------------------------------------------------

const MIN_BAR = 10; // px: a millisecond phase must still be seen and hovered
const MIN_INFERRED = 26; // px: wide enough for the hatching to read as "inferred"

function phaseSeconds(p, i, phases, restore) {
  if (typeof p.duration === "number" && Number.isFinite(p.duration)) return Math.max(0, p.duration);
  const entered = parseTime(p.entered_at);
  const isLast = i === phases.length - 1;
  if (isLast && restore.outcome === "running" && Number.isFinite(entered)) {
    return Math.max(0, (serverNow() - entered) / 1000);
  }
  const next = phases[i + 1];
  const leftAt = parseTime(p.left_at || (next && next.entered_at));
  if (Number.isFinite(entered) && Number.isFinite(leftAt)) return Math.max(0, (leftAt - entered) / 1000);
  return 0;
}

// Widths proportional to duration, clamped to MIN_BAR; the clamped bars' extra
// room is taken from the others so the total still fits the chart.
function layoutWidths(seconds, mins, width) {
  const total = seconds.reduce((a, b) => a + b, 0);
  const widths = seconds.map((s) => (total > 0 ? (s / total) * width : width / seconds.length));
  for (let pass = 0; pass < 3; pass += 1) {
    const small = widths.map((w, i) => w < mins[i]);
    const fixed = small.reduce((a, isSmall, i) => a + (isSmall ? mins[i] : 0), 0);
    const rest = widths.reduce((a, w, i) => a + (small[i] ? 0 : w), 0);
    if (rest <= 0) break;
    const scale = Math.max(0, width - fixed) / rest;
    let changed = false;
    for (let i = 0; i < widths.length; i += 1) {
      if (small[i]) {
        if (widths[i] !== mins[i]) changed = true;
        widths[i] = mins[i];
      } else widths[i] *= scale;
    }
    if (!changed) break;
  }
  return widths.map((w, i) => Math.max(mins[i], w));
}

function renderTimeline(restore, phases) {
  const full = Math.max(320, wrap.clientWidth || 900);
  const narrow = full < 560;
  const labelW = narrow ? 0 : 200;
  const pad = 12;
  const chartW = full - labelW - pad * 2;
  const laneH = narrow ? 58 : 46;
  const barH = 18;
  const top = 8;
  const height = top + phases.length * laneH + 30;
  const seconds = phases.map((p, i) => phaseSeconds(p, i, phases, restore));
  const mins = phases.map((p) => (p.inferred ? MIN_INFERRED : MIN_BAR));
  const widths = layoutWidths(seconds, mins, chartW);

  const nodes = [];
  const title = svg("title", { id: "timeline-title" });
  title.textContent = `Timeline of restore ${restoreId}`;
  nodes.push(title);
  const defs = svg("defs");
  const pattern = svg("pattern", {
    id: "hatch",
    patternUnits: "userSpaceOnUse",
    width: 8,
    height: 8,
    patternTransform: "rotate(45)",
  });
  pattern.append(svg("rect", { class: "hatch-bg", width: 8, height: 8 }), svg("line", { class: "hatch-line", x1: 0, y1: 0, x2: 0, y2: 8 }));
  defs.append(pattern);
  nodes.push(defs);

  let x = labelW + pad;
  phases.forEach((p, i) => {
    const y = top + i * laneH;
    const barY = narrow ? y + 22 : y + (laneH - barH) / 2;
    const g = svg("g", { class: "lane-group" });
    g.append(svg("rect", { class: "lane", x: labelW, y: barY - 4, width: full - labelW, height: barH + 8, rx: 4 }));
    const name = svg("text", { class: "label", x: narrow ? pad : 0, y: narrow ? y + 14 : y + laneH / 2 - 2, "dominant-baseline": "middle" });
    name.textContent = p.phase;
    g.append(name);
    const running = i === phases.length - 1 && restore.outcome === "running" && p.duration == null;
    const durText = p.inferred
      ? "inferred"
      : running
        ? `${formatDuration(seconds[i])} so far`
        : typeof p.duration === "number"
          ? formatDuration(p.duration)
          : "";
    if (!narrow) {
      const sub = svg("text", { class: "sub", x: 0, y: y + laneH / 2 + 13, "dominant-baseline": "middle" });
      sub.textContent = `${p.code}/7${durText ? ` \u00b7 ${durText}` : ""}`;
      g.append(sub);
    }
    const cls = ["phase"];
    if (p.inferred) cls.push("inferred");
    if (running) cls.push("running");
    const rect = svg("rect", { class: cls.join(" "), x: x.toFixed(1), y: barY, width: widths[i].toFixed(1), height: barH, rx: 3 });
    rect.dataset.phase = p.phase;
    rect.dataset.code = String(p.code);
    const tip = svg("title");
    const bracket = p.bracket || {};
    if (p.inferred) {
      tip.textContent = `${p.phase} (inferred): passed between the poll at ${formatClock(bracket.before) || "?"} and the poll at ${formatClock(bracket.after) || "?"} UTC`;
    } else {
      tip.textContent = `${p.phase}: entered ${formatClock(p.entered_at)} UTC${durText ? `, ${durText}` : ""}`;
    }
    rect.append(tip);
    g.append(rect);
    // Visible text beside the bar: the bracketing polls for an inferred phase,
    // the duration for an observed one. Right of the bar if it fits, else left.
    const note = p.inferred
      ? `${narrow ? "" : "between polls "}${formatClock(bracket.before) || "?"} \u2013 ${formatClock(bracket.after) || "?"}`
      : narrow
        ? `${p.code}/7${durText ? ` \u00b7 ${durText}` : ""}`
        : "";
    if (note) {
      const approx = note.length * 6.6;
      const right = x + widths[i] + 8;
      const fitsRight = right + approx <= full - 4;
      // On a phone the duration sits on the name's line, right-aligned; the
      // bracket of an inferred phase stays beside its bar like on a wide screen.
      const top = narrow && !p.inferred;
      const t = svg("text", {
        class: p.inferred ? "sub bracket" : "sub",
        x: top ? full - pad : fitsRight ? right : x - 8,
        y: top ? y + 14 : barY + barH / 2,
        "text-anchor": top ? "end" : fitsRight ? "start" : "end",
        "dominant-baseline": "middle",
      });
      t.textContent = note;
      g.append(t);
    }
    nodes.push(g);
    x += widths[i];
  });

  const axisY = top + phases.length * laneH + 6;
  nodes.push(svg("line", { class: "axis", x1: labelW + pad, y1: axisY, x2: full - pad, y2: axisY }));
  const startText = svg("text", { class: "tick", x: labelW + pad, y: axisY + 16 });
  startText.textContent = formatClock(restore.started_at) ? `${formatClock(restore.started_at)} UTC` : "";
  nodes.push(startText);
  const endLabel = restore.ended_at ? `${formatClock(restore.ended_at)} UTC` : restore.outcome === "running" ? "now" : "";
  const endText = svg("text", { class: "tick", x: full - pad, y: axisY + 16, "text-anchor": "end" });
  endText.textContent = endLabel;
  nodes.push(endText);

  timeline.setAttribute("viewBox", `0 0 ${full} ${height}`);
  timeline.setAttribute("width", String(full));
  timeline.setAttribute("height", String(height));
  timeline.replaceChildren(...nodes);
}

// --- events ----------------------------------------------------------------------

const EVENT_TONE = {
  "sklm.restore.completed": "good",
  "sklm.restore.failed": "bad",
  "sklm.restore.stalled": "warn",
  "sklm.server.unreachable": "bad",
  "sklm.auth.failed": "bad",
  "sklm.server.recovered": "good",
  "sklm.server.restarted": "info",
};

function eventDetail(e) {
  const d = (e && e.data) || {};
  const parts = [];
  if (d.phase) parts.push(d.previous_phase ? `${d.previous_phase} \u2192 ${d.phase}` : String(d.phase));
  if (typeof d.down_for === "number") parts.push(`down for ${formatDuration(d.down_for)}`);
  if (typeof d.duration === "number") parts.push(`took ${formatDuration(d.duration)}`);
  if (d.reason) parts.push(String(d.reason));
  if (d.error) parts.push(String(d.error));
  if (d.during_watcher_downtime === true) parts.push("seen after the watcher's own downtime");
  return parts.join(" \u00b7 ");
}

function renderEvents(events) {
  const ul = document.getElementById("events");
  const fragment = document.createDocumentFragment();
  for (const e of events) {
    const li = el("li");
    li.dataset.type = String(e.type || "");
    li.dataset.tone = EVENT_TONE[e.type] || "";
    if (e.data && e.data.inferred === true) li.classList.add("is-inferred");
    const time = el("span", "time", formatClock(e.time));
    time.title = formatStamp(e.time);
    li.append(time, el("span", "type", e.type || ""), el("span", "detail", eventDetail(e)));
    fragment.append(li);
  }
  ul.replaceChildren(fragment);
  document.getElementById("no-events").hidden = events.length > 0;
}

// --- page ------------------------------------------------------------------------

function renderOutcome(restore) {
  const out = document.getElementById("outcome");
  const info = outcomeInfo(restore.outcome);
  out.className = `badge tone-${info.tone}`;
  out.dataset.outcome = restore.outcome || "";
  // The text is the contract's outcome word; the glyph comes from CSS.
  setText(out, restore.outcome || "");
  out.title = info.label;
}

function render(doc) {
  const restore = doc.restore || {};
  const phases = Array.isArray(doc.phases) ? doc.phases : [];
  const events = Array.isArray(doc.events) ? doc.events : [];
  document.title = `${restore.server || "Restore"} \u00b7 ${restoreId} \u00b7 sklm-watcher`;
  setText(document.getElementById("title"), restore.server ? `${restore.server}` : "Restore");
  renderOutcome(restore);
  renderFacts(restore, events);
  renderTimeline(restore, phases);
  renderEvents(events);
}

setText(document.getElementById("crumb-id"), restoreId);

const refresh = coalesce(async () => {
  try {
    last = await getJSON(`/api/restores/${encodeURIComponent(restoreId)}`);
    render(last);
    showError("");
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) {
      document.body.dataset.notFound = "true";
      setText(document.getElementById("title"), "Restore not found");
      showError(`No restore with id ${restoreId}.`);
    } else {
      showError(`Could not load the restore: ${err.message}`);
    }
  }
  markReady();
});

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (last) renderTimeline(last.restore || {}, last.phases || []);
  }, 100);
});

// A running restore's last bar grows each second.
setInterval(() => {
  if (last && last.restore && last.restore.outcome === "running") {
    renderTimeline(last.restore, last.phases || []);
    renderFacts(last.restore, last.events || []);
  }
}, 1000);

function concerns(event) {
  if (!event || !last || !last.restore) return true;
  const d = event.data || {};
  return d.restore_id === restoreId || (d.server === last.restore.server && String(event.type).startsWith("sklm.server."));
}

refresh();
followStream({
  onEvent: (event) => {
    if (concerns(event)) refresh();
  },
  onOpen: () => refresh(),
});

