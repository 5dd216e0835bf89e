"""One load run: N closed-loop clients on one scenario, a warm-up, then a measured window.

    python -m load_tests.bench.drive --host http://127.0.0.1:3000 --scenario crystal \
        --users 16 --warmup 5 --duration 20 [--client fast|locust]

Runs in its own process so the client never shares an interpreter (or a gevent loop) with the
orchestrator. Prints `window-start` and `window-end` as the measured window opens and closes
(the orchestrator reads the servers' CPU there), then one JSON line: requests completed in the
window, their exact latency percentiles (from every latency), and errors by reason.
`fast` is the light asyncio client (`client.py`); `locust` is locust's FastHttpUser, the same
checks, for comparison (it saturates near 2,000 requests/s here).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from load_tests.bench.client import run_clients
from load_tests.bench.scenarios import REQUESTS, Scenario
from load_tests.kit.routes import answer_failure
from load_tests.kit.stats import percentile


class Recorder:
    """Every completed request: when it finished, how long it took, and why it failed."""

    def __init__(self) -> None:
        self.finished: list[float] = []
        self.latency_ms: list[float] = []
        self.failure: list[str] = []
        self.window_start = 0.0
        self.window_end = 0.0

    def record(self, latency_ms: float, failure: str) -> None:
        """One finished request ("" when it succeeded)."""
        self.finished.append(time.monotonic())
        self.latency_ms.append(latency_ms)
        self.failure.append(failure)

    def open_window(self) -> None:
        """The warm-up is over: count from now."""
        self.window_start = time.monotonic()
        print("window-start", flush=True)

    def close_window(self) -> None:
        """Stop counting."""
        self.window_end = time.monotonic()
        print("window-end", flush=True)

    def summary(self) -> dict[str, Any]:
        """Throughput, latency percentiles and errors of the requests finished in the window."""
        start, end = self.window_start, self.window_end
        inside = [i for i, t in enumerate(self.finished) if start <= t < end]
        latencies = [self.latency_ms[i] for i in inside if not self.failure[i]]
        failures = Counter(self.failure[i] for i in inside if self.failure[i])
        errors = sum(failures.values())
        return {
            "requests": len(inside) - errors,
            "throughput_rps": (len(inside) - errors) / (end - start),
            **{f"p{q}_ms": percentile(latencies, q) for q in (50, 95, 99)},
            "mean_ms": float(np.mean(latencies)) if latencies else None,
            "errors": errors,
            "error_reasons": dict(failures.most_common(5)),
            "errors_outside_window": sum(1 for f in self.failure if f) - errors,
        }


def run_fast(host: str, scenario: Scenario, users: int, warmup_s: float, duration_s: float) -> Recorder:
    """The light asyncio client."""
    recorder = Recorder()

    async def timeline(sleep: Callable[[float], Awaitable[None]]) -> None:
        await sleep(warmup_s)
        recorder.open_window()
        await sleep(duration_s)
        recorder.close_window()

    run_clients(host, scenario, users, recorder.record, timeline)
    return recorder


def run_locust(host: str, scenario: Scenario, users: int, warmup_s: float, duration_s: float) -> Recorder:
    """locust's FastHttpUser, each answer checked the same way."""
    # Imported only here: importing locust monkey-patches the interpreter for gevent.
    # pylint: disable=import-outside-toplevel
    import gevent  # pylint: disable=import-outside-toplevel
    from locust import FastHttpUser, constant, task
    from locust.env import Environment

    recorder = Recorder()

    class Client(FastHttpUser):
        """One closed-loop client with a keep-alive connection."""

        wait_time = constant(0)
        network_timeout = 60.0
        connection_timeout = 60.0

        @task
        def send(self) -> None:
            """One request; anything but a right answer (the kit's check) counts as a failure."""
            body = scenario.body()
            with self.client.post(
                scenario.path, json=body, name=scenario.name, catch_response=True
            ) as response:
                failure = answer_failure(
                    scenario.answer_is_right, body, response.status_code, response.content
                )
                if failure:
                    response.failure(failure)

    def on_request(response_time: float, exception: Any = None, **_: Any) -> None:
        recorder.record(float(response_time), "" if exception is None else str(exception)[:80])

    Client.host = host
    env = Environment(user_classes=[Client])
    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=users)
    gevent.sleep(warmup_s)
    recorder.open_window()
    gevent.sleep(duration_s)
    recorder.close_window()
    runner.quit()
    return recorder


CLIENTS = {"fast": run_fast, "locust": run_locust}


def main() -> None:
    """Parse the options, run, print the result as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--scenario", choices=sorted(REQUESTS), required=True, help="a scenario or a variant")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--client", choices=sorted(CLIENTS), default="fast")
    parser.add_argument("--path", help="the scenario's requests to this path instead")
    args = parser.parse_args()
    scenario = REQUESTS[args.scenario]
    if args.path:
        scenario = dataclasses.replace(scenario, path=args.path)
    result = CLIENTS[args.client](args.host, scenario, args.users, args.warmup, args.duration).summary()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["client_cpu_s"] = usage.ru_utime + usage.ru_stime
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
