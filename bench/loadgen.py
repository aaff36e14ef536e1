"""Load generators: wrk (preferred, a C client on its own core) and a bounded Python fallback."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

LUA = Path(__file__).with_name("post.lua")


@dataclass
class LoadResult:
    requests: int
    seconds: float
    errors: int  # socket errors, timeouts and non-2xx answers
    p50_ms: float
    p99_ms: float
    #: CPU seconds the server's workers used per request (user + system), set by the caller.
    server_cpu_us: float | None = None
    #: The largest share of that CPU one worker used (1.0: one worker served every connection).
    busiest_worker_share: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def wrk_load(
    url: str, body: Path | None, tokens: Path | None, duration: int, connections: int, threads: int
) -> LoadResult:
    env = {
        **os.environ,
        "BENCH_METHOD": "POST" if body else "GET",
        "BENCH_BODY": str(body or ""),
        "BENCH_TOKENS": str(tokens or ""),
        "BENCH_THREADS": str(threads),
    }
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-s",
            str(LUA),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=duration + 60,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith('{"requests"'))
    data = json.loads(line)
    return LoadResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        errors=data["errors"] + data["non_2xx"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
    )


def python_load(
    url: str, body: Path | None, tokens: Path | None, duration: int, connections: int
) -> LoadResult:
    """Closed-loop clients on threads, each bounded by the duration (wrk is far better)."""
    data = body.read_bytes() if body else None
    token_list = tokens.read_text().split() if tokens else []
    lock = threading.Lock()
    latencies: list[float] = []
    errors = 0
    next_token = 0
    deadline = time.monotonic() + duration

    def client() -> None:
        nonlocal errors, next_token
        session = requests.Session()
        while time.monotonic() < deadline:
            headers = {"Content-Type": "application/json"} if data else {}
            if token_list:
                with lock:
                    headers["Authorization"] = f"Bearer {token_list[next_token % len(token_list)]}"
                    next_token += 1
            started = time.perf_counter()
            try:
                response = session.request(
                    "POST" if data else "GET", url, data=data, headers=headers, timeout=10
                )
                ok = response.status_code < 300
            except requests.RequestException:
                ok = False
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                errors += 0 if ok else 1

    started = time.perf_counter()
    workers = [threading.Thread(target=client) for _ in range(connections)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seconds = time.perf_counter() - started
    ordered = sorted(latencies) or [0.0]
    return LoadResult(
        requests=len(latencies),
        seconds=seconds,
        errors=errors,
        p50_ms=statistics.median(ordered) * 1000,
        p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )
