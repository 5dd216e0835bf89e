"""Launcher pieces without processes: settings, configs, readiness."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelserver.catalogue import PROJECT_ROOT, Catalogue
from modelserver.launcher.__main__ import parse_settings
from modelserver.launcher.envoy import render_config, validate
from modelserver.launcher.health import Readiness
from modelserver.launcher.routes import RouteTable
from modelserver.launcher.settings import LaunchSettings, Ports
from modelserver.launcher.supervisor import Backoff, Supervisor
from modelserver.launcher.templates import render
from modelserver.launcher.torchserve import (
    CONFIG_TEMPLATE,
    SCALED_WORKERS_FILE,
    Tokens,
    read_properties,
    read_scaled_workers,
    record_scaled_workers,
    runtime_properties,
)


def test_port_comes_from_the_environment_and_the_flag_wins() -> None:
    assert parse_settings([], {"PORT": "8080"}).ports.public == 8080
    assert parse_settings(["--port", "3100"], {"PORT": "8080"}).ports.public == 3100
    assert parse_settings([], {}).ports.public == 3000


def test_torchserve_listens_on_loopback_only_and_keeps_its_fences() -> None:
    settings = LaunchSettings(ports=Ports(inference=9180, management=9181), model_store=Path("/srv/store"))
    props = runtime_properties(settings, CONFIG_TEMPLATE.read_text())
    for key in ("inference_address", "management_address", "metrics_address"):
        assert props[key].startswith("http://127.0.0.1:")
    assert props["grpc_inference_address"] == props["grpc_management_address"] == "127.0.0.1"
    assert props["inference_address"].endswith(":9180") and props["management_address"].endswith(":9181")
    assert props["allowed_urls"] == "file:///srv/store/.*"
    assert props["enable_model_api"] == "false"
    assert props["disable_token_authorization"] == "false"
    assert props["decode_input_request"] == "false"
    ports = {props[k].rsplit(":", 1)[1] for k in ("inference_address", "management_address")}
    assert not ports & {"3000", "8080"}


def test_committed_config_leaves_the_public_ports_free() -> None:
    props = read_properties(CONFIG_TEMPLATE.read_text())
    assert all("3000" not in v and "8080" not in v for v in props.values())


def test_envoy_config_renders_and_validates(tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(render_config(LaunchSettings(), "t0ken", RouteTable(Catalogue.load(), {})))
    text = config.read_text()
    assert "Bearer t0ken" in text and "${" not in text
    result = validate(config)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout + result.stderr


def test_envoy_validation_catches_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    rendered = render_config(LaunchSettings(), "t", RouteTable(Catalogue.load(), {}))
    config.write_text(rendered.replace("prefix_rewrite", "prefix_rewrote"))
    assert validate(config).returncode != 0


def test_templates_refuse_missing_values() -> None:
    assert render("a ${X} b $1 ^x$", {"X": 2}) == "a 2 b $1 ^x$"
    with pytest.raises(KeyError, match="Y"):
        render("${X} ${Y}", {"X": 1})


def test_readiness_names_what_is_not_ready() -> None:
    statuses = {"a": "ready", "b": "no workers (scaled to zero)"}
    readiness = Readiness(["a", "b"], statuses.__getitem__)
    code, body = readiness.report()
    assert code == 503 and "b: no workers" in body["error"] and body["models"]["a"] == "ready"
    statuses["b"] = "ready"
    assert readiness.report() == (200, {"status": "Healthy", "models": {"a": "ready", "b": "ready"}})
    readiness.set_phase("stopping")
    code, body = readiness.report()
    assert code == 503 and "shutting down" in body["error"]


def test_readiness_never_returns_from_stopping() -> None:
    readiness = Readiness(["a"], lambda _name: "ready")
    readiness.set_phase("serving")
    readiness.set_phase("stopping")
    readiness.set_phase("serving")
    assert readiness.phase == "stopping" and readiness.report()[0] == 503


def test_a_torchserve_without_keys_is_starting_not_hanging(tmp_path: Path) -> None:
    from modelserver.launcher.torchserve import TorchServe  # pylint: disable=import-outside-toplevel

    torchserve = TorchServe(LaunchSettings(runtime_dir=tmp_path), {}, {})
    assert torchserve.model_status("m") == "TorchServe is starting"


def test_a_second_launcher_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    from modelserver.errors import ConfigError  # pylint: disable=import-outside-toplevel
    from modelserver.launcher.supervisor import exclusive  # pylint: disable=import-outside-toplevel

    with exclusive(tmp_path), pytest.raises(ConfigError, match="another launcher"), exclusive(tmp_path):
        pass


def test_restarts_wait_longer_while_a_process_keeps_dying(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("modelserver.launcher.supervisor.time.monotonic", lambda: clock[0])
    backoff = Backoff(first_s=1, cap_s=8, quiet_s=600)
    delays = []
    for _ in range(6):
        delays.append(backoff.next_delay())
        clock[0] += 1
    assert delays == [0, 1, 2, 4, 8, 8]
    clock[0] += 601  # a quiet spell: the next death is restarted at once again
    assert backoff.next_delay() == 0


class FakeEnvoy:
    """Records the keys it is hot-restarted with; the new epoch of the first `failures` reloads
    never becomes LIVE (the key only counts once an epoch is LIVE, as in `Envoy.wait_ready`)."""

    def __init__(self, token: str, failures: int = 0) -> None:
        self.inference_token = token
        self.failures = failures
        self.reloads: list[str] = []
        self.stops = 0

    def reload(self, inference_token: str, _routes: RouteTable) -> None:
        """A hot restart: the new epoch starts with the new key."""
        self.reloads.append(inference_token)

    def wait_ready(self) -> None:
        """LIVE, unless this reload is one that fails."""
        if self.failures:
            self.failures -= 1
            raise RuntimeError("Envoy was not ready within 30 s")
        self.inference_token = self.reloads[-1]

    def stop(self) -> None:
        """Every epoch stopped: the serving loop will start a fresh one."""
        self.stops += 1


class FakeTorchServe:
    """A TorchServe whose key file holds `inference`."""

    def __init__(self, inference: str) -> None:
        self.inference = inference

    def read_tokens(self) -> Tokens:
        """The keys as TorchServe wrote them."""
        return Tokens(self.inference, "management")


def test_envoy_left_with_an_old_key_gets_the_new_one_even_after_a_failed_reload() -> None:
    # pylint: disable=protected-access
    supervisor = Supervisor(LaunchSettings(), {})
    envoy = FakeEnvoy("old", failures=1)
    supervisor._torchserve, supervisor._envoy = FakeTorchServe("new"), envoy  # type: ignore[assignment]
    assert supervisor._envoy_key_is_stale()
    assert not supervisor._hand_envoy_the_key()  # the new epoch never became LIVE ...
    assert envoy.stops == 1  # ... so every epoch (all with the old key) is stopped for a fresh start
    assert supervisor._envoy_key_is_stale()
    assert supervisor._hand_envoy_the_key()
    assert envoy.reloads == ["new", "new"] and not supervisor._envoy_key_is_stale()


def test_scaled_workers_are_remembered_per_model_and_a_bad_file_is_none(tmp_path: Path) -> None:
    assert not read_scaled_workers(tmp_path)
    record_scaled_workers(tmp_path, "crystal_sklearn", 3)
    record_scaled_workers(tmp_path, "fill_mask", 0)
    record_scaled_workers(tmp_path, "crystal_sklearn", 2)
    assert read_scaled_workers(tmp_path) == {"crystal_sklearn": 2, "fill_mask": 0}
    (tmp_path / SCALED_WORKERS_FILE).write_text('{"crystal_sklearn": "two", "x": -1, "ok": 1')
    assert not read_scaled_workers(tmp_path)  # not JSON: nothing to restore
    (tmp_path / SCALED_WORKERS_FILE).write_text('{"crystal_sklearn": "two", "x": -1, "ok": 1}')
    assert read_scaled_workers(tmp_path) == {"ok": 1}


def test_the_launcher_imports_no_ml_framework() -> None:
    # The supervising process stays small and starts at once: only model workers (and the
    # archive build's export child) load torch, transformers, scikit-learn or OpenVINO.
    probe = (
        "import sys, modelserver.launcher.__main__\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'scipy', 'openvino', 'skops')"
        " if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    )
    assert done.stdout.strip() == "[]"
