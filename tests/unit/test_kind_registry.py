"""The kind registry: one table serves the catalogue, the archive build, the API document, the v2
protocol and the one generic handler, so adding a kind is one package and one registry line.

The `echo` kind below is such a package (a framework-free top level: settings, request, answer,
v2 codec and its `Kind`; a worker: the predictor and its loader). The test writes it into a copy
of `modelserver`, adds its one registry line, proves in a fresh interpreter that everything picks
it up, and then that nothing else in the copy changed.
"""

from __future__ import annotations

import difflib
import filecmp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from handlers.model_handler import ModelHandler
from modelserver.catalogue import Catalogue
from modelserver.errors import ConfigError
from modelserver.kinds.registry import KINDS, kind_named
from modelserver.project import PROJECT_ROOT
from tests.helpers import FakeContext

ECHO_PACKAGE = '''"""Echo: a text back behind the model's prefix (what a kind's framework-free part holds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from modelserver.kinds.kind import Kind
from modelserver.protocols.open_inference import TensorCodec, TensorSpec, output_tensor


class EchoSettings(BaseModel):
    """The `handler:` section of the echo kind."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = ">"
    max_chars: int = Field(default=100, ge=1)


class EchoRequest(BaseModel):
    """One text to echo back."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text: str = Field(min_length=1)


class EchoAnswer(BaseModel):
    """The text, behind the model's prefix."""

    echo: str


TEXT_IN = TensorSpec("text", "BYTES", (-1,))
ECHO_OUT = TensorSpec("echo", "BYTES", (-1,))


def _bodies(values: dict[str, list[Any]], _: dict[str, Any], __: Sequence[int]) -> list[dict[str, Any]]:
    return [{"text": text} for text in values[TEXT_IN.name]]


def _outputs(answers: list[Any], _: Sequence[int]) -> dict[str, dict[str, Any]]:
    echoes = [answer["echo"] for answer in answers]
    return {ECHO_OUT.name: output_tensor(ECHO_OUT, [len(echoes)], echoes)}


KIND = Kind(
    loader="modelserver.kinds.echo.worker:load_echo_predictor",
    settings=EchoSettings,
    request=EchoRequest,
    answer=EchoAnswer,
    errors={422: "no text"},
    example={"text": "hi"},
    open_inference=TensorCodec(inputs=(TEXT_IN,), outputs=(ECHO_OUT,), bodies=_bodies, answers=_outputs),
)
'''

ECHO_WORKER = '''"""Echo's worker part: the predictor and its loader."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelserver.errors import InvalidInput
from modelserver.kinds import ModelFiles
from modelserver.kinds.contract import Predictor
from modelserver.kinds.echo import EchoRequest, EchoSettings
from modelserver.validation import validate_body


class EchoPredictor(Predictor[EchoRequest]):
    """Parses and answers a batch, as every kind's predictor does."""

    def __init__(self, settings: EchoSettings) -> None:
        self._settings = settings

    def parse(self, payload: Any) -> EchoRequest:
        """Validate one body."""
        request = validate_body(EchoRequest, payload, "text")
        if len(request.text) > self._settings.max_chars:
            raise InvalidInput(f"text is longer than {self._settings.max_chars} characters")
        return request

    def predict(self, requests: Sequence[EchoRequest]) -> list[dict[str, str]]:
        """One answer per request, in order."""
        return [{"echo": f"{self._settings.prefix}{request.text}"} for request in requests]


def load_echo_predictor(files: ModelFiles[EchoSettings]) -> EchoPredictor:
    """The loader the kind's declaration names: its settings come typed, parsed once."""
    return EchoPredictor(files.settings)
'''

