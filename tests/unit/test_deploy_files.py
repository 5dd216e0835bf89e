"""The deployment files: linted by their own tools, and held to what the launcher really does.

No cluster here, so the Dockerfile, the Kubernetes manifests and the
CI workflow are checked with hadolint, kubernetes-validate and actionlint (installed into the
venv by requirements-dev.txt), then read: the image runs the launcher on its PORT, the probes
hit /healthcheck on that port, the grace period covers the launcher's drain, and the ConfigMap
is the repository's config files.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.utils import canonicalize_name
from packaging.version import Version

from modelserver.catalogue import Catalogue
from modelserver.launcher.settings import settings_from_command_line
from modelserver.project import PROJECT_ROOT
from modelserver.tools import image_digests
from modelserver.tools.k8s_configmap import CONFIGMAP, SOURCES, read_sources, stale_files
from modelserver.tools.serve_closure import closure, requirement_names

DOCKERFILE = PROJECT_ROOT / "Dockerfile"
K8S = PROJECT_ROOT / "deploy" / "k8s"
WORKFLOWS = PROJECT_ROOT / ".github" / "workflows"
IMAGE_LOCK = PROJECT_ROOT / "requirements-image.txt"
DEPLOY_LOCK = PROJECT_ROOT / "requirements-deploy.txt"
CONSTRAINTS = PROJECT_ROOT / "constraints.txt"
# The tools come with the venv that runs the tests (requirements-dev.txt), never from the OS.
TOOLS = Path(sys.executable).parent
# Stopping Envoy (up to 10 s) and TorchServe with its workers (up to 25 s) after the drain.
STOP_MARGIN_S = 35


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its build stage (0-based), keyword and raw arguments."""

    stage: int
    keyword: str
    args: str


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[Instruction]:
    """The Dockerfile's instructions, continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    stage, pending = -1, ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        keyword, _, args = pending.partition(" ")
        keyword, pending = keyword.upper(), ""
        stage += keyword == "FROM"
        instructions.append(Instruction(stage, keyword, args.strip()))
    return instructions


def final_stage(keyword: str) -> list[Instruction]:
    """The final build stage's instructions with this keyword."""
    instructions = dockerfile_instructions()
    last = instructions[-1].stage
    return [i for i in instructions if i.stage == last and i.keyword == keyword]


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON (exec form) argument list of ENTRYPOINT, CMD or HEALTHCHECK ... CMD."""
    args = instruction.args
    if instruction.keyword == "HEALTHCHECK":
        args = args[args.index(" CMD ") + len(" CMD ") :]
    parsed = json.loads(args)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), args
    return parsed


def healthcheck_command() -> list[str]:
    """The image's HEALTHCHECK command, exactly as Docker runs it (exec form, no shell)."""
    (healthcheck,) = final_stage("HEALTHCHECK")
    return exec_form(healthcheck)


def image_command() -> list[str]:
    """ENTRYPOINT + CMD of the final image: what the container runs without arguments."""
    (entrypoint,) = final_stage("ENTRYPOINT")
    (cmd,) = final_stage("CMD")
    return exec_form(entrypoint) + exec_form(cmd)


def launcher_args(command: list[str]) -> list[str]:
    """The arguments given to `python -m modelserver.launcher` in a command line."""
    start = command.index("modelserver.launcher")
    assert command[start - 2 : start] == ["python", "-m"], command
    return command[start + 1 :]


def image_env() -> dict[str, str]:
    """ENV of the final stage (`KEY=value` forms)."""
    env: dict[str, str] = {}
    for instruction in final_stage("ENV"):
        for item in shlex.split(instruction.args):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def manifests(folder: Path) -> dict[str, dict[str, Any]]:
    """Every resource of a folder's *.yaml files (kustomization excluded), by kind."""
    resources: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            resources[document["kind"]] = document
    return resources


def container() -> dict[str, Any]:
    """The model server's container in the Deployment."""
    (server,) = manifests(K8S)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return server


