// Status page: GET /healthz and /readyz (each module's state, its Serve deployments and
// the reason when it is not ready; 503 is an answer here, not an error), and the link to
// the Ray dashboard (CONSOLE_DASHBOARD_URL, else this host on port 8265).

import { call } from "./api.js";
import { $, clearError, el, showError } from "./ui.js";

const REFRESH_MS = 5000;

function row(name, status) {
  const deployments = Object.entries(status.deployments || {})
    .map(([deployment, state]) => `${deployment} ${state}`)
    .join(", ");
  const state = status.backend ? `${status.state} (${status.backend})` : status.state;
  return el(
    "tr",
    { "data-module": name, class: `state-${status.state}` },
    el("th", { scope: "row" }, name),
    el("td", { class: "state" }, state),
    el("td", {}, deployments),
    el("td", { class: "reason" }, status.reason || ""),
  );
}

export function setupStatus() {
  let timer = null;
  const errorBox = $("status-error");

  async function refresh() {
    try {
      const health = await call("/healthz");
      const alive = (await health.json()).status === "ok";
      const response = await call("/readyz", { also: [503] });
      const ready = await response.json();
      clearError(errorBox);
      $("status-summary").textContent =
        `${alive ? "process up" : "process not ok"} · ${ready.ready ? "ready" : "not ready"} (HTTP ${response.status}) · ${new Date().toLocaleTimeString()}`;
      const body = $("status-modules").tBodies[0];
      if (!ready.modules) {
        body.replaceChildren(
          el("tr", {}, el("td", { colspan: "4" }, "The details need a valid API key (enter one at the top).")),
        );
        $("status-detail").textContent = "";
        return;
      }
      body.replaceChildren(
        ...Object.entries(ready.modules).map(([name, status]) => row(name, status)),
        row("storage", ready.storage),
      );
      const detail = { placement: ready.placement };
      for (const [name, status] of Object.entries(ready.modules)) {
        if (status.detail) detail[name] = status.detail;
      }
      $("status-detail").textContent = JSON.stringify(detail, null, 2);
    } catch (error) {
      showError(errorBox, error);
    }
  }

  function schedule() {
    clearTimeout(timer);
    if (!$("page-status").hidden && document.visibilityState === "visible") {
      timer = setTimeout(() => refresh().then(schedule), REFRESH_MS);
    }
  }

  $("status-refresh").addEventListener("click", refresh);
  document.addEventListener("visibilitychange", schedule);
  $("dashboard-link").href = `${location.protocol}//${location.hostname}:8265/`;

  return {
    shown() {
      refresh().then(schedule);
    },
    configure(config) {
      if (config && config.dashboard_url) $("dashboard-link").href = config.dashboard_url;
    },
  };
}
