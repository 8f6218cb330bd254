"""The web console at /ui driven in a real browser: Debian's chromium through its
chromedriver (selenium, headless; nothing downloads a browser or a driver), against one
Serve app with every module on the tiny models, the local store and an API key.

Each page is walked as a person would: an image generated and shown, files dropped and
uploaded with a progress bar and found by a search, a voice saved and synthesized into a
playable <audio>, the status table, and the errors a page shows (401 without a key, 415 for
a text file uploaded as an image). A full-page screenshot of each is written under
`test-artifacts/console/` (git-ignored; docs/console.md shows copies of them).
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from PIL import Image
from ray import serve

from serve_app.app import build_app
from serve_app.audio import encode_audio
from tests.integration.conftest import (
    CLIP_ID,
    SearchApp,
    VoiceApp,
    voice_settings,
    wait_until_ready,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"
KEY = "console-browser-key-0123456789"
APP_NAME, PREFIX = "console", "/console"
# Not the tiny models' usual 64x64: the form must take its defaults from the server.
DEFAULT_WIDTH, DEFAULT_HEIGHT = 96, 80
WAIT_S = 240  # a model call on a loaded two-core machine, with room to spare

pytestmark = pytest.mark.timeout(900)


@dataclass(frozen=True)
class ConsoleApp:
    url: str  # the app's root (its route prefix)
    storage: Path

    @property
    def page(self) -> str:
        return f"{self.url}/ui/"

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {KEY}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def console_app(
    serve_url: str, tiny_models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsoleApp]:
    """Every module, tiny models, local store, API keys; removed after this module."""
    storage = tmp_path_factory.mktemp("console-storage")
    models = tiny_models_dir
    settings = {
        "IMAGE_ENABLED": True,
        "IMAGE_SEARCH_ENABLED": True,
        "VOICE_ENABLED": True,
        "R2_ENABLED": False,
        "LOCAL_STORAGE_DIR": str(storage),
        "IMAGE_MODEL": str(models / "diffusion"),
        "IMAGE_DEVICE": "cpu",
        "IMAGE_NUM_CPUS": 0.01,  # the session Ray's CPUs are taken by the other apps
        "IMAGE_DEFAULT_WIDTH": DEFAULT_WIDTH,
        "IMAGE_DEFAULT_HEIGHT": DEFAULT_HEIGHT,
        "IMAGE_DEFAULT_STEPS": 2,
        "IMAGE_MAX_PIXELS": 256 * 256,
        "CLIP_MODEL": f"local-dir:{models / CLIP_ID}",
        "CLIP_DEVICE": "cpu",
        "CLIP_NUM_CPUS": 0.01,  # the session Ray's CPUs are taken by the other apps
        "IMAGE_SEARCH_DB_PATH": str(tmp_path_factory.mktemp("console-db") / "search.db"),
        "IMAGE_SEARCH_DB_BACKUP_ENABLED": False,
        "IMAGE_SEARCH_MAX_BYTES": 256 * 1024,
        "IMAGE_SEARCH_MAX_BATCH_FILES": 2,  # three files go in two requests
        **voice_settings(models),
        "VOICE_NUM_CPUS": 0.01,
        "TORCH_CPU_THREADS": 1,
        "API_KEYS": KEY,
    }
    serve.run(
        build_app({"env_files": [], "settings": settings}), name=APP_NAME, route_prefix=PREFIX
    )
    url = f"{serve_url}{PREFIX}"
    wait_until_ready(url)
    try:
        yield ConsoleApp(url=url, storage=storage)
    finally:
        serve.delete(APP_NAME)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Headless chromium from Debian's packages, driven through its own chromedriver."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (bin/setup installs them)")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never fetch anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--autoplay-policy=no-user-gesture-required",
        # getUserMedia answers with Chromium's fake microphone (a beep), no permission prompt
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


# --- helpers -------------------------------------------------------------------------------


def screenshot(driver: Any, name: str) -> Path:
    """A full-page PNG under test-artifacts/console/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    path = ARTIFACTS / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def by_id(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id)


