"""Shared pieces of the benchmarks: statistics, closed-loop load generators, a local Ray +
Serve on loopback, tiny models, subprocess servers and CPU accounting.

Every benchmark measures its baseline and its candidates in the same run, interleaved round
by round (A, B, C, A, B, C, ...), so that load from other processes on a shared machine hits
all of them alike; figures are reported as ratios, or as differences of medians of rounds.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a loopback-only cluster of our own

import numpy as np  # noqa: E402

from serve_app.tiny import model_settings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# --- statistics ---------------------------------------------------------------------------


@dataclass
class Sample:
    """Latencies (s) of the successful requests of one or more timed runs, errors, wall time."""

    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    error_examples: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies_s)

    @property
    def throughput(self) -> float:
        """Successful requests per second of wall time."""
        return self.count / self.wall_s if self.wall_s > 0 else 0.0

    def pct_ms(self, q: float) -> float:
        if not self.latencies_s:
            return float("nan")
        return float(np.percentile(np.asarray(self.latencies_s), q) * 1000.0)

    @property
    def p50_ms(self) -> float:
        return self.pct_ms(50)

    @property
    def p99_ms(self) -> float:
        return self.pct_ms(99)

    def add(self, other: Sample) -> None:
        self.latencies_s.extend(other.latencies_s)
        self.errors += other.errors
        self.wall_s += other.wall_s
        self.error_examples.extend(other.error_examples[: max(0, 3 - len(self.error_examples))])

    def summary(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "errors": self.errors,
            "wall_s": round(self.wall_s, 3),
            "throughput": round(self.throughput, 3),
            "p50_ms": round(self.p50_ms, 3),
            "p99_ms": round(self.p99_ms, 3),
            "error_examples": self.error_examples[:3],
        }


def median(values: Iterable[float]) -> float:
    data = [v for v in values if v == v]  # drop NaN
    return float(np.median(data)) if data else float("nan")


def geomean(values: Iterable[float]) -> float:
    data = [v for v in values if v > 0]
    return float(np.exp(np.mean(np.log(data)))) if data else float("nan")


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.{digits}f}"


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --- load generators ------------------------------------------------------------------------


async def closed_loop(
    call: Callable[[], Awaitable[None]], concurrency: int, duration_s: float
) -> Sample:
    """`concurrency` workers each call `call()` back to back for `duration_s`.

    A call that raises counts as an error (its latency is not kept). Throughput counts the
    requests that completed; the wall time runs until the last worker's request finished.
    """
    sample = Sample()
    deadline = time.perf_counter() + duration_s

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                await call()
            except Exception as exc:  # noqa: BLE001 - counted and shown, not fatal
                sample.errors += 1
                if len(sample.error_examples) < 3:
                    sample.error_examples.append(f"{type(exc).__name__}: {exc}"[:200])
                await asyncio.sleep(0.01)
                continue
            sample.latencies_s.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sample.wall_s = time.perf_counter() - started
    return sample


def threaded_closed_loop(call: Callable[[], None], concurrency: int, duration_s: float) -> Sample:
    """`closed_loop` with threads and a synchronous `call` (for in-process direct calls)."""
    sample = Sample()
    deadline = time.perf_counter() + duration_s
    lock = threading.Lock()

    def worker() -> None:
        local: list[float] = []
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            call()
            local.append(time.perf_counter() - started)
        with lock:
            sample.latencies_s.extend(local)

    started = time.perf_counter()
    if concurrency == 1:
        worker()
    else:
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    sample.wall_s = time.perf_counter() - started
    return sample


def http_session(timeout_s: float = 600) -> Any:
    """An aiohttp session for load: connections reused, but never after 3 s idle (servers
    close idle keep-alive connections after 5 s; reusing one that is closing fails)."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=512, keepalive_timeout=3)
    return aiohttp.ClientSession(connector=connector,
                                 timeout=aiohttp.ClientTimeout(total=timeout_s))


