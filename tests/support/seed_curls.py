"""The seed spec's curl examples (docs/seed-spec.md, sections 5.1-5.3), read from the spec
itself and run as a user would paste them into a shell, with the real `curl` (and `jq`).

`seed_curls()` parses the spec's ```bash blocks: each example keeps its section, its
`METHOD /route` heading and its command as written (continuation lines joined). Running one
(`SeedCurl.run`) changes nothing in it but the example image id `123`, which is replaced by
the id the upload answered; host and port stay as the spec says (`localhost:8000`).
`write_seed_inputs` writes the files the examples name (`test.jpg`, `ref.mp3`) into the
directory they are run from, and `check_*` read what they wrote back.
"""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SEED_SPEC = REPO / "docs" / "seed-spec.md"
SEED_URL = "http://localhost:8000"  # what every example says
EXAMPLE_IMAGE_ID = "123"  # the placeholder id of the download and delete examples
CURL_TIMEOUT_S = 300
SEED_TITLE = "햄릿"
REF_SECONDS = 2.0
REF_SAMPLE_RATE = 24_000

logger = logging.getLogger(__name__)
_SECTION = re.compile(r"^### (5\.\d+) ")
_ROUTE = re.compile(r"\(`(GET|POST|PUT|DELETE|PATCH) (/[^`]*)`\)")


@dataclass(frozen=True)
class SeedCurl:
    """One curl example of the seed spec."""

    section: str  # "5.1", "5.2", "5.3"
    method: str
    route: str  # as the spec writes it, e.g. /v1/projects/{project_id}/images
    command: str  # one line, as written (backslash continuations joined)

    @property
    def key(self) -> str:
        """ "POST /v1/images/generate" - how the tests name an example."""
        return f"{self.method} {self.route}"

    def run(self, cwd: Path, image_id: str | None = None) -> str:
        """Run the example with bash in `cwd` (pipefail: a failing curl before `| jq` counts);
        return its stdout. `image_id` replaces the example id 123. A non-zero exit raises."""
        command = self.command
        if "{id}" in self.route:
            if image_id is None:
                raise ValueError(f"{self.key} needs the id of an uploaded image")
            command = command.replace(f"/images/{EXAMPLE_IMAGE_ID}", f"/images/{image_id}")
        started = time.monotonic()
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", command],
            cwd=cwd,
            capture_output=True,
            timeout=CURL_TIMEOUT_S,
            check=False,
        )
        logger.info(
            "seed %s %s: exit %d in %.1f s",
            self.section,
            self.key,
            done.returncode,
            time.monotonic() - started,
        )
        if done.returncode != 0:
            raise AssertionError(
                f"seed example {self.key} exited {done.returncode}: {command}\n"
                f"stdout: {done.stdout.decode(errors='replace')[-2000:]}\n"
                f"stderr: {done.stderr.decode(errors='replace')[-2000:]}"
            )
        return done.stdout.decode()


def seed_curls(spec: Path = SEED_SPEC) -> dict[str, SeedCurl]:
    """Every curl example of sections 5.x of the spec, keyed "METHOD /route", in spec order."""
    found: dict[str, SeedCurl] = {}
    section = method = route = None
    block: list[str] | None = None
    for line in spec.read_text("utf-8").splitlines():
        if (heading := _SECTION.match(line)) is not None:
            section = heading.group(1)
        elif (named := _ROUTE.search(line)) is not None:
            method, route = named.groups()
        elif line.strip() == "```bash":
            block = []
        elif line.strip() == "```" and block is not None:
            text = re.sub(r"\\\n\s*", " ", "\n".join(block))  # join continuations
            commands = [c.strip() for c in text.splitlines() if c.strip().startswith("curl ")]
            if commands and section is not None and method and route:
                if len(commands) != 1:
                    raise ValueError(f"{method} {route}: expected one curl, got {commands}")
                example = SeedCurl(section, method, route, commands[0])
                found[example.key] = example
            block = None
        elif block is not None:
            block.append(line)
    return found


def write_seed_inputs(directory: Path) -> dict[str, Path]:
    """`test.jpg` (a small photo-like JPEG) and `ref.mp3` (a two-second voiced-sounding clip),
    the files the examples upload, written into `directory`."""
    from PIL import Image

    from serve_app.audio import encode_audio

    rng = np.random.default_rng(7)
    pixels = np.clip(
        np.linspace(40, 220, 96)[None, :, None] + rng.normal(0, 12, (72, 96, 3)), 0, 255
    ).astype(np.uint8)
    image = directory / "test.jpg"
    Image.fromarray(pixels, "RGB").save(image, format="JPEG", quality=90)

    t = np.arange(int(REF_SECONDS * REF_SAMPLE_RATE)) / REF_SAMPLE_RATE
    pitch = 140 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / REF_SAMPLE_RATE
    wave = sum(np.sin(k * phase) / k for k in range(1, 6)) * 0.2 + rng.normal(0, 0.01, t.shape)
    mp3, _ = encode_audio(np.asarray(wave, dtype=np.float32), REF_SAMPLE_RATE, "mp3")
    ref = directory / "ref.mp3"
    ref.write_bytes(mp3)
    return {"test.jpg": image, "ref.mp3": ref}


def check_png(data: bytes) -> tuple[int, int]:
    """The size of a PNG; anything else (an error body) raises."""
    from PIL import Image

    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.load()
    return image.size


def check_mp3(data: bytes) -> float:
    """The duration of a 24 kHz MP3; anything else raises."""
    import soundfile as sf

    info = sf.info(io.BytesIO(data))
    if info.format != "MP3" or info.samplerate != REF_SAMPLE_RATE or info.duration <= 0:
        raise AssertionError(f"not a 24 kHz MP3 with sound: {info}")
    return float(info.duration)


def json_body(stdout: str, what: str) -> Any:
    """The JSON an example printed; a clear error when it printed something else."""
    try:
        return json.loads(stdout)
    except ValueError:
        raise AssertionError(f"{what} did not print JSON: {stdout[:2000]!r}") from None