# What the fresh interpreter checks, on the copy that holds the echo kind.
ECHO_PROBE = r"""
import json, re, sys
from pathlib import Path

import yaml

from handlers.model_handler import ModelHandler
from modelserver.build.archive import model_config, requested_backend
from modelserver.catalogue import Catalogue, Source
from modelserver.errors import ConfigError
from modelserver.kinds.echo import EchoSettings
from modelserver.openapi import build_openapi
from modelserver.protocols.open_inference import PROTOCOL, PROTOCOL_HEADER
from tests.helpers import FakeContext

work = Path(sys.argv[1])


def write_echo_catalogue(path, handler_config):
    entry = {"kind": "echo", "source": {"default": "x"}, "handler_config": handler_config}
    path.write_text(yaml.safe_dump({"models": {"echo": entry}, "routes": {"/echo": {"model": "echo"}}}))
    return path


catalogue = Catalogue.load(write_echo_catalogue(work / "models.yaml", {"prefix": "echo: "}))
entry = catalogue.entry("echo")
assert isinstance(entry.settings, EchoSettings) and entry.settings.prefix == "echo: "
assert requested_backend(entry) == "" and entry.kind_declared.export is None
assert model_config(entry, Source())["handler"] == {"prefix": "echo: "}

for handler_config, problem in [
    ({"prefx": "!"}, r"models\.echo: .*handler_config\.prefx: is not a known field"),
    (
        {"max_chars": 0},
        r"models\.echo: .*handler_config\.max_chars: Input should be greater than or equal to 1",
    ),
]:
    try:
        Catalogue.load(write_echo_catalogue(work / "typo.yaml", handler_config))
    except ConfigError as error:
        assert re.search(problem, str(error)), str(error)
    else:
        raise AssertionError(f"{handler_config} loaded")

document = build_openapi(catalogue)
operation = document["paths"]["/echo"]["post"]
assert operation["requestBody"]["content"]["application/json"]["example"] == {"text": "hi"}
assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/EchoAnswer")
assert "422" in operation["responses"] and "/predictions/echo" in document["paths"]
assert {"EchoRequest", "EchoAnswer"} <= set(document["components"]["schemas"])
infer = document["paths"]["/v2/models/echo/infer"]["post"]
assert infer["requestBody"]["content"]["application/json"]["example"] == {
    "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]
}

context = FakeContext(work, "echo", entry.handler_config, model_name="echo")
handler = ModelHandler()
handler.initialize(context)
answers = handler.handle(
    [{"body": b'{"text": "a"}'}, {"body": b'{"text": 1}'}, {"body": {"text": "b"}}], context
)
assert [json.loads(answer) for answer in answers][::2] == [{"echo": "echo: a"}, {"echo": "echo: b"}]
assert [context.status_of(i) for i in range(3)] == [200, 422, 200]

v2 = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]}]}
v2_header = {0: {PROTOCOL_HEADER: PROTOCOL}}
context = FakeContext(work, "echo", entry.handler_config, model_name="echo", request_headers=v2_header)
[answer] = handler.handle([{"body": json.dumps(v2).encode()}], context)
assert context.status_of(0) == 200, answer
assert json.loads(answer)["outputs"] == [
    {"name": "echo", "datatype": "BYTES", "shape": [2], "data": ["echo: x", "echo: y"]}
]
print("echo served")
"""

ECHO_FILES = {Path("kinds/echo/__init__.py"): ECHO_PACKAGE, Path("kinds/echo/worker.py"): ECHO_WORKER}
REGISTRY = Path("kinds/registry.py")


