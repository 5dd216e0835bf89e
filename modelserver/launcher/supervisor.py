"""The launcher's lifecycle: build -> TorchServe -> wait for models -> Envoy -> serve -> drain.

While serving, a process that dies is started again (with a growing delay if it keeps dying):
a new TorchServe has new keys, which Envoy gets through a hot restart that keeps the public
port open.

Signals (SIGINT, SIGTERM) start an orderly stop: /healthcheck turns 503, Envoy drains and
finishes in-flight requests, then TorchServe and its workers stop. Nothing is left running.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import signal
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from modelserver.catalogue import Catalogue
from modelserver.errors import ConfigError
from modelserver.launcher.build_step import Served, served_archives
from modelserver.launcher.envoy.config import ACCESS_LOG_NAME
from modelserver.launcher.envoy.process import Envoy
from modelserver.launcher.envoy.routes import RouteTable
from modelserver.launcher.pages.assembly import page_server
from modelserver.launcher.pages.health import HealthServer, Readiness
from modelserver.launcher.pages.metrics import ENVOY_USED_STATS, ENVOY_WATCHED_STATS, with_missing_samples
from modelserver.launcher.port_check import refuse_taken_ports
from modelserver.launcher.processes import CHILD_LOGS, ManagedProcess, end_orphans
from modelserver.launcher.runtime_folder import make_private_folder
from modelserver.launcher.settings import LaunchSettings
from modelserver.launcher.torchserve.management import SCALED_WORKERS_FILE, read_scaled_workers, scale_path
from modelserver.launcher.torchserve.process import TorchServe
from modelserver.launcher.traffic.shadow import ShadowComparer, ShadowTarget
from modelserver.launcher.traffic.watch import TrafficWatch

log = logging.getLogger(__name__)


@contextlib.contextmanager
def exclusive(requested: Path) -> Iterator[Path]:
    """Hold the runtime folder for this launcher; a second one on the same folder is refused.
    The folder is the launcher's user's alone (it holds TorchServe's keys and Envoy's sockets):
    `requested` if this user owns it, else a private subfolder of it. Yields the folder."""
    runtime_dir = make_private_folder(requested)
    with (runtime_dir / "launcher.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(
                f"another launcher is running on {runtime_dir}; stop it, or give this one its own"
                " --runtime-dir and ports (--port, --prometheus-port, --health-port, ...)"
            ) from None
        yield runtime_dir


KEY_RETRY_S = 60  # after a failed key renewal
STOP_POLL_S = 0.1  # how soon the main loop notices a stop signal's flag


@dataclass
class Backoff:
    """Delays between restarts of one process: none the first time, then doubling up to a cap
    while it keeps dying; forgotten after a quiet spell."""

    first_s: float = 1.0
    cap_s: float = 30.0
    quiet_s: float = 600.0
    _failures: int = 0
    _last: float = -math.inf

    def next_delay(self) -> float:
        """Seconds to wait before this restart."""
        now = time.monotonic()
        if now - self._last > self.quiet_s:
            self._failures = 0
        self._last = now
        delay = 0.0 if self._failures == 0 else min(self.cap_s, self.first_s * 2 ** (self._failures - 1))
        self._failures += 1
        return delay


@dataclass
class StopRequest:
    """The signal that asked for a stop (noted by the handler, nothing more), and whether the
    main thread has begun the stop."""

    signum: int | None = None
    begun: bool = False


def _alive(process: ManagedProcess | None) -> bool:
    return process is not None and process.alive()


class Supervisor:  # pylint: disable=too-many-instance-attributes
    """Owns every process of the stack, restarts the ones that die, and stops them in order."""

    def __init__(self, settings: LaunchSettings, environ: Mapping[str, str]) -> None:
        self._settings = settings
        self._environ = dict(environ)
        self._stop = StopRequest()
        self._torchserve: TorchServe | None = None
        self._envoy: Envoy | None = None
        self._health: HealthServer | None = None
        self._readiness: Readiness | None = None
        self._catalogue = Catalogue.load(settings.catalogue)
        self._served = Served()
        self._traffic: TrafficWatch | None = None
        self._comparer: ShadowComparer | None = None
        self._backoff = {"torchserve": Backoff(), "envoy": Backoff()}
        self._disk_problem: str | None = None  # why the serving loop could not write, until it can
        self._next_key_renewal = 0.0  # monotonic time before which a failed renewal is not retried

    def request_stop(self, signum: int = signal.SIGTERM, _frame: object = None) -> None:
        """Signal handler: only note the signal. The handler runs between two instructions of
        the main thread, which may hold a lock (logging's, an Event's, the readiness one) at
        that moment: taking any lock here could deadlock the stop. `stopping()` acts on it."""
        self._stop.signum = signum

    def stopping(self) -> bool:
        """Whether a stop was asked; on the first call after a signal, begin the orderly stop."""
        if self._stop.signum is not None and not self._stop.begun:
            log.info("received %s; stopping", signal.Signals(self._stop.signum).name)
            if self._readiness is not None:
                self._readiness.set_phase("stopping")
            self._stop.begun = True
        return self._stop.begun

    def _wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`, waking within STOP_POLL_S of a stop; True if one was asked."""
        deadline = time.monotonic() + seconds
        while not self.stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(STOP_POLL_S, left))
        return True

    def run(self) -> int:
        """Start everything, serve until a signal or a crash, stop everything; exit code."""
        with exclusive(self._settings.runtime_dir) as runtime_dir:
            if runtime_dir != self._settings.runtime_dir:
                log.info("runtime folder: %s (the folder given is not this user's)", runtime_dir)
                self._settings = self._settings.model_copy(update={"runtime_dir": runtime_dir})
            end_orphans(self._settings.runtime_dir)
            refuse_taken_ports(self._settings)
            try:
                self._served = served_archives(self._settings, self._environ, self._catalogue)
                return 0 if self.stopping() else self._serve(self._served.archives)
            finally:
                self._shutdown()

    def _serve(self, archives: dict[str, Path]) -> int:
        settings = self._settings
        CHILD_LOGS.configure(settings.log_file_bytes, settings.log_files_kept)
        # A new launcher serves the catalogue's worker counts, not those an earlier one was scaled to.
        try:
            (settings.runtime_dir / SCALED_WORKERS_FILE).unlink(missing_ok=True)
        except OSError as error:
            log.error("cannot remove %s: %s", SCALED_WORKERS_FILE, error)
        self._torchserve = torchserve = TorchServe(settings, archives, self._environ)
        self._traffic = traffic = TrafficWatch(
            self._catalogue,
            settings.runtime_dir,
            settings.runtime_dir / "envoy" / ACCESS_LOG_NAME,
            self._envoy_admin,
        )
        traffic.begin(self._unserved_candidates())
        self._readiness = Readiness(
            list(archives),
            self._model_status,
            self._served.skipped,
            trained_on=self._served.trained_on,
            traffic=traffic.summary if traffic.active else None,
            optional={entry.name for entry in self._catalogue.candidates().values()},
        )
        if self.stopping():
            self._readiness.set_phase("stopping")
        self._health = page_server(
            settings.ports.health,
            self._readiness,
            self._catalogue,
            settings.ports.metrics,
            self._envoy_stats,
            traffic,
        )
        self._health.start()
        torchserve.start()
        tokens = torchserve.tokens()
        if not self._wait_for_models(self._primaries()):
            return 0 if self.stopping() else 1
        self._hold_loading_candidates()
        self._comparer = self._shadow_comparer(archives)
        self._envoy = Envoy(settings, self._environ)
        self._envoy.start(tokens.inference, self._route_table())
        self._envoy.wait_ready()
        self._readiness.set_phase("serving")
        if self._readiness.phase == "serving":
            log.info(
                "serving on port %d, metrics on port %d (models: %s)",
                settings.ports.public,
                settings.ports.prometheus,
                ", ".join(archives),
            )
            print(
                f"API ready on http://localhost:{settings.ports.public}  "
                f"(metrics: http://localhost:{settings.ports.prometheus}/metrics; Ctrl-C to stop)",
                flush=True,
            )
        while not self._wait(0.5):
            self._tend()
        return 0

    def _primaries(self) -> list[str]:
        """The served models a client gets by default: every archive but the candidates'."""
        candidates = {entry.name for entry in self._catalogue.candidates().values()}
        return [name for name in self._served.archives if name not in candidates]

    def _unserved_candidates(self) -> dict[str, str]:
        """Model -> why its candidate is not served (skipped at build, or not selected)."""
        return {
            model: self._served.skipped.get(entry.name) or self._served.skipped.get(model) or "not built"
            for model, entry in self._catalogue.candidates().items()
            if entry.name not in self._served.archives
        }

    def _hold_loading_candidates(self) -> None:
        """No traffic to a candidate until it is ready (or rolled back after its grace)."""
        assert self._torchserve is not None and self._traffic is not None
        self._traffic.hold_loading(self._torchserve.model_status, self._settings.candidate_grace_s)

    def _shadow_comparer(self, archives: dict[str, Path]) -> ShadowComparer | None:
        """The comparer of shadow pairs, started, for the models served with their candidate."""
        targets = {
            name: ShadowTarget(
                primary=name,
                candidate=candidate.name,
                compare=candidate.kind_declared.compare,
                concurrency=self._catalogue.models[name].traffic.shadow_concurrency,
            )
            for name, candidate in self._catalogue.candidates().items()
            if name in archives and candidate.name in archives and candidate.kind_declared.compare is not None
        }
        if not targets or self._traffic is None:
            return None
        table = self._route_table()
        comparer = ShadowComparer(
            self._settings.shadow_socket,
            targets,
            f"http://127.0.0.1:{self._settings.ports.inference}",
            self._inference_key,
            self._traffic.record_pair,
            self._traffic.skipped,
            timeout_s=max(table.generic_timeout_s(name) for name in targets),
        )
        comparer.start()
        return comparer

    def _inference_key(self) -> str:
        """TorchServe's inference key now (the comparer calls both versions with it)."""
        tokens = self._torchserve.read_tokens() if self._torchserve is not None else None
        if tokens is None:
            raise OSError("TorchServe has not written its keys")
        return tokens.inference

    def _reapply_traffic(self) -> None:
        """A new Envoy runs: the traffic shares go to it again (one changed while it started
        went to the Envoy before it)."""
        if self._traffic is not None:
            self._traffic.reapply()

    def _envoy_admin(self, method: str, path: str) -> str:
        if self._envoy is None:
            raise OSError("Envoy is not started yet")
        return self._envoy.admin(method, path)

    def _tend(self) -> None:
        """One turn of the serving loop: restart what died, hand Envoy a new key, watch the
        candidates. An OSError (a full or read-only runtime folder) never ends the launcher:
        see `_cannot_write`."""
        assert self._torchserve is not None and self._envoy is not None
        self._watch_candidates()
        try:
            self._envoy.reap()
            if not _alive(self._torchserve.process):
                self._recover_torchserve()
            elif not _alive(self._envoy.process):
                self._recover_envoy()
            elif self._envoy_key_is_stale():
                self._hand_envoy_the_key()
            elif self._torchserve.keys_due() and time.monotonic() >= self._next_key_renewal:
                self._renew_keys()
        except OSError as error:
            self._cannot_write(error)
            return
        if self._disk_problem is not None:
            log.info("the runtime folder is writable again; serving as before")
            self._disk_problem = None

    def _watch_candidates(self) -> None:
        """Judge the candidates on what they answered since the last turn (a rollback is one
        runtime change in Envoy). A surprise here is logged and never stops the serving loop."""
        if self._traffic is None or self._envoy is None or not _alive(self._envoy.process):
            return
        try:
            self._traffic.tend()
        except Exception:  # pylint: disable=broad-exception-caught
            log.exception("could not watch the candidates this turn")

    def _cannot_write(self, error: OSError) -> None:
        """A restart or a config write failed on the disk (full, read-only): log it once, keep
        serving what still runs, and be not ready until a later try of the loop succeeds."""
        problem = f"cannot write {error.filename or self._settings.runtime_dir}: {error.strerror or error}"
        if problem != self._disk_problem:
            log.error("%s; serving what still runs, retrying, /healthcheck is 503 meanwhile", problem)
        self._disk_problem = problem

    def problems(self) -> list[str]:
        """Why the stack cannot write what it must (the serving loop's files, a child's output,
        the access log's rotation); empty when all is well."""
        found = [self._disk_problem] if self._disk_problem else []
        found += CHILD_LOGS.problems()
        if self._envoy is not None and self._envoy.access_log.problem:
            found.append(self._envoy.access_log.problem)
        return found

    def _model_status(self, name: str) -> str:
        """A model's state for /healthcheck: not ready while the stack cannot write its files."""
        assert self._torchserve is not None
        problems = self.problems()
        return "; ".join(problems) if problems else self._torchserve.model_status(name)

    def _recover_torchserve(self) -> None:
        """TorchServe died. Meanwhile /healthcheck says 503 (it cannot be reached) and Envoy
        answers the model routes with a JSON 503 and Retry-After. Start it again, hand Envoy
        its new key without closing the public port, and wait for the models."""
        assert self._torchserve is not None and self._envoy is not None
        process = self._torchserve.process
        log.error("TorchServe exited (code %s); restarting it", process.exit_code() if process else None)
        self._torchserve.stop(timeout_s=5.0)  # its workers are in its process group: none is left
        if self._wait(self._backoff["torchserve"].next_delay()):
            return
        try:
            self._torchserve.start()
            self._torchserve.tokens()
        except RuntimeError as error:
            log.error("could not restart TorchServe: %s", error)
            return
        self._hold_loading_candidates()  # the new Envoy config gives them nothing until ready
        if self._hand_envoy_the_key() and self._wait_for_models(self._primaries()):
            log.info("TorchServe restarted; every model is ready again")
            self._restore_scaled_workers()

    def _restore_scaled_workers(self) -> None:
        """Set again the worker counts an operator chose while serving (`make scale`): a new
        TorchServe starts from each model's catalogue settings."""
        assert self._torchserve is not None
        for model, workers in sorted(read_scaled_workers(self._settings.runtime_dir).items()):
            if model not in self._served.archives:
                continue
            try:
                status, _ = self._torchserve.management("PUT", scale_path(model, workers), timeout_s=120.0)
            except (OSError, RuntimeError) as error:
                log.error("could not scale %s back to %d workers: %s", model, workers, error)
                continue
            log.info("%s scaled back to %d workers (HTTP %d)", model, workers, status)

    def _renew_keys(self) -> None:
        """TorchServe's keys are half-way to expiring: renew them and hand Envoy the new
        inference key at once. A failed renewal is tried again a minute later; the keys are
        still good for half their lifetime."""
        assert self._torchserve is not None
        try:
            self._torchserve.renew_keys()
        except (OSError, RuntimeError, ValueError) as error:
            log.error("could not renew TorchServe's keys (%s); trying again in %d s", error, KEY_RETRY_S)
            self._next_key_renewal = time.monotonic() + KEY_RETRY_S
            return
        self._hand_envoy_the_key()

    def _envoy_key_is_stale(self) -> bool:
        """Envoy holds a key TorchServe no longer accepts (an earlier hand-over failed)."""
        assert self._torchserve is not None and self._envoy is not None
        tokens = self._torchserve.read_tokens()
        return tokens is not None and tokens.inference != self._envoy.inference_token

    def _hand_envoy_the_key(self) -> bool:
        """Hot-restart Envoy with TorchServe's current key; False if that failed."""
        assert self._torchserve is not None and self._envoy is not None
        tokens = self._torchserve.read_tokens()
        if tokens is None:
            return False
        try:
            self._envoy.reload(tokens.inference, self._route_table())
            self._envoy.wait_ready()
            self._reapply_traffic()
        except RuntimeError as error:
            # Every epoch still holds the old key, which TorchServe refuses: nothing is lost by
            # stopping them all, and the serving loop then starts Envoy afresh with the new key.
            log.error("could not give Envoy TorchServe's new key (%s); starting Envoy afresh", error)
            self._envoy.stop()
            return False
        return True

    def _recover_envoy(self) -> None:
        """Envoy died: start it again with the same key (clients are refused until it is up)."""
        assert self._torchserve is not None and self._envoy is not None
        process = self._envoy.process
        log.error("Envoy exited (code %s); restarting it", process.exit_code() if process else None)
        tokens = self._torchserve.read_tokens()
        if tokens is None or self._wait(self._backoff["envoy"].next_delay()):
            return
        try:
            self._envoy.start(tokens.inference, self._route_table())
            self._envoy.wait_ready()
            self._reapply_traffic()
            log.info("Envoy restarted")
        except RuntimeError as error:
            log.error("could not restart Envoy: %s", error)

    def _envoy_stats(self) -> str:
        """Envoy's statistics that have been used, and every one an alert watches, as
        Prometheus text, from its admin socket."""
        if self._envoy is None:
            raise OSError("Envoy is not started yet")
        used = self._envoy.admin("GET", ENVOY_USED_STATS)
        return with_missing_samples(used, self._envoy.admin("GET", ENVOY_WATCHED_STATS))

    def _route_table(self) -> RouteTable:
        """The public routes: every catalogue route, answering 503 for skipped models."""
        shares = self._traffic.shares() if self._traffic is not None and self._traffic.active else None
        return RouteTable(self._catalogue, self._served.skipped, self._served.names, shares)

    def _wait_for_models(self, names: list[str]) -> bool:
        """Wait until every model has a ready worker; False on timeout, crash or stop."""
        assert self._torchserve is not None
        deadline = time.monotonic() + self._settings.startup_timeout_s
        waiting = set(names)
        while waiting:
            if self.stopping():
                return False
            process = self._torchserve.process
            if process is None or not process.alive():
                log.error("TorchServe exited during start-up; see %s", self._torchserve.log_dir)
                return False
            waiting = {name for name in waiting if self._torchserve.model_status(name) != "ready"}
            if time.monotonic() > deadline:
                log.error(
                    "models not ready after %.0f s: %s; see %s/model_log.log",
                    self._settings.startup_timeout_s,
                    sorted(waiting),
                    self._torchserve.log_dir,
                )
                return False
            time.sleep(0.2)
        return True

    def _shutdown(self) -> None:
        was_serving = self._readiness is not None and self._readiness.phase == "serving"
        if self._readiness is not None:
            self._readiness.set_phase("stopping")
        if self._envoy is not None:
            if was_serving:
                time.sleep(self._settings.unready_delay_s)  # let load balancers see the 503
            self._envoy.drain(self._settings.drain_timeout_s)
            self._envoy.stop()
        if self._comparer is not None:
            self._comparer.stop()
        if self._torchserve is not None:
            self._torchserve.stop()
        if self._health is not None:
            self._health.stop()
        log.info("stopped")
