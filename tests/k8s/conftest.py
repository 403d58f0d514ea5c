"""Fixtures of the k8s tests: rendered manifests, once per session, and the real control plane (marker `cluster`)."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import pytest

from scripts.kube.sandbox import ControlPlane
from tests.k8s import kube


@functools.cache
def _render(profile: str, with_model: bool) -> str:
    return kube.helm_template(profile, kube.WITH_MODEL if with_model else {})


@pytest.fixture(scope="session")
def render():
    """`render(profile, with_model=False)` -> the `helm template` output (cached)."""
    return _render


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One real control plane for the session (etcd, kube-apiserver, controller-manager, scheduler, kwok nodes).

    Built by `make kube-tools`; its processes' logs are in <tmp>/kube/logs. Stopped at the end of the session.
    """
    plane = ControlPlane(tmp_path_factory.mktemp("kube")).start()
    try:
        yield plane
    finally:
        plane.stop()
