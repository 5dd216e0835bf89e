"""Brief 002's own spec, `prediction-openapi.yaml` (Swagger 2.0), run against the live stack.

schemathesis generates requests from the brief's file (its `host`/`basePath` replaced by the
stack's URL) and holds every answer to it: no server error, only documented status codes, bodies
and content types; every body the ApiRequest schema accepts is answered 200, and every body it
refuses gets the spec's 405 "Validation exception". Skipped where ../shared is absent.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from load_tests.kit.stack import Launcher
from modelserver.project import PROJECT_ROOT

SPEC = PROJECT_ROOT.parent / "shared" / "seed_data" / "topics" / "prediction-openapi.yaml"
pytestmark = pytest.mark.skipif(
    not SPEC.is_file(),
    reason="../shared/seed_data/topics/prediction-openapi.yaml is absent (a fresh clone): skipped",
)
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "positive_data_acceptance",
        "negative_data_rejection",
        "unsupported_method",
    ]
)
# Schema-valid bodies must get 200 (the spec's only success) and schema-invalid ones its 405.
CONFIG = """\
[checks.positive_data_acceptance]
expected-statuses = ["200"]

[checks.negative_data_rejection]
expected-statuses = ["405"]
"""


def test_the_briefs_own_spec_holds_for_prediction(stack: Launcher, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG, encoding="utf-8")
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    options = {
        "--url": f"{stack.url}/",
        "--checks": CHECKS,
        "--phases": "examples,coverage,fuzzing",
        "--mode": "all",
        "--max-examples": "300",
        "--seed": "2",
        "--workers": "1",
        "--request-timeout": "30",
        "--generation-database": "none",
    }
    command = [binary, "--config-file", str(config), "run", str(SPEC), "--no-color"]
    for option, value in options.items():
        command += [option, value]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=420, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout or " passed" in result.stdout, result.stdout[-3000:]