def wait_for(
    driver: Any,
    condition: Callable[[Any], Any],
    error_box: str | None = None,
    timeout: float = WAIT_S,
) -> Any:
    """Wait for `condition`; fail at once with the page's error when `error_box` shows one.
    An element that went stale meanwhile (the page drew its table again between the lookup
    and the read) counts as not yet."""
    from selenium.common.exceptions import StaleElementReferenceException

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition(driver)
        except StaleElementReferenceException:
            value = None
        if value:
            return value
        if error_box is not None:
            box = by_id(driver, error_box)
            if box.is_displayed() and box.text:
                raise AssertionError(f"the page shows an error: {box.text}")
        time.sleep(0.2)
    logs = [entry["message"] for entry in driver.get_log("browser")][-10:]
    raise AssertionError(f"timed out after {timeout}s; browser log: {logs}")


def shown_error(driver: Any, box_id: str, timeout: float = WAIT_S) -> str:
    box = by_id(driver, box_id)
    wait_for(driver, lambda _: box.is_displayed() and box.text, timeout=timeout)
    return str(box.text)


def open_console(driver: Any, app: ConsoleApp, page: str, key: str | None = KEY) -> None:
    """Load the console on `page` in a fresh tab state, with `key` typed in (or none)."""
    driver.get(app.page)
    driver.execute_script("sessionStorage.clear(); localStorage.clear();")
    driver.get(f"{app.page}#{page}")
    driver.refresh()  # a new hash alone would not load the page again
    wait_for(driver, lambda d: d.execute_script("return document.body.dataset.ready"))
    if key is not None:
        field = by_id(driver, "api-key")
        field.clear()
        field.send_keys(key)
        by_id(driver, "key-use").click()
        wait_for(
            driver, lambda d: d.execute_script("return document.body.dataset.ready") == "config"
        )
    by_id(driver, f"tab-{page}").click()


def save_voice_in_page(
    driver: Any, reference: Path, voice: str, transcript: str = "hello there my friend"
) -> None:
    """Save a reference voice through the Voices page and wait until it is listed."""
    from selenium.webdriver.common.by import By

    by_id(driver, "voice-file").send_keys(str(reference))
    by_id(driver, "voice-transcript").send_keys(transcript)
    by_id(driver, "voice-id").send_keys(voice)
    by_id(driver, "voice-save").click()
    wait_for(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, f"#voice-list li[data-voice='{voice}']"),
        "voice-save-error",
    )


def wait_for_audio(driver: Any) -> Any:
    """The page's <audio> once it has loaded the speech's metadata (a duration)."""
    audio = by_id(driver, "voice-audio")
    wait_for(
        driver,
        lambda d: d.execute_script(
            "return arguments[0].readyState >= 1 && arguments[0].duration > 0", audio
        ),
        "voice-error",
    )
    return audio


def png_file(directory: Path, name: str, color: tuple[int, int, int]) -> Path:
    image = Image.new("RGB", (64, 48), color)
    for x in range(0, 64, 8):  # some structure, so that each image embeds differently
        for y in range(48):
            image.putpixel((x, y), tuple(255 - c for c in color))
    path = directory / name
    image.save(path)
    return path


def reference_wav(path: Path, seconds: float = 2.0) -> Path:
    """A voiced-sounding clip: a few harmonics with vibrato."""
    rate = 24_000
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(140 + 20 * np.sin(2 * np.pi * 3 * t)) / rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2
    data, _ = encode_audio(np.asarray(wave, dtype=np.float32), rate, "wav")
    path.write_bytes(data)
    return path


# --- the pages -----------------------------------------------------------------------------


