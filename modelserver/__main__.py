"""`python -m modelserver COMMAND`: the project's generators, in one command line.

    python -m modelserver configmap [--check]        # deploy/k8s/configmap.yaml and its hash
    python -m modelserver api-samples [--out FILE]   # docs/api.http, from the OpenAPI document
    python -m modelserver envoy-config [OPTIONS]     # Envoy's config for the launcher's OPTIONS
    python -m modelserver pin-revisions [NAME ...]   # models.yaml: each Hub model's current commit
    python -m modelserver image-digests [FILE ...]   # exit 1 unless every image is @sha256:<digest>
    python -m modelserver image [OPTIONS]            # build the container image (make image)
    python -m modelserver tiny-models DIR            # tiny text checkpoints to serve offline
    python -m modelserver traffic [MODEL] [OPTIONS]  # a candidate's canary and shadow shares

Serving is `python -m modelserver.launcher`; building archives `python -m archive_scripts.build_archives`.
"""

from __future__ import annotations

import importlib
import sys

# Command -> the module whose `main(argv)` runs it (imported only when chosen).
COMMANDS = {
    "configmap": "modelserver.tools.k8s_configmap",
    "api-samples": "modelserver.tools.api_samples",
    "envoy-config": "modelserver.launcher.envoy.config",
    "pin-revisions": "modelserver.tools.pin_revisions",
    "image-digests": "modelserver.tools.image_digests",
    "image": "modelserver.tools.image",
    "tiny-models": "modelserver.tools.tiny_models",
    "traffic": "modelserver.launcher.traffic.command",
}


def main(argv: list[str] | None = None) -> int:
    """Run one command with the rest of the arguments; list the commands otherwise."""
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if not args or args[0] not in COMMANDS:
        problem = f"unknown command {args[0]!r}" if args else "no command given"
        print(f"python -m modelserver: {problem}; one of: {', '.join(COMMANDS)}\n{__doc__}", file=sys.stderr)
        return 2
    return int(importlib.import_module(COMMANDS[args[0]]).main(args[1:]))


if __name__ == "__main__":
    sys.exit(main())
