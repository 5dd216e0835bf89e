"""The kind registry: one table serves the catalogue, the archive build, the API document and
the one generic handler, so adding a kind is one module and one registry line.

The `echo` kind below is such a module (settings, request, answer, runtime, loader), written
in this test file; registering it is the only other change, and everything picks it up.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from handlers.model_handler import ModelHandler
from modelserver.build.archive import requested_runtime
from modelserver.catalogue import Catalogue
from modelserver.errors import ConfigError, InvalidInput
from modelserver.kinds import ModelFiles, registry
from modelserver.kinds.contract import ModelRuntime
from modelserver.kinds.registry import KINDS, Kind, kind_named
from modelserver.openapi import build_openapi
from modelserver.project import PROJECT_ROOT
from modelserver.validation import parse_settings, validate_body
from tests.helpers import FakeContext


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


class EchoRuntime(ModelRuntime[EchoRequest]):
    """Parses and answers a batch, as every kind's runtime does."""

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


def load_echo_runtime(files: ModelFiles) -> EchoRuntime:
    """The loader a registry line names."""
    return EchoRuntime(parse_settings(EchoSettings, files.settings))


ECHO = Kind(
    loader=f"{__name__}:load_echo_runtime",
    settings=EchoSettings,
    request=EchoRequest,
    answer=EchoAnswer,
    errors={422: "no text"},
    example={"text": "hi"},
)


@pytest.fixture(name="echo_kind")
def fixture_echo_kind(monkeypatch: pytest.MonkeyPatch) -> Kind:
    """The echo kind, registered with its one line for the length of a test."""
    monkeypatch.setitem(registry.KINDS, "echo", ECHO)
    return ECHO


def write_echo_catalogue(path: Path, handler_config: dict[str, Any]) -> Path:
    """A catalogue serving one echo model on a public route."""
    entry = {"kind": "echo", "source": {"default": "x"}, "handler_config": handler_config}
    path.write_text(yaml.safe_dump({"models": {"echo": entry}, "routes": {"/echo": {"model": "echo"}}}))
    return path


@pytest.mark.usefixtures("echo_kind")
def test_a_new_kind_is_one_module_and_one_registry_line(tmp_path: Path) -> None:
    catalogue = Catalogue.load(write_echo_catalogue(tmp_path / "models.yaml", {"prefix": "echo: "}))
    entry = catalogue.entry("echo")
    assert requested_runtime(entry) == "" and entry.export_task is None

    document = build_openapi(catalogue)
    operation = document["paths"]["/echo"]["post"]
    assert operation["requestBody"]["content"]["application/json"]["example"] == {"text": "hi"}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/EchoAnswer"
    )
    assert "422" in operation["responses"] and "/predictions/echo" in document["paths"]
    assert {"EchoRequest", "EchoAnswer"} <= set(document["components"]["schemas"])

    context = FakeContext(tmp_path, "echo", entry.handler_config, model_name="echo")
    handler = ModelHandler()
    handler.initialize(context)
    answers = handler.handle(
        [{"body": b'{"text": "a"}'}, {"body": b'{"text": 1}'}, {"body": {"text": "b"}}], context
    )
    assert [json.loads(answer) for answer in answers][::2] == [{"echo": "echo: a"}, {"echo": "echo: b"}]
    assert [context.status_of(i) for i in range(3)] == [200, 422, 200]


@pytest.mark.usefixtures("echo_kind")
@pytest.mark.parametrize(
    ("handler_config", "problem"),
    [
        ({"prefx": "!"}, r"models\.echo: .*handler_config\.prefx: is not a known field"),
        (
            {"max_chars": 0},
            r"models\.echo: .*handler_config\.max_chars: Input should be greater than or equal to 1",
        ),
    ],
)
def test_a_typo_in_a_kinds_settings_fails_the_catalogue_naming_model_and_field(
    tmp_path: Path, handler_config: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        Catalogue.load(write_echo_catalogue(tmp_path / "models.yaml", handler_config))


def test_an_unknown_kind_fails_the_catalogue_and_the_worker(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"models\.echo: .*kind 'echo' is not one of \['crystal', 'fill_mask'"
    ):
        Catalogue.load(write_echo_catalogue(tmp_path / "models.yaml", {}))
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
        def model_yaml_config(self) -> dict[str, Any]:
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
        for module, function in (kind.loader.split(":") for kind in KINDS.values())
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False, cwd=PROJECT_ROOT
    )
    assert done.returncode == 0, done.stderr
