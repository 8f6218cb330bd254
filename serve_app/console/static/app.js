// The console's entry point: the API key field, the tabs, and the server's limits
// (GET /v1/console/config) that each page builds its form ranges from.

import { callJson, getKey, setKey } from "./api.js";
import { setupImages } from "./images.js";
import { setupSearch } from "./search.js";
import { setupStatus } from "./status.js";
import { $, clearError, showError } from "./ui.js";
import { setupVoices } from "./voices.js";

const pages = {};
let config = null;

function showKeyState() {
  $("key-state").textContent = getKey() ? "key set for this tab" : "no key";
}

function selectPage(name) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const selected = tab.dataset.page === name;
    tab.setAttribute("aria-selected", String(selected));
    $(`page-${tab.dataset.page}`).hidden = !selected;
  }
  if (location.hash !== `#${name}`) history.replaceState(null, "", `#${name}`);
  pages[name]?.shown?.();
}

async function loadConfig() {
  const box = $("config-error");
  try {
    config = await callJson("/v1/console/config");
    clearError(box);
  } catch (error) {
    config = null;
    showError(box, error);
  }
  for (const page of Object.values(pages)) page.configure?.(config);
  document.body.dataset.ready = config ? "config" : "no-config";
}

function setup() {
  $("api-key").value = getKey();
  showKeyState();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    setKey($("api-key").value.trim());
    showKeyState();
    loadConfig();
  });
  $("key-forget").addEventListener("click", () => {
    setKey("");
    $("api-key").value = "";
    showKeyState();
    loadConfig();
  });
  pages.images = setupImages();
  pages.search = setupSearch();
  pages.voices = setupVoices();
  pages.status = setupStatus();
  for (const tab of document.querySelectorAll("[role=tab]")) {
    tab.addEventListener("click", () => selectPage(tab.dataset.page));
  }
  const first = location.hash.slice(1);
  selectPage(first in pages ? first : "images");
  loadConfig();
}

setup();
