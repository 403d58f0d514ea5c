"""Fixtures of the k8s tests: rendered manifests, once per session."""

from __future__ import annotations

import functools

import pytest

from tests.k8s import kube


@functools.cache
def _render(profile: str, with_model: bool) -> str:
    return kube.helm_template(profile, kube.WITH_MODEL if with_model else {})


@pytest.fixture(scope="session")
def render():
    """`render(profile, with_model=False)` -> the `helm template` output (cached)."""
    return _render
