"""`python -m modelserver traffic`: see or change how a running stack shares a model's requests
with its candidate, without a restart or a dropped request.

    python -m modelserver traffic                              # every candidate's shares now
    python -m modelserver traffic MODEL --canary 25            # 25% of MODEL's requests to it
    python -m modelserver traffic MODEL --shadow 50            # 50% also sent to it, compared
    python -m modelserver traffic MODEL --promote              # every request to the candidate
    python -m modelserver traffic MODEL --rollback             # every request to the primary

`make traffic MODEL=<name> CANARY=<percent>` (or SHADOW=, PROMOTE=1, ROLLBACK=1) runs it. The
change goes to Envoy's runtime through its admin socket in the launcher's runtime folder (`run/`
by default) and is kept there, so an Envoy restart keeps it; a new launcher starts again from
models.yaml. How each candidate is doing (agreement, error rates, rollbacks): GET /traffic.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from modelserver.launcher.envoy.unix_http import unix_request
from modelserver.launcher.runtime_folder import find_private_folder
from modelserver.launcher.traffic.state import (
    TRAFFIC_FILE,
    Shares,
    runtime_values,
    shares_from,
    shares_lock,
    write_shares,
)
from modelserver.project import PROJECT_ROOT

ADMIN_SOCKET = Path("envoy") / "admin.sock"


class TrafficError(RuntimeError):
    """The change could not be made; the message says why."""


def percent(text: str) -> int:
    """A share in percent, 0 to 100."""
    if not (text.isascii() and text.isdigit()) or int(text) > 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage from 0 to 100")
    return int(text)


def read_running(runtime_dir: Path) -> dict[str, Shares]:
    """The shares the running launcher keeps (every model with a candidate)."""
    try:
        found = json.loads((runtime_dir / TRAFFIC_FILE).read_text(encoding="utf-8"))
        shares = {model: shares_from(fields) for model, fields in found.items()}
    except (OSError, ValueError, AttributeError) as error:
        raise TrafficError(
            f"no running stack with a candidate in {runtime_dir} ({type(error).__name__}): a model needs a"
            " `candidate` in models.yaml, and the stack must be started (`make run`)"
        ) from None
    broken = sorted(model for model, share in shares.items() if share is None)
    if broken:
        raise TrafficError(f"{runtime_dir / TRAFFIC_FILE} holds shares this command did not write: {broken}")
    return {model: share for model, share in shares.items() if share is not None}


def changed(share: Shares, args: argparse.Namespace) -> Shares:
    """`share` with the command line's change; an operator's change re-arms the rollback."""
    if args.promote:
        return share.changed("operator", canary=100, shadow=0, promoted=True, rolled_back=None)
    if args.rollback:
        return share.changed("operator", canary=0, shadow=0, promoted=False, rolled_back="by the operator")
    canary = share.canary if args.canary is None else args.canary
    shadow = share.shadow if args.shadow is None else args.shadow
    return share.changed("operator", canary=canary, shadow=shadow, promoted=False, rolled_back=None)


def apply(runtime_dir: Path, model: str, args: argparse.Namespace) -> Shares:
    """Change `model`'s shares in Envoy first, then in the runtime folder (under the lock the
    launcher's rollback takes too)."""
    read_running(runtime_dir)  # a stack is running: its folder and file are there
    with shares_lock(runtime_dir):
        shares = read_running(runtime_dir)
        if model not in shares:
            known = ", ".join(sorted(shares)) or "none"
            raise TrafficError(f"model {model!r} has no candidate; models with one: {known}")
        shares[model] = changed(shares[model], args)
        query = "&".join(f"{key}={value}" for key, value in runtime_values({model: shares[model]}).items())
        try:
            status, body = unix_request(runtime_dir / ADMIN_SOCKET, "POST", f"/runtime_modify?{query}")
        except OSError as error:
            raise TrafficError(
                f"Envoy's admin socket does not answer ({error}); is the stack running?"
            ) from None
        if status != 200:
            raise TrafficError(f"Envoy refused the change (HTTP {status}: {body.strip()})")
        write_shares(runtime_dir, shares)
    return shares[model]


def main(argv: list[str] | None = None) -> int:
    """Show or change the shares; print them as JSON. Exit 1 with the reason on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m modelserver traffic",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="?", help="the model whose candidate's shares change")
    parser.add_argument("--runtime-dir", type=Path, default=PROJECT_ROOT / "run")
    parser.add_argument("--canary", type=percent, help="percent of requests the candidate answers")
    parser.add_argument("--shadow", type=percent, help="percent of the primary's requests compared")
    ends = parser.add_mutually_exclusive_group()
    ends.add_argument("--promote", action="store_true", help="every request to the candidate")
    ends.add_argument("--rollback", action="store_true", help="every request to the primary")
    args = parser.parse_args(argv)
    wants_change = args.promote or args.rollback or args.canary is not None or args.shadow is not None
    if (args.promote or args.rollback) and (args.canary is not None or args.shadow is not None):
        parser.error("--promote and --rollback set both shares; give neither --canary nor --shadow")
    if wants_change and not args.model:
        parser.error("name the MODEL whose shares change")
    try:
        runtime_dir = find_private_folder(args.runtime_dir)
        if not wants_change:
            shares = read_running(runtime_dir)
            if args.model and args.model not in shares:
                raise TrafficError(
                    f"model {args.model!r} has no candidate; models with one: {', '.join(shares)}"
                )
            chosen = {args.model: shares[args.model]} if args.model else shares
            print(json.dumps({model: asdict(share) for model, share in chosen.items()}, indent=2))
            return 0
        share = apply(runtime_dir, args.model, args)
    except (TrafficError, OSError) as error:  # OSError: the runtime folder could not be written
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({args.model: asdict(share)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
