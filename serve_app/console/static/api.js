// Calls to this server's API. Every call carries the API key the user typed (kept in this
// tab's session storage, never in the page or a cookie) as `Authorization: Bearer <key>`.
// Errors become ApiError (the server's {"error": {"code", "message", ...}} shape, or the
// bare status when a body is not that shape) or NetworkError (no answer at all).

const KEY_ITEM = "commonAiServer.apiKey";

// The console lives at <route prefix>/ui/; the API at <route prefix>/.
export const apiBase = location.pathname.replace(/\/ui(\/.*)?$/, "");

export function apiUrl(path) {
  return apiBase + path;
}

export function getKey() {
  return sessionStorage.getItem(KEY_ITEM) || "";
}

export function setKey(key) {
  if (key) sessionStorage.setItem(KEY_ITEM, key);
  else sessionStorage.removeItem(KEY_ITEM);
}

function withKey(headers = {}) {
  const key = getKey();
  return key ? { ...headers, Authorization: `Bearer ${key}` } : { ...headers };
}

export class ApiError extends Error {
  constructor(status, statusText, body, retryAfter) {
    const error = body && typeof body === "object" ? body.error : null;
    const message = error && typeof error.message === "string" ? error.message : statusText;
    super(message || `HTTP ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.code = error && typeof error.code === "string" ? error.code : "";
    this.details = error && typeof error === "object" ? error : {};
    this.retryAfter = retryAfter || "";
  }
}

export class NetworkError extends Error {
  constructor(cause) {
    super("the server could not be reached");
    this.name = "NetworkError";
    this.cause = cause;
  }
}

function parseJson(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

async function errorFrom(response) {
  const text = await response.text().catch(() => "");
  return new ApiError(
    response.status,
    response.statusText,
    parseJson(text),
    response.headers.get("Retry-After"),
  );
}

/** fetch() with the key; resolves to the Response when 2xx (or a status in `also`), else
 * throws ApiError. */
export async function call(path, { method = "GET", json, form, signal, also = [] } = {}) {
  const init = { method, headers: withKey(), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  let response;
  try {
    response = await fetch(apiUrl(path), init);
  } catch (error) {
    if (error && error.name === "AbortError") throw error;
    throw new NetworkError(error);
  }
  if (!response.ok && !also.includes(response.status)) throw await errorFrom(response);
  return response;
}

export async function callJson(path, options) {
  const response = await call(path, options);
  return response.json();
}

/**
 * Every item of a listing route (`{items, next_cursor}`), page by page until `next_cursor` is
 * null or `max` items have come.
 */
export async function callAllItems(path, { pageSize = 200, max = 1000 } = {}) {
  const items = [];
  let cursor = null;
  do {
    const query = new URLSearchParams({ limit: String(Math.min(pageSize, max - items.length)) });
    if (cursor) query.set("cursor", cursor);
    const page = await callJson(`${path}?${query}`);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}

/**
 * POST a multipart form with upload progress (fetch() has none): onProgress(sentBytes,
 * totalBytes). Resolves to the parsed JSON answer; rejects with ApiError or NetworkError.
 */
export function uploadForm(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", apiUrl(path));
    for (const [name, value] of Object.entries(withKey())) xhr.setRequestHeader(name, value);
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded, event.total);
    });
    xhr.addEventListener("load", () => {
      const body = parseJson(xhr.responseText);
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else
        reject(
          new ApiError(xhr.status, xhr.statusText, body, xhr.getResponseHeader("Retry-After")),
        );
    });
    xhr.addEventListener("error", () => reject(new NetworkError(null)));
    xhr.addEventListener("abort", () => reject(new NetworkError(null)));
    xhr.send(form);
  });
}

/**
 * Where to show a stored file from: {url, owned}. The local store's files come with the key,
 * as an object URL the caller owns (and revokes); with R2/S3 the server answers the store's
 * own link (`redirect=false`), which the page's policy lets images and audio load from.
 */
export async function fileSource(path) {
  const response = await call(`${path}${path.includes("?") ? "&" : "?"}redirect=false`);
  const type = response.headers.get("Content-Type") || "";
  if (type.startsWith("application/json")) return { url: (await response.json()).url, owned: false };
  return { url: URL.createObjectURL(await response.blob()), owned: true };
}
