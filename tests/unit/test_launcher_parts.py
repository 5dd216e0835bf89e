"""Launcher pieces without processes: settings, configs, readiness."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from modelserver.build.archive import build_archive, recorded_names
from modelserver.catalogue import Catalogue
from modelserver.launcher.build_step import served_archives
from modelserver.launcher.envoy.config import BODY_LIMIT_BYTES, HEALTH_CLUSTER, envoy_config, render_config
from modelserver.launcher.envoy.process import validate
from modelserver.launcher.envoy.routes import CONNECTION_RETRIES, GENERIC_CLUSTER, SAFE_RETRIES, RouteTable
from modelserver.launcher.pages.health import Readiness
from modelserver.launcher.settings import (
    LaunchSettings,
    Ports,
    declared_options,
    settings_from_command_line,
)
from modelserver.launcher.supervisor import Backoff, Supervisor
from modelserver.launcher.torchserve.config import CONFIG_TEMPLATE, read_properties, runtime_properties
from modelserver.launcher.torchserve.keys import KEY_FILE, Tokens
from modelserver.launcher.torchserve.management import (
    SCALED_WORKERS_FILE,
    read_scaled_workers,
    record_scaled_workers,
)
from modelserver.project import PROJECT_ROOT


def test_port_comes_from_the_environment_and_the_flag_wins() -> None:
    assert settings_from_command_line([], {"PORT": "8080"}).ports.public == 8080
    assert settings_from_command_line(["--port", "3100"], {"PORT": "8080"}).ports.public == 3100
    assert settings_from_command_line([], {}).ports.public == 3000


def test_every_setting_is_declared_once_on_its_field() -> None:
    """Each field but the nested ports and tracing (read from OTEL_*) has exactly one option,
    and an empty command line gives the fields' own defaults."""
    declared = {setting.path: setting.option for setting in declared_options()}
    assert {path for path in declared if path[0] == "ports"} == {
        ("ports", name) for name in Ports().model_dump()
    }
    others = set(LaunchSettings.model_fields) - {"ports", "tracing"}
    assert {path[0] for path in declared if path[0] != "ports"} == others
    flags = [option.flag for option in declared.values()]
    assert len(flags) == len(set(flags))
    assert settings_from_command_line([], {}) == LaunchSettings()
    mib = settings_from_command_line(["--log-file-mib", "0.5", "--no-build", "--models", "a", "b"], {})
    assert (mib.log_file_bytes, mib.build, mib.models) == (1 << 19, False, ("a", "b"))


