"""The traffic each model's candidate gets now, kept in the runtime folder.

The catalogue's `traffic:` is what a launcher starts with. While it serves, the shares change
(`python -m modelserver traffic`, or a rollback of the launcher's own) through Envoy's runtime,
without a restart; they are written here too, because Envoy's runtime changes do not outlive
an Envoy restart: each new Envoy's config renders this file's shares into its static runtime
layer. A new launcher starts again from the catalogue.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelserver.catalogue import Catalogue

TRAFFIC_FILE = "traffic.json"
TRAFFIC_LOCK = "traffic.lock"
# Envoy runtime keys: the percentage of a model's requests its candidate answers (`canary`),
# and of the primary's requests also sent to the candidate to compare (`shadow`).
CANARY_KEY = "modelserver.canary.{model}"
SHADOW_KEY = "modelserver.shadow.{model}"


def canary_key(model: str) -> str:
    """The runtime key holding the canary percentage of `model`."""
    return CANARY_KEY.format(model=model)


def shadow_key(model: str) -> str:
    """The runtime key holding the shadow percentage of `model`."""
    return SHADOW_KEY.format(model=model)


@dataclass(frozen=True)
class Shares:
    """One model's traffic now: the canary and shadow percentages; why it was rolled back (the
    launcher's rollback sets both to 0 and says why here); whether the candidate was promoted
    (it answers everything and the automatic rollback no longer watches it)."""

    canary: int = 0
    shadow: int = 0
    rolled_back: str | None = None
    promoted: bool = False
    changed_at: str = ""
    changed_by: str = "catalogue"

    def changed(self, by: str, **fields: Any) -> Shares:
        """These shares with `fields` changed, stamped with when and by whom."""
        return replace(
            self, **fields, changed_at=datetime.now(UTC).isoformat(timespec="seconds"), changed_by=by
        )

    @property
    def watched(self) -> bool:
        """Whether the automatic rollback judges the candidate: it gets traffic, unpromoted."""
        return (self.canary > 0 or self.shadow > 0) and not self.promoted


def shares_from(fields: object) -> Shares | None:
    """A model's shares as the file holds them, or None where they are not what this module
    writes (a hand edit): a percentage 0-100 each, and the fields' own types."""
    if not isinstance(fields, dict):
        return None
    try:
        share = Shares(**fields)
    except TypeError:
        return None
    percents = (share.canary, share.shadow)
    if not all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 100 for p in percents):
        return None
    texts_ok = isinstance(share.changed_at, str) and isinstance(share.changed_by, str)
    if not texts_ok or not isinstance(share.promoted, bool):
        return None
    return share if share.rolled_back is None or isinstance(share.rolled_back, str) else None


def catalogue_shares(catalogue: Catalogue) -> dict[str, Shares]:
    """Each model with a candidate, at the catalogue's policy."""
    return {
        name: Shares(canary=entry.traffic.canary, shadow=entry.traffic.shadow).changed("catalogue")
        for name, entry in catalogue.models.items()
        if entry.candidate is not None
    }


def read_shares(runtime_dir: Path, catalogue: Catalogue) -> dict[str, Shares]:
    """The shares now: the file's for the models it names, the catalogue's for the others."""
    shares = catalogue_shares(catalogue)
    try:
        found = json.loads((runtime_dir / TRAFFIC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return shares
    for model, fields in (found if isinstance(found, dict) else {}).items():
        if model in shares and (share := shares_from(fields)) is not None:
            shares[model] = share
    return shares


@contextlib.contextmanager
def shares_lock(runtime_dir: Path) -> Iterator[None]:
    """Held around a read, change and write of the shares: the launcher's rollback and the
    `traffic` command never undo each other's change."""
    with (runtime_dir / TRAFFIC_LOCK).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_shares(runtime_dir: Path, shares: Mapping[str, Shares]) -> None:
    """Write the shares at once (a reader sees the old file or the new one, never half)."""
    target = runtime_dir / TRAFFIC_FILE
    temporary = target.with_suffix(".tmp")
    temporary.write_text(
        json.dumps({model: asdict(share) for model, share in sorted(shares.items())}, indent=2),
        encoding="utf-8",
    )
    os.replace(temporary, target)


def mirror_value(share: Shares) -> int:
    """The shadow runtime value that mirrors `share.shadow` percent of the requests the primary
    answers. Envoy draws one number per request for both the canary route and the mirror, so
    the primary sees only the draws at or above `canary`: the mirror's threshold starts there."""
    if share.shadow == 0:
        return 0
    return min(100, share.canary + round(share.shadow * (100 - share.canary) / 100))


def runtime_values(shares: Mapping[str, Shares]) -> dict[str, int]:
    """The shares as Envoy runtime keys and values."""
    values: dict[str, int] = {}
    for model, share in sorted(shares.items()):
        values[canary_key(model)] = share.canary
        values[shadow_key(model)] = mirror_value(share)
    return values