def test_without_a_key_the_page_says_401(browser: Any, console_app: ConsoleApp) -> None:
    open_console(browser, console_app, "images", key=None)
    text = shown_error(browser, "config-error")
    assert "401" in text and "unauthorized" in text and "API key" in text
    # Without the server's limits the form is empty: a person fills it in.
    for field, value in (
        ("image-title", "no key"),
        ("image-width", "64"),
        ("image-height", "64"),
        ("image-steps", "1"),
        ("image-guidance", "0"),
    ):
        assert by_id(browser, field).get_attribute("value") == ""
        by_id(browser, field).send_keys(value)
    by_id(browser, "image-generate").click()
    text = shown_error(browser, "image-error")
    assert "Error 401 unauthorized" in text and "enter a valid one in the API key field" in text
    screenshot(browser, "no-key")


def test_images_page_generates_shows_and_stores(browser: Any, console_app: ConsoleApp) -> None:
    open_console(browser, console_app, "images")
    # The form's defaults and ranges are the server's settings.
    assert by_id(browser, "image-width").get_attribute("value") == str(DEFAULT_WIDTH)
    assert by_id(browser, "image-height").get_attribute("value") == str(DEFAULT_HEIGHT)
    assert by_id(browser, "image-width").get_attribute("step") == "8"
    by_id(browser, "image-title").send_keys("햄릿")
    by_id(browser, "image-description").send_keys("복수와 광기의 비극")
    by_id(browser, "image-seed").send_keys("7")
    by_id(browser, "image-generate").click()
    image = by_id(browser, "image-output")
    wait_for(
        browser,
        lambda d: d.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", image
        ),
        "image-error",
    )
    size = browser.execute_script(
        "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image
    )
    assert size == [DEFAULT_WIDTH, DEFAULT_HEIGHT]
    shown = by_id(browser, "image-facts").text
    assert "햄릿" in shown  # the prompt the optimizer (here its template) wrote
    assert "Seed\n7" in shown and "fallback" in shown
    assert "generate" in shown and "ms" in shown  # the timings from Server-Timing
    screenshot(browser, "images")

    by_id(browser, "image-store").click()
    stored = by_id(browser, "image-stored-facts")
    wait_for(
        browser, lambda _: stored.is_displayed() and "AI/POSTER/" in stored.text, "image-error"
    )
    key = next(line for line in stored.text.splitlines() if line.startswith("AI/POSTER/"))
    assert (console_app.storage / key).is_file()  # the same seed: the same image, stored
    assert "total" in stored.text


