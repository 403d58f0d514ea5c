"""Dockerfiles install exactly what CI installs, and every image we reference is ours or pinned."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from mlplatform.settings import DEFAULT_COMPONENT_IMAGE
from tests.k8s import kube
from tests.k8s.kube import objects

pytestmark = pytest.mark.k8s

DOCKERFILES = {
    "components": kube.ROOT / "images/components.Dockerfile",
    "serving": kube.ROOT / "images/serving.Dockerfile",
}
OURS = re.compile(r"^ghcr\.io/mlplatform/mlplatform-(serving|components)(:\d+\.\d+\.\d+|@sha256:[0-9a-f]{64})$")
#: A third-party image is pinned by digest, or by its project's most specific release tag (never latest,
#: never a bare major): x.y.z, or x.y where that is the release (PostgreSQL), or MinIO's RELEASE.<date>.
PINNED = re.compile(r"^[\w.\-/]+(@sha256:[0-9a-f]{64}|:(v?\d+\.\d+(\.\d+)?(-[\w.\-]+)?|RELEASE\.[\w\-]+))$")


def makefile_install() -> tuple[str, str]:
    """The lock CI syncs and the way it installs the package, from the Makefile."""
    text = (kube.ROOT / "Makefile").read_text()
    sync = re.search(r"\$\(UV\) pip sync --python \$\(PY\) (\S+)", text)
    package = re.search(r"\$\(UV\) pip install --python \$\(PY\) (--no-deps) -e \.", text)
    assert sync and package, "the Makefile no longer installs with uv pip sync <lock> + --no-deps"
    return sync[1], package[1]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_the_ci_lock_then_the_package_without_dependencies(name: str) -> None:
    lock, no_deps = makefile_install()
    text = re.sub(r"\\\n\s*", " ", DOCKERFILES[name].read_text())  # join continued lines
    assert f"COPY {lock} " in text
    synced = re.findall(r"uv pip sync --python /opt/venv/bin/python[^\n]*?(\S+\.lock)\s*$", text, re.M)
    expected = lock if name == "components" else "requirements-cpu.lock"
    assert synced == [expected]
    if name == "serving":
        assert f"python scripts/cpu_lock.py {lock} > requirements-cpu.lock" in text
    assert re.search(rf"uv pip install --python /opt/venv/bin/python {no_deps} \.$", text, re.M)
    # The same uv as CI.
    uv_pin = re.search(r"UV_VERSION\s*:=\s*(\S+)", (kube.ROOT / "Makefile").read_text())[1]
    assert f"ARG UV_VERSION={uv_pin}" in text


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_runs_as_non_root_on_a_pinned_base(name: str) -> None:
    text = DOCKERFILES[name].read_text()
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert len(bases) == 1 and PINNED.match(bases[0]) and "3.11" in bases[0]
    assert all(line.split()[1] in ("${PYTHON_IMAGE}",) for line in text.splitlines() if line.startswith("FROM "))
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users == ["10001:10001"] and text.rstrip().splitlines()[-1] == "USER 10001:10001"


def test_the_cpu_lock_drops_only_cuda_packages_and_keeps_torch_at_the_locked_version() -> None:
    lock = (kube.ROOT / "requirements.lock").read_text()
    cpu = subprocess.run(
        [sys.executable, "scripts/cpu_lock.py", "requirements.lock"],
        cwd=kube.ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", lock, re.M))
    cpu_pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", cpu, re.M))
    removed = set(pins) - set(cpu_pins)
    assert removed and all(re.match(r"^(nvidia-|cuda-|triton$)", name) for name in removed)
    assert cpu_pins["torch"] == pins["torch"].split("+")[0] + "+cpu"
    assert {k: v for k, v in cpu_pins.items() if k != "torch"} == {
        k: v for k, v in pins.items() if k not in removed | {"torch"}
    }
    for kept in ("sympy", "networkx", "filelock", "kserve", "mlflow", "feast", "boto3"):
        assert kept in cpu_pins, kept


def referenced_images() -> set[str]:
    images: set[str] = set()
    renders = [kube.helm_template(p, kube.WITH_MODEL if p != "minimal" else {}) for p in kube.PROFILES]
    for path in ("manifests/overlays/kind", "manifests/overlays/production", "manifests/dev-services"):
        renders.append(kube.run(kube.tool("kustomize"), "build", str(kube.ROOT / path)).stdout)
    for manifest in renders:
        for doc in objects(manifest):
            images.update(re.findall(r"'image': '([^']+)'", str(doc)))
    return images


def test_every_image_the_chart_and_manifests_reference_is_ours_or_pinned() -> None:
    images = referenced_images()
    assert "ghcr.io/mlplatform/mlplatform-serving:0.1.0" in images
    bad = [i for i in images if not (OURS.match(i) or PINNED.match(i))]
    assert not bad, bad


def test_chart_and_settings_agree_on_our_image_versions() -> None:
    chart = yaml.safe_load((kube.CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((kube.CHART / "values.yaml").read_text())["image"]
    for name in ("serving", "components"):
        v = values[name]
        assert v["tag"] == chart["appVersion"]
        assert f"{v['registry']}/{v['repository']}:{v['tag']}" in chart["annotations"]["artifacthub.io/images"]
    components = values["components"]
    assert f"{components['registry']}/{components['repository']}:{components['tag']}" == DEFAULT_COMPONENT_IMAGE
    assert re.search(
        r"^IMAGE_TAG\s*\?=\s*" + re.escape(chart["appVersion"]) + "$", (kube.ROOT / "Makefile").read_text(), re.M
    )


def test_cluster_script_pins_every_prerequisite() -> None:
    text = (kube.ROOT / "scripts/cluster.sh").read_text()
    assert re.search(
        r'KIND_NODE_IMAGE="kindest/node:v' + re.escape(kube.KUBERNETES_VERSION) + r'@sha256:[0-9a-f]{64}"', text
    )
    for name in ("CERT_MANAGER", "KNATIVE", "KSERVE", "KFP", "KUBE_PROMETHEUS_STACK"):
        assert re.search(rf"^{name}_VERSION=\S*\d+\.\d+\.\d+", text, re.M), name
    lock = (kube.ROOT / "requirements.lock").read_text()
    assert re.search(r"^KSERVE_VERSION=v(\S+)", text, re.M)[1] == re.search(r"^kserve==(\S+)", lock, re.M)[1]
    assert re.search(r"^KFP_VERSION=(\S+)", text, re.M)[1] == re.search(r"^kfp==(\S+)", lock, re.M)[1]
