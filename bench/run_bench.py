"""Benchmark the CDS Hooks service under its production server configuration (docker/gunicorn.conf.py).

Scenarios (issue 7): S0 a static JSON endpoint of the same app (the stack's limit), S1 discovery,
S2 a hook with a typical complete prefetch, S3/S3b the same with an RS384/ES384 JWT per request,
S4 a heavy prefetch, S5 no prefetch (fetched from a real FHIR server process), S6 in-process
assess() and the vectorised model; plus RSS per worker and time to first answer. S2lb is S2's hook
call through the production topology (nginx in front of two replicas on PostgreSQL,
tests/topology.py) and S2pg the same call to one of those replicas directly, in the same run.

Throughput is reported as a ratio of S0 measured in the same run, so the numbers survive a noisy
machine. Load comes from wrk (Debian package) when installed, else a bounded Python generator.

    python bench/run_bench.py                 # full run: 10 s per scenario, 3 rounds
    python bench/run_bench.py --quick         # a few seconds in all (run by make test)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.loadgen import LoadResult, python_load, wrk_load  # noqa: E402
from bench.payloads import Payloads, build_payloads  # noqa: E402
from cds_service.assessment import Assessor  # noqa: E402
from cds_service.model import load_model_card  # noqa: E402
from fhir_mappings import load_value_sets  # noqa: E402
from tests.fhir_server import free_port, running_sekmet  # noqa: E402
from tests.processes import child_pids  # noqa: E402
from tests.topology import running_topology  # noqa: E402

GUNICORN_CONFIG = REPO / "docker" / "gunicorn.conf.py"
SCENARIO_IDS = frozenset({"S0", "S1", "S2", "S3", "S3b", "S4", "S5", "S2lb", "S2pg"})
TARGETS = {
    "S2 rps / S0": 0.5,
    "S2 p99 ms": 15.0,
    "S3 rps / S0": 0.45,
    "S4 p50 ms": 10.0,
    "S6 us per patient": 300.0,
    "S6 patient-horizons per s": 1e7,
    "RSS MB per worker": 150.0,
    "start s": 1.5,
}


@dataclass
class Scenario:
    id: str
    title: str
    server: str  # which server: "open" (auth off), "secured", "lb" (nginx), "pg" (one replica)
    path: str
    body: str | None = None  # name of a payload file
    tokens: str | None = None  # name of a token file
    connections: int | None = None  # None: the run's setting; 1 for the latency scenarios


@dataclass
class Row:
    id: str
    title: str
    rounds: list[LoadResult] = field(default_factory=list)

    def median(self, attr: str) -> float:
        values: list[float] = [getattr(r, attr) for r in self.rounds]
        return statistics.median(values)


@contextmanager
def gunicorn(env: dict[str, str], port: int) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """The exact server the Docker image runs; yields the process and seconds to first answer."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "gunicorn"),
            "-c",
            os.environ.get("BENCH_GUNICORN_CONFIG", str(GUNICORN_CONFIG)),
        ],
        env={**os.environ, **env, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError("gunicorn exited during start-up")
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not answer within 30 s")
            time.sleep(0.02)
        first_answer = time.perf_counter() - started
        _wait_for_all_workers(process.pid)
        yield process, first_answer
    finally:
        process.terminate()
        process.wait(timeout=15)


def _wait_for_all_workers(master_pid: int, settle: float = 0.5, limit: float = 15.0) -> None:
    """Return once the worker count has been steady for ``settle`` seconds.

    The first answer can come from the first worker to boot. wrk opens its connections once and
    keeps them, so starting the load before every worker listens would pin them all on one.
    """
    deadline = time.monotonic() + limit
    seen, steady_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = len(child_pids(master_pid))
        if count != seen:
            seen, steady_since = count, time.monotonic()
        elif count and time.monotonic() - steady_since >= settle:
            return
        time.sleep(0.05)


def workers_cpu_seconds(pids: Iterable[int]) -> dict[int, float]:
    """User + system CPU time of each process so far, from /proc/<pid>/stat.

    CPU per request is the benchmark's noise-resistant figure: a busy machine lowers the
    requests per second of every scenario, but hardly what each request costs the worker.
    """
    seconds = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        seconds[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return seconds


def worker_rss_mb(master_pid: int) -> list[float]:
    """RSS of each gunicorn worker, from /proc."""
    sizes = []
    for pid in child_pids(master_pid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        except (OSError, IndexError, ValueError):
            continue
    return sizes


def in_process(quick: bool) -> dict[str, float]:
    """S6: assess() per typical patient, and the vectorised model on 10^6 patients."""
    from tests.hook_calls import recent_patient

    assessor = Assessor(load_model_card(), load_value_sets())
    resources = recent_patient()
    number = 200 if quick else 3000
    per_patient = (
        min(timeit.repeat(lambda: assessor.assess(resources), number=number, repeat=3)) / number
    )
    n = 100_000 if quick else 1_000_000
    rng = np.random.default_rng(7)
    minutes, grades = rng.uniform(10, 90, n), rng.integers(1, 4, n)
    months = np.array([3.0, 6.0, 12.0])
    seconds = min(
        timeit.repeat(
            lambda: assessor.model.predict_risk(minutes, grades, months), number=1, repeat=3
        )
    )
    return {
        "us_per_patient": per_patient * 1e6,
        "patient_horizons_per_s": n * len(months) / seconds,
        "n": n,
    }


def fhir_query_latency_ms(base: str, payloads: Payloads, repeats: int) -> float:
    """The slowest of the three prefetch queries run directly against the FHIR server (median)."""
    session = requests.Session()
    slowest = 0.0
    for query in payloads.fhir_queries:
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            session.get(f"{base}/{query}", timeout=10).raise_for_status()
            samples.append((time.perf_counter() - started) * 1000)
        slowest = max(slowest, statistics.median(samples))
    return slowest


def run(args: argparse.Namespace) -> dict[str, Any]:
    duration = 2 if args.quick else args.duration
    rounds = 1 if args.quick else args.rounds
    connections = 8 if args.quick else args.connections
    use_wrk = shutil.which("wrk") is not None and not args.python_load
    work = Path(tempfile.mkdtemp(prefix="hfs-bench-"))
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_generator": "wrk" if use_wrk else "python",
        "duration_s": duration,
        "rounds": rounds,
        "connections": connections,
    }
    (work / "fhir").mkdir()
    with running_sekmet(work / "fhir") as fhir:
        port_open, port_secured = free_port(), free_port()
        payloads = build_payloads(work, fhir, f"http://127.0.0.1:{port_secured}")
        # The image's configuration (one worker, threads), on loopback only.
        common = {"HOST": "127.0.0.1", "CDS_INSTANCE_PATH": str(work / "instance")}
        if args.workers:
            common["WEB_CONCURRENCY"] = str(args.workers)
        open_env = {
            **common,
            "CDS_AUTH_REQUIRED": "false",
            "CDS_DEV_MODE": "1",  # only to reach the loopback http FHIR server in S5
            "CDS_FHIR_ALLOWLIST": fhir.base,
            "CDS_FHIR_FETCH_WITHOUT_TOKEN": "1",
            "CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port_open}",  # set in production too
        }
        secured_env = {
            **common,
            "CDS_TRUSTED_ISSUERS_FILE": str(payloads.trust_file),
            "CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port_secured}",
        }
        # S4 and S5 have latency targets: one connection, so queueing does not hide the work.
        scenarios = [
            Scenario("S0", "static JSON (/healthz)", "open", "/healthz"),
            Scenario("S1", "discovery", "open", "/cds-services"),
            Scenario("S2", "hook, typical prefetch", "open", payloads.hook_path, "typical"),
            Scenario("S3", "S2 + RS384 JWT", "secured", payloads.hook_path, "typical", "rs384"),
            Scenario("S3b", "S2 + ES384 JWT", "secured", payloads.hook_path, "typical", "es384"),
            Scenario(
                "S4",
                "hook, 500 Obs + 20 Procedures (1 conn)",
                "open",
                payloads.hook_path,
                "heavy",
                None,
                1,
            ),
            Scenario(
                "S5",
                "hook, no prefetch, FHIR fetch (1 conn)",
                "open",
                payloads.hook_path,
                "no_prefetch",
                None,
                1,
            ),
            Scenario(
                "S2lb",
                "S2 through nginx to 2 replicas, PostgreSQL",
                "lb",
                payloads.hook_path,
                "typical",
            ),
            Scenario(
                "S2pg", "S2 to 1 of those replicas direct", "pg", payloads.hook_path, "typical"
            ),
        ]
        if args.scenarios:
            scenarios = [s for s in scenarios if s.id in args.scenarios]
        rows = {s.id: Row(s.id, s.title) for s in scenarios}
        # The topology's replicas run the open server's settings on their own PostgreSQL.
        topology_env = {k: v for k, v in open_env.items() if k not in ("HOST", "CDS_INSTANCE_PATH")}
        topology_env.pop("CDS_PUBLIC_BASE_URL")  # the front door's URL, set by the topology
        with ExitStack() as servers:
            open_proc, start_s = servers.enter_context(gunicorn(open_env, port_open))
            secured_proc, _ = servers.enter_context(gunicorn(secured_env, port_secured))
            results["start_s"] = start_s
            bases = {
                "open": f"http://127.0.0.1:{port_open}",
                "secured": f"http://127.0.0.1:{port_secured}",
            }
            masters = {"open": [open_proc.pid], "secured": [secured_proc.pid]}
            # The topology (PostgreSQL, two replicas, nginx) runs only when its scenarios do: its
            # idle processes share the machine with every other scenario of the run.
            if any(s.server in ("lb", "pg") for s in scenarios):
                topology = servers.enter_context(running_topology(work / "topology", topology_env))
                first = topology.replicas[0]
                bases |= {"lb": topology.base, "pg": first.base}
                masters |= {
                    "lb": [r.process.pid for r in topology.replicas if r.process],
                    "pg": [first.process.pid] if first.process else [],
                }

            def workers_of(server: str) -> set[int]:
                return {pid for master in masters[server] for pid in child_pids(master)}

            for round_index in range(rounds):
                for s in scenarios:
                    if s.tokens and not payloads.token_files[s.tokens].exists():
                        # Size the single-use token pool on the unauthenticated hook's rate times
                        # the workers: when the kernel put all of S2's connections on one worker,
                        # S2 shows one worker's rate and S3 may run on all of them. A pool too
                        # small is reused, and every replayed token counts as an error.
                        workers_now = max(1, len(workers_of(s.server)))
                        s2_rps = rows["S2"].rounds[0].rps
                        payloads.mint_tokens(int(s2_rps * workers_now * duration * 1.3) + 200)
                    url = f"{bases[s.server]}{s.path}"
                    body = payloads.files[s.body] if s.body else None
                    tokens = payloads.token_files[s.tokens] if s.tokens else None
                    conns = s.connections or connections
                    workers = workers_of(s.server)
                    cpu_before = workers_cpu_seconds(workers)
                    if use_wrk:
                        result = wrk_load(url, body, tokens, duration, conns, threads=min(2, conns))
                    else:
                        result = python_load(url, body, tokens, duration, conns)
                    cpu_after = workers_cpu_seconds(workers)
                    used = {pid: cpu_after[pid] - cpu_before.get(pid, 0.0) for pid in cpu_after}
                    if result.requests and sum(used.values()) > 0:
                        result.server_cpu_us = sum(used.values()) / result.requests * 1e6
                        # Each worker listens on its own SO_REUSEPORT socket and the kernel
                        # hashes wrk's few long-lived connections onto them: with 4 they all
                        # land on one worker about one time in eight, halving that scenario.
                        result.busiest_worker_share = max(used.values()) / sum(used.values())
                    rows[s.id].rounds.append(result)
                    if s.tokens:  # every token is spent; mint a fresh pool for the next round
                        payloads.token_files[s.tokens].unlink()
                    print(
                        f"round {round_index + 1} {s.id}: {result.rps:8.0f} req/s  "
                        f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms  "
                        f"errors {result.errors}  busiest worker "
                        f"{(result.busiest_worker_share or 0) * 100:.0f}% of the CPU",
                        file=sys.stderr,
                    )
            rss = worker_rss_mb(open_proc.pid) + worker_rss_mb(secured_proc.pid)
        results["fhir_slowest_query_ms"] = fhir_query_latency_ms(
            fhir.base, payloads, 5 if args.quick else 30
        )
    results["rss_mb_per_worker"] = max(rss) if rss else None
    results["in_process"] = in_process(args.quick)
    s0 = [r.rps for r in rows["S0"].rounds]
    results["scenarios"] = [
        {
            "id": row.id,
            "title": row.title,
            "rps": row.median("rps"),
            "ratio_to_s0": statistics.median(
                r.rps / base for r, base in zip(row.rounds, s0, strict=True)
            ),
            "p50_ms": row.median("p50_ms"),
            "p99_ms": row.median("p99_ms"),
            "server_cpu_us": _median_or_none(r.server_cpu_us for r in row.rounds),
            "busiest_worker_share": max(
                (r.busiest_worker_share or 0.0 for r in row.rounds), default=0.0
            ),
            "errors": sum(r.errors for r in row.rounds),
            "rounds": [asdict(r) for r in row.rounds],
        }
        for row in rows.values()
    ]
    results["targets"] = check_targets(results)
    shutil.rmtree(work, ignore_errors=True)
    return results


def _median_or_none(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def check_targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The targets of the scenarios that ran (all of them unless --scenarios chose some)."""
    by_id = {s["id"]: s for s in results["scenarios"]}
    s5_limit = 1.3 * results["fhir_slowest_query_ms"] + 5
    measured = {
        "S2 rps / S0": ("S2", "ratio_to_s0", ">="),
        "S2 p99 ms": ("S2", "p99_ms", "<="),
        "S3 rps / S0": ("S3", "ratio_to_s0", ">="),
        "S4 p50 ms": ("S4", "p50_ms", "<="),
    }
    values: dict[str, tuple[float | None, str]] = {
        name: (by_id[sid][attr], op) for name, (sid, attr, op) in measured.items() if sid in by_id
    }
    values |= {
        "S6 us per patient": (results["in_process"]["us_per_patient"], "<="),
        "S6 patient-horizons per s": (results["in_process"]["patient_horizons_per_s"], ">="),
        "RSS MB per worker": (results["rss_mb_per_worker"], "<="),
        "start s": (results["start_s"], "<="),
    }
    out = {}
    for name, (value, op) in values.items():
        target = TARGETS[name]
        met = value is not None and (value >= target if op == ">=" else value <= target)
        out[name] = {"value": value, "target": f"{op} {target:g}", "met": met}
    if "S5" in by_id:
        p50 = by_id["S5"]["p50_ms"]
        out["S5 p50 ms"] = {
            "value": p50,
            "target": f"<= {s5_limit:.1f} (1.3 x slowest query + 5)",
            "met": p50 <= s5_limit,
        }
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Run {results['date']} on {results['machine']}; load: {results['load_generator']}, "
        f"{results['connections']} connections, {results['duration_s']} s x {results['rounds']} rounds.",
        "",
        "| Scenario | req/s | ratio to S0 | p50 ms | p99 ms | errors | worker CPU us/req |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in results["scenarios"]:
        cpu = s.get("server_cpu_us")
        lines.append(
            f"| {s['id']} {s['title']} | {s['rps']:.0f} | {s['ratio_to_s0']:.2f} | {s['p50_ms']:.2f} | "
            f"{s['p99_ms']:.2f} | {s['errors']} | {'' if cpu is None else f'{cpu:.0f}'} |"
        )
    ip = results["in_process"]
    lines += [
        f"| S6 assess() in process | | | {ip['us_per_patient'] / 1000:.3f} | | | |",
        "",
        f"Vectorised model: {ip['patient_horizons_per_s']:.3g} patient-horizons/s "
        f"({ip['n']:,} patients x 3). "
        f"Slowest single FHIR query (direct): {results['fhir_slowest_query_ms']:.2f} ms. "
        f"RSS per worker: {results['rss_mb_per_worker']:.0f} MB. "
        f"Start to first answer: {results['start_s']:.2f} s.",
        *_uneven_note(results),
        "",
        "| Target | measured | target | met |",
        "|---|---:|---|---|",
    ]
    for name, t in results["targets"].items():
        value = t["value"]
        shown = f"{value:.3g}" if isinstance(value, float) else str(value)
        lines.append(f"| {name} | {shown} | {t['target']} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines)


def _uneven_note(results: dict[str, Any]) -> list[str]:
    """Name the multi-connection scenarios that one worker served (almost) alone."""
    single = {"S4", "S5"}  # one connection: one worker by design
    uneven = [
        f"{s['id']} ({s['busiest_worker_share'] * 100:.0f}%)"
        for s in results["scenarios"]
        if s["id"] not in single and s.get("busiest_worker_share", 0) > 0.85
    ]
    if not uneven:
        return []
    return [
        "",
        "One worker did most of the work in " + ", ".join(uneven) + ": the kernel put (nearly) "
        "all of wrk's connections on one worker's socket, so those rows show one worker's rate.",
    ]


def _scenario_ids(text: str) -> set[str]:
    ids = {part.strip() for part in text.split(",") if part.strip()}
    unknown = ids - SCENARIO_IDS
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(sorted(unknown))}; known: "
            + ", ".join(sorted(SCENARIO_IDS))
        )
    if ids & {"S3", "S3b"}:
        ids.add("S2")  # their single-use token pools are sized on S2's rate
    return ids | {"S0"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds in all (smoke run)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per scenario and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--workers", type=int, default=None, help="gunicorn workers (default: the image's, 1)"
    )
    parser.add_argument("--python-load", action="store_true", help="use the Python load generator")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--scenarios",
        type=_scenario_ids,
        default=None,
        help="comma-separated ids to run, e.g. S0,S2 (default: all; S0 always runs, every ratio "
        "is to it; S3 and S3b bring S2, whose rate sizes their token pools)",
    )
    args = parser.parse_args(argv)
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "quick" if args.quick else results["date"].replace(":", "")
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1))
    table = markdown(results)
    (args.out / f"{stem}.md").write_text(table + "\n")
    print(table)
    errors = sum(s["errors"] for s in results["scenarios"])
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