def effective_args() -> list[str]:
    """The launcher's arguments in the pod: the ENTRYPOINT's, then the Deployment's args if it
    sets any, else the image's CMD."""
    server = container()
    assert "command" not in server, "the image's ENTRYPOINT (tini + launcher) must stay"
    (entrypoint,) = final_stage("ENTRYPOINT")
    (cmd,) = final_stage("CMD")
    return launcher_args(exec_form(entrypoint)) + server.get("args", exec_form(cmd))


def run_tool(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run a linter installed beside this interpreter (requirements-dev.txt)."""
    tool = TOOLS / name
    assert tool.exists(), f"{tool} is missing: run `make install` (requirements-dev.txt)"
    command = [str(tool), *map(str, args)]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False)


# --- the tools -------------------------------------------------------------------------------


def test_hadolint_passes_the_dockerfile() -> None:
    result = run_tool("hadolint", "--no-color", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kubernetes_manifests_validate_strictly() -> None:
    """Every resource is checked against the Kubernetes schema, unknown fields rejected."""
    files = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    result = run_tool("kubernetes-validate", "--strict", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Couldn't find schema" not in result.stdout + result.stderr
    assert result.stdout.count(" passed for resource ") == len(files), result.stdout


def test_kubernetes_validate_rejects_a_typo(tmp_path: Path) -> None:
    """So a pass above means something: a misspelt field fails strict validation."""
    broken = tmp_path / "deployment.yaml"
    text = (K8S / "deployment.yaml").read_text(encoding="utf-8")
    broken.write_text(text.replace("terminationGracePeriodSeconds:", "terminationGrace:"), encoding="utf-8")
    assert run_tool("kubernetes-validate", "--strict", broken).returncode != 0


def test_actionlint_passes_the_workflows() -> None:
    # shellcheck and pyflakes integrations off: the result must not depend on what is on PATH.
    workflows = sorted(WORKFLOWS.glob("*.yml"))
    assert workflows
    result = run_tool("actionlint", "-no-color", "-shellcheck=", "-pyflakes=", *workflows)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the image -------------------------------------------------------------------------------


def test_image_runs_the_launcher_as_make_run_does() -> None:
    command = image_command()
    assert command[:2] == ["/usr/bin/tini", "--"], "tini must be PID 1 (reaps workers, forwards SIGTERM)"
    settings = settings_from_command_line(launcher_args(command), image_env())
    assert settings.runtime_dir == Path("/app/run")
    assert not settings.build, "the container serves the archives it has (--no-build)"
    assert settings.ports.public == int(image_env()["PORT"])


def test_launcher_help_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "modelserver.launcher", "--help"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0 and "--runtime-dir" in result.stdout, result.stderr


def test_baked_models_are_the_served_models() -> None:
    """BUILD_MODELS bakes the MODELS build argument; CMD must serve exactly those, or the
    launcher waits for an archive that is not there."""
    arguments = [i.args for i in dockerfile_instructions() if i.keyword == "ARG"]
    (models_arg,) = [arg for arg in arguments if arg.startswith("MODELS=")]
    baked = shlex.split(models_arg.partition("=")[2])[0].split()
    served = settings_from_command_line(launcher_args(image_command()), {}).models
    assert list(served) == baked
    assert set(baked) <= set(Catalogue.load().models)


def test_image_runs_as_a_fixed_non_root_user() -> None:
    (user,) = final_stage("USER")
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so Kubernetes can check runAsNonRoot"
    assert gid.isdigit() and int(gid) != 0
    assert container()["securityContext"]["runAsUser"] == int(uid)
    assert container()["securityContext"]["runAsGroup"] == int(gid)


def test_healthcheck_asks_the_operations_port_for_healthcheck() -> None:
    command = healthcheck_command()
    assert command[:2] == ["python", "-c"]
    compile(command[2], "<HEALTHCHECK>", "exec")  # valid Python
    assert "http://127.0.0.1:" in command[2] and "/healthcheck" in command[2]
    assert "os.environ['METRICS_PORT']" in command[2]
    (healthcheck,) = final_stage("HEALTHCHECK")
    start_period = re.search(r"--start-period=(\d+)s", healthcheck.args)
    assert start_period and int(start_period.group(1)) >= settings_from_command_line([], {}).startup_timeout_s


def test_port_is_one_number_everywhere() -> None:
    port, metrics = int(image_env()["PORT"]), int(image_env()["METRICS_PORT"])
    assert [i.args for i in final_stage("EXPOSE")] == [f"{port} {metrics}"]
    server = container()
    env = {e["name"]: e["value"] for e in server["env"]}
    assert env["PORT"] == str(port) and env["METRICS_PORT"] == str(metrics)
    assert [(p["name"], p["containerPort"]) for p in server["ports"]] == [
        ("http", port),
        ("metrics", metrics),
    ]
    settings = settings_from_command_line(effective_args(), env)
    assert (settings.ports.public, settings.ports.prometheus) == (port, metrics)
    annotations = manifests(K8S)["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(metrics)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_dockerignore_keeps_tests_state_and_secrets_out() -> None:
    lines = [
        line.strip()
        for line in (PROJECT_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allowlist: everything is excluded first"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert not allowed & {"tests", ".git", ".venv", "model_store", "run", "load_tests", "deploy"}
    copied = [
        source.rstrip("/")
        for i in dockerfile_instructions()
        if i.keyword == "COPY" and "--from" not in i.args
        for source in i.args.split()[:-1]
        if source != "."
    ]
    excluded = {path for path in copied if not any(path == a or path.startswith(f"{a}/") for a in allowed)}
    assert not excluded, f"COPY of a path .dockerignore excludes: {excluded}"


# --- Kubernetes ------------------------------------------------------------------------------


def test_probes_hit_healthcheck_on_the_operations_port() -> None:
    server = container()
    # The operations port's connections are outside the public port's budget: a crowd on the
    # API cannot make the pod fail its probes.
    for probe in ("startupProbe", "readinessProbe"):
        assert server[probe]["httpGet"] == {"path": "/healthcheck", "port": "metrics"}, probe
    # Liveness never depends on the models: the launcher recovers them itself, and a restart
    # in the middle of that recovery would only start it over.
    assert server["livenessProbe"] == {**server["livenessProbe"], "tcpSocket": {"port": "http"}}
    assert "httpGet" not in server["livenessProbe"]
    startup = server["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    timeout = settings_from_command_line(effective_args(), {}).startup_timeout_s
    assert budget >= timeout, "liveness must not act before the launcher could have loaded the models"


def test_the_autoscaler_alone_sets_the_replica_count() -> None:
    found = manifests(K8S)
    assert "replicas" not in found["Deployment"]["spec"]
    assert found["HorizontalPodAutoscaler"]["spec"]["minReplicas"] >= 2  # the PDB keeps one


def test_grace_period_covers_prestop_and_the_launchers_drain() -> None:
    spec = manifests(K8S)["Deployment"]["spec"]["template"]["spec"]
    sleep = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert Path(sleep[0]).name == "sleep"
    settings = settings_from_command_line(effective_args(), {})
    needed = float(sleep[1]) + settings.unready_delay_s + settings.drain_timeout_s + STOP_MARGIN_S
    assert spec["terminationGracePeriodSeconds"] >= needed


def test_pod_runs_unprivileged_with_a_read_only_root() -> None:
    spec = manifests(K8S)["Deployment"]["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container()["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False


def test_what_the_launcher_writes_is_on_writable_volumes() -> None:
    """With a read-only root, the runtime folder and /tmp must be emptyDirs."""
    spec = manifests(K8S)["Deployment"]["spec"]["template"]["spec"]
    empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    runtime_dir = str(settings_from_command_line(effective_args(), {}).runtime_dir)
    assert mounts[runtime_dir] in empty_dirs
    assert mounts["/tmp"] in empty_dirs


def test_configmap_is_mounted_over_each_config_file() -> None:
    spec = manifests(K8S)["Deployment"]["spec"]["template"]["spec"]
    (config,) = [v for v in spec["volumes"] if "configMap" in v]
    assert config["configMap"]["name"] == manifests(K8S)["ConfigMap"]["metadata"]["name"]
    mounts = [m for m in container()["volumeMounts"] if m["name"] == config["name"]]
    mounted = {m["subPath"]: m["mountPath"] for m in mounts}
    assert mounted == {key: f"/app/{path}" for key, path in SOURCES.items()}


def test_configmap_is_fresh() -> None:
    stale = [str(p.relative_to(PROJECT_ROOT)) for p in stale_files()]
    assert not stale, f"stale {stale}: run `python -m modelserver configmap`"
    data = yaml.safe_load(CONFIGMAP.read_text(encoding="utf-8"))["data"]
    assert data == read_sources()


def test_service_hpa_and_pdb_point_at_the_deployment() -> None:
    resources = manifests(K8S)
    deployment = resources["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = resources["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["ports"]] == ["http"]
    assert resources["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    hpa = resources["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2, "one replica must survive a disruption the PDB allows"


def test_kustomization_lists_every_manifest_and_the_image() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert [i["name"] for i in kustomization["images"]] == [container()["image"]]


# --- CI --------------------------------------------------------------------------------------


def test_workflow_tests_builds_and_deploys_main_only() -> None:
    workflow = yaml.safe_load((WORKFLOWS / "ci.yml").read_text(encoding="utf-8"))
    jobs = workflow["jobs"]
    assert any(step.get("run") == "make test" for step in jobs["test"]["steps"])
    uses = [step["uses"] for job in jobs.values() for step in job["steps"] if "uses" in step]
    assert any(u.startswith("docker/build-push-action@") for u in uses)
    deploy = jobs["deploy"]
    assert "refs/heads/main" in deploy["if"] and deploy["environment"]["name"]
    # Only the job that pushes may write packages, and it runs on main alone.
    writers = [name for name, job in jobs.items() if job.get("permissions", {}).get("packages") == "write"]
    assert writers == ["image"] and "refs/heads/main" in jobs["image"]["if"]
    assert workflow["permissions"] == {"contents": "read"}


def test_checkouts_leave_no_credentials_behind() -> None:
    jobs = yaml.safe_load((WORKFLOWS / "ci.yml").read_text(encoding="utf-8"))["jobs"]
    checkouts = [
        step
        for job in jobs.values()
        for step in job["steps"]
        if step.get("uses", "").startswith("actions/checkout@")
    ]
    assert checkouts and all(step["with"]["persist-credentials"] is False for step in checkouts)


# Where an action is pinned: `uses: owner/repo[/path]@<40 hex> # vX.Y.Z` (a local `./` action
# is the repository's own code, already pinned by the commit under test).
PINNED_USES = re.compile(
    r"^\s*(?:-\s+)?uses:\s+[\w.-]+/[\w.-]+(?:/[\w./-]+)?@[0-9a-f]{40}\s+#\s*v\d+(?:\.\d+)*\s*$"
)


def test_every_action_is_pinned_by_a_commit_with_its_release_beside_it() -> None:
    """A tag can be moved to other code; a commit id cannot. The comment says which release."""
    lines = [
        (path.name, number, line)
        for path in sorted(WORKFLOWS.glob("*.yml"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.match(r"^\s*(?:-\s+)?uses:", line)
    ]
    assert lines, "no action found: the pattern above no longer reads the workflows"
    loose = [
        f"{name}:{number}: {line.strip()}" for name, number, line in lines if not PINNED_USES.match(line)
    ]
    local = [entry for entry in loose if re.search(r"uses:\s+\./", entry)]
    assert set(loose) == set(local), "\n".join(sorted(set(loose) - set(local)))


def test_the_pin_check_refuses_a_tag_and_a_short_commit() -> None:
    assert PINNED_USES.match(
        "      - uses: actions/checkout@fbc6f3992d24b796d5a048ff273f7fcc4a7b6c09 # v5.1.0"
    )
    assert not PINNED_USES.match("      - uses: actions/checkout@v5")
    assert not PINNED_USES.match("      - uses: actions/checkout@fbc6f39 # v5.1.0")
    assert not PINNED_USES.match("      - uses: actions/checkout@fbc6f3992d24b796d5a048ff273f7fcc4a7b6c09")


def test_deploy_applies_the_pushed_digest_and_only_after_checking_it() -> None:
    """The image job exposes the digest its build step pushed; the deploy job maps the stable
    name `modelserver` to IMAGE@DIGEST, renders, refuses any image without a digest, and
    applies exactly the rendered file it checked."""
    jobs = yaml.safe_load((WORKFLOWS / "ci.yml").read_text(encoding="utf-8"))["jobs"]
    image = jobs["image"]
    (build,) = [
        step for step in image["steps"] if step.get("uses", "").startswith("docker/build-push-action@")
    ]
    assert image["outputs"]["digest"] == f"${{{{ steps.{build['id']}.outputs.digest }}}}"
    steps = jobs["deploy"]["steps"]
    runs = [step.get("run", "") for step in steps]

    def first(pattern: str) -> int:
        found = [index for index, run in enumerate(runs) if re.search(pattern, run)]
        assert found, pattern
        return found[0]

    set_image = first(r'kustomize edit set image "modelserver=\$\{IMAGE\}@\$\{DIGEST\}"')
    assert steps[set_image]["env"]["DIGEST"] == "${{ needs.image.outputs.digest }}"
    assert steps[set_image]["working-directory"] == "deploy/k8s"
    render = first(r'kustomize build deploy/k8s > "\$RUNNER_TEMP/rendered.yaml"')
    check = first(r'python -m modelserver image-digests "\$RUNNER_TEMP/rendered.yaml"')
    apply = first(r'kubectl apply -f "\$RUNNER_TEMP/rendered.yaml"')
    assert set_image < render <= check < apply
    assert not any("apply -k" in run for run in runs), "apply the checked file, not a new render"
    install = first(r"pip install --require-hashes --no-deps -r requirements-deploy.txt")
    assert install < check


# --- image digests ---------------------------------------------------------------------------

DIGEST = "sha256:" + "0123456789abcdef" * 4


def deployment_of(image: str, init_image: str | None = None) -> dict[str, Any]:
    """A Deployment whose container (and init container) run these images."""
    spec: dict[str, Any] = {"containers": [{"name": "server", "image": image}]}
    if init_image is not None:
        spec["initContainers"] = [{"name": "init", "image": init_image}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {"template": {"spec": spec}},
    }


@pytest.mark.parametrize(
    ("image", "pinned"),
    [
        (f"ghcr.io/owner/repo@{DIGEST}", True),
        (f"ghcr.io/owner/repo:abc123@{DIGEST}", True),  # the digest decides what is pulled
        ("ghcr.io/owner/repo:abc123", False),
        ("ghcr.io/owner/repo", False),  # no tag is `latest`
        ("modelserver", False),  # the committed stable name, before CI maps it
        ("ghcr.io/owner/repo@sha256:IMAGE_DIGEST", False),
        ("ghcr.io/owner/repo@sha256:" + "0" * 63, False),
        ("ghcr.io/owner/repo@sha256:" + "A" * 64, False),
        ("", False),
    ],
)
def test_the_digest_check_takes_only_a_full_sha256(image: str, pinned: bool) -> None:
    good, bad = image_digests.problems(yaml.safe_dump(deployment_of(image)), "x.yaml")
    assert (len(good), len(bad)) == ((1, 0) if pinned else (0, 1))
    if not pinned:
        assert bad[0].startswith("x.yaml: Deployment/app containers[server]: image ")


def test_the_digest_check_reads_every_container_of_every_document(tmp_path: Path) -> None:
    manifest = tmp_path / "rendered.yaml"
    documents = [
        deployment_of(f"r/a@{DIGEST}", init_image="busybox:1.36"),
        {"apiVersion": "v1", "kind": "List", "items": [deployment_of(f"r/b@{DIGEST}")]},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}},
    ]
    manifest.write_text(yaml.safe_dump_all(documents), encoding="utf-8")
    good, bad = image_digests.problems(manifest.read_text(encoding="utf-8"), str(manifest))
    assert len(good) == 2
    assert bad == [
        f"{manifest}: Deployment/app initContainers[init]: image 'busybox:1.36' is not pinned by digest"
        " (NAME@sha256:<64 hex>)"
    ]
    assert image_digests.main([str(manifest)]) == 1


def test_the_digest_check_exits_0_when_pinned_and_1_on_nothing(tmp_path: Path) -> None:
    pinned = tmp_path / "pinned.yaml"
    pinned.write_text(yaml.safe_dump(deployment_of(f"r/a@{DIGEST}")), encoding="utf-8")
    assert image_digests.main([str(pinned)]) == 0
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing rendered\n", encoding="utf-8")
    assert image_digests.main([str(empty)]) == 1, "an empty render checks nothing: it must not pass"
    result = subprocess.run(
        [sys.executable, "-m", "modelserver", "image-digests", "-"],
        input=pinned.read_text(encoding="utf-8"),
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and f"r/a@{DIGEST}" in result.stderr, result.stderr


def test_the_committed_manifests_name_no_tag_and_no_digest() -> None:
    """Nothing committed can be applied as it is: the k8s image is the stable name kustomize maps
    (`images:` with no newName, newTag or digest)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["images"] == [{"name": "modelserver"}]
    assert container()["image"] == "modelserver"
    path = K8S / "deployment.yaml"
    good, bad = image_digests.problems(path.read_text(encoding="utf-8"), path.name)
    assert not good and len(bad) == 1, (path, good, bad)


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="no kubectl (its built-in kustomize renders the manifests)")
def test_what_ci_renders_passes_with_a_digest_and_fails_with_a_tag(tmp_path: Path) -> None:
    """What `kustomize edit set image modelserver=IMAGE@DIGEST` writes into kustomization.yaml,
    rendered by kustomize (kubectl's) and checked as the deploy job checks it; a tag is refused."""
    assert KUBECTL is not None

    def render(image: dict[str, str]) -> str:
        work = tmp_path / "-".join(sorted(image))
        shutil.copytree(K8S, work)
        kustomization = yaml.safe_load((work / "kustomization.yaml").read_text(encoding="utf-8"))
        kustomization["images"] = [{"name": "modelserver", "newName": "ghcr.io/owner/repo", **image}]
        (work / "kustomization.yaml").write_text(yaml.safe_dump(kustomization), encoding="utf-8")
        result = subprocess.run(
            [KUBECTL, "kustomize", str(work)], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    good, bad = image_digests.problems(render({"digest": DIGEST}), "rendered")
    assert good == [f"rendered: Deployment/modelserver containers[modelserver]: ghcr.io/owner/repo@{DIGEST}"]
    assert not bad
    good, bad = image_digests.problems(render({"newTag": "0123abc"}), "rendered")
    assert not good and "ghcr.io/owner/repo:0123abc" in bad[0]


# --- the image's hashed install --------------------------------------------------------------


def pins(path: Path) -> dict[str, str]:
    """`name==version` lines of a requirements or constraints file, by normalised name."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^([A-Za-z0-9][\w.-]*)==(\S+)", line):
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def locked(path: Path) -> dict[str, tuple[str, list[str]]]:
    """A pip-compile lock's entries: name -> (version, sha256 digests)."""
    entries: dict[str, tuple[str, list[str]]] = {}
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    for line in text.splitlines():
        if match := re.match(r"^([A-Za-z0-9][\w.-]*)==(\S+)(.*)$", line):
            hashes = re.findall(r"--hash=sha256:(\S+)", match.group(3))
            entries[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return entries


@pytest.mark.parametrize("lock", [IMAGE_LOCK, DEPLOY_LOCK], ids=lambda p: p.name)
def test_a_lock_pins_constraints_exactly_with_hashes(lock: Path) -> None:
    """Every entry has a sha256 and the version constraints.txt pins (a local label such as
    torch's +cpu aside), so a bumped pin without `make lock` fails here."""
    entries = locked(lock)
    constraints = pins(CONSTRAINTS)
    assert entries
    for name, (version, hashes) in entries.items():
        assert hashes and all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes), name
        assert name in constraints, f"{name} is locked but not pinned in constraints.txt"
        assert Version(version).public == Version(constraints[name]).public, (name, version)
    header = lock.read_text(encoding="utf-8").splitlines()[:8]
    assert "#    make lock" in header, "regenerate with `make lock`"


def test_the_image_lock_is_the_whole_runtime_and_torch_is_the_cpu_build() -> None:
    entries = locked(IMAGE_LOCK)
    runtime = requirement_names(PROJECT_ROOT / "requirements.txt")  # with requirements-serve.txt
    assert set(entries) == closure(runtime), "make lock: the lock must hold what the image needs"
    assert entries["torch"][0] == "2.13.0+cpu", "PyPI's torch==2.13.0 is the CUDA build"


def test_the_image_installs_the_lock_with_require_hashes_only() -> None:
    installs = [i for i in dockerfile_instructions() if i.keyword == "RUN" and "pip install" in i.args]
    (install,) = installs
    words = shlex.split(install.args)
    assert {"--require-hashes", "--no-deps", "--only-binary=:all:"} <= set(words)
    assert words[words.index("-r") + 1] == IMAGE_LOCK.name
    assert words.count("-r") == 1 and "-c" not in words and "--constraint" not in words
    copies = [
        i.args.split() for i in dockerfile_instructions() if i.keyword == "COPY" and i.stage == install.stage
    ]
    assert [IMAGE_LOCK.name, "./"] in copies


def test_the_load_autoscaling_overlay_scales_on_the_launchers_gauges_and_cpu(tmp_path: Path) -> None:
    """deploy/k8s scales on CPU alone (an HPA missing a metric never scales down); the overlay
    replaces the metrics with the gauges /metrics exports, each one a rule of the adapter, and
    CPU. The merged HPA validates strictly."""
    from modelserver.launcher.pages.metrics import IN_FLIGHT, QUEUE_SECONDS  # pylint: disable=import-outside-toplevel

    base = manifests(K8S)["HorizontalPodAutoscaler"]
    assert [m["type"] for m in base["spec"]["metrics"]] == ["Resource"]
    overlay = K8S / "load-autoscaling"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["resources"] == ["../"] and kustomization["patches"] == [{"path": "hpa.yaml"}]
    patch = yaml.safe_load((overlay / "hpa.yaml").read_text(encoding="utf-8"))
    assert patch["metadata"]["name"] == base["metadata"]["name"] and set(patch["spec"]) == {"metrics"}
    metrics = patch["spec"]["metrics"]
    pods = {m["pods"]["metric"]["name"] for m in metrics if m["type"] == "Pods"}
    assert pods == {IN_FLIGHT, QUEUE_SECONDS}
    assert [m for m in metrics if m["type"] == "Resource"] == base["spec"]["metrics"], "CPU as in the base"
    merged = {**base, "spec": {**base["spec"], "metrics": metrics}}
    (tmp_path / "hpa.yaml").write_text(yaml.safe_dump(merged), encoding="utf-8")
    checked = run_tool("kubernetes-validate", "--strict", tmp_path / "hpa.yaml")
    assert checked.returncode == 0 and " passed " in checked.stdout, checked.stdout + checked.stderr
    adapter = yaml.safe_load((overlay / "prometheus-adapter-values.yaml").read_text(encoding="utf-8"))
    rules = adapter["rules"]["custom"]
    assert {rule["name"]["as"] for rule in rules} == pods
    for rule in rules:
        assert rule["name"]["as"] in rule["seriesQuery"]
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert rule["metricsQuery"].startswith("max by (<<.GroupBy>>)"), "one value per pod"


def test_the_network_policy_admits_the_api_and_metrics_ports_only() -> None:
    policy = manifests(K8S)["NetworkPolicy"]["spec"]
    assert policy["podSelector"] == manifests(K8S)["Deployment"]["spec"]["selector"]
    assert policy["policyTypes"] == ["Ingress"]
    admitted = [port for rule in policy["ingress"] for port in rule["ports"]]
    assert admitted == [{"port": name, "protocol": "TCP"} for name in ("http", "metrics")]
    assert [p["name"] for p in container()["ports"]] == ["http", "metrics"]
