// Voices page: a reference from a file or recorded here (MediaRecorder), saved with
// PUT /v1/voices/{id}; speech from a saved voice (POST /v1/audio/speech), from the
// reference directly (POST /v1/voice/generate), or stored (POST /v1/r2/voice/generate).

import { call, callAllItems, callJson } from "./api.js";
import {
  $,
  RememberedList,
  busy,
  clearError,
  el,
  facts,
  formatBytes,
  numberOrUndefined,
  showError,
  storedLink,
} from "./ui.js";

// The voices saved from this browser, remembered here; the server's come from GET /v1/voices.
const voices = new RememberedList("commonAiServer.voices");

export function setupVoices() {
  let recorded = null; // {blob, name} of the last recording
  let recorder = null;
  let audioUrl = null;
  let referenceUrl = null;
  let maxRefBytes = null;
  const errorBox = $("voice-error");
  const saveErrorBox = $("voice-save-error");
  const buttons = [$("voice-speak"), $("voice-store")];

  /** The reference to send: the chosen file, else the recording. Refused here when over
   * VOICE_MAX_REF_BYTES (the server's 413 could come while the browser still sends). */
  function reference() {
    const file = $("voice-file").files[0];
    const ref = file ? { blob: file, name: file.name } : recorded;
    if (ref && maxRefBytes && ref.blob.size > maxRefBytes) {
      throw new Error(
        `the reference is ${formatBytes(ref.blob.size)}, over this server's ${formatBytes(maxRefBytes)} (VOICE_MAX_REF_BYTES)`,
      );
    }
    return ref;
  }

  function showReference(blob) {
    if (referenceUrl) URL.revokeObjectURL(referenceUrl);
    referenceUrl = URL.createObjectURL(blob);
    const player = $("voice-reference-audio");
    player.src = referenceUrl;
    player.hidden = false;
  }

  let serverVoices = []; // the ids GET /v1/voices answered (up to 1,000)

  /** The voices this key may use on the server, then the lists again. */
  async function loadVoices() {
    try {
      serverVoices = (await callAllItems("/v1/voices")).map((item) => item.voice_id);
    } catch {
      serverVoices = []; // no key yet, or the module is off: the remembered ones
    }
    showVoices();
  }

  function showVoices() {
    const select = $("voice-select");
    const chosen = select.value;
    const names = [...new Set([...voices.all(), ...serverVoices])];
    select.replaceChildren(
      el("option", { value: "" }, "the reference file or recording (not saved)"),
      ...names.map((name) => el("option", { value: name }, name)),
    );
    if (names.includes(chosen)) select.value = chosen;
    $("voice-list").replaceChildren(...names.map(voiceItem));
  }

  function voiceItem(name) {
    const info = el("span", { class: "muted" });
    const use = el("button", { type: "button" }, "Use");
    const details = el("button", { type: "button" }, "Details");
    const remove = el("button", { type: "button", class: "delete" }, "Delete");
    use.addEventListener("click", () => {
      $("voice-select").value = name;
    });
    details.addEventListener("click", async () => {
      clearError(saveErrorBox);
      try {
        const voice = await callJson(`/v1/voices/${encodeURIComponent(name)}`);
        const seconds = voice.duration_s ? `${voice.duration_s.toFixed(1)} s, ` : "";
        info.textContent = `${seconds}${formatBytes(voice.bytes)}${voice.transcript ? `, “${voice.transcript}”` : ", no transcript"}`;
      } catch (error) {
        showError(saveErrorBox, error);
      }
    });
    remove.addEventListener("click", async () => {
      if (!remove.classList.contains("confirm")) {
        remove.classList.add("confirm");
        remove.textContent = "Confirm delete";
        return;
      }
      clearError(saveErrorBox);
      try {
        await call(`/v1/voices/${encodeURIComponent(name)}`, { method: "DELETE" });
        voices.remove(name);
        serverVoices = serverVoices.filter((voice) => voice !== name);
      } catch (error) {
        if (error.status === 404) voices.remove(name); // gone already: forget it here too
        showError(saveErrorBox, error);
      }
      showVoices();
    });
    return el("li", { "data-voice": name }, el("strong", {}, name), " ", use, details, remove, " ", info);
  }

  async function startRecording() {
    clearError(saveErrorBox);
    if (!navigator.mediaDevices || !window.MediaRecorder) {
      showError(saveErrorBox, new Error("this browser cannot record here (recording needs https or localhost)"));
      return;
    }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const chunks = [];
      recorder = new MediaRecorder(stream);
      recorder.addEventListener("dataavailable", (event) => chunks.push(event.data));
      recorder.addEventListener("stop", () => {
        for (const track of stream.getTracks()) track.stop();
        const type = recorder.mimeType || "audio/webm";
        const extension = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
        recorded = { blob: new Blob(chunks, { type }), name: `recording.${extension}` };
        $("voice-file").value = "";
        showReference(recorded.blob);
        $("voice-record-state").textContent = `recorded ${formatBytes(recorded.blob.size)}`;
        $("voice-record").disabled = false;
        $("voice-stop").disabled = true;
      });
      recorder.start();
      $("voice-record-state").textContent = "recording…";
      $("voice-record").disabled = true;
      $("voice-stop").disabled = false;
    } catch (error) {
      showError(saveErrorBox, new Error(`cannot record: ${error.message}`));
    }
  }

  $("voice-record").addEventListener("click", startRecording);
  $("voice-stop").addEventListener("click", () => recorder && recorder.state !== "inactive" && recorder.stop());
  $("voice-file").addEventListener("change", () => {
    const file = $("voice-file").files[0];
    if (file) showReference(file);
  });

  $("voice-save-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError(saveErrorBox);
    let ref;
    try {
      ref = reference();
      if (!ref) throw new Error("choose an audio file or record a reference first");
    } catch (error) {
      showError(saveErrorBox, error);
      return;
    }
    const name = $("voice-id").value.trim();
    const form = new FormData();
    form.append("audio", ref.blob, ref.name);
    const transcript = $("voice-transcript").value.trim();
    if (transcript) form.append("transcript", transcript);
    await busy([$("voice-save")], null, async () => {
      try {
        const voice = await callJson(`/v1/voices/${encodeURIComponent(name)}`, { method: "PUT", form });
        voices.add(voice.voice_id);
        showVoices();
        $("voice-select").value = voice.voice_id;
      } catch (error) {
        showError(saveErrorBox, error);
      }
    });
  });

  function options() {
    const out = {
      speed: numberOrUndefined($("voice-speed")),
      seed: numberOrUndefined($("voice-seed")),
      nfe_steps: numberOrUndefined($("voice-steps")),
    };
    return Object.fromEntries(Object.entries(out).filter(([, v]) => v !== undefined));
  }

  /** Play a Blob (fetched with the key) or a URL (the object store's own link). */
  function play(source, pairs) {
    const player = $("voice-audio");
    if (source) {
      if (audioUrl) URL.revokeObjectURL(audioUrl);
      audioUrl = typeof source === "string" ? null : URL.createObjectURL(source);
      player.src = audioUrl ?? source;
      // The duration as the browser decodes it (the speech route sends no duration header).
      player.addEventListener(
        "loadedmetadata",
        () => {
          if (!pairs.some(([term]) => term === "Duration") && Number.isFinite(player.duration)) {
            facts($("voice-facts"), [...pairs, ["Duration", `${player.duration.toFixed(2)} s`]]);
          }
        },
        { once: true },
      );
    }
    facts($("voice-facts"), pairs);
    $("voice-result").hidden = false;
  }

  $("voice-speak-form").addEventListener("submit", (event) => {
    event.preventDefault();
    clearError(errorBox);
    const voice = $("voice-select").value;
    const text = $("voice-text").value;
    const format = $("voice-format").value;
    busy(buttons, $("voice-busy"), async () => {
      try {
        let response;
        if (voice) {
          response = await call("/v1/audio/speech", {
            method: "POST",
            json: { model: "f5-tts", voice, input: text, response_format: format, ...options() },
          });
        } else {
          const ref = reference();
          if (!ref) throw new Error("choose a saved voice, an audio file, or record a reference");
          const form = new FormData();
          form.append("ref_audio", ref.blob, ref.name);
          form.append("text", text);
          form.append("format", format);
          const transcript = $("voice-transcript").value.trim();
          if (transcript) form.append("ref_text", transcript);
          for (const [name, value] of Object.entries(options())) form.append(name, String(value));
          response = await call("/v1/voice/generate", { method: "POST", form });
        }
        const blob = await response.blob();
        const duration = response.headers.get("X-Audio-Duration");
        play(blob, [
          ["Voice", voice || "the reference above"],
          ...(duration ? [["Duration", `${Number(duration).toFixed(2)} s`]] : []),
          ["Seed", response.headers.get("X-Seed")],
          ["Transcript from", response.headers.get("X-Ref-Text-Source")],
          ["Size", formatBytes(blob.size)],
        ]);
      } catch (error) {
        showError(errorBox, error);
      }
    });
  });

  $("voice-store").addEventListener("click", () => {
    clearError(errorBox);
    const voice = $("voice-select").value;
    if (!voice) {
      showError(errorBox, new Error("storing needs a saved voice: save the reference first, then choose it"));
      return;
    }
    busy(buttons, $("voice-busy"), async () => {
      try {
        const answer = await callJson("/v1/r2/voice/generate", {
          method: "POST",
          json: { user_id: voice, text: $("voice-text").value, format: $("voice-format").value, ...options() },
        });
        const pairs = [
          ["Stored", storedLink(answer.url, answer.key)],
          ["Duration", `${answer.duration_s.toFixed(2)} s`],
          ["Seed", answer.seed],
          ["Transcript", `${answer.ref_text} (${answer.ref_text_source})`],
        ];
        // This server's own link (the local store) needs the key: fetch it and play it.
        // A presigned or public URL (R2) plays from the store, which the page's policy allows.
        if (answer.url.startsWith("/")) play(await (await call(answer.url)).blob(), pairs);
        else play(answer.url, pairs);
      } catch (error) {
        showError(errorBox, error);
      }
    });
  });

  showVoices();
  return {
    configure(config) {
      if (!config) return;
      const limits = config.voice;
      maxRefBytes = limits.max_ref_bytes;
      Object.assign($("voice-speed"), { min: limits.speed_min, max: limits.speed_max });
      Object.assign($("voice-steps"), { max: limits.nfe_steps_max, placeholder: `default ${limits.default_nfe_steps}` });
      $("voice-text").maxLength = limits.max_text_chars;
      if (config.modules.voice) loadVoices();
    },
  };
}
