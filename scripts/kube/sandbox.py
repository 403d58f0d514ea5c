"""A real Kubernetes control plane on loopback, with fake nodes: the cluster tests' fixture and `make kube-up`.

etcd, kube-apiserver (RBAC authorization and the default admission plugins on), kube-controller-manager and
kube-scheduler, all built by scripts/kube/build.sh, run as local processes; kwok plays the kubelet of fake
nodes shaped like kind-config.yaml (a control-plane node, a CPU worker, a GPU worker with its label, its taint
and `nvidia.com/gpu` capacity). Pods are scheduled by the real scheduler and reported Running by kwok, but no
container runs: a pod's command, its probes and its network do not exist here.

On top of it run the serving controllers the platform deploys to: KServe's controller manager (its CRDs, its
default `inferenceservice-config`, its admission webhooks registered with the API server) and Knative Serving's
controller and autoscaler (its CRDs and default ConfigMaps, the activator's Deployment as a kwok pod), so an
InferenceService is reconciled by KServe into Knative Services, Revisions and Deployments, and its status
(readiness, canary traffic split) is what KServe and Knative compute. The one part played here is the ingress
layer (Istio or Kourier: an Envoy data plane, which cannot run without containers): `mark_ingresses` reports each
Knative Ingress as programmed for its generation, which is all Knative's Route waits for.

For distributed training run Kubeflow Trainer's controller manager (its CRDs, webhooks and the `torch-distributed`
ClusterTrainingRuntime) and JobSet's (its CRD and webhooks): a TrainJob becomes a JobSet, Jobs and pods placed by
the scheduler; kwok completes Job pods at once, and fails those labelled
`pod-container-running-failed.stage.kwok.x-k8s.io: "true"` (kwok's chaos Stage), so both outcomes run through the
controllers' own status logic. What the pods would compute (torchrun) does not run.

    python scripts/kube/sandbox.py up   [--dir .kube-sandbox]   # start; prints the kubeconfig's path
    python scripts/kube/sandbox.py down [--dir .kube-sandbox]   # stop everything up started

Everything listens on 127.0.0.1 only; the certificates (a self-made CA, the server's, one client certificate
per component and one for the admin) and the service-account signing key are made fresh in the folder.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("MLPLATFORM_TOOLS_DIR", ROOT / ".tools")) / "kube"
KIND_CONFIG = ROOT / "kind-config.yaml"
DEFAULT_DIR = ROOT / ".kube-sandbox"
HOST = "127.0.0.1"
PORTS = (
    "etcd",
    "etcd-peer",
    "apiserver",
    "controller-manager",
    "scheduler",
    "kwok",
    "kserve-webhook",
    "kserve-metrics",
    "kserve-probe",
    "knative-controller-metrics",
    "knative-controller-profiling",
    "knative-autoscaler-metrics",
    "knative-autoscaler-profiling",
    "knative-autoscaler-stats",
    "jobset-webhook",
    "jobset-metrics",
    "jobset-probe",
    "trainer-webhook",
    "trainer-metrics",
    "trainer-probe",
)
SERVICE_CIDR = "10.96.0.0/16"
#: Capacity of every fake node (a kind node on a workstation); the GPU worker adds GPUS.
NODE_CAPACITY = {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"}
GPUS = "1"
#: Order in which the processes stop: everything else before the API server, the API server before etcd.
STOP_ORDER = (
    "trainer-manager",
    "jobset-manager",
    "ingress",
    "knative-autoscaler",
    "knative-controller",
    "kserve-manager",
    "kwok",
    "kube-scheduler",
    "kube-controller-manager",
    "kube-apiserver",
    "etcd",
)
KNATIVE_NAMESPACE, KSERVE_NAMESPACE = "knative-serving", "kserve"
TRAINER_NAMESPACE, JOBSET_NAMESPACE = "kubeflow-system", "jobset-system"
#: Where Knative's activator and queue-proxy images would come from; digests are never resolved here (no registry).
KNATIVE_IMAGES = "gcr.io/knative-releases/knative.dev/serving/cmd"
#: Knative's autoscaler registers its own address in an Endpoints object, where loopback is refused; with one
#: replica it owns every bucket, so nothing ever connects to this address.
AUTOSCALER_POD_IP = "10.244.255.254"
INGRESS_API = "/apis/networking.internal.knative.dev/v1alpha1"


#: The storage initializer as KServe's Helm chart installs it (kserve-resources: ClusterStorageContainer `default`
#: with `kserve.storage.containerSecurityContext`). Without it KServe injects the initializer of its default
#: `inferenceservice-config`, which has no securityContext, and a namespace enforcing the `restricted` Pod Security
#: Standard (the chart's) refuses every predictor pod ("storage-initializer" must set allowPrivilegeEscalation=false
#: and drop ALL capabilities): the predictor never becomes ready. A cluster installed with KServe's Helm chart has it.
STORAGE_CONTAINER: dict[str, Any] = {
    "apiVersion": "serving.kserve.io/v1alpha1",
    "kind": "ClusterStorageContainer",
    "metadata": {"name": "default"},
    "spec": {
        "container": {
            "name": "storage-initializer",
            "image": "kserve/storage-initializer:v0.16.0",
            "resources": {"requests": {"memory": "100Mi", "cpu": "100m"}, "limits": {"memory": "1Gi", "cpu": "1"}},
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
                "privileged": False,
                "runAsNonRoot": True,
            },
        },
        "supportedUriFormats": [
            *({"prefix": p} for p in ("gs://", "s3://", "hdfs://", "hf://", "webhdfs://")),
            {"regex": "https://(.+?).blob.core.windows.net/(.+)"},
            {"regex": "https://(.+?).file.core.windows.net/(.+)"},
            {"regex": "https?://(.+)/(.+)"},
        ],
        "workloadType": "initContainer",
    },
}


class SandboxError(RuntimeError):
    """The control plane did not come up (the message names the component and its log)."""


def binary(name: str) -> str:
    path = TOOLS / "bin" / name
    if not path.exists():
        raise SandboxError(f"{path} is missing: run `make kube-tools` (scripts/kube/build.sh builds it, pinned)")
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --- certificates ----------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: x509.Name,
    key: Any,
    issuer: x509.Name,
    issuer_key: Any,
    *,
    ca: bool = False,
    server_names: tuple[str, ...] = (),
    server_ips: tuple[str, ...] = (),
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usages = ([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH] if server_names or server_ips else []) + (
            [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if server_names or server_ips:
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in server_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _name(common: str, org: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if org:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(parts)


#: Client identities: file stem -> (user, group). The admin is in system:masters; the components are the
#: users the default RBAC policy binds (system:kube-controller-manager, system:kube-scheduler).
IDENTITIES = {
    "admin": ("kubernetes-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", None),
    "scheduler": ("system:kube-scheduler", None),
    "kwok": ("kwok", "system:masters"),
}


def make_pki(pki: Path) -> None:
    """CA, API server certificate, a client certificate per identity and the service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = _name("mlplatform-sandbox-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "ca.key").write_bytes(_pem_key(ca_key))
    server_key = _key()
    server = _cert(
        _name("kube-apiserver"),
        server_key,
        ca_name,
        ca_key,
        server_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
        server_ips=(HOST, str(next(ipaddress.ip_network(SERVICE_CIDR).hosts()))),
    )
    (pki / "apiserver.crt").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    (pki / "apiserver.key").write_bytes(_pem_key(server_key))
    for stem, (user, group) in IDENTITIES.items():
        key = _key()
        cert = _cert(_name(user, group), key, ca_name, ca_key, client=True)
        (pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (pki / f"{stem}.key").write_bytes(_pem_key(key))
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(_pem_key(sa_key))
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    for path in pki.iterdir():
        path.chmod(0o600)


def write_kubeconfig(path: Path, server: str, pki: Path, stem: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sandbox", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [
            {
                "name": stem,
                "user": {"client-certificate": str(pki / f"{stem}.crt"), "client-key": str(pki / f"{stem}.key")},
            }
        ],
        "contexts": [{"name": "sandbox", "context": {"cluster": "sandbox", "user": stem}}],
        "current-context": "sandbox",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


# --- nodes -------------------------------------------------------------------------------------------------


def kind_nodes(config_path: Path = KIND_CONFIG) -> list[dict[str, Any]]:
    """Node objects shaped like the kind cluster's: names, role labels, labels and taints from kind-config.yaml."""
    config = yaml.safe_load(config_path.read_text())
    cluster = config.get("name", "kind")
    nodes, workers = [], 0
    for entry in config["nodes"]:
        role = entry["role"]
        if role == "control-plane":
            name = f"{cluster}-control-plane"
            labels = {"node-role.kubernetes.io/control-plane": ""}
            taints = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
        else:
            workers += 1
            name = f"{cluster}-worker" + ("" if workers == 1 else str(workers))
            labels, taints = {}, []
        labels.update(entry.get("labels", {}))
        for patch in entry.get("kubeadmConfigPatches", []):
            registration = yaml.safe_load(patch).get("nodeRegistration", {})
            for pair in registration.get("kubeletExtraArgs", {}).get("node-labels", "").split(","):
                if "=" in pair:
                    key, value = pair.split("=", 1)
                    labels[key] = value
            taints += registration.get("taints", [])
        capacity = dict(NODE_CAPACITY)
        if labels.get("nvidia.com/gpu.present") == "true":
            capacity["nvidia.com/gpu"] = GPUS
        labels.update(
            {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            }
        )
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
                "spec": {"taints": taints},
                "status": {"capacity": capacity, "allocatable": capacity},
            }
        )
    return nodes


