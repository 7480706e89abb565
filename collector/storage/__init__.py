"""Storage backends, chosen by URL scheme and imported lazily (drivers are optional extras)."""

from __future__ import annotations

from importlib import import_module
from typing import Any
from urllib.parse import urlsplit

from collector.errors import ConfigError

BACKENDS = {
    "sqlite": "collector.storage.sqlite:SQLiteStorage",
    "postgresql": "collector.storage.postgres:PostgresStorage",
    "postgres": "collector.storage.postgres:PostgresStorage",
    "nats": "collector.storage.nats:NATSStorage",
}
EXTRAS = {"postgresql": "postgres", "postgres": "postgres", "nats": "nats"}


def scheme_of(url: str) -> str:
    return urlsplit(url).scheme.partition("+")[0]


def open_backend(url: str, **options: Any) -> Any:
    """An unopened backend instance for `url`; options are passed to backends that take them."""
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
