// Search page: /v1/projects/{project_id}/images[...]: batch upload with progress, list,
// text search, search by image, similar images, duplicates and delete.

import { call, callAllItems, callJson, fileSource, uploadForm } from "./api.js";
import { $, RememberedList, clearError, el, formatBytes, plural, showError } from "./ui.js";

const projects = new RememberedList("commonAiServer.projects");
const FALLBACK_BATCH_FILES = 8; // until the server's IMAGE_SEARCH_MAX_BATCH_FILES is known
const MULTIPART_OVERHEAD = 1024; // per file: boundary and part headers, generously

export function setupSearch() {
  let limits = null;
  let objectUrls = [];
  let more = null; // the action that loads the next page, if any
  const errorBox = $("search-error");
  const results = $("search-results");

  const project = () => $("project-id").value.trim();
  const base = () => `/v1/projects/${encodeURIComponent(project())}/images`;

  function needProject() {
    if ($("project-id").reportValidity()) return true;
    $("project-id").focus();
    return false;
  }

  let serverProjects = new Map(); // project id -> image count, from GET /v1/projects

  /** The projects this key may see on the server (up to 1,000), then the list again. */
  async function loadProjects() {
    try {
      const items = await callAllItems("/v1/projects");
      serverProjects = new Map(items.map((item) => [item.project_id, item.images]));
    } catch {
      serverProjects = new Map(); // no key yet, or the module is off: the remembered ones
    }
    showProjects();
  }

  /** The choices for the project field: the ones used here first, then the server's. */
  function showProjects() {
    const names = [...new Set([...projects.all(), ...serverProjects.keys()])];
    const option = (name) =>
      serverProjects.has(name)
        ? el("option", { value: name, label: plural(serverProjects.get(name), "image") })
        : el("option", { value: name });
    $("project-list").replaceChildren(...names.map(option));
  }

  function clearResults() {
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls = [];
    results.replaceChildren();
    $("search-more").hidden = true;
    more = null;
  }

  function card(item, label) {
    const image = el("img", { alt: item.filename, loading: "lazy" });
    fileSource(item.file_url)
      .then(({ url, owned }) => {
        if (owned) objectUrls.push(url);
        image.addEventListener(
          "error",
          () => image.replaceWith(el("div", { class: "no-preview" }, "no preview")),
          { once: true },
        );
        image.src = url;
      })
      .catch(() => image.replaceWith(el("div", { class: "no-preview" }, "no preview")));
    const similar = el("button", { type: "button", class: "similar" }, "Similar");
    const remove = el("button", { type: "button", class: "delete" }, "Delete");
    const node = el(
      "figure",
      { class: "card", "data-id": item.id },
      image,
      el(
        "figcaption",
        {},
        el("span", { class: "filename", title: item.filename }, item.filename),
        typeof item.score === "number" ? el("span", { class: "score" }, item.score.toFixed(3)) : null,
        label ? el("span", { class: "muted" }, label) : null,
        el("span", { class: "muted" }, `${item.width}×${item.height}`),
        el("span", { class: "actions" }, similar, remove),
      ),
    );
    similar.addEventListener("click", () =>
      run(async () => {
        const answer = await callJson(`${base()}/${encodeURIComponent(item.id)}/similar?limit=${limit()}`);
        show(answer.results, `${answer.results.length} images similar to ${item.filename}`);
      }),
    );
    remove.addEventListener("click", () => {
      if (!remove.classList.contains("confirm")) {
        remove.classList.add("confirm");
        remove.textContent = "Confirm delete";
        return;
      }
      run(async () => {
        await call(`${base()}/${encodeURIComponent(item.id)}`, { method: "DELETE" });
        node.remove();
        $("search-summary").textContent = `Deleted ${item.filename}.`;
      });
    });
    return node;
  }

  function show(items, summary, nextPage = null) {
    clearResults();
    results.append(...items.map((item) => card(item)));
    $("search-summary").textContent = summary;
    more = nextPage;
    $("search-more").hidden = nextPage === null;
  }

  function limit() {
    const value = Number($("search-limit").value);
    return Number.isInteger(value) && value >= 1 ? value : 12;
  }

  async function run(action) {
    clearError(errorBox);
    if (!needProject()) return;
    try {
      await action();
    } catch (error) {
      showError(errorBox, error);
    }
  }

  async function listImages(cursor = null) {
    const query = new URLSearchParams({ limit: String(limit()) });
    if (cursor) query.set("cursor", cursor);
    const page = await callJson(`${base()}?${query}`);
    projects.add(project());
    showProjects();
    show(page.items, `${page.total} images in ${project()}, newest first`, page.next_cursor
      ? () => listImages(page.next_cursor)
      : null);
  }

  async function search(cursor = null) {
    const body = { query: $("search-query").value, limit: limit() };
    if (cursor) body.cursor = cursor;
    const answer = await callJson(`${base()}/search`, { method: "POST", json: body });
    show(answer.results, `${answer.results.length} results for “${body.query}”`, answer.next_cursor
      ? () => search(answer.next_cursor)
      : null);
  }

  /** Split the files into batches within the server's file count and body size. */
  function batches(files) {
    const maxFiles = limits ? limits.max_batch_files : FALLBACK_BATCH_FILES;
    const maxBytes = limits ? limits.max_upload_bytes : Infinity;
    const out = [];
    let current = [];
    let bytes = 0;
    for (const file of files) {
      const size = file.size + MULTIPART_OVERHEAD;
      if (current.length && (current.length >= maxFiles || bytes + size > maxBytes)) {
        out.push(current);
        current = [];
        bytes = 0;
      }
      current.push(file);
      bytes += size;
    }
    if (current.length) out.push(current);
    return out;
  }

  async function upload(fileList) {
    const files = [...fileList];
    clearError($("upload-error"));
    if (!files.length || !needProject()) return;
    // The server would answer 413 for these, but possibly while the browser is still
    // sending (which a browser may report as a broken connection): say it before sending.
    const tooBig = limits ? files.filter((file) => file.size > limits.max_bytes) : [];
    if (tooBig.length) {
      const names = tooBig.map((file) => `${file.name} (${formatBytes(file.size)})`).join(", ");
      showError(
        $("upload-error"),
        new Error(`over this server's ${formatBytes(limits.max_bytes)} per image (IMAGE_SEARCH_MAX_BYTES), nothing was sent: ${names}`),
      );
      return;
    }
    const progress = $("upload-progress");
    const status = $("upload-status");
    const total = files.reduce((sum, file) => sum + file.size, 0) || 1;
    let done = 0;
    let created = 0;
    let duplicates = 0;
    progress.hidden = false;
    progress.value = 0;
    const groups = batches(files);
    try {
      for (const [index, group] of groups.entries()) {
        const groupBytes = group.reduce((sum, file) => sum + file.size, 0);
        status.textContent = `Uploading batch ${index + 1} of ${groups.length} (${plural(group.length, "file")}, ${formatBytes(groupBytes)})…`;
        const form = new FormData();
        for (const file of group) form.append("files", file, file.name);
        let answer;
        try {
          answer = await uploadForm(`${base()}/batch`, form, (sent, size) => {
            progress.value = (done + (groupBytes * sent) / size) / total;
          });
        } catch (error) {
          error.message = `${error.message} (batch ${index + 1}: ${group.map((f) => f.name).join(", ")})`;
          throw error;
        }
        done += groupBytes;
        progress.value = done / total;
        created += answer.created;
        duplicates += answer.duplicates;
      }
      status.textContent = `Uploaded ${plural(files.length, "file")}: ${created} new, ${duplicates} already there.`;
      projects.add(project());
      await loadProjects();
      await listImages();
    } catch (error) {
      status.textContent = `Stopped: ${created} new, ${duplicates} already there before the error.`;
      progress.hidden = true;
      showError($("upload-error"), error);
    }
  }

  $("project-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run(() => listImages());
  });
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run(() => search());
  });
  $("search-image-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = $("search-image-file").files[0];
    if (!file) return;
    run(async () => {
      const form = new FormData();
      form.append("file", file, file.name);
      const answer = await callJson(`${base()}/search/by-image?limit=${limit()}`, { method: "POST", form });
      show(answer.results, `${answer.results.length} images like ${file.name}`);
    });
  });
  $("search-list").addEventListener("click", () => run(() => listImages()));
  $("search-duplicates").addEventListener("click", () =>
    run(async () => {
      const answer = await callJson(`${base()}/duplicates?limit=20`);
      clearResults();
      for (const [index, group] of answer.groups.entries()) {
        results.append(el("h4", { class: "group" }, `Group ${index + 1}: ${group.size} images`));
        results.append(...group.images.map((item) => card(item)));
      }
      $("search-summary").textContent =
        `${answer.total_groups} groups of near-duplicates (cosine ≥ ${answer.threshold}) among ${answer.scanned} images`;
    }),
  );
  $("search-more").addEventListener("click", () => {
    if (more) run(more);
  });
  $("upload-files").addEventListener("change", (event) => {
    const files = [...event.target.files];
    event.target.value = ""; // the same files may be chosen again
    upload(files);
  });

  const zone = $("drop-zone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    upload(event.dataTransfer.files);
  });
  showProjects();

  return {
    configure(config) {
      limits = config ? { ...config.image_search, max_upload_bytes: config.max_upload_bytes } : null;
      $("upload-note").textContent = limits
        ? `JPEG, PNG, WEBP or GIF, up to ${formatBytes(limits.max_bytes)} each; sent ${limits.max_batch_files} per request.`
        : "";
      $("search-limit").max = limits ? limits.search_limit_max : 100;
      if (config?.modules.image_search) loadProjects();
    },
  };
}