# --- the control plane ---------------------------------------------------------------------------------------


@dataclass
class ControlPlane:
    """The processes of one sandbox; `start()` returns when the nodes are Ready and pods can be created."""

    workdir: Path
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.ports['apiserver']}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    # Each component's command line. Loopback only; leader election off (one replica of each).
    def _commands(self) -> dict[str, list[str]]:
        p, w, pki = self.ports, self.workdir, self.pki
        etcd_url = f"http://{HOST}:{p['etcd']}"
        return {
            "etcd": [
                binary("etcd"),
                "--name=sandbox",
                f"--data-dir={w / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://{HOST}:{p['etcd-peer']}",
                f"--initial-advertise-peer-urls=http://{HOST}:{p['etcd-peer']}",
                f"--initial-cluster=sandbox=http://{HOST}:{p['etcd-peer']}",
                "--unsafe-no-fsync",  # a throw-away test store: durability is not what is tested here
                "--log-level=warn",
            ],
            "kube-apiserver": [
                binary("kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={HOST}",
                f"--advertise-address={HOST}",
                f"--secure-port={p['apiserver']}",
                f"--cert-dir={w / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",  # on top of the default set
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
            "kube-controller-manager": [
                binary("kube-controller-manager"),
                f"--kubeconfig={w / 'controller-manager.kubeconfig'}",
                f"--authentication-kubeconfig={w / 'controller-manager.kubeconfig'}",
                f"--authorization-kubeconfig={w / 'controller-manager.kubeconfig'}",
                f"--bind-address={HOST}",
                f"--secure-port={p['controller-manager']}",
                f"--cert-dir={w / 'controller-manager-certs'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-node-route-controller",
                # kwok renews the nodes' Leases, but re-posts a node's status only through its Stages: a node marked
                # Unknown after a fault test stopped etcd or the API server for longer than the default 50 s would
                # stay NotReady for the rest of the session. Node failure detection is not what the sandbox tests.
                "--node-monitor-grace-period=10m",
                "--v=1",
            ],
            "kube-scheduler": [
                binary("kube-scheduler"),
                f"--kubeconfig={w / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={w / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={w / 'scheduler.kubeconfig'}",
                f"--bind-address={HOST}",
                f"--secure-port={p['scheduler']}",
                f"--cert-dir={w / 'scheduler-certs'}",
                "--leader-elect=false",
                "--v=1",
            ],
            "kwok": [
                binary("kwok"),
                f"--kubeconfig={w / 'kwok.kubeconfig'}",
                f"--config={TOOLS / 'kwok-stages.yaml'}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--node-ip={HOST}",
                "--cidr=10.244.0.1/16",
                f"--server-address={HOST}:{p['kwok']}",
                "--node-lease-duration-seconds=40",
            ],
            "kserve-manager": [
                binary("kserve-manager"),
                f"--metrics-addr={HOST}:{p['kserve-metrics']}",
                f"--health-probe-addr={HOST}:{p['kserve-probe']}",
                f"--webhook-port={p['kserve-webhook']}",
            ],
            "knative-controller": [binary("knative-controller"), f"--kubeconfig={w / 'kubeconfig'}"],
            "knative-autoscaler": [binary("knative-autoscaler"), f"--kubeconfig={w / 'kubeconfig'}"],
            "ingress": [sys.executable, str(Path(__file__).resolve()), "ingress", f"--dir={w}"],
            "jobset-manager": [binary("jobset-manager"), f"--config={w / 'jobset' / 'config.yaml'}"],
            "trainer-manager": [binary("trainer-manager"), f"--config={w / 'trainer' / 'config.yaml'}"],
        }

    def _environments(self) -> dict[str, dict[str, str]]:
        p, w = self.ports, self.workdir
        knative = {"SYSTEM_NAMESPACE": KNATIVE_NAMESPACE, "METRICS_DOMAIN": "knative.dev/serving"}
        return {
            # the webhook server's certificate is read from $TMPDIR/k8s-webhook-server/serving-certs
            "kserve-manager": {"POD_NAMESPACE": KSERVE_NAMESPACE, "TMPDIR": str(w / "kserve")},
            "jobset-manager": {"POD_NAMESPACE": JOBSET_NAMESPACE, "TMPDIR": str(w / "jobset")},
            "trainer-manager": {"POD_NAMESPACE": TRAINER_NAMESPACE, "TMPDIR": str(w / "trainer")},
            "knative-controller": {
                **knative,
                "POD_NAME": "controller-0",
                "PROFILING_PORT": str(p["knative-controller-profiling"]),
                "METRICS_PROMETHEUS_PORT": str(p["knative-controller-metrics"]),
            },
            "knative-autoscaler": {
                **knative,
                "POD_NAME": "autoscaler-0",
                "POD_IP": AUTOSCALER_POD_IP,
                "PROFILING_PORT": str(p["knative-autoscaler-profiling"]),
                "METRICS_PROMETHEUS_PORT": str(p["knative-autoscaler-metrics"]),
                "KNATIVE_STATS_SERVER_ADDR": f"{HOST}:{p['knative-autoscaler-stats']}",
            },
        }

    def launch(self, name: str) -> None:
        """Start one component (again, after `halt`), its output appended to <workdir>/logs/<name>.log."""
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self._environments().get(name, {})}
        with (logs / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                self._commands()[name], stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        self._save_state()

    def halt(self, name: str, timeout: float = 15.0) -> None:
        """Stop one component (SIGTERM, then SIGKILL), e.g. to restart the API server in a fault test."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._save_state()

    def _save_state(self) -> None:
        """Write state.json atomically: the ingress loop (another process) reads it while components are launched."""
        state = {"ports": self.ports, "pids": {n: p.pid for n, p in self.procs.items()}}
        partial = self.workdir / "state.json.partial"
        partial.write_text(json.dumps(state, indent=2))
        os.replace(partial, self.workdir / "state.json")

    def _ssl(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return context

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """GET on the API server as the admin: (status, body); (0, reason) when it does not answer."""
        try:
            with urllib.request.urlopen(self.server + path, timeout=timeout, context=self._ssl()) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (OSError, ssl.SSLError) as err:
            return 0, str(err).encode()

    def request(
        self, method: str, path: str, body: dict[str, Any], content_type: str = "application/json"
    ) -> tuple[int, bytes]:
        req = urllib.request.Request(
            self.server + path,
            data=json.dumps(body).encode(),
            method=method,
            headers={"Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(req, timeout=10, context=self._ssl()) as reply:
                return reply.status, reply.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def wait_for(self, what: str, check: Any, timeout: float, component: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = self.log_tail(name)
                    raise SandboxError(f"{name} exited with {proc.returncode} while waiting for {what}: {tail}")
            if check():
                return
            time.sleep(0.1)
        raise SandboxError(f"{what} not reached in {timeout:.0f} s: {self.log_tail(component)}")

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.workdir / "logs" / f"{name}.log"
        text = path.read_text(errors="replace").splitlines()[-lines:] if path.exists() else []
        return f"see {path}:\n" + "\n".join(text)

    def api_ready(self) -> bool:
        return self.get("/readyz", timeout=2)[0] == 200

    def start(self, timeout: float = 60.0, serving: bool = True, training: bool = True) -> ControlPlane:
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in PORTS:
            self.ports[name] = free_port()
        make_pki(self.pki)
        for stem in IDENTITIES:
            target = self.kubeconfig if stem == "admin" else self.workdir / f"{stem}.kubeconfig"
            write_kubeconfig(target, self.server, self.pki, stem)
        try:
            self.launch("etcd")
            self.launch("kube-apiserver")
            self.wait_for("the API server ready (/readyz)", self.api_ready, timeout, "kube-apiserver")
            self.timings["api_ready_s"] = time.monotonic() - began
            for name in ("kube-controller-manager", "kube-scheduler", "kwok"):
                self.launch(name)
            for node in kind_nodes():
                status, body = self.request("POST", "/api/v1/nodes", node)
                if status not in (200, 201, 409):
                    raise SandboxError(f"creating node {node['metadata']['name']}: HTTP {status} {body[:300]!r}")
            # the controllers are installed and started while kwok brings the nodes up: none of them needs a node
            self.install_controllers(timeout, serving=serving, training=training)
            self.wait_for("every node Ready (kwok)", self.nodes_ready, timeout, "kwok")
            self.wait_for(
                "the default ServiceAccount (controller-manager)",
                lambda: self.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
                timeout,
                "kube-controller-manager",
            )
            self.timings["nodes_ready_s"] = time.monotonic() - began
            if serving:
                self.wait_serving(timeout)
                self.timings["serving_ready_s"] = time.monotonic() - began
            if training:
                self.wait_training(timeout)
                self.timings["training_ready_s"] = time.monotonic() - began
        except BaseException:
            self.stop()
            raise
        return self

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """The pinned kubectl as the admin; SandboxError with its stderr when it fails."""
        result = subprocess.run(
            [binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise SandboxError(f"kubectl {' '.join(args[:3])} failed: {result.stderr.strip()}")
        return result.stdout

    def apply(self, *files: Path, stdin: str | None = None) -> None:
        """Server-side apply (field manager `sandbox`) of files or of YAML text."""
        sources = [a for f in files for a in ("-f", str(f))] or ["-f", "-"]
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=sandbox", *sources, stdin=stdin)

    def established(self, names: set[str]) -> bool:
        """Whether every CustomResourceDefinition named is Established."""
        status, body = self.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
        if status != 200:
            return False
        ready = {
            c["metadata"]["name"]
            for c in json.loads(body)["items"]
            if any(
                x["type"] == "Established" and x["status"] == "True"
                for x in (c.get("status") or {}).get("conditions") or []
            )
        }
        return names <= ready

    def install_controllers(self, timeout: float, serving: bool = True, training: bool = True) -> None:
        """Install the CRDs, configuration and webhooks of the serving controllers (KServe, Knative Serving) and of
        the training ones (Kubeflow Trainer, JobSet), and start their processes (see the module's docstring).
        `wait_serving` and `wait_training` wait until they answer."""
        kserve, knative, trainer = TOOLS / "kserve", TOOLS / "knative", TOOLS / "trainer"
        crds = [knative / "crds.yaml", kserve / "crds.yaml"] * serving + [trainer / "crds.yaml"] * training
        if not crds:
            return
        self.apply(*crds)
        names = [KNATIVE_NAMESPACE, KSERVE_NAMESPACE] * serving + [TRAINER_NAMESPACE, JOBSET_NAMESPACE] * training
        self.apply(
            stdin=yaml.safe_dump_all(
                [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in names]
            )
        )
        crd_names = set(re.findall(r"(?m)^  name: (\S+)$", "".join(f.read_text() for f in crds)))  # metadata.name
        self.wait_for(
            "the controllers' CRDs Established", lambda: self.established(crd_names), timeout, "kube-apiserver"
        )
        if serving:
            self.apply(stdin=yaml.safe_dump_all(self._serving_configuration()))
            self._webhook_certificate(self.workdir / "kserve" / "k8s-webhook-server" / "serving-certs")
            for name in ("knative-controller", "knative-autoscaler", "kserve-manager", "ingress"):
                self.launch(name)
        if training:
            self.apply(stdin=yaml.safe_dump_all(self._training_webhooks()))
            for component in ("jobset", "trainer"):
                folder = self.workdir / component
                self._webhook_certificate(folder / "k8s-webhook-server" / "serving-certs", f"{component}-webhook")
                (folder / "config.yaml").write_text(yaml.safe_dump(self._training_configuration(component)))
                self.launch(f"{component}-manager")

    def wait_serving(self, timeout: float) -> None:
        """Until KServe's webhook server answers (Knative's controllers need no check: they only reconcile)."""
        self.wait_for(
            "KServe's webhook server",
            lambda: _accepts(HOST, self.ports["kserve-webhook"]) and _accepts(HOST, self.ports["kserve-probe"]),
            timeout,
            "kserve-manager",
        )

    def _serving_configuration(self) -> list[dict[str, Any]]:
        """Knative's ConfigMaps and activator, KServe's ConfigMap and webhooks, adjusted for a sandbox."""
        kserve, knative = TOOLS / "kserve", TOOLS / "knative"
        objects = [d for d in yaml.safe_load_all((knative / "configmaps.yaml").read_text()) if d]
        for config in objects:
            if config["metadata"]["name"] == "config-deployment":
                config["data"].update(
                    {
                        "queue-sidecar-image": f"{KNATIVE_IMAGES}/queue:v1.17.0",
                        # no registry is reachable: never resolve image tags to digests
                        "registries-skipping-tag-resolving": "ghcr.io,docker.io,index.docker.io,gcr.io,kind.local",
                    }
                )
        activator = [d for d in yaml.safe_load_all((knative / "activator.yaml").read_text()) if d]
        for obj in activator:
            for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                container["image"] = f"{KNATIVE_IMAGES}/activator:v1.17.0"
        objects += [
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "activator", "namespace": KNATIVE_NAMESPACE},
            },
            *activator,
            *[d for d in yaml.safe_load_all((kserve / "inferenceservice.yaml").read_text()) if d],
            STORAGE_CONTAINER,
        ]
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        for hooks in yaml.safe_load_all((kserve / "manifests.yaml").read_text()):
            if not hooks:
                continue
            hooks["metadata"]["name"] = hooks["metadata"]["name"].replace(
                "$(webhookServiceName)", "kserve-webhook-server"
            )
            for hook in hooks["webhooks"]:
                path = hook["clientConfig"].pop("service")["path"]
                # the API server calls the manager on loopback (no Service network here)
                hook["clientConfig"] = {"url": f"https://{HOST}:{self.ports['kserve-webhook']}{path}", "caBundle": ca}
            objects.append(hooks)
        return objects

    def _webhook_certificate(self, folder: Path, name: str = "kserve-webhook") -> None:
        """A serving certificate for a controller's webhook server on loopback, signed by the sandbox CA."""
        folder.mkdir(parents=True, exist_ok=True)
        ca = x509.load_pem_x509_certificate((self.pki / "ca.crt").read_bytes())
        ca_key = serialization.load_pem_private_key((self.pki / "ca.key").read_bytes(), None)
        key = _key()
        cert = _cert(_name(name), key, ca.subject, ca_key, server_names=("localhost",), server_ips=(HOST,))
        (folder / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / "tls.key").write_bytes(_pem_key(key))

    def wait_training(self, timeout: float) -> None:
        """Until JobSet's and Trainer's webhook servers answer, then install the torch-distributed runtime.

        A TrainJob becomes a JobSet (Trainer), the JobSet Jobs (JobSet), the Jobs pods (kube-controller-manager)
        that the scheduler places and kwok runs to completion; each controller's status logic is its own.
        """
        trainer = TOOLS / "trainer"
        self.wait_for(
            "JobSet's and Trainer's webhook servers",
            lambda: _accepts(HOST, self.ports["jobset-webhook"]) and _accepts(HOST, self.ports["trainer-webhook"]),
            timeout,
            "trainer-manager",
        )
        # the ClusterTrainingRuntime goes through Trainer's validating webhook, which answers once it is served
        self.wait_for(
            "the torch-distributed ClusterTrainingRuntime accepted",
            lambda: self._try_apply(trainer / "runtimes.yaml"),
            timeout,
            "trainer-manager",
        )

    def _try_apply(self, path: Path) -> bool:
        try:
            self.apply(path)
        except SandboxError:
            return False
        return True

    def _training_configuration(self, component: str) -> dict[str, Any]:
        """The manager's --config: its servers on loopback, no leader election, certificates made by the sandbox."""
        p = self.ports
        group = "config.jobset.x-k8s.io" if component == "jobset" else "config.trainer.kubeflow.org"
        config: dict[str, Any] = {
            "apiVersion": f"{group}/v1alpha1",
            "kind": "Configuration",
            "leaderElection": {"leaderElect": False},
            "webhook": {"host": HOST, "port": p[f"{component}-webhook"]},
            "metrics": {"bindAddress": f"{HOST}:{p[f'{component}-metrics']}"},
            "health": {"healthProbeBindAddress": f"{HOST}:{p[f'{component}-probe']}"},
        }
        if component == "jobset":
            config["internalCertManagement"] = {"enable": False}
        else:
            config["certManagement"] = {"enable": False}
            config["metrics"]["secureServing"] = False
            config["health"].update({"readinessEndpointName": "readyz", "livenessEndpointName": "healthz"})
        return config

    def _training_webhooks(self) -> list[dict[str, Any]]:
        """Trainer's and JobSet's webhook configurations, called by the API server on loopback with the sandbox CA."""
        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        objects = []
        for component in ("jobset", "trainer"):
            for hooks in yaml.safe_load_all((TOOLS / "trainer" / f"webhooks-{component}.yaml").read_text()):
                if not hooks or not hooks["kind"].endswith("WebhookConfiguration"):
                    continue  # the Service in front of the manager: there is no Service network here
                if hooks["metadata"]["name"] in ("mutating-webhook-configuration", "validating-webhook-configuration"):
                    hooks["metadata"]["name"] = (
                        f"{component}-{hooks['metadata']['name']}"  # kubebuilder's generic names
                    )
                for hook in hooks["webhooks"]:
                    path = hook["clientConfig"].pop("service")["path"]
                    url = f"https://{HOST}:{self.ports[f'{component}-webhook']}{path}"
                    hook["clientConfig"] = {"url": url, "caBundle": ca}
                objects.append(hooks)
        return objects

    def mark_ingresses(self) -> int:
        """Report every Knative Ingress not yet programmed for its generation as programmed; how many were."""
        status, body = self.get(f"{INGRESS_API}/ingresses")
        if status != 200:
            return 0
        marked = 0
        for ingress in json.loads(body)["items"]:
            meta, current = ingress["metadata"], ingress.get("status") or {}
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in current.get("conditions") or [])
            if ready and current.get("observedGeneration") == meta["generation"]:
                continue
            now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            conditions = [
                {"type": t, "status": "True", "lastTransitionTime": now}
                for t in ("LoadBalancerReady", "NetworkConfigured", "Ready")
            ]
            patch = {
                "status": {
                    "observedGeneration": meta["generation"],
                    "conditions": conditions,
                    "publicLoadBalancer": {"ingress": [{"domainInternal": "ingress.sandbox.svc.cluster.local"}]},
                    "privateLoadBalancer": {"ingress": [{"domainInternal": "ingress.sandbox.svc.cluster.local"}]},
                }
            }
            path = f"{INGRESS_API}/namespaces/{meta['namespace']}/ingresses/{meta['name']}/status"
            if self.request("PATCH", path, patch, "application/merge-patch+json")[0] == 200:
                marked += 1
        return marked

    def nodes_ready(self) -> bool:
        status, body = self.get("/api/v1/nodes")
        if status != 200:
            return False
        items = json.loads(body)["items"]
        want = len(kind_nodes())
        ready = [
            n
            for n in items
            if any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
        ]
        return len(ready) >= want

    def stop(self) -> None:
        for name in STOP_ORDER:
            self.halt(name)


def _stop_recorded(workdir: Path) -> bool:
    """Stop the processes a previous `up` recorded (another Python process started them)."""
    state_file = workdir / "state.json"
    if not state_file.exists():
        return False
    pids = json.loads(state_file.read_text()).get("pids", {})
    for name in STOP_ORDER:
        pid = pids.get(name)
        if pid is None:
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(150):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
    state_file.unlink()
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down", "ingress"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where the sandbox keeps its state")
    args = parser.parse_args(argv)
    workdir = args.dir.resolve()
    if args.action == "ingress":  # the ingress layer's status loop, started by `up` as a component
        state = json.loads((workdir / "state.json").read_text())
        plane = ControlPlane(workdir, ports=state["ports"])
        while True:
            plane.mark_ingresses()
            time.sleep(0.2)
    if args.action == "down":
        print("stopped" if _stop_recorded(workdir) else f"no sandbox recorded in {workdir}")
        return 0
    _stop_recorded(workdir)
    plane = ControlPlane(workdir)
    try:
        plane.start()
    except SandboxError as err:
        print(f"kube-up failed: {err}", file=sys.stderr)
        return 1
    timings = plane.timings
    print(
        f"control plane ready in {timings['api_ready_s']:.1f} s, nodes Ready in {timings['nodes_ready_s']:.1f} s, "
        f"KServe and Knative in {timings['serving_ready_s']:.1f} s, Kubeflow Trainer and JobSet in "
        f"{timings['training_ready_s']:.1f} s\n"
        f"export KUBECONFIG={plane.kubeconfig}\n"
        f"kubectl: {TOOLS / 'bin' / 'kubectl'}   logs: {workdir / 'logs'}   stop: make kube-down"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
