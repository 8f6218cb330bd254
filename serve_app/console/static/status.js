// Status page: GET /healthz and /readyz (each module's state, its Serve deployments and
// the reason when it is not ready; 503 is an answer here, not an error), the queues and
// response counters of GET /v1/console/traffic (rates from two reads), and the link to the
// Ray dashboard (CONSOLE_DASHBOARD_URL, else this host on port 8265).

import { call, callJson } from "./api.js";
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

function cells(tag, ...values) {
  return values.map((value) => el(tag, {}, value));
}

export function setupStatus() {
  let timer = null;
  let previous = null; // the last traffic read: counts by route and status, and its time
  const errorBox = $("status-error");

  function showTraffic(traffic) {
    const deployments = $("traffic-deployments").tBodies[0];
    const routes = $("traffic-routes").tBodies[0];
    if (!traffic.available) {
      $("traffic-note").textContent = `Traffic is not available: ${traffic.reason}.`;
      deployments.replaceChildren();
      routes.replaceChildren();
      return;
    }
    $("traffic-note").textContent =
      `From Ray's metrics export of ${traffic.nodes} node(s); rates are the change between two reads.`;
    deployments.replaceChildren(
      ...Object.entries(traffic.deployments).map(([name, d]) =>
        el("tr", { "data-deployment": name }, ...cells("td", name, d.queued, d.processing)),
      ),
    );
    const counts = new Map(traffic.requests.map((r) => [`${r.method} ${r.route} ${r.status}`, r.count]));
    const seconds = previous ? traffic.read_at - previous.at : 0;
    routes.replaceChildren(
      ...traffic.requests.map((r) => {
        const key = `${r.method} ${r.route} ${r.status}`;
        const before = previous?.counts.get(key);
        const rate = seconds > 0 && before !== undefined ? ((r.count - before) / seconds).toFixed(2) : "…";
        return el("tr", { "data-route": r.route }, ...cells("td", `${r.method} ${r.route}`, r.status, r.count, rate));
      }),
    );
    previous = { counts, at: traffic.read_at };
    const rejected = Object.entries(traffic.rejections).map(([call, n]) => `${call}: ${n}`);
    $("traffic-rejections").textContent = rejected.length
      ? `Refused because a model's queue was full: ${rejected.join(", ")}`
      : "";
  }

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
      showTraffic(await callJson("/v1/console/traffic"));
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
