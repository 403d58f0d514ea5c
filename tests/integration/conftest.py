"""Fixtures of the integration tests: the real local Redis and PostgreSQL (`make services`).

The addresses come from MLPLATFORM_TEST_REDIS ("host:port") and MLPLATFORM_TEST_POSTGRES (a
libpq URL). An unreachable service FAILS the test, with how to start it: CI always starts them.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

REDIS_ADDR = os.environ.get("MLPLATFORM_TEST_REDIS", "127.0.0.1:16379")
KAFKA_ADDR = os.environ.get("MLPLATFORM_TEST_KAFKA", "127.0.0.1:19092")
#: Upper bound of each wait on the broker; every loop ends as soon as its condition holds.
WAIT_SECONDS = 60.0
POSTGRES_URL = os.environ.get("MLPLATFORM_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:15432/postgres")
_START_HINT = "start the local services with `make services` (scripts/services.sh up)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class RedisInfo:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PostgresDb:
    """A fresh database on the test PostgreSQL server."""

    name: str
    libpq_url: str  # postgresql://... (psycopg.connect)
    sqlalchemy_url: str  # postgresql+psycopg://... (Feast registry, MLflow backend store)


@pytest.fixture(scope="session")
def redis_info() -> RedisInfo:
    """The test Redis; fails (not skips) when it does not answer PING."""
    import redis

    host, _, port = REDIS_ADDR.rpartition(":")
    info = RedisInfo(host or "127.0.0.1", int(port))
    try:
        client = redis.Redis(host=info.host, port=info.port, socket_connect_timeout=3)
        assert client.ping()
        client.close()
    except Exception as exc:  # connection refused, timeout, auth
        pytest.fail(f"Redis at {info.address} (MLPLATFORM_TEST_REDIS) is not reachable: {exc}; {_START_HINT}")
    return info


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The maintenance URL of the test PostgreSQL; fails (not skips) when it cannot be reached."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} (MLPLATFORM_TEST_POSTGRES) is not reachable: {exc}; {_START_HINT}")
    return POSTGRES_URL


def _with_db(url: str, db: str, scheme: str | None = None) -> str:
    parts = urlsplit(url)
    return urlunsplit((scheme or parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


def create_database(admin_url: str, prefix: str) -> PostgresDb:
    """Create an empty database with a unique name."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PostgresDb(name, _with_db(admin_url, name), _with_db(admin_url, name, "postgresql+psycopg"))


def drop_database(admin_url: str, name: str) -> None:
    """Drop a database, closing whatever connections (pools of the code under test) are left."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_postgres_db(postgres_url: str) -> Iterator[PostgresDb]:
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    db = create_database(postgres_url, "feast_test")
    yield db
    drop_database(postgres_url, db.name)


@pytest.fixture(scope="session")
def port_finder() -> Callable[[], int]:
    """`free_port`, for test modules (they cannot import this conftest)."""
    return free_port


@pytest.fixture(scope="session")
def postgres_databases(postgres_url: str) -> Iterator[Callable[[str], PostgresDb]]:
    """Create fresh databases (`create(prefix)`) for wider-scoped fixtures; all dropped at the end."""
    created: list[str] = []

    def create(prefix: str) -> PostgresDb:
        db = create_database(postgres_url, prefix)
        created.append(db.name)
        return db

    yield create
    for name in created:
        drop_database(postgres_url, name)


@pytest.fixture(scope="session")
def kafka_admin() -> Any:
    """An admin client of the test Kafka broker (MLPLATFORM_TEST_KAFKA); fails (not skips) when it does not answer."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    client = AdminClient({"bootstrap.servers": KAFKA_ADDR})
    try:
        client.list_topics(timeout=5)
    except KafkaException as exc:
        pytest.fail(f"Kafka at {KAFKA_ADDR} (MLPLATFORM_TEST_KAFKA) is not reachable: {exc}; {_START_HINT}")
    return client


@pytest.fixture
def kafka_topic(kafka_admin: Any) -> Iterator[Callable[[int], str]]:
    """Makes new topics unique to the test (the argument: partitions), deleted afterwards."""
    from confluent_kafka.admin import NewTopic

    made: list[str] = []

    def make(partitions: int) -> str:
        name = f"mlplatform-test-{uuid.uuid4().hex}"
        kafka_admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(
            timeout=WAIT_SECONDS
        )
        made.append(name)
        return name

    yield make
    if made:
        for future in kafka_admin.delete_topics(made).values():
            future.result(timeout=WAIT_SECONDS)


@pytest.fixture
def kafka_prefix(kafka_admin: Any) -> Iterator[str]:
    """A topic prefix unique to the test, with the platform's topics created under it (`ensure_topics`); the
    topics are deleted afterwards. Processes given it as `kafka_topic_prefix` see no other test's events."""
    from mlplatform.events import ensure_topics

    prefix = f"test-{uuid.uuid4().hex[:12]}."
    ensure_topics(KAFKA_ADDR, prefix=prefix)
    yield prefix
    names = [n for n in kafka_admin.list_topics(timeout=WAIT_SECONDS).topics if n.startswith(prefix)]
    if names:
        for future in kafka_admin.delete_topics(names).values():
            future.result(timeout=WAIT_SECONDS)
