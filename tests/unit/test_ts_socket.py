"""The worker's socket read-ahead parses TorchServe's frames exactly as TorchServe does."""

from __future__ import annotations

import importlib
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from modelserver.serving import ts_socket

protocol = importlib.import_module("ts.protocol.otf_message_handler")
TORCHSERVE_READER = protocol._retrieve_buffer  # pylint: disable=protected-access


def _field(data: bytes) -> bytes:
    return struct.pack("!i", len(data)) + data


def predict_frame(bodies: list[bytes]) -> bytes:
    """A PREDICT message as TorchServe's frontend writes it: requests, headers, inputs."""
    frame = b"I"
    for index, body in enumerate(bodies):
        frame += _field(f"request-{index}".encode())
        for name, value in ((b"content-type", b"application/json"), (b"host", b"localhost")):
            frame += _field(name) + _field(value)
        frame += struct.pack("!i", -1)
        frame += _field(b"body") + _field(b"application/json") + _field(body)
        frame += struct.pack("!i", -1)
    return frame + struct.pack("!i", -1)


@pytest.fixture
def restore_reader(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Put TorchServe's own reader back after the test."""
    monkeypatch.setenv("TS_DECODE_INPUT_REQUEST", "false")  # bodies stay bytes, as we serve them
    protocol._retrieve_buffer = TORCHSERVE_READER  # pylint: disable=protected-access
    yield
    protocol._retrieve_buffer = TORCHSERVE_READER  # pylint: disable=protected-access


def parse(frames: list[bytes], count: int, chunks: int = 1) -> list[tuple[bytes, list[dict]]]:
    """Write the frames (in `chunks` pieces each, from a thread) and read `count` messages."""
    left, right = socket.socketpair()

    def write() -> None:
        for frame in frames:
            step = max(1, len(frame) // chunks)
            for start in range(0, len(frame), step):
                left.sendall(frame[start : start + step])

    with left, right:
        writer = threading.Thread(target=write)
        writer.start()
        messages = [protocol.retrieve_msg(right) for _ in range(count)]
        writer.join()
        return messages


@pytest.mark.usefixtures("restore_reader")
def test_read_ahead_parses_the_same_messages_with_far_fewer_reads() -> None:
    frames = [
        predict_frame([b'{"crystalData": [[1, 2, 3, 4]]}', b'{"text": "' + b"x" * 100_000 + b'"}']),
        predict_frame([b"{}"]),
    ]
    expected = parse(frames, 2)
    assert ts_socket.install_read_ahead()
    assert ts_socket.install_read_ahead()  # a second call keeps the one installed
    # Two messages back to back (read-ahead crosses the boundary), written whole or in pieces.
    assert parse(frames, 2) == expected
    assert parse(frames, 2, chunks=7) == expected
    assert expected[0][1][1]["parameters"][0]["value"].endswith(b'x"}')


@pytest.mark.usefixtures("restore_reader")
def test_read_ahead_exits_like_torchserve_when_the_frontend_hangs_up() -> None:
    assert ts_socket.install_read_ahead()
    left, right = socket.socketpair()
    with right:
        left.sendall(b"I")
        left.close()
        with pytest.raises(SystemExit):
            protocol.retrieve_msg(right)


@pytest.mark.usefixtures("restore_reader")
def test_other_torchserve_versions_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ts_socket, "CHECKED_VERSIONS", frozenset({"9.9.9"}))
    assert not ts_socket.install_read_ahead()
    assert protocol._retrieve_buffer is TORCHSERVE_READER  # pylint: disable=protected-access