def test_search_page_uploads_finds_and_deletes(
    browser: Any, console_app: ConsoleApp, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    project = "console_demo"
    colors = {"red.png": (220, 30, 30), "green.png": (30, 200, 40), "blue.png": (20, 40, 230)}
    files = [png_file(tmp_path, name, color) for name, color in colors.items()]
    open_console(browser, console_app, "search")
    by_id(browser, "project-id").send_keys(project)
    # Three files in one choice: two requests of IMAGE_SEARCH_MAX_BATCH_FILES=2, one progress bar.
    by_id(browser, "upload-files").send_keys("\n".join(str(f) for f in files))
    status = by_id(browser, "upload-status")
    wait_for(browser, lambda _: status.text.startswith("Uploaded 3 files"), "upload-error")
    assert status.text == "Uploaded 3 files: 3 new, 0 already there."
    assert by_id(browser, "upload-progress").get_attribute("value") == "1"
    listed = console_app.api("GET", f"/v1/projects/{project}/images").json()
    assert sorted(item["filename"] for item in listed["items"]) == sorted(colors)

    # Dropped files take the same path: a drop event with a file made in the page.
    browser.execute_script(
        """
        const canvas = document.createElement("canvas");
        canvas.width = 40; canvas.height = 40;
        const context = canvas.getContext("2d");
        context.fillStyle = "#f0c020"; context.fillRect(0, 0, 40, 40);
        context.fillStyle = "#202020"; context.fillRect(10, 10, 20, 20);
        canvas.toBlob((blob) => {
          const transfer = new DataTransfer();
          transfer.items.add(new File([blob], "dropped.png", {type: "image/png"}));
          const zone = document.getElementById("drop-zone");
          const drop = {dataTransfer: transfer, bubbles: true, cancelable: true};
          zone.dispatchEvent(new DragEvent("drop", drop));
        }, "image/png");
        """
    )
    wait_for(browser, lambda _: status.text.startswith("Uploaded 1 file: 1 new"), "upload-error")
    # The project field offers the server's projects (GET /v1/projects) with their counts.
    offered = (
        "return document.querySelector(`#project-list option[value='${arguments[0]}']`)?.label"
    )
    wait_for(browser, lambda d: d.execute_script(offered, project) == "4 images", "upload-error")

    cards = lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results .card")  # noqa: E731
    by_id(browser, "search-query").send_keys("a red picture")
    by_id(browser, "search-run").click()
    summary = by_id(browser, "search-summary")
    wait_for(browser, lambda _: "results for" in summary.text, "search-error")
    found = {c.find_element(By.CLASS_NAME, "filename").text for c in cards(browser)}
    assert found == {*colors, "dropped.png"}  # every uploaded file found by the search
    scores = [
        float(s.text) for s in browser.find_elements(By.CSS_SELECTOR, "#search-results .score")
    ]
    assert len(scores) == 4 and scores == sorted(scores, reverse=True)
    wait_for(  # the thumbnails are fetched with the key
        browser,
        lambda d: all(
            d.execute_script("return arguments[0].naturalWidth", img) > 0
            for img in d.find_elements(By.CSS_SELECTOR, "#search-results .card img")
        ),
    )
    screenshot(browser, "search")

    # Search by image: an image is its own nearest neighbour.
    by_id(browser, "search-image-file").send_keys(str(files[2]))
    by_id(browser, "search-image-run").click()
    wait_for(browser, lambda _: "images like blue.png" in summary.text, "search-error")
    first = cards(browser)[0]
    assert first.find_element(By.CLASS_NAME, "filename").text == "blue.png"
    assert float(first.find_element(By.CLASS_NAME, "score").text) > 0.99

    # Similar images: the others, the image itself excluded.
    first.find_element(By.CLASS_NAME, "similar").click()
    wait_for(browser, lambda _: "similar to blue.png" in summary.text, "search-error")
    similar = {c.find_element(By.CLASS_NAME, "filename").text for c in cards(browser)}
    assert similar == {"red.png", "green.png", "dropped.png"}

    # Delete asks once more, then removes the image from the project.
    target = next(
        c for c in cards(browser) if c.find_element(By.CLASS_NAME, "filename").text == "red.png"
    )
    target.find_element(By.CLASS_NAME, "delete").click()
    assert target.find_element(By.CLASS_NAME, "delete").text == "Confirm delete"
    target.find_element(By.CLASS_NAME, "delete").click()
    wait_for(browser, lambda _: summary.text == "Deleted red.png.", "search-error")
    left = console_app.api("GET", f"/v1/projects/{project}/images").json()
    assert sorted(item["filename"] for item in left["items"]) == [
        "blue.png",
        "dropped.png",
        "green.png",
    ]


def test_with_r2_thumbnails_load_from_the_stores_links(
    browser: Any, search_app: SearchApp, tmp_path: Path
) -> None:
    """The search app stores in S3 (moto on loopback, as R2): a thumbnail's file route would
    redirect the keyed request to another origin, so the page asks for the store's link and
    shows the image from there, under a policy that names that origin."""
    from selenium.webdriver.common.by import By

    project = f"console_r2_{int(time.time() * 1000)}"
    colors = {"r2-red.png": (220, 30, 30), "r2-blue.png": (20, 40, 230)}
    files = [png_file(tmp_path, name, color) for name, color in colors.items()]
    upload = httpx.post(
        f"{search_app.url}/v1/projects/{project}/images/batch",
        files=[("files", (f.name, f.read_bytes(), "image/png")) for f in files],
        timeout=120,
    )
    assert upload.status_code == 201, upload.text
    open_console(browser, ConsoleApp(url=search_app.url, storage=tmp_path), "search", key=None)
    by_id(browser, "project-id").send_keys(project)
    by_id(browser, "search-query").send_keys("a red picture")
    by_id(browser, "search-run").click()
    summary = by_id(browser, "search-summary")
    wait_for(browser, lambda _: "results for" in summary.text, "search-error")

    def shown(driver: Any) -> list[str] | None:
        images = driver.find_elements(By.CSS_SELECTOR, "#search-results .card img")
        loaded = [driver.execute_script("return arguments[0].naturalWidth", i) for i in images]
        if len(images) != len(colors) or not all(loaded):
            return None
        return [str(image.get_attribute("src")) for image in images]

    sources = wait_for(browser, shown, "search-error")
    assert all(src.startswith(f"{search_app.s3.endpoint}/") for src in sources), sources
    assert not browser.find_elements(By.CSS_SELECTOR, "#search-results .no-preview")


def test_a_bad_upload_shows_the_servers_error(
    browser: Any, console_app: ConsoleApp, tmp_path: Path
) -> None:
    text_file = tmp_path / "notes.png"
    text_file.write_text("this is text, not an image\n" * 20)
    open_console(browser, console_app, "search")
    by_id(browser, "project-id").send_keys("console_bad_upload")
    by_id(browser, "upload-files").send_keys(str(text_file))
    text = shown_error(browser, "upload-error")
    assert "Error 415 unsupported_media_type" in text, text
    assert "notes.png" in text and "Not a file type this server accepts" in text
    assert by_id(browser, "upload-status").text.startswith("Stopped: 0 new")
    screenshot(browser, "search-error")
    # Nothing was stored: the project does not exist.
    assert console_app.api("GET", "/v1/projects/console_bad_upload/images").status_code == 404

    # Over IMAGE_SEARCH_MAX_BYTES (256 KiB here, from the server's settings): said before sending.
    big = tmp_path / "big.png"
    Image.effect_noise((400, 400), 80).convert("RGB").save(big)
    assert big.stat().st_size > 256 * 1024
    by_id(browser, "upload-files").send_keys(str(big))
    box = by_id(browser, "upload-error")
    wait_for(browser, lambda _: "big.png" in box.text)
    assert "over this server's 256 KiB per image (IMAGE_SEARCH_MAX_BYTES)" in box.text


def test_voices_page_saves_and_synthesizes_a_playable_voice(
    browser: Any, console_app: ConsoleApp, tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import Select

    open_console(browser, console_app, "voices")
    save_voice_in_page(browser, reference_wav(tmp_path / "me.wav"), "console-narrator")
    saved = console_app.api("GET", "/v1/voices/console-narrator").json()
    assert saved["transcript"] == "hello there my friend"
    assert Select(by_id(browser, "voice-select")).first_selected_option.text == "console-narrator"

    by_id(browser, "voice-text").send_keys("Hello. Nice to meet you.")
    by_id(browser, "voice-seed").send_keys("3")
    by_id(browser, "voice-speak").click()
    audio = wait_for_audio(browser)
    duration = browser.execute_script("return arguments[0].duration", audio)
    assert 0.1 < duration < 60
    # Playable: play() starts it (autoplay is allowed in the test browser) and time moves.
    played = browser.execute_async_script(
        """
        const [audio, done] = arguments;
        audio.muted = true;
        audio.play().then(() => setTimeout(() => done(audio.currentTime), 300),
                          (error) => done("play failed: " + error));
        """,
        audio,
    )
    assert isinstance(played, float | int) and played > 0, played
    assert "Seed\n3" in by_id(browser, "voice-facts").text
    screenshot(browser, "voices")

    # Stored with the r2 route (the local store here): the page fetches and plays it too.
    by_id(browser, "voice-store").click()
    facts = by_id(browser, "voice-facts")
    wait_for(browser, lambda _: "AI/VOICE/generated/console-narrator/" in facts.text, "voice-error")


def test_voices_saved_elsewhere_are_offered(
    browser: Any, console_app: ConsoleApp, tmp_path: Path
) -> None:
    """A voice saved through the API (another client) shows in a fresh browser's list."""
    from selenium.webdriver.common.by import By

    reference = reference_wav(tmp_path / "elsewhere.wav").read_bytes()
    saved = console_app.api(
        "PUT", "/v1/voices/saved-elsewhere", files={"audio": ("elsewhere.wav", reference)}
    )
    assert saved.status_code in (200, 201), saved.text
    open_console(browser, console_app, "voices")  # localStorage cleared: only the server knows
    wait_for(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#voice-list li[data-voice='saved-elsewhere']"),
        "voice-save-error",
    )
    offered = [o.get_attribute("value") for o in by_id(browser, "voice-select").find_elements(
        By.TAG_NAME, "option"
    )]  # fmt: skip
    assert "saved-elsewhere" in offered


def test_the_console_reads_every_page_of_a_listing(
    browser: Any, console_app: ConsoleApp, tmp_path: Path
) -> None:
    """The project and voice lists follow `next_cursor` (pages of 200, up to 1,000 items):
    run here with pages of 2, the page's own reader gets what one large page holds."""
    image = png_file(tmp_path, "p.png", (90, 90, 200)).read_bytes()
    reference = reference_wav(tmp_path / "paged.wav").read_bytes()
    for n in range(3):
        uploaded = console_app.api(
            "POST", f"/v1/projects/paged-{n}/images", files={"file": ("p.png", image)}
        )
        assert uploaded.status_code == 201, uploaded.text
        saved = console_app.api(
            "PUT", f"/v1/voices/paged-{n}", files={"audio": ("paged.wav", reference)}
        )
        assert saved.status_code in (200, 201), saved.text
    open_console(browser, console_app, "search")
    read_in_page = """
        const [path, options, done] = arguments;
        import(new URL("api.js", location.href))
          .then((api) => api.callAllItems(path, options))
          .then((items) => done(items), (error) => done(String(error)));
    """
    for path, key in (("/v1/projects", "project_id"), ("/v1/voices", "voice_id")):
        whole = [item[key] for item in console_app.api("GET", f"{path}?limit=200").json()["items"]]
        assert len(whole) >= 3 and len(whole) < 200, whole
        paged = browser.execute_async_script(read_in_page, path, {"pageSize": 2})
        assert [item[key] for item in paged] == whole, paged
        capped = browser.execute_async_script(read_in_page, path, {"pageSize": 2, "max": 3})
        assert [item[key] for item in capped] == whole[:3], capped


def test_with_r2_stored_speech_plays_from_the_stores_link(
    browser: Any, voice_app: VoiceApp, tmp_path: Path
) -> None:
    """The voice app stores in S3 (moto on loopback, as R2): speech stored by
    /v1/r2/voice/generate is played from its presigned URL, which the page's policy allows."""

    voice = f"console-r2-{int(time.time() * 1000)}"
    open_console(browser, ConsoleApp(url=voice_app.url, storage=tmp_path), "voices", key=None)
    save_voice_in_page(browser, reference_wav(tmp_path / "me.wav"), voice)
    by_id(browser, "voice-text").send_keys("Hello. Nice to meet you.")
    by_id(browser, "voice-store").click()
    facts = by_id(browser, "voice-facts")
    wait_for(browser, lambda _: f"AI/VOICE/generated/{voice}/" in facts.text, "voice-error")
    audio = wait_for_audio(browser)
    assert str(audio.get_attribute("src")).startswith(f"{voice_app.s3_endpoint}/")


def test_a_reference_recorded_in_the_browser_is_saved(
    browser: Any, console_app: ConsoleApp
) -> None:
    from selenium.webdriver.common.by import By

    open_console(browser, console_app, "voices")
    by_id(browser, "voice-record").click()
    state = by_id(browser, "voice-record-state")
    wait_for(browser, lambda _: state.text == "recording…", "voice-save-error", 30)
    time.sleep(2.5)  # the fake microphone's beeps
    by_id(browser, "voice-stop").click()
    wait_for(browser, lambda _: state.text.startswith("recorded "), "voice-save-error", 30)
    by_id(browser, "voice-transcript").send_keys("beep beep")
    by_id(browser, "voice-id").send_keys("console-recorded")
    by_id(browser, "voice-save").click()
    wait_for(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#voice-list li[data-voice='console-recorded']"),
        "voice-save-error",
    )
    saved = console_app.api("GET", "/v1/voices/console-recorded").json()
    assert saved["transcript"] == "beep beep"
    # The recording (webm/opus from MediaRecorder) was decoded and stored as MP3.
    stored = sf.info(str(console_app.storage / saved["key"]))
    assert stored.format == "MP3" and 1.0 < stored.duration < 10


def test_status_page_shows_each_module(browser: Any, console_app: ConsoleApp) -> None:
    from selenium.webdriver.common.by import By

    open_console(browser, console_app, "status")
    rows = lambda d: d.find_elements(By.CSS_SELECTOR, "#status-modules tbody tr[data-module]")  # noqa: E731

    def module_states(driver: Any) -> dict[str, str] | None:
        # Read in one go (a refresh draws the table again); all five rows or not yet.
        found = {
            row.get_attribute("data-module"): row.find_element(By.CLASS_NAME, "state").text
            for row in rows(driver)
        }
        return found if len(found) == 5 else None

    states = wait_for(browser, module_states, "status-error")
    assert states == {
        "image": "ready",
        "image_search": "ready",
        "voice": "ready",
        "jobs": "disabled",
        "storage": "ready (local)",
    }
    assert "ImageGenerator HEALTHY" in by_id(browser, "status-modules").text
    assert "ready (HTTP 200)" in by_id(browser, "status-summary").text
    assert by_id(browser, "dashboard-link").get_attribute("href") == "http://127.0.0.1:8265/"
    # Traffic from Ray's metrics export: the page's own keyed calls are counted by route
    # (exported every second here), and a second read gives a rate.
    route = "#traffic-routes tbody tr[data-route='/v1/console/config']"
    # The table is drawn again on every refresh: each read looks the row up afresh.
    cells = lambda d: [  # noqa: E731
        td.text for td in d.find_element(By.CSS_SELECTOR, route).find_elements(By.TAG_NAME, "td")
    ]
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, route), "status-error", 120)
    first = wait_for(browser, cells, "status-error")
    assert first[0] == "GET /v1/console/config" and first[1] == "200"
    assert float(first[2]) >= 1
    wait_for(browser, lambda d: cells(d)[3] != "…", "status-error", 60)
    # The console's own files are one label, /ui (not a path each, not "unmatched").
    files = "#traffic-routes tbody tr[data-route='/ui']"
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, files), "status-error", 60)
    queue = "#traffic-deployments tbody tr[data-deployment='ImageGenerator']"  # 0 waiting here
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, queue), "status-error", 60)
    screenshot(browser, "status")


def test_the_page_itself_is_served_with_its_policy(console_app: ConsoleApp) -> None:
    page = httpx.get(console_app.page, timeout=30)  # no key: the page is public
    assert page.status_code == 200 and "<title>Common AI Server" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    bare = httpx.get(f"{console_app.url}/ui", timeout=30, follow_redirects=False)
    assert bare.status_code == 307 and bare.headers["location"].endswith(f"{PREFIX}/ui/")
    assert httpx.get(f"{console_app.url}/v1/console/config", timeout=30).status_code == 401
