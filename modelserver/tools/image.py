"""Build the container image: `make image`, or `python -m modelserver image [OPTIONS]`.

The same command works on a laptop with Docker Hub and on an air-gapped build machine:

- the base is the Dockerfile's `BASE_IMAGE` (the official Python image, pinned by digest) when it
  is present or can be pulled; where no registry answers, a base is built from Debian's packages
  with debootstrap (once: it is kept as `modelserver-base:<recipe>`), and the build says so;
- a TLS-intercepting proxy's CA bundle (`PIP_CERT`, else the system bundle) goes in as the
  BuildKit secret `pip_cert`, never into a layer;
- a local torch wheel folder (`TORCH_WHEELS`, else the folder pip's `PIP_FIND_LINKS` names) is
  linked into image-wheels/ and PyTorch's index is left out; the lock's hash still decides;
- an image whose inputs (the build context, the Dockerfile, the base, the arguments) have not
  changed is reused, so tests can ask for the image cheaply.
"""

from __future__ import annotations

import argparse
import fnmatch
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelserver.project import PROJECT_ROOT

log = logging.getLogger(__name__)

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
DOCKERIGNORE = PROJECT_ROOT / ".dockerignore"
WHEEL_FOLDER = PROJECT_ROOT / "image-wheels"
DEFAULT_TAG = "modelserver:latest"
INPUTS_LABEL = "org.modelserver.build-inputs"
CA_SECRET = "pip_cert"
SYSTEM_CA_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
# What the air-gapped base holds: the Debian release of the official image, and Python with venv.
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
DEBIAN_VARIANT = "minbase"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
# Predefined build arguments Docker hands to RUN steps without keeping them in the image.
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")
STORE_REPORT = "/app/model_store/build-report.json"  # the Dockerfile's archive build writes it
# What makes Debian's own slim images slim, as files in the base: dpkg leaves out documentation,
# manuals and translations (copyright notices stay), and apt keeps no package caches.
APT_CLEAN = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"
SLIM_CONFIG = {
    "etc/dpkg/dpkg.cfg.d/slim-excludes": "\n".join(
        [
            "path-exclude /usr/share/doc/*",
            "path-include /usr/share/doc/*/copyright",
            "path-exclude /usr/share/man/*",
            "path-exclude /usr/share/info/*",
            "path-exclude /usr/share/locale/*",
            "path-include /usr/share/locale/locale.alias",
            "",
        ]
    ),
    "etc/apt/apt.conf.d/slim-clean": "\n".join(
        [
            f'DPkg::Post-Invoke {{ "{APT_CLEAN}"; }};',
            f'APT::Update::Post-Invoke {{ "{APT_CLEAN}"; }};',
            'Dir::Cache::pkgcache "";',
            'Dir::Cache::srcpkgcache "";',
            "",
        ]
    ),
}
PULL_TIMEOUT_S = 300
# Clients from 23.0 on build through the buildx plugin; older ones have BuildKit built in.
FIRST_CLIENT_WITHOUT_BUILTIN_BUILDKIT = 23


class ImageError(RuntimeError):
    """The image cannot be built here; the message says why and what to do."""


@dataclass(frozen=True)
class ImageOptions:
    """What `make image` was asked for; every value from the command line or the environment."""

    tag: str = DEFAULT_TAG
    base: str | None = None  # None: the Dockerfile's default, else a Debian-built one
    torch_wheels: Path | None = None
    ca_bundle: Path | None = None  # handed in as the `pip_cert` secret
    proxy_variables: tuple[str, ...] = ()  # PROXY_VARIABLES set here, passed to the build
    torch_index_url: str | None = None  # None: the Dockerfile's default (or none with wheels)
    build_args: tuple[str, ...] = ()
    debian_mirror: str = DEBIAN_MIRROR
    debian_security_mirror: str = DEBIAN_SECURITY_MIRROR
    force: bool = False  # build even when the inputs did not change, and fetch the models anew


@dataclass
class BuiltImage:
    """The outcome: the tag, the image id, the base it was built on and whether it was reused."""

    tag: str
    image_id: str
    base: str
    reused: bool
    notes: list[str] = field(default_factory=list)