class HttpStatusError(Exception):
    pass


async def expect_ok(response: Any) -> bytes:
    """Read an aiohttp response; raise unless it is 2xx."""
    body = await response.read()
    if response.status >= 300:
        raise HttpStatusError(f"HTTP {response.status}: {body[:160]!r}")
    return body


# --- machine --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine_info() -> dict[str, Any]:
    import torch

    cpu_model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError):
        memory_gib = float("nan")
    import ray

    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gib": round(memory_gib, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": ray.__version__,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        return rev + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_seconds_of_tree() -> float:
    """User + system CPU seconds of this process and all its live descendants (Ray's
    raylet, workers and replicas started by this process included)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


# --- tiny models ----------------------------------------------------------------------------


def build_models(root: Path) -> Path:
    """The tiny local models of the offline profile, built into `root` (idempotent)."""
    from serve_app.tiny import build_tiny_models

    build_tiny_models(root)
    return root


def clip_dim(models: Path) -> int:
    config = json.loads((models / "clip" / "open_clip_config.json").read_text())
    return int(config["model_cfg"]["embed_dim"])


def reference_wav(seconds: float = 3.0, sr: int = 24_000) -> bytes:
    """A voiced-sounding reference clip (a modulated tone with pauses), as WAV bytes."""
    import io

    import soundfile as sf

    t = np.arange(int(seconds * sr), dtype=np.float32) / sr
    tone = 0.3 * np.sin(2 * np.pi * 180 * t) + 0.1 * np.sin(2 * np.pi * 360 * t)
    envelope = (np.sin(2 * np.pi * 2.5 * t) > -0.6).astype(np.float32)
    buffer = io.BytesIO()
    sf.write(buffer, (tone * envelope).astype(np.float32), sr, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def random_images(count: int, seed: int, size: int = 192) -> list[bytes]:
    """`count` distinct JPEGs (smooth colour fields plus noise)."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(count):
        a, b, c = rng.random(3)
        base = np.stack([xx * a, yy * b, (xx + yy) * c / 2], axis=-1) * 200
        pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, format="JPEG", quality=85)
        images.append(buffer.getvalue())
    return images


# --- subprocess servers ---------------------------------------------------------------------


def wait_http_ok(url: str, timeout_s: float, process: subprocess.Popen | None = None,
                 poll_s: float = 0.2) -> float:
    """Poll `url` until it answers 200; return the perf_counter time it did."""
    import httpx

    deadline = time.perf_counter() + timeout_s
    last = "no answer"
    while time.perf_counter() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process exited with {process.returncode} ({url})")
        try:
            response = httpx.get(url, timeout=5)
            if response.status_code == 200:
                return time.perf_counter()
            last = f"{response.status_code}: {response.text[:300]}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}"
        time.sleep(poll_s)
    raise TimeoutError(f"{url} not ready after {timeout_s}s: {last}")


@contextmanager
def subprocess_server(args: list[str], log_path: Path, env: dict[str, str] | None = None
                      ) -> Iterator[subprocess.Popen]:
    """Run `python <args>` from the repository root; SIGTERM (then SIGKILL) it at the end."""
    full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    full_env.update(env or {})
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, *args], cwd=REPO, env=full_env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield process
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen, timeout_s: float = 40) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: only what it started
        except ProcessLookupError:
            pass
        process.wait(timeout=10)


# --- a local Ray + Serve --------------------------------------------------------------------


