"""Reading Envoy's access log as it grows: appended lines, partial and bad lines, rotation (as the
launcher rotates it: renamed, then a new file at the path) and truncation; and the outcome of
one record. No Envoy: the tests write the lines themselves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from modelserver.launcher.processes import shift_rotated
from modelserver.launcher.traffic.access_log import AccessLogTail, outcome_of
from modelserver.launcher.traffic.judge import Outcome


def line(number: int, **fields: Any) -> str:
    """One access log line, as Envoy writes it, numbered by `bytes_sent`."""
    record = {"status": 200, "upstream_ms": 3, "model": "model_crystal_sklearn", "bytes_sent": number}
    return json.dumps({**record, **fields}) + "\n"


def append(path: Path, text: str) -> None:
    """Write as Envoy does: at the end of whatever file is at `path` now."""
    with path.open("a", encoding="utf-8") as file:
        file.write(text)


def numbers(records: list[dict[str, Any]]) -> list[int]:
    """Which lines the records are, in the order read."""
    return [record["bytes_sent"] for record in records]


@pytest.fixture(name="log_file")
def fixture_log_file(tmp_path: Path) -> Path:
    """Where the access log is; not created: each test writes it as it needs."""
    return tmp_path / "access.log"


def test_the_first_read_starts_at_the_end_then_new_lines_come(log_file: Path) -> None:
    log_file.write_text(line(1) + line(2))
    with AccessLogTail(log_file) as tail:
        assert not tail.read()
        append(log_file, line(3) + line(4))
        assert numbers(tail.read()) == [3, 4]
        assert not tail.read()
        append(log_file, line(5))
        assert numbers(tail.read()) == [5]


def test_from_start_reads_what_is_there(log_file: Path) -> None:
    log_file.write_text(line(1) + line(2))
    with AccessLogTail(log_file, from_start=True) as tail:
        assert numbers(tail.read()) == [1, 2]


def test_starting_at_the_end_in_the_middle_of_a_line_skips_its_rest(log_file: Path) -> None:
    whole = line(2)
    log_file.write_text(line(1) + whole[:10])
    with AccessLogTail(log_file) as tail:
        assert not tail.read()
        append(log_file, whole[10:] + line(3))
        assert numbers(tail.read()) == [3]
        assert tail.skipped_lines == 0


def test_a_partial_line_waits_for_its_end(log_file: Path) -> None:
    log_file.write_text("")
    with AccessLogTail(log_file) as tail:
        tail.read()
        whole = line(1)
        append(log_file, whole[:15])
        assert not tail.read()
        append(log_file, whole[15:-1])
        assert not tail.read()
        append(log_file, "\n" + line(2))
        assert numbers(tail.read()) == [1, 2]


def test_a_bad_line_is_skipped_and_counted(log_file: Path) -> None:
    log_file.write_text("")
    with AccessLogTail(log_file) as tail:
        tail.read()
        append(log_file, line(1) + "not json\n" + "\n" + "[1, 2]\n" + '{"cut": \n' + line(2))
        assert numbers(tail.read()) == [1, 2]
        assert tail.skipped_lines == 3  # the blank line is no record, and no error


def test_a_missing_file_is_read_from_its_start_once_it_appears(log_file: Path) -> None:
    with AccessLogTail(log_file) as tail:
        assert not tail.read()
        assert not tail.read()
        log_file.write_text(line(1) + line(2))
        assert numbers(tail.read()) == [1, 2]


def test_a_rotated_file_is_read_to_its_end_then_the_new_one_from_its_start(log_file: Path) -> None:
    log_file.write_text("")
    with AccessLogTail(log_file) as tail:
        tail.read()
        append(log_file, line(1) + line(2))
        assert numbers(tail.read()) == [1, 2]
        append(log_file, line(3))
        shift_rotated(log_file, kept=2)
        rotated = log_file.with_name("access.log.1")
        # Until Envoy reopens, it writes on into the renamed file, and the path is missing.
        append(rotated, line(4))
        assert numbers(tail.read()) == [3, 4]
        append(rotated, line(5))  # flushed as Envoy reopens
        log_file.write_text(line(6))
        append(log_file, line(7))
        assert numbers(tail.read()) == [5, 6, 7]
        append(log_file, line(8))
        assert numbers(tail.read()) == [8]


def test_a_rotated_files_last_line_without_a_newline_is_kept(log_file: Path) -> None:
    log_file.write_text("")
    with AccessLogTail(log_file) as tail:
        tail.read()
        append(log_file, line(1) + line(2).rstrip("\n"))
        assert numbers(tail.read()) == [1]
        log_file.rename(log_file.with_name("access.log.1"))
        log_file.write_text(line(3))
        assert numbers(tail.read()) == [2, 3]


def test_two_rotations_between_reads_lose_no_line_of_the_open_file(log_file: Path) -> None:
    log_file.write_text("")
    with AccessLogTail(log_file) as tail:
        tail.read()
        append(log_file, line(1))
        shift_rotated(log_file, kept=3)
        log_file.write_text(line(2))
        shift_rotated(log_file, kept=3)
        log_file.write_text(line(3))
        # The file in between was never opened: the tail goes from the one it held to the newest.
        assert numbers(tail.read()) == [1, 3]


def test_a_truncated_file_is_read_again_from_its_start(log_file: Path) -> None:
    log_file.write_text("")
    with AccessLogTail(log_file) as tail:
        tail.read()
        append(log_file, line(1) + line(2) + line(3))
        assert numbers(tail.read()) == [1, 2, 3]
        log_file.write_text(line(4))  # truncated in place, same inode
        assert numbers(tail.read()) == [4]
        append(log_file, line(5))
        assert numbers(tail.read()) == [5]


def test_one_read_is_bounded_and_the_rest_comes_next(log_file: Path) -> None:
    log_file.write_text("")
    lines = "".join(line(number) for number in range(1000))
    with AccessLogTail(log_file, max_read_bytes=len(lines) // 3) as tail:
        tail.read()
        append(log_file, lines)
        batches = [numbers(tail.read()) for _ in range(5)]
    assert all(0 < len(batch) < 1000 for batch in batches[:3])
    assert [number for batch in batches for number in batch] == list(range(1000))
    assert tail.skipped_lines == 0


def test_a_line_longer_than_a_read_is_dropped_and_counted(log_file: Path) -> None:
    log_file.write_text("")
    with AccessLogTail(log_file, max_read_bytes=100) as tail:
        tail.read()
        append(log_file, "x" * 250 + "\n" + line(1))
        records = [record for _ in range(6) for record in tail.read()]
        assert numbers(records) == [1]
        assert tail.skipped_lines == 1


def test_closing_and_reading_again_starts_from_the_files_start(log_file: Path) -> None:
    log_file.write_text(line(1))
    tail = AccessLogTail(log_file)
    assert not tail.read()
    tail.close()
    tail.close()
    assert numbers(tail.read()) == [1]
    tail.close()


def test_the_outcome_of_a_model_request() -> None:
    record = {"status": 200, "upstream_ms": 12, "duration_ms": 15, "model": "model_crystal_sklearn"}
    assert outcome_of(record) == ("model_crystal_sklearn", Outcome(200, 0.012))
    candidate = {**record, "status": 503, "model": "model_crystal_sklearn__candidate"}
    assert outcome_of(candidate) == ("model_crystal_sklearn__candidate", Outcome(503, 0.012))


def test_without_an_upstream_time_the_whole_request_time_counts() -> None:
    for missing in ("-", None):
        record = {"status": 504, "upstream_ms": missing, "duration_ms": 30_000, "model": "model_topics"}
        found = outcome_of(record)
        assert found is not None
        assert found[1].status == 504
        assert found[1].seconds == pytest.approx(30.0)
    assert outcome_of({"status": 503, "model": "model_topics"}) == ("model_topics", Outcome(503, 0.0))
    assert outcome_of({"status": 503, "duration_ms": "-", "model": "model_topics"}) == (
        "model_topics",
        Outcome(503, 0.0),
    )


@pytest.mark.parametrize(
    "record",
    [
        {"status": 404, "upstream_ms": "-", "model": "-"},
        {"status": 200, "upstream_ms": 1, "model": "health"},
        {"status": 200, "upstream_ms": 1},
        {"status": "-", "upstream_ms": 1, "model": "model_topics"},
        {"status": True, "upstream_ms": 1, "model": "model_topics"},
        {"upstream_ms": 1, "model": "model_topics"},
    ],
)
def test_a_record_without_a_model_cluster_or_a_status_has_no_outcome(record: dict[str, Any]) -> None:
    assert outcome_of(record) is None
