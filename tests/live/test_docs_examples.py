"""The docs are tested: every `curl` example of README.md and docs/api.md, and every Python
snippet, runs against the stack `env $(make -s tiny-models) make run` starts (the default
catalogue, the tiny text checkpoints), and its answer must be the one the doc prints.

An answer is compared as JSON (NDJSON line by line): equal, floats within FLOAT_TOLERANCE. A
command whose comment says `illustrative` (its answer depends on the machine or the data, like
`/healthcheck`'s `trained_on`) is held to its answer's shape only: the same keys and types. A
Python line ending in `# <repr>` must evaluate to that repr. Commands other than `curl` (`make
run`) are what the stack itself ran, and are not run again.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from load_tests.kit.stack import Launcher, running
from load_tests.kit.topics_corpus import write_corpus
from modelserver.project import PROJECT_ROOT
from modelserver.tools.tiny_models import TINY_MODELS
from modelserver.tools.tiny_models import main as build_tiny_models
from tests.helpers import answers_close

DOCUMENTS = ("README.md", "docs/api.md")
# float32 rounding moves with the batch's shape and the CPU's ISA; the docs print 16-17 digits.
FLOAT_TOLERANCE = {"rel_tol": 1e-4, "abs_tol": 1e-6}
ILLUSTRATIVE = "illustrative"


@dataclass(frozen=True)
class Example:
    """One `$ command` of a console block and the answer printed under it."""

    document: str
    line: int
    command: str
    answer: str

    def __str__(self) -> str:
        return f"{self.document}:{self.line}"


def console_examples(document: str) -> list[Example]:
    """Every `$ ...` command (its `\\` continuations joined) and the lines printed under it."""
    text = (PROJECT_ROOT / document).read_text(encoding="utf-8")
    examples = []
    for block in re.finditer(r"^```console\n(.*?)^```", text, re.DOTALL | re.MULTILINE):
        first_line = text.count("\n", 0, block.start(1)) + 1
        lines = block.group(1).splitlines()
        index = 0
        while index < len(lines):
            if not lines[index].startswith("$ "):
                index += 1
                continue
            start, command = index, lines[index][2:]
            while command.endswith("\\"):
                index += 1
                command = command[:-1] + " " + lines[index].strip()
            index += 1
            answer = []
            while index < len(lines) and not lines[index].startswith("$ "):
                answer.append(lines[index])
                index += 1
            examples.append(Example(document, first_line + start, command, "\n".join(answer).strip()))
    return examples


def python_snippets(document: str) -> list[tuple[int, str]]:
    """Every ```python block, with its first line's number."""
    text = (PROJECT_ROOT / document).read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, block.start(1)) + 1, block.group(1))
        for block in re.finditer(r"^```python\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    ]


CURL_EXAMPLES = [e for d in DOCUMENTS for e in console_examples(d) if e.command.startswith("curl ")]
SNIPPETS = [(d, line, code) for d in DOCUMENTS for line, code in python_snippets(d)]


