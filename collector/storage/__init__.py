"""Storage backends, chosen by URL scheme and imported lazily (drivers are optional extras).

    open_event_store(url) -> Storage          sqlite, postgresql, nats
    open_profile_store(url) -> ProfileStore   sqlite, postgresql (NATS keeps no profiles)

Both return an unopened instance; the app's composition root opens each distinct one once and
closes it on shutdown (events and profiles may share one SQLite or PostgreSQL instance)."""

from __future__ import annotations

from importlib import import_module
from typing import Any
from urllib.parse import urlsplit

from collector.errors import ConfigError
from collector.storage.base import ProfileStore, Storage

BACKENDS = {
    "sqlite": "collector.storage.sqlite:SQLiteStorage",
    "postgresql": "collector.storage.postgres:PostgresStorage",
    "postgres": "collector.storage.postgres:PostgresStorage",
    "nats": "collector.storage.nats:NATSStorage",
}
EXTRAS = {"postgresql": "postgres", "postgres": "postgres", "nats": "nats"}


def scheme_of(url: str) -> str:
    return urlsplit(url).scheme.partition("+")[0]


def _backend(url: str, **options: Any) -> object:
    scheme = scheme_of(url)
    if scheme not in BACKENDS:
        raise ConfigError(f"unsupported storage URL scheme {scheme!r}; expected one of {sorted(BACKENDS)}")
    module_name, _, class_name = BACKENDS[scheme].partition(":")
    try:
        module = import_module(module_name)
    except ImportError as exc:
        extra = EXTRAS.get(scheme, scheme)
        raise ConfigError(f"{scheme} storage needs extra packages: pip install 'collector[{extra}]' ({exc})") from exc
    return getattr(module, class_name)(url, **options)


def open_event_store(url: str, **options: Any) -> Storage:
    """An unopened event store for `url`; options are passed to backends that take them."""
    store = _backend(url, **options)
    if not isinstance(store, Storage):
        raise ConfigError(f"{scheme_of(url)} cannot store events")
    return store


def open_profile_store(url: str, **options: Any) -> ProfileStore:
    """An unopened profile store; a backend without profiles (nats) is refused at start-up."""
    scheme = scheme_of(url)
    if scheme == "nats":
        raise ConfigError("NATS stores events only: give profiles their own URL (--profiles postgresql://…)")
    store = _backend(url, **options)
    if not isinstance(store, ProfileStore):
        raise ConfigError(f"{scheme} cannot store profiles")
    return store


def open_shared_store(url: str, **options: Any) -> Storage:
    """One instance for both events and profiles (the same URL for both)."""
    store = open_event_store(url, **options)
    if not isinstance(store, ProfileStore):
        raise ConfigError(
            f"{scheme_of(url)} stores events only: give profiles their own URL (--profiles postgresql://…)"
        )
    return store
