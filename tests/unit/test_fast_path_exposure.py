"""What Serve's fast path (configs/fast-path.env) opens, as the README's firewall rules say.

Ray renders HAProxy's configuration from a template: the front end binds to
`http_options.host` (loopback in the offline profile), the stats page and the Prometheus
metrics always to all interfaces. These tests render that template as Ray does, so a Ray
upgrade that changes any bind (or the default ports the rules name) fails here first.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from dotenv import dotenv_values

ROOT = Path(__file__).resolve().parents[2]


def render_haproxy_config(host: str, port: int = 8000) -> list[str]:
    """The `bind` lines of the HAProxy configuration Ray writes for these HTTP options."""
    from jinja2 import Environment
    from ray.serve._private.haproxy import HAProxyConfig, _haproxy_fmt_literal
    from ray.serve._private.haproxy_templates import HAPROXY_CONFIG_TEMPLATE
    from ray.serve.config import HTTPOptions

    env = Environment()
    env.filters["haproxy_fmt"] = _haproxy_fmt_literal
    config: Any = HAProxyConfig(http_options=HTTPOptions(host=host, port=port))
    text = env.from_string(HAPROXY_CONFIG_TEMPLATE).render(
        config=config,
        backends=[],
        grpc_backends=[],
        backends_with_health_config=[],
        grpc_backends_with_health_config=[],
        healthz_rules="",
        grpc_healthz_rules="",
        route_info=config.build_health_route_info([]),
        has_ingress_request_router=False,
    )
    return [line.strip() for line in text.splitlines() if line.strip().startswith("bind ")]


def fast_path_section() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("### Ray Serve's fast path")
    return readme[start : readme.index("\n## ", start)]


def test_the_env_file_switches_the_fast_path_on() -> None:
    values = dotenv_values(ROOT / "configs" / "fast-path.env")
    assert values["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert values["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def test_the_front_end_follows_http_options_host() -> None:
    assert "bind 127.0.0.1:8000" in render_haproxy_config("127.0.0.1")
    assert "bind *:8000" in render_haproxy_config("0.0.0.0")


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_stats_and_metrics_listen_on_all_interfaces_whatever_the_host(host: str) -> None:
    """No setting moves them to loopback (README: firewall them)."""
    binds = render_haproxy_config(host)
    assert "bind *:8404" in binds  # `listen stats`
    assert "bind :9101" in binds  # `frontend prometheus`
    assert len(binds) == 3, binds  # front end, stats, metrics: nothing else listens


def test_the_firewall_rules_name_the_ports_ray_opens() -> None:
    from ray.serve._private import constants

    ports = {
        "stats": constants.RAY_SERVE_HAPROXY_STATS_PORT,
        "metrics": constants.RAY_SERVE_HAPROXY_METRICS_PORT,
        "replicas": (
            constants.RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT,
            constants.RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT,
        ),
    }
    assert ports == {"stats": 8404, "metrics": 9101, "replicas": (30000, 31000)}
    section = fast_path_section()
    for rule in (
        "tcp dport 8404 drop",
        "tcp dport 9101 drop",
        "tcp dport 30000-31000 drop",
        "--dport 8404 ! -i lo -j DROP",
        "--dport 9101 ! -i lo",
        "--dport 30000:31000 ! -i lo",
    ):
        assert rule in section, rule
    stats_row = r"\| HAProxy stats page \| 8404 .*\| all interfaces, always \| none \|"
    assert re.search(stats_row, section)