def shape(value: Any) -> Any:
    """What an illustrative answer promises: its keys and the types of its values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def json_lines(text: str) -> list[Any]:
    """An answer as JSON values, one per line (NDJSON) or one for the whole text."""
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_every_console_block_has_its_examples_found() -> None:
    """The parser sees every `$ curl` line of the documents (no example escapes the test)."""
    for document in DOCUMENTS:
        text = (PROJECT_ROOT / document).read_text(encoding="utf-8")
        found = sum(1 for e in CURL_EXAMPLES if e.document == document)
        assert found == len(re.findall(r"^\$ curl ", text, re.MULTILINE)) > 0, document


@pytest.fixture(scope="module", name="docs_stack")
def docs_stack_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    """The stack the README starts: the default catalogue, the tiny checkpoints through their
    variables; topics from the brief's data, or the tests' corpus where that is absent."""
    workdir = tmp_path_factory.mktemp("docs")
    assert build_tiny_models([str(workdir / "tiny")]) == 0
    env = {variable: str(workdir / "tiny" / name) for name, (_, variable) in TINY_MODELS.items()}
    if not (PROJECT_ROOT.parent / "shared" / "seed_data" / "topics").is_dir():
        train, test = write_corpus(workdir / "topics")
        env.update(TOPICS_TRAIN=str(train), TOPICS_TEST=str(test))
    with running(Launcher(workdir, env=env)) as live:
        yield live


def alerted_metrics() -> set[str]:
    """Every metric an alert rule of docs/production.md reads (Kubernetes' own aside), and the
    ones docs/operations.md names to alert on."""
    production = (PROJECT_ROOT / "docs" / "production.md").read_text(encoding="utf-8")
    section = production.split("## Monitoring and alerts", 1)[1].split("\n## ", 1)[0]
    rules = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert rules is not None
    expressions = [line for line in rules.group(1).splitlines() if not line.lstrip().startswith("#")]
    text = "\n".join(expressions)
    labels = set(re.findall(r"[{,]\s*(\w+)\s*[=!]", text)) | set(re.findall(r"by \((\w+)\)", text))
    names = set(re.findall(r"\b((?:envoy|modelserver|ts)_[a-z0-9_]+|ModelRequests)\b", text)) - labels
    operations = (PROJECT_ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    names |= set(re.findall(r"`((?:envoy|modelserver|ts)_[a-z0-9_]+)\{[^`]*`: a steady rate", operations))
    return {name.removesuffix("_bucket") for name in names}


def test_every_metric_an_alert_reads_exists_from_the_start(docs_stack: Launcher) -> None:
    """Read before any request: a counter that appears with its first event hides it from rate()."""
    text = requests.get(docs_stack.metrics_url, timeout=10).text
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    watched = alerted_metrics()
    assert {
        "envoy_cluster_upstream_rq_pending_overflow",
        "ModelRequests",
        "modelserver_queue_seconds",
    } <= watched
    assert watched <= families, sorted(watched - families)
    overflow = re.findall(
        r'^envoy_cluster_upstream_rq_pending_overflow\{envoy_cluster_name="model_(\w+)"\} 0$', text, re.M
    )
    assert {"crystal_sklearn", "fill_mask", "topics"} <= set(overflow)


@pytest.mark.parametrize("example", CURL_EXAMPLES, ids=str)
def test_a_documented_curl_answers_what_the_doc_prints(docs_stack: Launcher, example: Example) -> None:
    command = example.command.replace("localhost:3000", docs_stack.url.removeprefix("http://"))
    if not example.answer:
        command = command.replace("curl ", "curl --fail ", 1)  # no answer shown: a 2xx is the promise
    command = command.replace("localhost:3001", f"127.0.0.1:{docs_stack.ports.prometheus}")
    ran = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 0 and ran.stdout.strip(), (str(example), ran.returncode, ran.stderr[-500:])
    if not example.answer:
        return  # the doc shows no answer: the command runs and answers
    got, documented = json_lines(ran.stdout), json_lines(example.answer)
    if ILLUSTRATIVE in example.command:
        assert [shape(g) for g in got] == [shape(d) for d in documented], (str(example), ran.stdout[:500])
    else:
        assert answers_close(got, documented, **FLOAT_TOLERANCE), (str(example), ran.stdout[:1000])


@pytest.mark.parametrize(("document", "line", "code"), SNIPPETS, ids=[f"{d}:{n}" for d, n, _ in SNIPPETS])
def test_a_documented_python_snippet_runs_and_answers_its_comment(
    docs_stack: Launcher, document: str, line: int, code: str
) -> None:
    """Each statement runs in order; an expression with a `# repr` comment must evaluate to it."""
    code = code.replace("localhost:3000", docs_stack.url.removeprefix("http://"))
    names: dict[str, Any] = {}
    lines = code.splitlines()
    for statement in ast.parse(code).body:
        where = f"{document}:{line + statement.lineno - 1}"
        source = ast.get_source_segment(code, statement)
        assert source is not None
        if isinstance(statement, ast.Expr):
            value = eval(compile(ast.Expression(statement.value), where, "eval"), names)  # pylint: disable=eval-used
            comment = lines[(statement.end_lineno or statement.lineno) - 1].partition("  # ")[2]
            if comment:
                assert repr(value) == comment, (where, repr(value))
        else:
            exec(compile(ast.Module([statement], type_ignores=[]), where, "exec"), names)  # pylint: disable=exec-used
