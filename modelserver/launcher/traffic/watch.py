"""The launcher's watch over every candidate: what each version answered (Envoy's access log for
the requests clients sent, the comparer for the shadow pairs), the rollback policy judged on
it, and the shares applied to Envoy's runtime and kept in the runtime folder.

One instance lives in the supervisor: `tend()` runs in its serving loop; the comparer's
threads call `record_pair` and `skipped`; the page threads call `status` and `exposition`.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from modelserver.catalogue import Catalogue
from modelserver.launcher.envoy.routes import model_cluster
from modelserver.launcher.traffic.access_log import AccessLogTail, outcome_of
from modelserver.launcher.traffic.judge import Outcome, VersionWatch
from modelserver.launcher.traffic.shadow import PairResult
from modelserver.launcher.traffic.state import (
    TRAFFIC_FILE,
    Shares,
    catalogue_shares,
    read_shares,
    runtime_values,
    shares_lock,
    write_shares,
)

log = logging.getLogger(__name__)

Admin = Callable[[str, str], str]  # (method, path) -> body: Envoy's admin interface
PAIR_OUTCOMES = ("compared", "incomparable", "failed", "skipped")


def apply_to_envoy(admin: Admin, shares: Mapping[str, Shares]) -> None:
    """Set the shares in Envoy's runtime (its admin layer): the next request follows them, the
    ones in flight keep the route they took."""
    admin("POST", "/runtime_modify?" + urllib.parse.urlencode(runtime_values(shares)))


class TrafficWatch:  # pylint: disable=too-many-instance-attributes
    """Judges each watched candidate against its primary and rolls it back when a bound breaks."""

    def __init__(self, catalogue: Catalogue, runtime_dir: Path, access_log: Path, admin: Admin) -> None:
        self._catalogue = catalogue
        self._runtime_dir = runtime_dir
        self._admin = admin
        self._lock = threading.Lock()
        self._reread_lock = threading.Lock()  # one reading of the shares file at a time
        self._candidates = catalogue.candidates()
        self._watches = {
            name: VersionWatch.for_policy(catalogue.models[name].traffic.rollback)
            for name in self._candidates
        }
        # Envoy cluster -> (model, "primary" or "candidate")
        self._clusters = {model_cluster(name): (name, "primary") for name in self._candidates}
        self._clusters.update(
            {model_cluster(entry.name): (name, "candidate") for name, entry in self._candidates.items()}
        )
        self._pairs = {name: dict.fromkeys(PAIR_OUTCOMES, 0) for name in self._candidates}
        self._rollbacks = dict.fromkeys(self._candidates, 0)
        self._tail = AccessLogTail(access_log)
        self._shares: dict[str, Shares] = {}
        self._file_stamp: tuple[int, int, int] | None = None
        self._unapplied = False  # shares Envoy may not have yet (a rollback, a new Envoy)
        # Candidates that get no traffic whatever the shares say: not served (model -> why), or
        # still loading (model -> when it is given up on).
        self._unserved: dict[str, str] = {}
        self._loading: dict[str, float] = {}
        self._loading_status: Callable[[str], str] = lambda _: "ready"

    @property
    def active(self) -> bool:
        """Whether any model has a candidate to watch."""
        return bool(self._candidates)

    def begin(self, unserved: Mapping[str, str]) -> None:
        """A new launcher starts from the catalogue's policy (written down for the `traffic`
        command and for every Envoy this launcher starts); a candidate not served (`unserved`:
        model -> why) starts rolled back. Without candidates, an earlier run's file goes."""
        if not self.active:
            (self._runtime_dir / TRAFFIC_FILE).unlink(missing_ok=True)
            return
        self._unserved = {name: why for name, why in unserved.items() if name in self._candidates}
        shares = catalogue_shares(self._catalogue)
        for name, why in self._unserved.items():
            shares[name] = shares[name].changed(
                "launcher", canary=0, shadow=0, rolled_back=f"the candidate is not served: {why}"
            )
        with shares_lock(self._runtime_dir):
            write_shares(self._runtime_dir, shares)
        self._reread()
        self._tail.read()  # from here on: an earlier run's requests are not this one's

    def hold_loading(self, status: Callable[[str], str], grace_s: float) -> None:
        """Give no traffic to the served candidates until `status(<candidate>)` says "ready";
        one not ready within `grace_s` is rolled back (at start, and after TorchServe restarts,
        so a candidate still loading is never judged on the errors of its loading)."""
        deadline = time.monotonic() + grace_s
        self._loading_status = status
        with self._lock:
            self._loading = {name: deadline for name in self._candidates if name not in self._unserved}
        self._unapplied = True

    def reapply(self) -> None:
        """A new Envoy runs: give it the shares now (a change made while it started reached
        the one before it)."""
        self._unapplied = True

    def shares(self) -> dict[str, Shares]:
        """The shares Envoy gets now: the runtime folder's, none for a candidate that is not
        served or still loading."""
        self._reread()
        with self._lock:
            return self._effective(self._shares)

    def _effective(self, shares: Mapping[str, Shares]) -> dict[str, Shares]:
        held = set(self._unserved) | set(self._loading)
        return {
            name: replace(share, canary=0, shadow=0) if name in held else share
            for name, share in shares.items()
        }

    def _reread(self) -> None:
        """Take the runtime folder's shares if they changed (the `traffic` command wrote them).
        A candidate given traffic again after none is judged afresh, on empty windows. Called
        before anything is recorded, so what is recorded after a change counts under it."""
        with self._reread_lock:
            try:
                stat = (self._runtime_dir / TRAFFIC_FILE).stat()
                stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # each write is a new file
            except OSError:
                stamp = None
            if stamp == self._file_stamp and self._shares:
                return
            shares = read_shares(self._runtime_dir, self._catalogue)
            with self._lock:
                for name, share in shares.items():
                    before = self._shares.get(name)
                    if share.watched and (before is None or not before.watched):
                        self._watches[name].clear()
                self._shares, self._file_stamp = shares, stamp

    def tend(self) -> None:
        """Read what was answered since the last turn, and roll back what breaks its bounds."""
        if not self.active:
            return
        self._settle()
        self._apply()
        self._reread()
        for record in self._tail.read():
            found = outcome_of(record)
            if found is None or found[0] not in self._clusters:
                continue
            model, role = self._clusters[found[0]]
            with self._lock:
                getattr(self._watches[model], role).add(found[1])
        for name in self._candidates:
            self._judge(name)

    def _settle(self) -> None:
        """Release the candidates that are ready; roll back those past their grace."""
        for name, deadline in sorted(self._loading.items()):
            status = self._loading_status(self._candidates[name].name)
            if status == "ready":
                with self._lock:
                    self._loading.pop(name, None)
                    self._watches[name].clear()  # what it answered while loading is not judged
                self._unapplied = True
                log.info("%s's candidate is ready: it gets its traffic shares", name)
            elif time.monotonic() > deadline:
                with self._lock:
                    self._loading.pop(name, None)
                self.roll_back(name, f"the candidate {self._candidates[name].name} is not ready: {status}")

    def _judge(self, name: str) -> None:
        with self._lock:
            share = self._shares.get(name)
            if share is None or not share.watched or name in self._loading or name in self._unserved:
                return
            reason = self._watches[name].reason(self._catalogue.models[name].traffic.rollback)
        if reason is not None:
            self.roll_back(name, reason, judged=share)

    def roll_back(self, name: str, reason: str, judged: Shares | None = None) -> None:
        """Every request of `name` to its primary again, now, and why: kept in the runtime
        folder, then set in Envoy. A rollback judged on shares an operator has changed since is
        dropped (their change wins); one the folder cannot keep (a full disk) is still made."""
        with shares_lock(self._runtime_dir):
            shares = read_shares(self._runtime_dir, self._catalogue)
            if judged is not None and shares[name] != judged:
                return
            shares[name] = shares[name].changed(
                "launcher", canary=0, shadow=0, rolled_back=reason, promoted=False
            )
            try:
                write_shares(self._runtime_dir, shares)
            except OSError as error:
                log.error("cannot keep %s's rollback in %s: %s", name, TRAFFIC_FILE, error)
            with self._lock:
                self._shares = shares
                self._rollbacks[name] += 1
                self._watches[name].clear()  # judged afresh once the operator sends it traffic again
            self._unapplied = True
            self._apply_locked()
        log.warning("%s rolled back to its primary version: %s", name, reason)

    def _apply(self) -> None:
        """Set the shares in Envoy, if a change may not be there yet (under the lock the
        `traffic` command takes: neither undoes the other's change in Envoy)."""
        if not self._unapplied:
            return
        try:
            with shares_lock(self._runtime_dir):
                self._reread()
                self._apply_locked()
        except OSError as error:
            log.error("could not set the traffic shares in Envoy (retrying): %s", error)

    def _apply_locked(self) -> None:
        with self._lock:
            shares = self._effective(self._shares)
        try:
            apply_to_envoy(self._admin, shares)
        except OSError as error:
            log.error("could not set the traffic shares in Envoy (retrying): %s", error)
            return
        self._unapplied = False

    def record_pair(self, pair: PairResult) -> None:
        """A shadow pair the comparer finished: both versions' outcomes, and their comparison."""
        name = pair.model
        self._reread()
        with self._lock:
            watch = self._watches.get(name)
            if watch is None:
                return
            watch.primary.add(Outcome(pair.primary_status, pair.primary_seconds))
            watch.candidate.add(Outcome(pair.candidate_status, pair.candidate_seconds))
            if pair.comparison is not None:
                watch.agreement.add(pair.comparison)
                outcome = "compared"
            elif pair.incomparable is not None:
                outcome = "incomparable"
            else:
                outcome = "failed"
            self._pairs[name][outcome] += 1

    def skipped(self, name: str) -> None:
        """A mirrored request the comparer had no room for."""
        with self._lock:
            if name in self._pairs:
                self._pairs[name]["skipped"] += 1

    def status(self) -> dict[str, Any]:
        """Each candidate's policy and how it is doing, for /traffic and /metrics."""
        found: dict[str, Any] = {}
        with self._lock:
            for name, candidate in self._candidates.items():
                entry = self._catalogue.models[name]
                share = self._effective(self._shares).get(name, Shares())
                watch = self._watches[name]
                found[name] = {
                    "primary": {"version": entry.version, **_window(watch.primary)},
                    "candidate": {"version": candidate.version, **_window(watch.candidate)},
                    **{key: value for key, value in asdict(share).items() if key != "changed_by" or value},
                    "shadow_pairs": dict(self._pairs[name]),
                    "agreement": _rounded(watch.agreement.agreement()),
                    "items_compared_total": watch.agreement.items_total,
                    "items_agreeing_total": watch.agreement.agreeing_total,
                    "largest_score_difference": _rounded(watch.agreement.largest_score_difference()),
                    "top_k_overlap": _rounded(watch.agreement.top_k_overlap()),
                    "rollbacks": self._rollbacks[name],
                    **({"loading": True} if name in self._loading else {}),
                }
        return found

    def summary(self) -> dict[str, Any]:
        """Each candidate's policy and running agreement, for /healthcheck (the figures are on
        the operations port: /traffic, /metrics)."""
        kept = ("canary", "shadow", "promoted", "rolled_back", "agreement")
        return {
            name: {
                "versions": [model["primary"]["version"], model["candidate"]["version"]],
                **{key: model[key] for key in kept},
            }
            for name, model in self.status().items()
        }

    def exposition(self) -> str:
        """The watch as Prometheus text (`modelserver_traffic_*`, `modelserver_version_*`,
        `modelserver_shadow_*`)."""
        if not self.active:
            return ""
        return exposition_of(self.status())


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def _window(window: Any) -> dict[str, Any]:
    return {
        "requests_in_window": len(window),
        "error_rate": _rounded(window.error_rate()),
        "p99_seconds": _rounded(window.p99_seconds()),
        "median_seconds": _rounded(window.median_seconds()),
        "requests_total": window.total,
        "errors_total": window.errors_total,
    }


