"""The load balancer's configuration on its own: nginx with docker/nginx/templates/default.conf.template
(as the compose file mounts it) in front of two small echo servers standing in for the replicas,
so the test sees exactly what a replica receives. The real topology is in test_topology.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from tests.fhir_server import free_port
from tests.topology import NGINX_TEMPLATE, LoadBalancer, render_template

pytestmark = pytest.mark.integration


class Echo(BaseHTTPRequestHandler):
    """Answers every GET with the request's path and headers as JSON."""

    def do_GET(self) -> None:
        body = json.dumps({"path": self.path, "headers": dict(self.headers.items())}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadBalancer]:
    """nginx from the compose file's template, in front of two echo servers."""
    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Echo) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    upstreams = [f"127.0.0.1:{s.server_address[1]}" for s in servers]
    lb = LoadBalancer(tmp_path_factory.mktemp("nginx"), free_port(), upstreams)
    try:
        lb.start()
        yield lb
    finally:
        lb.stop()
        for server in servers:
            server.shutdown()
            server.server_close()


def echoed(balancer: LoadBalancer, path: str, **headers: str) -> dict[str, str]:
    answer = requests.get(f"{balancer.base}{path}", headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    received: dict[str, str] = answer.json()["headers"]
    return received


def test_the_template_renders_like_the_nginx_image_does() -> None:
    """Only the variables given are replaced; nginx's own $variables stay for nginx."""
    text = NGINX_TEMPLATE.read_text()
    rendered = render_template(text, {"LB_REPLICA_1": "a:1", "LB_REPLICA_2": "b:2"})
    assert "server a:1 " in rendered and "server b:2 " in rendered
    assert "${LB_LISTEN}" in rendered  # not given: left as written
    assert "$http_host" in rendered and "$proxy_add_x_forwarded_for" in rendered


def test_replicas_receive_the_original_host_scheme_client_and_request_id(
    balancer: LoadBalancer,
) -> None:
    received = echoed(
        balancer, "/cds-services", Host="cds.hospital.example", **{"X-Request-ID": "ehr-request-42"}
    )
    assert received["Host"] == "cds.hospital.example"
    assert received["X-Forwarded-Host"] == "cds.hospital.example"
    assert received["X-Forwarded-Proto"] == "http"  # the scheme nginx was reached on
    assert received["X-Forwarded-For"] == "127.0.0.1"
    assert received["X-Request-ID"] == "ehr-request-42"  # the caller's id is kept

    own = echoed(balancer, "/cds-services")
    assert own["Host"] == balancer.base.removeprefix("http://")  # with its port
    assert len(own["X-Request-ID"]) == 32  # nginx's own when the caller sent none


def test_a_16_kib_token_passes_the_front_door(balancer: LoadBalancer) -> None:
    """The service reads JWTs of up to 16 KiB (gunicorn accepts 20 KiB header lines)."""
    token = "a" * (16 * 1024)
    received = echoed(balancer, "/cds-services", Authorization=f"Bearer {token}")
    assert received["Authorization"] == f"Bearer {token}"


def test_the_access_log_has_no_query_strings(balancer: LoadBalancer) -> None:
    """A SMART callback's query holds an authorization code; the log keeps the path only."""
    since = balancer.access_log.stat().st_size
    echoed(balancer, "/smart/callback?code=secret-code-123&state=s")
    log = balancer.logged(since, 1)
    assert "/smart/callback" in log and "secret-code-123" not in log


def test_no_replica_answering_is_a_502_operation_outcome(tmp_path: Path) -> None:
    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    lb = LoadBalancer(tmp_path / "nginx", free_port(), dead)
    try:
        lb.start()
        answer = requests.post(f"{lb.base}/cds-services/x", json={}, timeout=10)
    finally:
        lb.stop()
    assert answer.status_code == 502
    assert answer.json()["issue"][0]["code"] == "transient"
