// Images page: POST /v1/images/generate (the PNG; seed, prompt and timings in its headers)
// and POST /v1/r2/images/generate (the same request and seed, stored; JSON answer).

import { call, callJson } from "./api.js";
import {
  $,
  busy,
  clearError,
  facts,
  formatBytes,
  numberOrUndefined,
  showError,
  storedLink,
} from "./ui.js";

/** Server-Timing: "prompt;dur=812.4, generate;dur=95.1" -> [["prompt", 812.4], ...] */
function serverTimings(header) {
  if (!header) return [];
  return header.split(",").flatMap((part) => {
    const [name, ...params] = part.trim().split(";");
    const duration = params.map((p) => p.trim()).find((p) => p.startsWith("dur="));
    return duration ? [[name.trim(), Number(duration.slice(4))]] : [];
  });
}

function timingText(pairs) {
  return pairs.map(([name, ms]) => `${name} ${ms.toFixed(0)} ms`).join(" · ");
}

export function setupImages() {
  const form = $("image-form");
  const generate = $("image-generate");
  const store = $("image-store");
  const errorBox = $("image-error");
  let lastRequest = null;
  let lastUrl = null;

  function requestBody() {
    const body = {
      title: $("image-title").value,
      description: $("image-description").value,
      width: numberOrUndefined($("image-width")),
      height: numberOrUndefined($("image-height")),
      steps: numberOrUndefined($("image-steps")),
      guidance_scale: numberOrUndefined($("image-guidance")),
      seed: numberOrUndefined($("image-seed")),
      negative_prompt: $("image-negative").value || undefined,
    };
    return Object.fromEntries(Object.entries(body).filter(([, v]) => v !== undefined));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearError(errorBox);
    busy([generate, store], $("image-busy"), async () => {
      try {
        const body = requestBody();
        const response = await call("/v1/images/generate", { method: "POST", json: body });
        const blob = await response.blob();
        if (lastUrl) URL.revokeObjectURL(lastUrl);
        lastUrl = URL.createObjectURL(blob);
        const image = $("image-output");
        image.src = lastUrl;
        const seed = response.headers.get("X-Image-Seed");
        const prompt = response.headers.get("X-Image-Prompt");
        lastRequest = { ...body, seed: seed === null ? body.seed : Number(seed) };
        facts($("image-facts"), [
          ["Prompt", prompt === null ? "" : decodeURIComponent(prompt)],
          ["Prompt by", response.headers.get("X-Prompt-Source")],
          ["Seed", seed],
          ["Size", `${body.width ?? "default"} × ${body.height ?? "default"}, ${formatBytes(blob.size)}`],
          ["Timings", timingText(serverTimings(response.headers.get("Server-Timing")))],
        ]);
        $("image-result").hidden = false;
        $("image-stored").hidden = true;
      } catch (error) {
        showError(errorBox, error);
      }
    }).then(() => {
      store.disabled = lastRequest === null;
    });
  });

  store.addEventListener("click", () => {
    if (!lastRequest) return;
    clearError(errorBox);
    busy([generate, store], $("image-busy"), async () => {
      try {
        const answer = await callJson("/v1/r2/images/generate", {
          method: "POST",
          json: lastRequest,
        });
        facts($("image-stored-facts"), [
          ["Key", storedLink(answer.url, answer.key)],
          ["Storage", answer.storage],
          ["Bytes", formatBytes(answer.bytes)],
          ["Prompt", answer.prompt],
          ["Seed", answer.seed],
          ["Timings", timingText(Object.entries(answer.timings).filter(([, v]) => v !== null).map(([k, v]) => [k.replace(/_ms$/, ""), v]))],
        ]);
        $("image-stored").hidden = false;
      } catch (error) {
        showError(errorBox, error);
      }
    });
  });

  return {
    configure(config) {
      const note = $("image-module-note");
      if (!config) {
        note.textContent = "The server's limits are not known yet (an API key may be needed).";
        return;
      }
      const limits = config.image;
      for (const id of ["image-width", "image-height"]) {
        const input = $(id);
        Object.assign(input, { min: limits.side_min, max: limits.side_max, step: limits.side_multiple });
      }
      if (!$("image-width").value) $("image-width").value = limits.default_width;
      if (!$("image-height").value) $("image-height").value = limits.default_height;
      if (!$("image-steps").value) $("image-steps").value = limits.default_steps;
      if (!$("image-guidance").value) $("image-guidance").value = limits.default_guidance_scale;
      $("image-steps").max = limits.steps_max;
      $("image-guidance").max = limits.guidance_max;
      $("image-size-note").textContent =
        `multiples of ${limits.side_multiple}, at most ${limits.max_pixels.toLocaleString()} pixels`;
      note.textContent = config.modules.image
        ? ""
        : "The image module is disabled on this server (IMAGE_ENABLED=0).";
    },
  };
}
