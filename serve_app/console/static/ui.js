// Small DOM helpers. Values from the server are only ever set as text, never as HTML.

import { ApiError, NetworkError } from "./api.js";

export const $ = (id) => document.getElementById(id);

/** Create an element with text or children: el("li", {class: "x"}, "text", child). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** Fill a <dl> with [term, value] pairs (values as text or nodes). */
export function facts(dl, pairs) {
  dl.replaceChildren();
  for (const [term, value] of pairs) {
    if (value === undefined || value === null || value === "") continue;
    dl.append(el("dt", {}, term), el("dd", {}, value));
  }
}

const HINTS = {
  400: "The request was malformed.",
  401: "This server needs an API key: enter a valid one in the API key field at the top.",
  403: "The API key is valid, but its scope does not allow this (module, project, voice, or read-only access).",
  404: "Not found: check the project, image or voice id.",
  405: "This server does not allow that method here.",
  409: "It changed meanwhile (or is full): reload and try again.",
  413: "Too large for this server's limits.",
  415: "Not a file type this server accepts, or the file is damaged.",
  422: "Some values are not accepted.",
  429: "Too many requests for this API key.",
  500: "The server failed unexpectedly; its logs have the details.",
  503: "Not available right now: the module is disabled, its model is loading or failing, storage is down, or the queue is full.",
};

/** Show an error (ApiError, NetworkError or any Error) in a role=alert element. */
export function showError(box, error) {
  console.error(error);
  box.replaceChildren();
  box.hidden = false;
  if (error instanceof ApiError) {
    const code = error.code ? ` ${error.code}` : "";
    box.append(el("strong", {}, `Error ${error.status}${code}: `), error.message);
    const hint = HINTS[error.status];
    if (hint) box.append(el("div", { class: "hint" }, hint));
    const fields = Array.isArray(error.details.fields) ? error.details.fields : [];
    if (fields.length) {
      box.append(
        el("ul", {}, ...fields.map((f) => el("li", {}, `${f.field || "body"}: ${f.message || ""}`))),
      );
    }
    for (const name of ["limit", "allowed", "estimated", "scope", "setting", "max_bytes"]) {
      if (name in error.details) box.append(el("div", { class: "detail" }, `${name}: ${JSON.stringify(error.details[name])}`));
    }
    if (error.retryAfter) box.append(el("div", { class: "hint" }, `Retry after ${error.retryAfter} s.`));
  } else if (error instanceof NetworkError) {
    box.append(
      el("strong", {}, "Network error: "),
      "the server could not be reached (is it running, and is this machine online?).",
    );
  } else {
    box.append(el("strong", {}, "Error: "), error && error.message ? error.message : String(error));
  }
}

export function clearError(box) {
  box.hidden = true;
  box.replaceChildren();
}

/** Run an async action with a button disabled and an optional "working…" marker. */
export async function busy(buttons, marker, action) {
  for (const button of buttons) button.disabled = true;
  if (marker) marker.hidden = false;
  try {
    return await action();
  } finally {
    for (const button of buttons) button.disabled = false;
    if (marker) marker.hidden = true;
  }
}

export function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

export function formatBytes(bytes) {
  if (bytes >= 1024 * 1024) return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
  if (bytes >= 1024) return `${(bytes / 1024).toFixed(0)} KiB`;
  return `${bytes} B`;
}

/** A number input's value, or undefined when empty. */
export function numberOrUndefined(input) {
  return input.value === "" ? undefined : Number(input.value);
}

/** A list kept in this browser (projects, voices): localStorage, newest first, unique. */
export class RememberedList {
  constructor(item, max = 50) {
    this.item = item;
    this.max = max;
  }

  all() {
    try {
      const value = JSON.parse(localStorage.getItem(this.item) || "[]");
      return Array.isArray(value) ? value.filter((v) => typeof v === "string") : [];
    } catch {
      return [];
    }
  }

  add(name) {
    const names = [name, ...this.all().filter((n) => n !== name)].slice(0, this.max);
    localStorage.setItem(this.item, JSON.stringify(names));
  }

  remove(name) {
    localStorage.setItem(this.item, JSON.stringify(this.all().filter((n) => n !== name)));
  }
}

/** A stored result's link: an absolute URL (R2, public base) opens as it is; this server's
 * own /v1/storage/... needs the key, so it is shown as the key (the page fetches it). */
export function storedLink(url, key) {
  if (/^https?:\/\//.test(url)) {
    return el("a", { href: url, target: "_blank", rel: "noopener noreferrer" }, key);
  }
  return el("code", {}, key);
}