def _copy_of_modelserver(root: Path) -> Path:
    """`modelserver` copied under `root`, without bytecode caches."""
    copy = root / "modelserver"
    shutil.copytree(PROJECT_ROOT / "modelserver", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _registered(registry: str, kind: str) -> str:
    """The registry's source with `kind` added as the last line of its table."""
    table_end = registry.index(")\n", registry.index("KIND_PACKAGES = ("))
    return f'{registry[:table_end]}    "{kind}",\n{registry[table_end:]}'


def _changed_files(original: Path, copy: Path) -> set[Path]:
    """Files (outside bytecode caches) that differ, or exist on one side only."""
    changed: set[Path] = set()

    def walk(compared: filecmp.dircmp[str], where: Path) -> None:
        for name in [*compared.left_only, *compared.right_only, *compared.diff_files]:
            path = where / name
            if name != "__pycache__":
                changed.add(path)
        for name, sub in compared.subdirs.items():
            if name != "__pycache__":
                walk(sub, where / name)

    walk(filecmp.dircmp(original, copy, ignore=["__pycache__"]), Path())
    return changed


def test_a_new_kind_is_one_package_and_one_registry_line(tmp_path: Path) -> None:
    copy = _copy_of_modelserver(tmp_path)
    for path, text in ECHO_FILES.items():
        (copy / path).parent.mkdir(exist_ok=True)
        (copy / path).write_text(text, encoding="utf-8")
    (copy / REGISTRY).write_text(_registered((copy / REGISTRY).read_text(encoding="utf-8"), "echo"))

    done = subprocess.run(
        [sys.executable, "-c", ECHO_PROBE, str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,  # the copy, not the repository's modelserver, is the one imported
        env={**os.environ, "PYTHONPATH": f"{tmp_path}:{PROJECT_ROOT}"},
    )
    assert done.returncode == 0 and "echo served" in done.stdout, done.stderr

    original = PROJECT_ROOT / "modelserver"
    assert _changed_files(original, copy) == {Path("kinds/echo"), REGISTRY}
    assert {path.relative_to(copy) for path in (copy / "kinds" / "echo").rglob("*.py")} == set(ECHO_FILES)
    diff = list(
        difflib.unified_diff(
            (original / REGISTRY).read_text(encoding="utf-8").splitlines(),
            (copy / REGISTRY).read_text(encoding="utf-8").splitlines(),
            n=0,
            lineterm="",
        )
    )
    changes = [line for line in diff[2:] if not line.startswith("@@")]
    assert changes == ['+    "echo",']


def write_echo_catalogue(path: Path) -> Path:
    """A catalogue serving one echo model on a public route."""
    entry = {"kind": "echo", "source": {"default": "x"}, "handler_config": {}}
    path.write_text(yaml.safe_dump({"models": {"echo": entry}, "routes": {"/echo": {"model": "echo"}}}))
    return path


def test_an_unknown_kind_fails_the_catalogue_and_the_worker(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"models\.echo: .*kind 'echo' is not one of \['crystal', 'fill_mask'"
    ):
        Catalogue.load(write_echo_catalogue(tmp_path / "models.yaml"))
    with pytest.raises(ConfigError, match=r"unknown model kind 'echo'; known: \['crystal'"):
        ModelHandler().initialize(FakeContext(tmp_path, "echo", {}))
    with pytest.raises(ConfigError, match="unknown model kind None"):
        kind_named(None)


def test_an_archive_from_before_kinds_and_a_catalogue_with_handler_paths_say_what_to_do(
    tmp_path: Path,
) -> None:
    class OlderArchive(FakeContext):
        """What the builder wrote before model kinds: a `handler:` section and no `kind`."""

        @property
        def model_yaml_config(self) -> dict[str, object]:
            return {"minWorkers": 1, "handler": self.handler_config}

    with pytest.raises(ConfigError, match="older builder; rebuild"):
        ModelHandler().initialize(OlderArchive(tmp_path, "crystal", {}))
    path = tmp_path / "models.yaml"
    path.write_text(
        yaml.safe_dump({"models": {"m": {"handler": "handlers/crystal_handler.py", "source": {}}}})
    )
    with pytest.raises(ConfigError, match=r"models\.m: 'handler' is now 'kind', one of \['crystal'"):
        Catalogue.load(path)


def test_every_catalogue_entry_names_a_registered_kind_with_a_loader() -> None:
    catalogue = Catalogue.load()
    assert {entry.kind for entry in catalogue.models.values()} == set(KINDS)
    probe = "import importlib\n" + "".join(
        f"assert callable(importlib.import_module({module!r}).{function})\n"
        for module, function in (
            target.split(":") for kind in KINDS.values() for target in (kind.loader, kind.export) if target
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, cwd=PROJECT_ROOT
    )
    assert done.returncode == 0, done.stderr