def run(command: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """A command, its output captured as text; never raises on a non-zero exit."""
    return subprocess.run(list(command), capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]


def docker_client() -> str:
    """A docker client that builds with BuildKit: one with the buildx plugin, or one older than
    23.0 (BuildKit built in). Debian's docker.io 20.10 client is the second kind."""
    candidates = dict.fromkeys(
        path for path in (shutil.which("docker"), "/usr/bin/docker", "/usr/local/bin/docker") if path
    )
    tried = []
    for client in candidates:
        if not os.access(client, os.X_OK):
            continue
        if has_buildx(client):
            return client
        version = run([client, "version", "--format", "{{.Client.Version}}"]).stdout.strip()
        major = re.match(r"(\d+)\.", version)
        if major and int(major.group(1)) < FIRST_CLIENT_WITHOUT_BUILTIN_BUILDKIT:
            return client
        tried.append(f"{client} {version or '?'}")
    if not tried:
        raise ImageError("no docker client: install Docker (Debian: apt-get install docker.io)")
    raise ImageError(f"no docker client that builds with BuildKit (tried {', '.join(tried)}): install buildx")


@functools.cache
def has_buildx(client: str) -> bool:
    """Whether this client has the buildx plugin (asked once per client)."""
    return run([client, "buildx", "version"]).returncode == 0


def build_command(client: str) -> list[str]:
    """`docker build` as this client runs it with BuildKit: through buildx, loading the result
    into the engine (a buildx builder of its own would otherwise keep it), or its own."""
    return [client, "buildx", "build", "--load"] if has_buildx(client) else [client, "build"]


def engine_problem(client: str) -> str | None:
    """Why the Docker engine cannot be used, or None when it answers."""
    answer = run([client, "info", "--format", "{{.ServerVersion}}"], timeout=30)
    if answer.returncode != 0 or not answer.stdout.strip():
        return f"the Docker engine does not answer ({(answer.stderr or answer.stdout).strip()[:200]})"
    return None


def dockerfile_default_base(dockerfile: Path = DOCKERFILE) -> str:
    """The `ARG BASE_IMAGE=` default of the Dockerfile: the one place the pinned base is named."""
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile.read_text(encoding="utf-8"), re.MULTILINE)
    if not match:
        raise ImageError(f"{dockerfile.name} declares no `ARG BASE_IMAGE=` default")
    return match.group(1)


def image_labels(client: str, image: str) -> dict[str, str] | None:
    """The labels of a local image (empty if it has none), or None when it is not here."""
    answer = run([client, "image", "inspect", "--format", "{{json .Config.Labels}}", image])
    if answer.returncode != 0:
        return None
    return json.loads(answer.stdout or "null") or {}


def image_id(client: str, image: str) -> str:
    """The local id of an image."""
    return run([client, "image", "inspect", "--format", "{{.Id}}", image]).stdout.strip()


def debian_base_tag(now: float | None = None) -> str:
    """The tag of the Debian-built base: its recipe's hash (a changed recipe builds anew) and
    the ISO week, so a kept base is rebuilt with the week's security updates."""
    recipe = json.dumps([DEBIAN_SUITE, DEBIAN_PACKAGES, DEBIAN_VARIANT, SLIM_CONFIG]).encode()
    week = time.strftime("%G.%V", time.gmtime(now))
    return f"modelserver-base:{DEBIAN_SUITE}-{hashlib.sha256(recipe).hexdigest()[:12]}-{week}"


def apt_sources(mirror: str, security_mirror: str) -> str:
    """The base's apt sources: the release, its updates and its security updates."""
    return "".join(
        f"deb {url} {suite} main\n"
        for url, suite in (
            (mirror, DEBIAN_SUITE),
            (mirror, f"{DEBIAN_SUITE}-updates"),
            (security_mirror, f"{DEBIAN_SUITE}-security"),
        )
    )


def slim_down(root: Path) -> None:
    """Apply SLIM_CONFIG to a fresh Debian tree: write it, and remove what it would have left
    out, and the package caches debootstrap filled."""
    for relative, text in SLIM_CONFIG.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text, encoding="utf-8")
    for folder in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"):
        for item in sorted((root / folder).rglob("*"), reverse=True):
            keep = item.name in {"copyright", "locale.alias"} or item.is_dir()
            if not keep:
                item.unlink()
    for cache in ("var/cache/apt/archives", "var/cache/apt", "var/lib/apt/lists"):
        for item in (root / cache).glob("*"):
            if item.is_file():
                item.unlink()