class LocalServe:
    """A Ray instance of our own (`address="local"`) with Serve's proxy on a loopback port."""

    def __init__(self, num_cpus: int = 8) -> None:
        self.num_cpus = num_cpus
        self.port = 0
        self.url = ""
        self.started = False

    def start(self) -> LocalServe:
        if self.started:
            return self
        import ray
        from ray import serve

        self.port = free_port()
        ray.init(
            address="local",
            num_cpus=self.num_cpus,  # logical CPUs for placement; the machine has what it has
            include_dashboard=False,
            object_store_memory=256 * 1024**2,
            configure_logging=False,
            log_to_driver=False,
        )
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.url = f"http://127.0.0.1:{self.port}"
        self.started = True
        return self

    def deploy(self, name: str, route_prefix: str, settings: dict[str, Any],
               timeout_s: float = 600) -> str:
        """Deploy our application with `settings` (no env files) and wait for /readyz 200."""
        from ray import serve

        from serve_app.app import build_app

        self.start()
        app = build_app({"env_files": [], "settings": settings})
        serve.run(app, name=name, route_prefix=route_prefix, blocking=False)
        url = self.url + route_prefix.rstrip("/")
        wait_http_ok(f"{url}/readyz", timeout_s)
        return url

    def delete(self, name: str) -> None:
        from ray import serve

        serve.delete(name, _blocking=True)

    def shutdown(self) -> None:
        if not self.started:
            return
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            self.started = False


FAST_PATH_ENV_FILE = REPO / "configs" / "fast-path.env"


def fast_path_env(scratch: Path) -> dict[str, str]:
    """Environment of a Ray on Serve's fast path (configs/fast-path.env), with HAProxy's
    ports and files of its own so it cannot meet another Ray's HAProxy on this machine."""
    from dotenv import dotenv_values

    scratch.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in dotenv_values(FAST_PATH_ENV_FILE).items() if v is not None}
    env.update({
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(scratch / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(scratch / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(scratch),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(scratch / "server-state"),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",  # a quick stop at the end
    })
    return env


def offline_settings(models: Path, work: Path, **extra: Any) -> dict[str, Any]:
    """Settings of a benchmark app: the offline profile's tiny models on the CPU, local
    storage and database under `work`, no backups, no OpenAI (template prompts)."""
    return {
        **model_settings(models),
        "IMAGE_ENABLED": False,
        "IMAGE_SEARCH_ENABLED": False,
        "VOICE_ENABLED": False,
        "R2_ENABLED": False,
        "LOCAL_STORAGE_DIR": str(work / "storage"),
        "IMAGE_SEARCH_DB_PATH": str(work / "image_search.db"),
        "IMAGE_SEARCH_DB_BACKUP_ENABLED": False,
        "IMAGE_DEVICE": "cpu",
        "IMAGE_NUM_GPUS": 0,
        "IMAGE_NUM_CPUS": 0.5,
        "IMAGE_DEFAULT_WIDTH": 64,
        "IMAGE_DEFAULT_HEIGHT": 64,
        "IMAGE_DEFAULT_STEPS": 2,
        "IMAGE_MAX_QUEUED_REQUESTS": 64,
        "CLIP_DEVICE": "cpu",
        "CLIP_NUM_GPUS": 0,
        "CLIP_NUM_CPUS": 0.5,
        "CLIP_MAX_QUEUED_REQUESTS": 128,
        "IMAGE_SEARCH_MAX_ELEMENTS": 50_000,
        "IMAGE_SEARCH_MAX_BATCH_FILES": 32,
        "VOICE_DEVICE": "cpu",
        "VOICE_NUM_GPUS": 0,
        "VOICE_NUM_CPUS": 0.5,
        "VOICE_DEFAULT_NFE_STEPS": 8,
        "VOICE_MAX_QUEUED_REQUESTS": 64,
        "TORCH_CPU_THREADS": 1,
        **extra,
    }


@dataclass
class Context:
    """What the benchmarks share in one run."""

    work: Path
    models: Path
    quick: bool
    rounds: int
    serve: LocalServe = field(default_factory=LocalServe)
    log_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_dir = self.work / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def subdir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Section:
    """One benchmark's markdown and its figures (for the headline table and the JSON)."""

    title: str
    markdown: str
    figures: dict[str, Any]
    seconds: float = 0.0
