"""A bounded schemathesis run of every public operation against the live stack.

It generates requests from /openapi.json (examples, boundary values, fuzzing) and checks that no
answer is a server error the document does not list, that every status code is documented, and
that every body and content type matches the document. The model that raises on purpose
(`crystal_broken`, for the 500 tests) is left out on every path that reaches it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from load_tests.kit.stack import Launcher

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_generated_requests_get_documented_answers(stack: Launcher, tmp_path: Path) -> None:
    options = {
        "--checks": CHECKS,
        "--phases": "examples,coverage,fuzzing",
        "--max-examples": "25",
        "--seed": "1",
        # The test stack's model that raises on purpose: its 500 is the point, and documented.
        "--exclude-path-regex": "crystal_broken",
    }
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or "schemathesis"
    command = [binary, "run", f"{stack.url}/openapi.json", "--no-color"]
    for option, value in options.items():
        command += [option, value]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
