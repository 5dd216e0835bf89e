"""The load-test kit shared by the load tools and the tests: one percentile, one answer check per
route, one keep-alive client (its parser, its reconnects, its errors)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from load_tests.kit.http import ClientPool, KeepAliveClient, ResponseParser, encode_post
from load_tests.kit.routes import (
    BRIEF_ROWS,
    answer_failure,
    crystal_answer_is_right,
    fill_mask_answer_is_right,
    topics_answer_is_right,
)
from load_tests.kit.stats import percentile


def test_percentile_interpolates_as_numpy_and_is_none_without_values() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (0, 50, 95, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([10.0, 30.0], 99) == pytest.approx(29.8)  # not the 99th value by index
    assert percentile(iter([7.0]), 99) == 7.0
    assert percentile([], 50) is None


def test_crystal_answers_need_one_label_and_scores_per_row_sent() -> None:
    row = {"blue": 0.1, "green": 0.8, "yellow": 0.1}
    batch = {"crystalData": BRIEF_ROWS}
    assert crystal_answer_is_right(batch, {"prediction": ["green"] * 3, "scores": [row] * 3})
    assert not crystal_answer_is_right(batch, {"prediction": ["green"], "scores": [row]})
    assert not crystal_answer_is_right(batch, {"prediction": ["red"] * 3, "scores": [row] * 3})
    assert not crystal_answer_is_right(batch, [row])


def test_fill_mask_answers_have_top_k_candidates_and_topics_one_known_label() -> None:
    candidate = {"score": 0.1, "token": 1, "token_str": "a", "sequence": "a"}
    assert fill_mask_answer_is_right({"text": "a [MASK]."}, [candidate] * 5)
    assert fill_mask_answer_is_right({"text": "a [MASK].", "top_k": 2}, [candidate] * 2)
    assert not fill_mask_answer_is_right({"text": "a [MASK]."}, [{**candidate, "extra": 1}] * 5)
    assert topics_answer_is_right({"text": "puck"}, {"label": "hockey"})
    assert not topics_answer_is_right({"text": "puck"}, {"label": "hockey", "score": 1.0})


def test_answer_failure_names_the_status_then_the_body_then_the_shape() -> None:
    one_row = {"crystalData": BRIEF_ROWS[:1]}
    right = json.dumps({"prediction": ["blue"], "scores": [{"blue": 1.0}]}).encode()
    assert answer_failure(crystal_answer_is_right, one_row, 200, right) == ""
    assert answer_failure(crystal_answer_is_right, one_row, 503, right) == "HTTP 503"
    assert answer_failure(crystal_answer_is_right, one_row, 200, b"<html>") == "answer is not JSON"
    assert answer_failure(crystal_answer_is_right, one_row, 200, b'{"prediction": []}') == "malformed answer"


def test_parser_reads_length_delimited_and_chunked_answers_in_pieces() -> None:
    parser = ResponseParser()
    raw = b'HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{"a":1}HTTP/1.1 422 Unprocessable\r\n'
    assert parser.feed(raw[:20]) is None
    assert parser.feed(raw[20:]) == (200, b'{"a":1}')
    assert parser.feed(b'Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\n{"e\r\n') is None
    assert parser.feed(b'4\r\n":1}\r\n0\r\n\r\n') == (422, b'{"e":1}')
    assert parser.closes


async def _serve(answers: list[bytes | None]) -> tuple[asyncio.Server, list[int]]:
    """A server that answers each request with the next of `answers` (None: close unanswered),
    counting the connections it accepted."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        while answers:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            answer = answers.pop(0)
            if answer is None:
                break
            writer.write(answer)
            await writer.drain()
            if b"Connection: close" in answer:
                break
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0), connections


def _answer(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{header}\r\n" for header in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode() + body


def test_the_client_keeps_its_connection_and_reconnects_after_a_close() -> None:
    async def scenario() -> tuple[list[int], list[bytes], type[BaseException]]:
        answers = [_answer(b"1"), _answer(b"2", "Connection: close"), _answer(b"3"), None]
        server, connections = await _serve(answers)
        port = server.sockets[0].getsockname()[1]
        client = KeepAliveClient("127.0.0.1", port)
        request = encode_post("/x", {"a": 1}, f"127.0.0.1:{port}")
        bodies = [(await client.exchange(request)).body for _ in range(3)]
        with pytest.raises(OSError) as lost:
            await client.exchange(request)  # the server closes without answering
        client.close()
        server.close()
        return connections, bodies, lost.type

    connections, bodies, lost = asyncio.run(scenario())
    assert bodies == [b"1", b"2", b"3"]
    assert len(connections) == 2  # one reconnect, after the answer that said `Connection: close`
    assert issubclass(lost, ConnectionResetError)


def test_a_pool_opens_a_client_per_overlapping_request_and_reuses_idle_ones() -> None:
    async def scenario() -> tuple[list[int], list[bytes]]:
        server, connections = await _serve([_answer(b"ok")] * 4)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        pool, request = ClientPool(url), encode_post("/x", {}, url)
        together = await asyncio.gather(pool.exchange(request), pool.exchange(request))
        after = [await pool.exchange(request), await pool.exchange(request)]
        server.close()
        return connections, [reply.body for reply in [*together, *after]]

    connections, bodies = asyncio.run(scenario())
    assert bodies == [b"ok"] * 4
    assert len(connections) == 2
