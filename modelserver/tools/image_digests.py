"""Refuse rendered manifests whose container images are not pinned by digest.

    kustomize build deploy/k8s > rendered.yaml
    python -m modelserver image-digests rendered.yaml        # or several files; `-` is stdin

A tag (`ghcr.io/org/repo:abc123`, or no tag at all, which is `latest`) can be pushed again and
then names other bytes; a digest (`...@sha256:<64 hex>`) cannot. Every image of every container,
init container and ephemeral container, in any document (a `List`'s items too), must be
`NAME@sha256:<64 hex>`. Exit 0 then, naming each image; exit 1 naming every offender, or when
no image was found at all (an empty or wrong file checks nothing). CI's deploy job runs this on
the manifests it renders, after setting the digest its image job pushed, and applies exactly
the file it checked (docs/deployment.md, "Delivery").
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

DIGEST = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")
CONTAINER_LISTS = ("containers", "initContainers", "ephemeralContainers")


def container_images(node: Any, where: str = "") -> Iterator[tuple[str, str]]:
    """(where, image) of every container found anywhere under `node`: Deployments, Pods, Jobs,
    CronJobs, KServe runtimes, whatever nests a container list."""
    if isinstance(node, list):
        for item in node:
            yield from container_images(item, where)
        return
    if not isinstance(node, dict):
        return
    if isinstance(node.get("kind"), str) and isinstance(node.get("metadata"), dict):
        where = f"{node['kind']}/{node['metadata'].get('name', '?')}"
    for key, value in node.items():
        if key in CONTAINER_LISTS and isinstance(value, list):
            for container in value:
                if isinstance(container, dict):
                    name = container.get("name", "?")
                    yield f"{where} {key}[{name}]", str(container.get("image", ""))
        yield from container_images(value, where)


def problems(text: str, origin: str = "<stdin>") -> tuple[list[str], list[str]]:
    """(the pinned images, what is wrong) in one YAML stream of manifests."""
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as error:
        return [], [f"{origin}: not YAML: {str(error).splitlines()[0]}"]
    pinned, wrong = [], []
    for where, image in container_images(documents):
        if DIGEST.fullmatch(image):
            pinned.append(f"{origin}: {where}: {image}")
        else:
            wrong.append(f"{origin}: {where}: image {image!r} is not pinned by digest (NAME@sha256:<64 hex>)")
    return pinned, wrong


def main(argv: list[str] | None = None) -> int:
    """Check each file (stdin for `-` or none); exit 1 on any image without a digest."""
    parser = argparse.ArgumentParser(
        prog="python -m modelserver image-digests", description=__doc__.splitlines()[0]
    )
    parser.add_argument("files", nargs="*", default=["-"], help="rendered manifests (default: stdin)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    pinned: list[str] = []
    wrong: list[str] = []
    for name in args.files:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
        found, bad = problems(text, "<stdin>" if name == "-" else name)
        pinned += found
        wrong += bad
    for line in pinned:
        log.info("pinned: %s", line)
    for line in wrong:
        log.error("%s", line)
    if not pinned and not wrong:
        log.error("no container image found in %s: nothing was checked", ", ".join(args.files))
        return 1
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