def build_debian_base(client: str, mirror: str, security_mirror: str) -> str:
    """A base image with Debian's Python, from Debian's packages alone (debootstrap, then `docker
    import`): for machines that reach Debian's archive but no image registry. Kept once built."""
    tag = debian_base_tag()
    if image_labels(client, tag) is not None:
        log.info("using the Debian-built base %s (built earlier)", tag)
        return tag
    debootstrap = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.access(p, os.X_OK)), None
    )
    if debootstrap is None:
        raise ImageError("no registry answers and debootstrap is missing: apt-get install debootstrap")
    if os.geteuid() != 0:
        raise ImageError("no registry answers, and building a base with debootstrap needs root")
    log.info("building a base from Debian packages: %s %s (about a minute)", DEBIAN_SUITE, mirror)
    with tempfile.TemporaryDirectory(prefix="modelserver-base-") as folder:
        root = Path(folder) / "root"
        command = [
            debootstrap,
            f"--variant={DEBIAN_VARIANT}",
            f"--include={','.join(DEBIAN_PACKAGES)}",
            DEBIAN_SUITE,
            str(root),
            mirror,
        ]
        done = run(command, timeout=1800)
        if done.returncode != 0:
            raise ImageError(f"debootstrap failed: {(done.stderr or done.stdout).strip()[-400:]}")
        # debootstrap knows the release alone: add its updates and security suites, and apply them.
        (root / "etc/apt/sources.list").write_text(apt_sources(mirror, security_mirror), encoding="utf-8")
        for step in (["apt-get", "update", "-qq"], ["apt-get", "upgrade", "-y", "-qq"]):
            done = run(
                ["chroot", str(root), *step],
                timeout=1800,
                env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            )
            if done.returncode != 0:
                raise ImageError(
                    f"{' '.join(step)} in the base failed: {(done.stderr or done.stdout).strip()[-400:]}"
                )
        slim_down(root)
        with subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE) as tar:
            imported = subprocess.run(
                [client, "import", "--change", 'CMD ["/bin/bash"]', "-", tag],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
                check=False,
            )
    if imported.returncode != 0 or tar.returncode != 0:
        raise ImageError(f"docker import of the Debian base failed: {imported.stderr.strip()[-400:]}")
    return tag


