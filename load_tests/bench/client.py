"""The benchmark's light closed-loop load (asyncio + uvloop), for rates locust cannot reach: each
client is the kit's keep-alive client sending the next request as soon as an answer is in, and
every answer is still checked (status 200 and the route's JSON shape), else it is an error."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import uvloop

from load_tests.bench.scenarios import Scenario
from load_tests.kit.http import KeepAliveClient, PreparedRequest, prepare_requests
from load_tests.kit.routes import answer_failure

TIMEOUT_S = 60.0
Record = Callable[[float, str], None]  # (latency in ms, failure reason or "")


async def _client(
    client: KeepAliveClient,
    scenario: Scenario,
    requests: list[PreparedRequest],
    record: Record,
    stop: asyncio.Event,
) -> None:
    """One client: (re)connect and keep sending until `stop` is set. A server may close after
    an answer (gunicorn's sync workers do): that reconnects, with no error."""
    while not stop.is_set():
        try:
            if not client.connected:
                await client.connect()
        except OSError as error:
            record(0.0, f"connect failed: {type(error).__name__}")
            await asyncio.sleep(0.1)
            continue
        if stop.is_set():  # stopped while connecting
            break
        request = random.choice(requests)
        sent = time.perf_counter()
        try:
            reply = await client.exchange(request.wire)
        except OSError:
            waited = time.perf_counter() - sent
            if not stop.is_set():
                record(waited * 1000, "connection closed")
            elif waited > TIMEOUT_S:  # closed at the end, still unanswered after the timeout
                record(waited * 1000, "timeout")
            continue
        failure = answer_failure(scenario.answer_is_right, request.body, reply.status, reply.body)
        record((reply.received_s - sent) * 1000, failure)


async def _run(url: str, scenario: Scenario, users: int, record: Record, timeline: Any) -> None:
    stop = asyncio.Event()
    host = urlsplit(url).netloc
    clients = [KeepAliveClient.for_url(url) for _ in range(users)]
    loops = [
        asyncio.ensure_future(
            _client(client, scenario, prepare_requests(scenario.path, scenario.body, host), record, stop)
        )
        for client in clients
    ]
    await timeline(asyncio.sleep)
    stop.set()
    for client in clients:
        client.close()  # a request still in flight is abandoned
    await asyncio.wait(loops, timeout=5)
    for client in clients:
        client.close()  # one that was connecting as the run stopped


def run_clients(url: str, scenario: Scenario, users: int, record: Record, timeline: Any) -> None:
    """Run `users` clients until the awaitable `timeline(sleep)` finishes."""
    uvloop.run(_run(url, scenario, users, record, timeline))
