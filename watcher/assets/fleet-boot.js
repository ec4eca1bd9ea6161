// Starts the fleet view's first /api/status fetch as soon as the page's head is
// parsed, while fleet.js and its imports still load (the first paint needs both).
// A classic script, loaded async: fleet.js takes the pending response from
// window.__fleetStatus, or fetches itself if this one came too late ("taken").
"use strict";
if (!window.__fleetStatus) {
  window.__fleetStatus = fetch("/api/status", {
    headers: { Accept: "application/json" },
    credentials: "same-origin",
    cache: "no-store",
  });
  // Handled: fleet.js reads the failure (and fetches again) when it takes it.
  window.__fleetStatus.catch(() => {});
}