def choose_base(client: str, options: ImageOptions, notes: list[str]) -> str:
    """The base to build on: the one asked for; else the pinned default if it is here or can be
    pulled; else a Debian-built one, with a note saying so."""
    if options.base:
        return options.base
    default = dockerfile_default_base()
    if image_labels(client, default) is not None:
        return default
    try:
        pulled = run([client, "pull", "--quiet", default], timeout=PULL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        reason = [f"no answer within {PULL_TIMEOUT_S} s"]
    else:
        if pulled.returncode == 0:
            return default
        reason = (pulled.stderr or pulled.stdout).strip().splitlines()[-1:] or ["no answer"]
    notes.append(
        f"{default.split('@')[0]} cannot be pulled here ({reason[0][:160]}): built on a base "
        f"from Debian's packages ({DEBIAN_SUITE}, debootstrap) instead"
    )
    log.warning("%s", notes[-1])
    return build_debian_base(client, options.debian_mirror, options.debian_security_mirror)


def link_torch_wheels(source: Path | None) -> list[Path]:
    """Put the torch wheels of `source` into image-wheels/ (hard links where the disk allows);
    clear wheels an earlier build left. Returns the wheels now there; a `source` without a
    torch wheel is an error, never a quiet fall-back to the index."""
    if source is not None and source.resolve() == WHEEL_FOLDER.resolve():
        return sorted(WHEEL_FOLDER.glob("torch-*.whl"))
    for stale in WHEEL_FOLDER.glob("*.whl"):
        stale.unlink()
    if source is None:
        return []
    wheels = sorted(source.glob("torch-*.whl"))
    if not wheels:
        raise ImageError(f"TORCH_WHEELS: {source} holds no torch-*.whl")
    WHEEL_FOLDER.mkdir(exist_ok=True)
    for wheel in wheels:
        target = WHEEL_FOLDER / wheel.name
        try:
            os.link(wheel, target)
        except OSError:
            shutil.copy2(wheel, target)
    return [WHEEL_FOLDER / wheel.name for wheel in wheels]


def allowlist(dockerignore: Path = DOCKERIGNORE) -> tuple[list[str], list[str]]:
    """The .dockerignore allowlist: the paths let through (`!path`) and the patterns excluded
    inside them."""
    allowed, excluded = [], []
    for raw in dockerignore.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "*":
            continue
        if line.startswith("!"):
            allowed.append(line[1:].rstrip("/"))
        else:
            excluded.append(line.removeprefix("**/"))
    return allowed, excluded


def context_files(root: Path = PROJECT_ROOT) -> Iterator[Path]:
    """Every file the build context holds, as .dockerignore lets it through, sorted."""
    allowed, excluded = allowlist()
    for name in allowed:
        path = root / name
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for item in found:
            parts = item.relative_to(root).parts
            if item.exists() and not any(
                fnmatch.fnmatch(part, pattern) for part in parts for pattern in excluded
            ):
                yield item


def inputs_digest(base_id: str, arguments: Sequence[str], root: Path = PROJECT_ROOT) -> str:
    """A hash of everything the image is built from: the Dockerfile, the context's files (a
    wheel by name and size: hashing it again would cost seconds and the lock checks it), the
    base image's id and the build's arguments."""
    digest = hashlib.sha256()
    digest.update(DOCKERFILE.read_bytes())
    for item in context_files(root):
        digest.update(str(item.relative_to(root)).encode())
        if item.suffix == ".whl":
            digest.update(str(item.stat().st_size).encode())
        else:
            digest.update(hashlib.sha256(item.read_bytes()).digest())
    digest.update(base_id.encode())
    digest.update(json.dumps(list(arguments)).encode())
    return digest.hexdigest()


def ca_bundle(option: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The CA bundle pip trusts: the one asked for, else PIP_CERT, else the system bundle."""
    candidates = [option, environ.get("PIP_CERT"), *SYSTEM_CA_BUNDLES]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def default_torch_wheels(environ: Mapping[str, str]) -> Path | None:
    """TORCH_WHEELS, else the first folder of PIP_FIND_LINKS holding a torch wheel."""
    if environ.get("TORCH_WHEELS"):
        return Path(environ["TORCH_WHEELS"])
    for entry in environ.get("PIP_FIND_LINKS", "").split():
        folder = Path(entry.removeprefix("file://"))
        if folder.is_dir() and any(folder.glob("torch-*.whl")):
            return folder
    return None


def has_bridge_network(client: str) -> bool:
    """Whether the engine has its default bridge (a daemon started with --bridge=none has
    not, and its builds must use the host's network)."""
    names = run([client, "network", "ls", "--format", "{{.Name}}"]).stdout.split()
    return "bridge" in names


def build_image(options: ImageOptions, environ: Mapping[str, str]) -> BuiltImage:
    """Build (or reuse) the image; raises ImageError with what to do when it cannot."""
    client = docker_client()
    if problem := engine_problem(client):
        raise ImageError(problem)
    notes: list[str] = []
    base = choose_base(client, options, notes)
    wheels = link_torch_wheels(options.torch_wheels)
    arguments = [f"BASE_IMAGE={base}", *options.build_args]
    if options.torch_index_url is not None:
        arguments.append(f"TORCH_INDEX_URL={options.torch_index_url}")
    elif wheels:
        arguments.append("TORCH_INDEX_URL=")  # the local wheel; an unreachable index costs minutes
        notes.append(f"torch from {options.torch_wheels} ({', '.join(w.name for w in wheels)})")
    digest = inputs_digest(image_id(client, base), arguments)
    labels = image_labels(client, options.tag)
    if not options.force and labels and labels.get(INPUTS_LABEL) == digest:
        return BuiltImage(options.tag, image_id(client, options.tag), base, reused=True, notes=notes)
    command = [*build_command(client), "--tag", options.tag, "--label", f"{INPUTS_LABEL}={digest}"]
    for argument in arguments:
        command += ["--build-arg", argument]
    if options.force:  # a new value re-runs the archive build: Hub models skipped before are tried again
        command += ["--build-arg", f"ARCHIVES_ATTEMPT={time.time():.0f}"]
    command += [arg for name in options.proxy_variables for arg in ("--build-arg", name)]
    if options.ca_bundle is not None:
        command += ["--secret", f"id={CA_SECRET},src={options.ca_bundle}"]
    if not has_bridge_network(client):
        command += ["--network", "host"]
    command.append(str(PROJECT_ROOT))
    log.info("building %s on %s", options.tag, base)
    done = subprocess.run(command, env={**environ, "DOCKER_BUILDKIT": "1"}, check=False)
    if done.returncode != 0:
        raise ImageError(f"docker build failed (exit {done.returncode}); its output is above")
    if (image_labels(client, options.tag) or {}).get(INPUTS_LABEL) != digest:
        raise ImageError(f"the build finished but {options.tag} is not the image it built (not loaded?)")
    notes += skipped_models(client, options.tag)
    return BuiltImage(options.tag, image_id(client, options.tag), base, reused=False, notes=notes)


def skipped_models(client: str, image: str) -> list[str]:
    """One note per model the image's archive build skipped, with its reason (from the store's
    build report): a Hub model out of reach at build time is not in the image."""
    shown = run([client, "run", "--rm", "--network", "none", "--entrypoint", "cat", image, STORE_REPORT])
    try:
        skipped = json.loads(shown.stdout).get("skipped", {}) if shown.returncode == 0 else {}
    except (ValueError, AttributeError):
        skipped = {}
    return [
        f"{name} is not in the image: {reason} (make image IMAGE_ARGS=--force tries again)"
        for name, reason in sorted(skipped.items())
    ]


def options_from_command_line(argv: Sequence[str] | None, environ: Mapping[str, str]) -> ImageOptions:
    """Command line and environment -> options (the only place either is read)."""
    parser = argparse.ArgumentParser(prog="python -m modelserver image", description=__doc__.splitlines()[0])
    parser.add_argument("--tag", default=environ.get("IMAGE") or DEFAULT_TAG, help="IMAGE")
    parser.add_argument("--base", default=environ.get("BASE_IMAGE") or None, help="BASE_IMAGE")
    parser.add_argument(
        "--torch-wheels", type=Path, default=default_torch_wheels(environ), help="TORCH_WHEELS"
    )
    parser.add_argument("--ca-bundle", type=Path, default=None, help="default: PIP_CERT, else the system's")
    parser.add_argument("--torch-index-url", default=environ.get("TORCH_INDEX_URL"))
    parser.add_argument("--build-arg", action="append", default=[], help="NAME=VALUE, passed to docker build")
    parser.add_argument("--debian-mirror", default=environ.get("DEBIAN_MIRROR") or DEBIAN_MIRROR)
    parser.add_argument(
        "--debian-security-mirror",
        default=environ.get("DEBIAN_SECURITY_MIRROR") or DEBIAN_SECURITY_MIRROR,
    )
    parser.add_argument(
        "--force", action="store_true", help="build even when the inputs did not change; fetch models anew"
    )
    args = parser.parse_args(argv)
    if args.torch_wheels is not None and not args.torch_wheels.is_dir():
        parser.error(f"TORCH_WHEELS: {args.torch_wheels} is not a folder")
    return ImageOptions(
        tag=args.tag,
        base=args.base,
        torch_wheels=args.torch_wheels,
        ca_bundle=ca_bundle(args.ca_bundle, environ),
        proxy_variables=tuple(name for name in PROXY_VARIABLES if name in environ),
        torch_index_url=args.torch_index_url,
        build_args=tuple(args.build_arg),
        debian_mirror=args.debian_mirror,
        debian_security_mirror=args.debian_security_mirror,
        force=args.force,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Build the image; print its tag, id and base, or why it cannot be built (exit 2)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = options_from_command_line(argv, os.environ)
    try:
        built = build_image(options, os.environ)
    except (ImageError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for note in built.notes:
        print(f"note: {note}")
    verb = "reused" if built.reused else "built"
    print(f"{verb} {built.tag} ({built.image_id[:19]}) on {built.base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