@pytest.mark.parametrize(
    ("argv", "environ", "said"),
    [
        ([], {"PORT": "abc"}, "PORT 'abc': Input should be a valid integer"),
        ([], {"PORT": "70000"}, "PORT '70000': Input should be less than or equal to 65535"),
        (
            ["--metrics-port", "99999"],
            {},
            "--metrics-port '99999': Input should be less than or equal to 65535",
        ),
        (["--health-port", "3000"], {}, "--port and --health-port are both 3000"),
        ([], {"METRICS_PORT": "8080", "PORT": "8080"}, "PORT and METRICS_PORT are both 8080"),
        (["--inference-port", "9081"], {}, "--inference-port and --management-port are both 9081"),
        (["--log-file-mib", "ten"], {}, "--log-file-mib 'ten': not a number"),
        (["--envoy-workers", "0"], {}, "--envoy-workers '0': Input should be greater than or equal to 1"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_exit_2(
    argv: list[str], environ: dict[str, str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        settings_from_command_line(argv, environ)
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.count("\n") == 1, error
    assert error.startswith("python -m modelserver.launcher: error: ") and said in error, error


def test_a_bad_port_stops_the_launcher_before_anything_starts(tmp_path: Path) -> None:
    """What `PORT=abc make run` runs: one line, exit 2, no traceback, no run folder."""
    run = subprocess.run(
        [sys.executable, "-m", "modelserver.launcher", "--runtime-dir", str(tmp_path / "run")],
        env={"PATH": "/usr/bin:/bin", "PORT": "abc"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert run.stderr.strip().count("\n") == 0 and "PORT 'abc'" in run.stderr
    assert not (tmp_path / "run").exists()


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
    (tmp_path / "envoy").mkdir()  # Envoy opens the access log there even to validate
    settings = LaunchSettings(runtime_dir=tmp_path)
    config.write_text(render_config(settings, "t0ken", RouteTable(Catalogue.load(), {})))
    built = yaml.safe_load(config.read_text())
    [host] = built["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][-1]["typed_config"][
        "route_config"
    ]["virtual_hosts"]
    assert host["request_headers_to_add"][0]["header"]["value"] == "Bearer t0ken"
    result = validate(config)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout + result.stderr


def test_envoy_validation_catches_a_broken_config(tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    rendered = render_config(LaunchSettings(), "t", RouteTable(Catalogue.load(), {}))
    config.write_text(rendered.replace("prefix_rewrite", "prefix_rewrote"))
    assert validate(config).returncode != 0


def test_every_limit_is_written_once_into_the_envoy_config() -> None:
    settings = LaunchSettings(max_connections=77)
    built = envoy_config(settings, "t", RouteTable(Catalogue.load(), {}))
    listener, prometheus = built["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][-1]["typed_config"]
    assert listener["per_connection_buffer_limit_bytes"] == BODY_LIMIT_BYTES
    # The Prometheus listener has the public one's protections, from the same functions.
    scrape = prometheus["filter_chains"][0]["filters"][-1]["typed_config"]
    assert {key: prometheus[key] for key in ("listener_filters", "listener_filters_timeout")} == {
        key: listener[key] for key in ("listener_filters", "listener_filters_timeout")
    }
    for key in ("request_headers_timeout", "request_timeout", "max_request_headers_kb", "local_reply_config"):
        assert scrape[key] == manager[key], key
    buffer = next(f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.buffer")
    assert buffer["typed_config"]["max_request_bytes"] == BODY_LIMIT_BYTES
    too_large = manager["local_reply_config"]["mappers"][0]
    assert too_large["filter"]["status_code_filter"]["comparison"]["value"]["default_value"] == 413
    assert (
        "%METADATA(ROUTE:modelserver:body_limit)%"
        in too_large["body_format_override"]["json_format"]["error"]
    )
    monitors = built["overload_manager"]["resource_monitors"]
    assert monitors[1]["typed_config"]["max_active_downstream_connections"] == 77
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    assert any(r.get("route", {}).get("cluster") == GENERIC_CLUSTER for r in routes)
    retried = [r["route"]["retry_policy"] for r in routes if "retry_policy" in r.get("route", {})]
    assert retried and all(policy in (SAFE_RETRIES, CONNECTION_RETRIES) for policy in retried)
    clusters = {cluster["name"] for cluster in built["static_resources"]["clusters"]}
    assert {GENERIC_CLUSTER, HEALTH_CLUSTER} <= clusters


def test_the_rendered_config_command_prints_what_the_launcher_runs() -> None:
    # The operators' command: `python -m modelserver envoy-config [launcher options]`.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelserver",
            "envoy-config",
            "--port",
            "3456",
            "--prometheus-port",
            "3457",
            "--max-connections",
            "99",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_ROOT,
    )
    printed = yaml.safe_load(done.stdout)
    ports = {
        found["name"]: found["address"]["socket_address"]["port_value"]
        for found in printed["static_resources"]["listeners"]
    }
    assert ports == {"public": 3456, "prometheus": 3457}
    assert (
        printed["overload_manager"]["resource_monitors"][1]["typed_config"][
            "max_active_downstream_connections"
        ]
        == 99
    )


def test_readiness_names_what_is_not_ready() -> None:
    statuses = {"a": "ready", "b": "no workers (scaled to zero)"}
    readiness = Readiness(["a", "b"], statuses.__getitem__)
    readiness.refresh()
    code, body = readiness.report()
    assert code == 503 and "b: no workers" in body["error"] and body["models"]["a"] == "ready"
    statuses["b"] = "ready"
    readiness.refresh()
    assert readiness.report() == (200, {"status": "Healthy", "models": {"a": "ready", "b": "ready"}})
    readiness.set_phase("stopping")
    code, body = readiness.report()
    assert code == 503 and "shutting down" in body["error"]


def test_readiness_never_returns_from_stopping() -> None:
    readiness = Readiness(["a"], lambda _name: "ready")
    readiness.refresh()
    readiness.set_phase("serving")
    readiness.set_phase("stopping")
    readiness.set_phase("serving")
    assert readiness.phase == "stopping" and readiness.report()[0] == 503


def test_a_torchserve_without_keys_is_starting_not_hanging(tmp_path: Path) -> None:
    from modelserver.launcher.torchserve.process import TorchServe  # pylint: disable=import-outside-toplevel

    torchserve = TorchServe(LaunchSettings(runtime_dir=tmp_path), {}, {})
    assert torchserve.model_status("m") == "TorchServe is starting"


def write_key_file(folder: Path, inference: str, expires: datetime) -> None:
    """A key file as TorchServe 0.12 writes it (Java's Instant prints nanoseconds)."""
    stamp = expires.strftime("%Y-%m-%dT%H:%M:%S.123456789Z")
    keys = {
        "management": {"key": "m-" + inference, "expiration time": stamp},
        "inference": {"key": inference, "expiration time": stamp},
        "API": {"key": "api"},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / KEY_FILE).write_text(json.dumps(keys), encoding="utf-8")


def test_keys_are_due_for_renewal_once_half_their_lifetime_has_passed(tmp_path: Path) -> None:
    from modelserver.launcher.torchserve.process import TorchServe  # pylint: disable=import-outside-toplevel

    now = datetime(2027, 1, 1, tzinfo=UTC)
    torchserve = TorchServe(LaunchSettings(runtime_dir=tmp_path, key_lifetime_min=10), {}, {})
    write_key_file(tmp_path / "torchserve", "k1", now + timedelta(minutes=6))
    tokens = torchserve.read_tokens()
    assert tokens is not None and tokens.api == "api"
    assert tokens.expires == now + timedelta(minutes=6, microseconds=123456)
    assert not torchserve.keys_due(now)  # 6 of 10 minutes left
    assert torchserve.keys_due(now + timedelta(minutes=1, seconds=1))  # under 5 left
    # The committed lifetime (a year) unless the launcher is told otherwise.
    template = CONFIG_TEMPLATE.read_text(encoding="utf-8")
    assert runtime_properties(LaunchSettings(), template)["token_expiration_min"] == "525600"
    short = settings_from_command_line(["--key-lifetime-min", "0.3"], {})
    assert runtime_properties(short, template)["token_expiration_min"] == "0.3"
    yearly = TorchServe(LaunchSettings(runtime_dir=tmp_path / "yearly"), {}, {})
    write_key_file(tmp_path / "yearly" / "torchserve", "k2", now + timedelta(days=200))
    assert not yearly.keys_due(now)  # 200 of 365 days left
    assert yearly.keys_due(now + timedelta(days=20))  # 180 left: under half


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


@pytest.mark.parametrize(
    "modules",
    [
        "modelserver.launcher.__main__",
        # What the launcher reads of the kinds: the registry, the catalogue, the API document.
        "modelserver.kinds.registry, modelserver.catalogue, modelserver.openapi",
    ],
)
def test_the_launcher_imports_no_ml_framework(modules: str) -> None:
    # The supervising process stays small and starts at once: only model workers (and the
    # archive build's export child) load torch, transformers, scikit-learn or OpenVINO.
    probe = (
        f"import sys, {modules}\n"
        "print(sorted(m for m in ('torch', 'transformers', 'sklearn', 'scipy', 'openvino', 'skops')"
        " if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    )
    assert done.stdout.strip() == "[]"


def test_archives_are_built_in_a_child_so_the_launcher_never_loads_a_framework(tmp_path: Path) -> None:
    # Building trains the crystal recipes (scikit-learn and PyTorch); the supervisor that asked
    # for it must hold neither, and still learn what was built and what each model answers to.
    probe = (
        "import sys\n"
        "from pathlib import Path\n"
        "from modelserver.project import environment\n"
        "from modelserver.launcher.settings import LaunchSettings\n"
        "from modelserver.catalogue import Catalogue\n"
        "from modelserver.launcher.build_step import served_archives\n"
        "import modelserver.launcher.supervisor\n"
        "root = Path(sys.argv[1])\n"
        "settings = LaunchSettings(model_store=root / 'store', runtime_dir=root / 'run',\n"
        "                          models=('crystal_sklearn', 'crystal_pytorch'))\n"
        "archives = served_archives(settings, environment(), Catalogue.load(settings.catalogue)).archives\n"
        "print(sorted(archives), all(path.exists() for path in archives.values()))\n"
        "print(sorted(m for m in ('torch', 'sklearn', 'transformers', 'openvino') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=PROJECT_ROOT,
    )
    built, frameworks = done.stdout.strip().splitlines()[-2:]
    assert built == "['crystal_pytorch', 'crystal_sklearn'] True"
    assert frameworks == "[]"


def test_the_project_command_line_lists_its_commands_and_refuses_others() -> None:
    listed = subprocess.run(
        [sys.executable, "-m", "modelserver"], capture_output=True, text=True, check=False, cwd=PROJECT_ROOT
    )
    assert listed.returncode == 2
    assert all(command in listed.stderr for command in ("configmap", "api-samples", "envoy-config"))
    checked = subprocess.run(
        [sys.executable, "-m", "modelserver", "configmap", "--check"],
        capture_output=True,
        text=True,
        check=False,
        cwd=PROJECT_ROOT,
    )
    assert checked.returncode == 0, checked.stdout


def test_a_store_served_as_it_is_routes_by_the_names_its_build_recorded(
    tmp_path: Path, crystal_model_dirs: dict[str, Path]
) -> None:
    # `--no-build` serves archives built earlier: a body's `model_name` must be routed by the
    # names the archive's worker accepts (its build's), not by what models.yaml says today.
    store = tmp_path / "store"
    model_file = crystal_model_dirs["sklearn"] / "sklearn.model"
    built = build_archive(
        Catalogue.load().entry("crystal_sklearn"), store, {"CRYSTAL_SKLEARN_MODEL": str(model_file)}
    )
    assert (
        recorded_names(Catalogue.load().entry("crystal_sklearn"), store)
        == built.names
        == ("crystal_sklearn",)
    )
    catalogue = yaml.safe_load((PROJECT_ROOT / "models.yaml").read_text(encoding="utf-8"))
    catalogue["models"]["crystal_sklearn"]["aliases"] = ["iris-classifier"]
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(catalogue), encoding="utf-8")
    settings = LaunchSettings(
        catalogue=tmp_path / "models.yaml", model_store=store, runtime_dir=tmp_path / "run", build=False
    )
    served = served_archives(settings, {}, Catalogue.load(settings.catalogue))
    assert served.names == {"crystal_sklearn": ("crystal_sklearn",)}, "only the built archive has a record"
    assert served.archives == {"crystal_sklearn": built.archive}
    # The others have no archive in the store: skipped, saying so, never handed to TorchServe.
    assert set(served.skipped) == set(catalogue["models"]) - {"crystal_sklearn"}
    assert all("no archive in the model store" in reason for reason in served.skipped.values())
    routes = RouteTable(Catalogue.load(settings.catalogue), served.skipped, served.names)
    choices = routes.choices(Catalogue.load(settings.catalogue).routes["/predict"])
    assert "iris-classifier" not in choices and choices["crystal_sklearn"] == "crystal_sklearn"
    assert choices["camembert-base"] == "camembert", "an unbuilt model keeps the catalogue's names"


def test_envoy_gets_the_open_files_its_connection_limit_needs() -> None:
    # In a child: the soft limit is lowered to the common 1024 first, as on many machines.
    probe = (
        "import resource\n"
        "from modelserver.launcher.envoy.process import FILES_BESIDES_CLIENTS, allow_open_files\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))\n"
        "wanted = 4096 + FILES_BESIDES_CLIENTS\n"
        "granted = allow_open_files(4096)\n"
        "expected = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)\n"
        "print(granted == expected == resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=PROJECT_ROOT
    )
    assert done.stdout.strip() == "True", done.stderr


def test_idle_and_silent_connections_are_bounded_under_pressure() -> None:
    config = envoy_config(LaunchSettings(max_connections=500), "token", RouteTable(Catalogue.load(), {}))
    for listener in config["static_resources"]["listeners"]:  # the API's and the Prometheus one
        assert (
            listener["listener_filters_timeout"] == "5s"
            and listener["continue_on_listener_filters_timeout"] is False
        )
    [action] = [a for a in config["overload_manager"]["actions"] if a["name"].endswith("reduce_timeouts")]
    # Pressure on connections or on Envoy's heap: idle connections, and requests that stall
    # while they are sent (a header a line at a time, a body that never ends), are cut sooner.
    assert [t["name"].rsplit(".", 1)[1] for t in action["triggers"]] == [
        "global_downstream_max_connections",
        "fixed_heap",
    ]
    for trigger in action["triggers"]:
        assert 0 < trigger["scaled"]["scaling_threshold"] < trigger["scaled"]["saturation_threshold"] <= 1
    assert action["typed_config"]["timer_scale_factors"] == [
        {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": "2s"},
        {"timer": "HTTP_DOWNSTREAM_STREAM_IDLE", "min_timeout": "1s"},
    ]


def test_a_stop_signal_only_sets_a_flag_and_the_main_thread_acts_on_it(tmp_path: Path) -> None:
    supervisor = Supervisor(LaunchSettings(runtime_dir=tmp_path / "run"), {})
    readiness = Readiness(["m"], lambda _name: "ready")
    supervisor._readiness = readiness  # pylint: disable=protected-access
    # The signal may land while the main thread holds the readiness lock (or logging's): the
    # handler must finish without taking it.
    with readiness._lock:  # pylint: disable=protected-access
        handler = threading.Thread(target=supervisor.request_stop, args=(signal.SIGTERM,))
        handler.start()
        handler.join(timeout=2)
        assert not handler.is_alive(), "the signal handler waited for a lock"
    assert readiness.phase == "starting", "the handler itself changed nothing"
    assert supervisor.stopping() and readiness.phase == "stopping"
    assert supervisor._wait(5.0)  # pylint: disable=protected-access


def test_a_new_launcher_ends_the_groups_a_dead_one_left_and_nothing_else(tmp_path: Path) -> None:
    from modelserver.launcher.processes import (  # pylint: disable=import-outside-toplevel
        GROUP_FILE_SUFFIX,
        ManagedProcess,
        end_orphans,
    )

    run = tmp_path / "run"
    (run / "torchserve").mkdir(parents=True)
    left = ManagedProcess(
        "torchserve", ["sleep", "600"], {}, run / "torchserve", run / "torchserve" / "out.log"
    )
    left.start()  # as the dead launcher's child would have been: its guard outlived nobody yet
    other = subprocess.Popen(  # pylint: disable=consider-using-with
        ["sleep", "600"], start_new_session=True, cwd=tmp_path
    )  # not the stack's
    (run / "envoy").mkdir()
    (run / "envoy" / f"envoy{GROUP_FILE_SUFFIX}").write_text(str(other.pid))  # a reused number
    try:
        assert left.pid is not None and left.alive()
        assert end_orphans(run) == [left.pid]
        assert left.exit_code() is not None or not left.alive()
        assert other.poll() is None, "a group that does not work in this folder is left alone"
        assert not list(run.rglob(f"*{GROUP_FILE_SUFFIX}"))
    finally:
        other.kill()
        other.wait()
        left.stop(timeout_s=2)


def test_a_model_the_image_build_skipped_says_why_when_served_as_it_is(tmp_path: Path) -> None:
    """An image build skips a Hub model it cannot fetch and records why in the store's report;
    the container (--no-build) repeats that reason instead of waiting for a missing archive."""
    from modelserver.launcher.build_step import BUILD_REPORT, unbuilt_reasons  # pylint: disable=import-outside-toplevel

    store = tmp_path / "store"
    store.mkdir()
    reason = "cannot fetch bert-base-uncased: the Hub (huggingface.co) is not reachable"
    (store / BUILD_REPORT).write_text(json.dumps({"skipped": {"fill_mask": reason}}), encoding="utf-8")
    reasons = unbuilt_reasons(store, {"fill_mask", "camembert"})
    assert reasons["fill_mask"] == reason
    assert "no archive in the model store" in reasons["camembert"]
    (store / BUILD_REPORT).write_text("not json", encoding="utf-8")
    assert "no archive" in unbuilt_reasons(store, {"fill_mask"})["fill_mask"]


def test_metrics_port_comes_from_its_variable_or_option() -> None:
    assert settings_from_command_line([], {}).ports.prometheus == 3001
    assert settings_from_command_line([], {"METRICS_PORT": "9100"}).ports.prometheus == 9100
    from_option = settings_from_command_line(["--prometheus-port", "9200"], {"METRICS_PORT": "9100"})
    assert from_option.ports.prometheus == 9200


def test_connect_and_upgrades_are_refused_with_a_sentence() -> None:
    """CONNECT reaches a route answering a JSON 405 (the filters that wait for a body are off
    there), on both listeners; Envoy's 403 for an Upgrade gets a sentence of its own."""
    from modelserver.launcher.envoy import config  # pylint: disable=import-outside-toplevel

    built = config.envoy_config(LaunchSettings(), "t", RouteTable(Catalogue.load(), {}))
    for listener in built["static_resources"]["listeners"]:
        manager = listener["filter_chains"][0]["filters"][-1]["typed_config"]
        assert manager["upgrade_configs"] == [{"upgrade_type": "CONNECT"}]
        first = manager["route_config"]["virtual_hosts"][0]["routes"][0]
        assert first["match"] == {"connect_matcher": {}}
        assert first["direct_response"]["status"] == 405
        if listener["name"] == config.PUBLIC_LISTENER:
            assert {config.BUFFER_FILTER, config.BODY_FIELDS_FILTER} <= set(first["typed_per_filter_config"])
    mappers = config.local_replies()["mappers"]
    assert any(m.get("body", {}).get("inline_string") == config.NO_UPGRADE for m in mappers)


def test_the_operations_port_has_a_connection_budget_of_its_own() -> None:
    """/healthcheck and /metrics on the operations port: outside the public port's
    `--max-connections`, and at most OPERATIONS_CONNECTIONS of its own."""
    from modelserver.launcher.envoy import config  # pylint: disable=import-outside-toplevel

    built = config.envoy_config(LaunchSettings(), "t", RouteTable(Catalogue.load(), {}))
    listeners = {found["name"]: found for found in built["static_resources"]["listeners"]}
    operations, public = listeners[config.PROMETHEUS_LISTENER], listeners[config.PUBLIC_LISTENER]
    assert operations["ignore_global_conn_limit"] is True and "ignore_global_conn_limit" not in public
    limit, manager = operations["filter_chains"][0]["filters"]
    assert limit["name"] == "envoy.filters.network.connection_limit"
    assert limit["typed_config"]["max_connections"] == config.OPERATIONS_CONNECTIONS
    routes = manager["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    clusters = {r["match"].get("path"): r["route"]["cluster"] for r in routes if "route" in r}
    assert clusters == {
        "/metrics": config.METRICS_CLUSTER,
        "/healthcheck": HEALTH_CLUSTER,
        "/traffic": config.METRICS_CLUSTER,
    }


def test_memory_pressure_resets_big_streams_and_its_refusals_are_ours() -> None:
    """Before Envoy's heap is full enough to refuse every request, the streams holding the most
    memory are reset (HTTP/2, where Envoy accounts memory per stream); a refusal is our JSON with
    Retry-After, matched by its code details (Envoy sets no response flag on it)."""
    from modelserver.launcher.envoy import config  # pylint: disable=import-outside-toplevel

    manager = config.overload_manager(LaunchSettings())
    actions = {a["name"].rsplit(".", 1)[1]: a["triggers"] for a in manager["actions"]}
    [reset] = actions["reset_high_memory_stream"]
    [refuse] = actions["stop_accepting_requests"]
    assert (
        reset["scaled"]["scaling_threshold"]
        < reset["scaled"]["saturation_threshold"]
        < refuse["threshold"]["value"]
    )
    assert manager["buffer_factory_config"]["minimum_account_to_track_power_of_two"] >= 10
    [overload] = [
        m
        for m in config.local_replies()["mappers"]
        if "overload" in str(m["filter"].get("extension_filter", {}))
    ]
    assert overload["status_code"] == 503 and overload["headers_to_add"][0]["header"]["key"] == "retry-after"