def _family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float | None]]) -> str:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        if value is not None:
            text = ",".join(f'{key}="{label}"' for key, label in labels.items())
            lines.append(f"{name}{{{text}}} {value:g}")
    return "\n".join(lines) + "\n"


def exposition_of(status: Mapping[str, Any]) -> str:
    """The traffic status as Prometheus families, one sample per model (and version)."""
    per_version: list[tuple[dict[str, str], dict[str, Any]]] = []
    shares: list[tuple[dict[str, str], float | None]] = []
    models: list[tuple[dict[str, str], dict[str, Any]]] = []
    for name, model in sorted(status.items()):
        for role in ("primary", "candidate"):
            per_version.append(
                ({"model": name, "version": model[role]["version"], "role": role}, model[role])
            )
        shares += [({"model": name, "mode": mode}, model[mode]) for mode in ("canary", "shadow")]
        models.append(({"model": name}, model))

    def versions(key: str) -> list[tuple[dict[str, str], float | None]]:
        return [(labels, window[key]) for labels, window in per_version]

    def each(key: str) -> list[tuple[dict[str, str], float | None]]:
        return [(labels, model[key]) for labels, model in models]

    pairs = [
        ({**labels, "outcome": outcome}, model["shadow_pairs"][outcome])
        for labels, model in models
        for outcome in PAIR_OUTCOMES
    ]
    return "".join(
        [
            _family(
                "modelserver_traffic_percent",
                "gauge",
                "Share of a model's requests its candidate gets.",
                shares,
            ),
            _family(
                "modelserver_traffic_rolled_back",
                "gauge",
                "1 while a model is rolled back to its primary (policy, operator or candidate state).",
                [(labels, float(model["rolled_back"] is not None)) for labels, model in models],
            ),
            _family(
                "modelserver_traffic_rollbacks_total", "counter", "Automatic rollbacks.", each("rollbacks")
            ),
            _family(
                "modelserver_version_requests_total",
                "counter",
                "Requests each version answered (clients' and shadow).",
                versions("requests_total"),
            ),
            _family(
                "modelserver_version_errors_total",
                "counter",
                "5xx answers of each version.",
                versions("errors_total"),
            ),
            _family(
                "modelserver_version_error_rate",
                "gauge",
                "Share of 5xx over each version's last window of requests.",
                versions("error_rate"),
            ),
            _family(
                "modelserver_version_p99_seconds",
                "gauge",
                "99th percentile upstream time over each version's last window.",
                versions("p99_seconds"),
            ),
            _family(
                "modelserver_shadow_pairs_total", "counter", "Shadow requests by what became of them.", pairs
            ),
            _family(
                "modelserver_shadow_items_total",
                "counter",
                "Items (rows, texts, masks) compared in shadow pairs.",
                each("items_compared_total"),
            ),
            _family(
                "modelserver_shadow_agreeing_items_total",
                "counter",
                "Items the candidate labelled as the primary did, in shadow pairs.",
                each("items_agreeing_total"),
            ),
            _family(
                "modelserver_shadow_agreement_ratio",
                "gauge",
                "Share of items (rows, texts, masks) labelled as the primary does, over the window.",
                each("agreement"),
            ),
            _family(
                "modelserver_shadow_largest_score_difference",
                "gauge",
                "Largest score difference between the versions over the window (crystal).",
                each("largest_score_difference"),
            ),
            _family(
                "modelserver_shadow_top_k_overlap",
                "gauge",
                "Mean share of top-k tokens both versions give, over the window (fill-mask).",
                each("top_k_overlap"),
            ),
        ]
    )
