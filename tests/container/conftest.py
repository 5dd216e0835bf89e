"""The image, built and run as the Kubernetes pod runs it, under a real Docker Engine.

Where no engine answers the tests skip with the reason; under CI (CI=true) they fail instead,
so a CI machine that lost its engine cannot pass by skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modelserver.tools.image import (
    ImageError,
    build_image,
    docker_client,
    engine_problem,
    options_from_command_line,
)

# A fresh machine builds the image (base, about 1 GB of wheels, export) before the first test.
BUILD_TIMEOUT_S = 1200


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test in this folder runs the container: `pytest -m "not container"` runs the rest."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.container)
            item.add_marker(pytest.mark.timeout(BUILD_TIMEOUT_S))


def unavailable(reason: str) -> None:
    """Skip on a laptop without Docker; fail under CI, where the engine is part of the run."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session", name="docker")
def docker_fixture() -> str:
    """A docker client that builds with BuildKit, its engine answering."""
    try:
        client = docker_client()
    except ImageError as error:
        unavailable(str(error))
    if problem := engine_problem(client):
        unavailable(problem)
    return client


@pytest.fixture(scope="session", name="image")
def image_fixture(docker: str) -> str:
    """The image `make image` builds (reused when its inputs have not changed)."""
    del docker
    try:
        built = build_image(options_from_command_line([], os.environ), os.environ)
    except ImageError as error:
        pytest.fail(f"make image failed: {error}", pytrace=False)
    return built.tag
