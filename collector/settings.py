"""Configuration: one frozen Settings object, built once from a YAML file plus COLLECTOR_* env.

The YAML file maps write keys to sources, sources to workspaces, and bearer tokens to
workspaces. Scalar settings live in the SETTINGS table (name, default, help): it drives the
env overrides, `collector serve --help` and the README table (a test keeps them in step).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, cast, get_args

import yaml

from collector.config_check import problems
from collector.errors import ConfigError

WORKSPACE_ID = re.compile(r"ws_[A-Za-z0-9]{16}")  # fullmatch
InvalidMessages = Literal["reject", "quarantine"]
PlanEnforcement = Literal["allow", "omit", "quarantine", "reject"]
QualityEnforcement = Literal["allow", "quarantine", "reject"]  # allow: store and flag (the default)
SqliteSynchronous = Literal["FULL", "NORMAL", "EXTRA"]
KeyKind = Literal["browser", "server"]  # a write key without a kind behaves as a browser key
IpPolicy = Literal["keep", "truncate", "drop"]
SignalPolicy = Literal["ignore", "anonymize", "drop"]  # for the Sec-GPC: 1 and DNT: 1 request headers
WhenMissing = Literal["allow", "drop"]
INVALID_MESSAGE_MODES: tuple[InvalidMessages, ...] = get_args(InvalidMessages)
PLAN_ENFORCEMENTS: tuple[PlanEnforcement, ...] = get_args(PlanEnforcement)
QUALITY_ENFORCEMENTS: tuple[QualityEnforcement, ...] = get_args(QualityEnforcement)
SQLITE_SYNCHRONOUS: tuple[SqliteSynchronous, ...] = get_args(SqliteSynchronous)
KEY_KINDS: tuple[KeyKind, ...] = get_args(KeyKind)
IP_POLICIES: tuple[IpPolicy, ...] = get_args(IpPolicy)
SIGNAL_POLICIES: tuple[SignalPolicy, ...] = get_args(SignalPolicy)
WHEN_MISSING: tuple[WhenMissing, ...] = get_args(WhenMissing)
PRIVACY_KEYS = ("ip", "globalPrivacyControl", "doNotTrack", "consent", "redact", "retention")  # a source overrides each
_RETENTION = re.compile(r"([0-9]+)\s*([dhms])")
_RETENTION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_ALPHANUMERIC = string.ascii_letters + string.digits


class Setting(NamedTuple):
    name: str
    default: Any
    help: str


SETTINGS = (
    Setting("storage", "sqlite:///collector.db", "Event storage URL (sqlite:///path, postgresql://…, nats://…)."),
    Setting("profiles", "", "Profile storage URL; empty means the event storage (must then be sqlite or postgresql)."),
    Setting("max_event_bytes", 32768, "Largest single event, in bytes after decompression (413 above it)."),
    Setting("max_request_bytes", 512000, "Largest request body, in bytes after decompression (413 above it)."),
    Setting("max_batch_events", 2500, "Most events in one batch request (413 above it)."),
    Setting("max_header_bytes", 8192, "Largest single request header, name plus value, in bytes (431 above it)."),
    Setting("max_head_bytes", 32768, "Largest request line plus headers, in bytes (431 above it)."),
    Setting("max_headers", 100, "Most headers in one request (431 above it)."),
    Setting("max_url_bytes", 8192, "Longest request URL (path and query), in bytes (414 above it)."),
    Setting("header_timeout_seconds", 10.0, "Time a request's line and headers may take to arrive (408, closed)."),
    Setting("body_idle_timeout_seconds", 10.0, "Longest pause while a request body arrives (408, closed)."),
    Setting("body_timeout_seconds", 60.0, "Time a whole request body may take to arrive (408, closed)."),
    Setting("keep_alive_timeout_seconds", 5.0, "Time an idle keep-alive connection stays open between requests."),
    Setting("max_connections", 2048, "Most open connections per server process; past it a new one gets 503, closed."),
    Setting("invalid_messages", "reject", "Default for sources: `reject` (400) or `quarantine` (200, kept aside)."),
    Setting("trusted_proxies", "", "Comma-separated CIDRs whose X-Forwarded-For is believed."),
    Setting("admin_tokens", "", "Comma-separated bearer tokens for the read-back API (/v1/events)."),
    Setting("sqlite_synchronous", "FULL", "SQLite synchronous pragma: FULL survives power loss, NORMAL only crashes."),
    Setting("retry_after_seconds", 5, "Retry-After sent with 503 when storage is unavailable."),
    Setting("sqlite_busy_timeout_ms", 5000, "How long a SQLite write waits for another process's lock before a 503."),
    Setting("plans_dir", "", "Directory of tracking-plan YAML files; empty means the project's spec/plans."),
    Setting(
        "rate_limit",
        "",
        "Requests per second per source, `RATE` or `RATE:BURST` (token bucket; 429 + Retry-After); empty = off. "
        "A source's `rateLimit` overrides it (`off` disables).",
    ),
    Setting("public_url", "", "URL browsers reach this collector at (for /v1/projects/{key}/settings); empty = Host."),
    Setting(
        "allowed_hosts",
        "",
        "Comma-separated Host names (host or host:port) the settings endpoint answers for when publicUrl is "
        "empty; another Host gets 400. Empty: any well-formed Host, answered with `Vary: Host`.",
    ),
    Setting(
        "retention_interval_seconds", 60.0, "How often expired events and quarantine are deleted (privacy.retention)."
    ),
    Setting(
        "receipt_retention",
        "7d",
        "How long receipts of messages that were not stored (duplicate, rejected, suppressed, dropped) are kept "
        "for /v1/receipts: `7d`, `12h`, or `forever`.",
    ),
    Setting(
        "ingest_prefixes",
        "/v1",
        "Comma-separated path prefixes that each serve every ingest path (events, batch, pixel, /m, the settings "
        "document): `/v1,/e7` also answers /e7/t. Each starts with /, has no trailing slash, and stays clear of "
        "/v1/events, /health and the other admin paths.",
    ),
    Setting(
        "workers_dir",
        "",
        "Directory the worker processes of one server share (/metrics, rate limits); `serve --workers N` makes one.",
    ),
)
_DEFAULTS = {s.name: s.default for s in SETTINGS}


def env_name(setting: str) -> str:
    return "COLLECTOR_" + setting.upper()


@dataclass(frozen=True)
class Privacy:
    """A source's privacy policy: its workspace's `privacy` block with the source's keys on top.
    The defaults change nothing. Redaction rules stay as written here; pipeline/privacy.py compiles them."""

    ip: IpPolicy = "keep"
    global_privacy_control: SignalPolicy = "ignore"
    do_not_track: SignalPolicy = "ignore"
    consent_require: tuple[str, ...] = ()  # categories context.consent.categoryPreferences must grant
    consent_when_missing: WhenMissing = "allow"
    redact: tuple[Mapping[str, Any], ...] = ()
    retention_seconds: int | None = None  # events and quarantine older than this are deleted
    hash_secret: bytes | None = None  # the workspace's key for `hash` (HMAC-SHA256)

    @property
    def changes_messages(self) -> bool:
        """False for a policy that leaves every message as sent (the default): no per-message work."""
        return (
            self.ip != "keep"
            or self.global_privacy_control != "ignore"
            or self.do_not_track != "ignore"
            or bool(self.consent_require)
            or self.consent_when_missing != "allow"
            or bool(self.redact)
        )


NO_PRIVACY = Privacy()


@dataclass(frozen=True)
class Workspace:
    id: str
    name: str
    privacy: Privacy = NO_PRIVACY


@dataclass(frozen=True)
class Source:
    id: str
    name: str
    workspace_id: str
    invalid_messages: InvalidMessages = "reject"
    allowed_origins: tuple[str, ...] = ("*",)
    rate_limit: tuple[float, float] | None = None  # (tokens per second, bucket size); None = unlimited
    tracking_plan: str | None = None  # name of a plan in the plans directory (schema/plans.py)
    plan_enforcement: PlanEnforcement = "allow"
    quality_enforcement: QualityEnforcement = "allow"  # for messages with quality violations
    privacy: Privacy = NO_PRIVACY


@dataclass(frozen=True)
class Settings:
    storage: str = _DEFAULTS["storage"]
    profiles: str = _DEFAULTS["profiles"]
    max_event_bytes: int = _DEFAULTS["max_event_bytes"]
    max_request_bytes: int = _DEFAULTS["max_request_bytes"]
    max_batch_events: int = _DEFAULTS["max_batch_events"]
    max_header_bytes: int = _DEFAULTS["max_header_bytes"]
    max_head_bytes: int = _DEFAULTS["max_head_bytes"]
    max_headers: int = _DEFAULTS["max_headers"]
    max_url_bytes: int = _DEFAULTS["max_url_bytes"]
    header_timeout_seconds: float = _DEFAULTS["header_timeout_seconds"]
    body_idle_timeout_seconds: float = _DEFAULTS["body_idle_timeout_seconds"]
    body_timeout_seconds: float = _DEFAULTS["body_timeout_seconds"]
    keep_alive_timeout_seconds: float = _DEFAULTS["keep_alive_timeout_seconds"]
    max_connections: int = _DEFAULTS["max_connections"]
    invalid_messages: InvalidMessages = _DEFAULTS["invalid_messages"]
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    sqlite_synchronous: SqliteSynchronous = _DEFAULTS["sqlite_synchronous"]
    retry_after_seconds: int = _DEFAULTS["retry_after_seconds"]
    sqlite_busy_timeout_ms: int = _DEFAULTS["sqlite_busy_timeout_ms"]
    plans_dir: str = _DEFAULTS["plans_dir"]
    rate_limit: tuple[float, float] | None = None
    public_url: str = _DEFAULTS["public_url"]
    allowed_hosts: frozenset[str] = frozenset()  # lower case
    retention_interval_seconds: float = _DEFAULTS["retention_interval_seconds"]
    receipt_retention: int | None = 7 * 86400  # seconds; None: forever
    workers_dir: str = _DEFAULTS["workers_dir"]
    ingest_prefixes: tuple[str, ...] = (_DEFAULTS["ingest_prefixes"],)
    workspaces: Mapping[str, Workspace] = field(default_factory=dict)
    # Write keys are public (they ship in browser JS), so a plain lookup is fine.
    write_keys: Mapping[str, Source] = field(default_factory=dict)
    key_kinds: Mapping[str, KeyKind] = field(default_factory=dict)  # keys configured with a kind
    # Secrets are looked up by their SHA-256, so lookup time says nothing about the token.
    token_digests: Mapping[bytes, Workspace] = field(default_factory=dict)
    admin_token_digests: frozenset[bytes] = frozenset()
    config_path: str | None = None

    @property
    def profiles_url(self) -> str:
        return self.profiles or self.storage

    def workspace_for_token(self, token: str) -> Workspace | None:
        return self.token_digests.get(digest(token))

    def is_admin_token(self, token: str) -> bool:
        return digest(token) in self.admin_token_digests


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def new_id(prefix: str, length: int = 16) -> str:
    return prefix + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(length))


def _scalar(name: str, raw: Any) -> Any:
    default = _DEFAULTS[name]
    if isinstance(default, float):
        try:
            seconds = float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {name} must be a number, got {raw!r}") from None
        if not seconds > 0:  # NaN too
            raise ConfigError(f"setting {name} must be positive, got {raw!r}")
        return seconds
    if isinstance(default, int):
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {name} must be an integer, got {raw!r}") from None
        if value <= 0:
            raise ConfigError(f"setting {name} must be positive, got {value}")
        return value
    return str(raw)


def parse_rate_limit(raw: Any, where: str) -> tuple[float, float] | None:
    """`RATE` or `RATE:BURST` (requests per second, bucket size; BURST defaults to max(RATE, 1))."""
    text = str(raw).strip().lower() if raw is not None else ""
    if text in ("", "off", "none", "0"):
        return None
    rate_text, _, burst_text = text.partition(":")
    try:
        rate = float(rate_text)
        burst = float(burst_text) if burst_text else max(rate, 1.0)
    except ValueError:
        raise ConfigError(f"{where} must be RATE or RATE:BURST (numbers), got {raw!r}") from None
    if not (rate > 0 and burst >= 1):
        raise ConfigError(f"{where} needs RATE > 0 and BURST >= 1, got {raw!r}")
    return rate, burst


def _as_list(raw: Any) -> list[str]:
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return [part.strip() for part in raw.split(",") if part.strip()]
    if isinstance(raw, list):
        return [str(item) for item in raw]
    raise ConfigError(f"expected a list or comma-separated string, got {raw!r}")


def load(config_path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from the YAML file (if any), then COLLECTOR_* environment variables on top."""
    environ = os.environ if environ is None else environ
    config_path = config_path or environ.get("COLLECTOR_CONFIG") or None
    doc = _read_file(config_path) if config_path else {}
    scalars = _scalars(doc, environ)
    workspaces, write_keys, key_kinds, tokens = _workspaces(doc, scalars["invalid_messages"], scalars["rate_limit"])
    admin = _as_list(scalars.pop("admin_tokens"))  # the env, when set, replaces the file's list
    return Settings(
        **scalars,
        workspaces=workspaces,
        write_keys=write_keys,
        key_kinds=key_kinds,
        token_digests=tokens,
        admin_token_digests=frozenset(digest(t) for t in admin),
        config_path=str(config_path) if config_path else None,
    )


def _read_file(config_path: str | Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(Path(config_path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {config_path}: {exc.strerror}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{config_path}: the config file must be a mapping")
    found = problems(loaded)
    if found:
        raise ConfigError(f"{config_path}:" + ("\n  ".join(["", *found]) if len(found) > 1 else " " + found[0]))
    return loaded


def _scalars(doc: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Every SETTINGS entry, from the env, else the file (top level or `limits:`), else its default;
    then typed and checked."""
    file_limits = doc.get("limits") or {}
    raw: dict[str, Any] = {}
    for setting in SETTINGS:
        camel = re.sub(r"_(\w)", lambda m: m.group(1).upper(), setting.name)
        value = environ.get(env_name(setting.name))
        if value is None:
            value = doc.get(camel, file_limits.get(camel, doc.get(setting.name)))
        raw[setting.name] = setting.default if value is None else value
    scalars = {name: _scalar(name, value) for name, value in raw.items()}
    scalars["invalid_messages"] = _mode("invalid_messages", scalars["invalid_messages"], INVALID_MESSAGE_MODES)
    scalars["sqlite_synchronous"] = _mode(
        "sqlite_synchronous", scalars["sqlite_synchronous"].upper(), SQLITE_SYNCHRONOUS
    )
    try:
        scalars["trusted_proxies"] = tuple(
            ipaddress.ip_network(cidr, strict=False) for cidr in _as_list(raw["trusted_proxies"])
        )
    except ValueError as exc:
        raise ConfigError(f"trusted_proxies: {exc}") from None
    scalars["rate_limit"] = parse_rate_limit(raw["rate_limit"], "rate_limit")
    scalars["public_url"] = scalars["public_url"].rstrip("/")
    scalars["allowed_hosts"] = frozenset(host.lower() for host in _as_list(raw["allowed_hosts"]))
    scalars["receipt_retention"] = parse_retention(raw["receipt_retention"], "receipt_retention")
    scalars["ingest_prefixes"] = tuple(_as_list(raw["ingest_prefixes"]))  # checked by paths.IngestPaths
    scalars["admin_tokens"] = raw["admin_tokens"]  # a list in the file, a comma-separated string in the env
    return scalars


Mode = TypeVar("Mode", bound=str)


def _mode(where: str, value: Any, allowed: tuple[Mode, ...]) -> Mode:
    if value not in allowed:
        raise ConfigError(f"{where} must be one of {', '.join(allowed)}, got {value!r}")
    return cast(Mode, value)


def _workspaces(
    doc: dict[str, Any], invalid_default: InvalidMessages, default_rate: tuple[float, float] | None
) -> tuple[dict[str, Workspace], dict[str, Source], dict[str, KeyKind], dict[bytes, Workspace]]:
    """(workspaces by id, sources by write key, kinds of the keys that have one, workspaces by
    token digest) of the file."""
    workspaces: dict[str, Workspace] = {}
    write_keys: dict[str, Source] = {}
    key_kinds: dict[str, KeyKind] = {}
    tokens: dict[bytes, Workspace] = {}
    source_ids: set[str] = set()
    for index, ws_doc in enumerate(doc.get("workspaces") or []):
        where = f"workspaces[{index}]"
        ws_id = str(ws_doc.get("id", ""))
        if not WORKSPACE_ID.fullmatch(ws_id):
            raise ConfigError(f"{where}.id must match ws_ + 16 letters or digits, got {ws_id!r}")
        if ws_id in workspaces:
            raise ConfigError(f"{where}.id {ws_id} is used twice")
        privacy_doc = ws_doc.get("privacy") or {}
        workspace = Workspace(
            id=ws_id, name=str(ws_doc.get("name", ws_id)), privacy=_privacy(privacy_doc, f"{where}.privacy", None)
        )
        workspaces[ws_id] = workspace
        for token in _as_list(ws_doc.get("tokens")):
            if digest(token) in tokens:
                raise ConfigError(f"{where}.tokens: a token maps to exactly one workspace")
            tokens[digest(token)] = workspace
        for s_index, src_doc in enumerate(ws_doc.get("sources") or []):
            s_where = f"{where}.sources[{s_index}]"
            source = _source(src_doc, s_where, ws_id, f"src_{index}_{s_index}", invalid_default, default_rate)
            if src_doc.get("privacy") or privacy_doc:
                own = src_doc.get("privacy") or {}
                if "hashSecret" in own:
                    raise ConfigError(f"{s_where}.privacy.hashSecret: the hash secret is per workspace")
                merged = {**privacy_doc, **own}  # key by key: a source's `redact` replaces the workspace's
                source = replace(source, privacy=_privacy(merged, f"{s_where}.privacy", workspace.privacy.hash_secret))
            if source.id in source_ids:
                raise ConfigError(f"{s_where}.id {source.id!r} is used by another source (ids are global)")
            source_ids.add(source.id)
            keys = _write_keys(src_doc.get("writeKeys"), f"{s_where}.writeKeys")
            if not keys:
                raise ConfigError(f"{s_where}.writeKeys must list at least one key")
            for key, kind in keys:
                if key in write_keys:
                    raise ConfigError(f"{s_where}: write key is already used by source {write_keys[key].id}")
                write_keys[key] = source
                if kind is not None:
                    key_kinds[key] = kind
    return workspaces, write_keys, key_kinds, tokens


def _write_keys(raw: Any, where: str) -> list[tuple[str, KeyKind | None]]:
    """A source's keys: each a string, or `{key: …, kind: browser | server}`."""
    entries = raw if isinstance(raw, list) else _as_list(raw)
    keys: list[tuple[str, KeyKind | None]] = []
    for index, entry in enumerate(entries):
        if isinstance(entry, dict):
            if not entry.get("key"):
                raise ConfigError(f"{where}[{index}].key is missing")
            keys.append((str(entry["key"]), _mode(f"{where}[{index}].kind", entry.get("kind"), KEY_KINDS)))
        else:
            keys.append((str(entry), None))
    return keys


def _source(
    src_doc: dict[str, Any],
    where: str,
    workspace_id: str,
    fallback_id: str,
    invalid_default: InvalidMessages,
    default_rate: tuple[float, float] | None,
) -> Source:
    return Source(
        id=str(src_doc.get("id") or fallback_id),
        name=str(src_doc.get("name", src_doc.get("id", ""))),
        workspace_id=workspace_id,
        invalid_messages=_mode(
            f"{where}.invalidMessages", str(src_doc.get("invalidMessages", invalid_default)), INVALID_MESSAGE_MODES
        ),
        allowed_origins=tuple(_as_list(src_doc.get("allowedOrigins")) or ["*"]),
        rate_limit=parse_rate_limit(src_doc["rateLimit"], f"{where}.rateLimit")
        if "rateLimit" in src_doc
        else default_rate,
        tracking_plan=str(src_doc["trackingPlan"]) if src_doc.get("trackingPlan") else None,
        plan_enforcement=_mode(
            f"{where}.planEnforcement", str(src_doc.get("planEnforcement", "allow")), PLAN_ENFORCEMENTS
        ),
        quality_enforcement=_mode(
            f"{where}.qualityEnforcement", str(src_doc.get("qualityEnforcement", "allow")), QUALITY_ENFORCEMENTS
        ),
    )


def _privacy(doc: Mapping[str, Any], where: str, hash_secret: bytes | None) -> Privacy:
    """A `privacy` block (shape checked by the config schema); `hash_secret` is the workspace's."""
    if not doc:
        return NO_PRIVACY if hash_secret is None else Privacy(hash_secret=hash_secret)
    consent = doc.get("consent") or {}
    secret = doc.get("hashSecret")
    if secret is not None:
        if len(str(secret)) < 16:
            raise ConfigError(f"{where}.hashSecret must be at least 16 characters")
        hash_secret = str(secret).encode()
    redact = doc.get("redact") or []
    if not isinstance(redact, list):
        raise ConfigError(f"{where}.redact must be a list of rules")
    return Privacy(
        ip=_mode(f"{where}.ip", doc.get("ip", "keep"), IP_POLICIES),
        global_privacy_control=_mode(
            f"{where}.globalPrivacyControl", doc.get("globalPrivacyControl", "ignore"), SIGNAL_POLICIES
        ),
        do_not_track=_mode(f"{where}.doNotTrack", doc.get("doNotTrack", "ignore"), SIGNAL_POLICIES),
        consent_require=tuple(str(category) for category in _as_list(consent.get("require"))),
        consent_when_missing=_mode(f"{where}.consent.whenMissing", consent.get("whenMissing", "allow"), WHEN_MISSING),
        redact=tuple(redact),
        retention_seconds=parse_retention(doc.get("retention"), f"{where}.retention"),
        hash_secret=hash_secret,
    )


def parse_retention(raw: Any, where: str) -> int | None:
    """`90d`, `12h`, `30m`, `3600s` (or a number of seconds); at least a minute. Empty: keep forever."""
    if raw is None or raw == "" or raw == "forever":
        return None
    text = str(raw).strip().lower()
    match = _RETENTION.fullmatch(text) or (re.fullmatch(r"[0-9]+", text) and _RETENTION.fullmatch(text + "s"))
    if not match:
        raise ConfigError(f"{where} must be a duration like 90d, 12h or 30m, got {raw!r}")
    seconds = int(match.group(1)) * _RETENTION_UNITS[match.group(2)]
    if seconds < 60:
        raise ConfigError(f"{where} must be at least a minute, got {raw!r}")
    return seconds


def write_dev_config(path: Path) -> dict[str, str]:
    """A one-workspace config with fresh random credentials, for `collector serve` with no config."""
    credentials = {
        "workspace": new_id("ws_"),
        "write_key": new_id("", 32),
        "token": "tok_" + secrets.token_urlsafe(24),
        "admin_token": "adm_" + secrets.token_urlsafe(24),
    }
    doc = {
        "adminTokens": [credentials["admin_token"]],
        "workspaces": [
            {
                "id": credentials["workspace"],
                "name": "Development",
                "tokens": [credentials["token"]],
                "sources": [{"id": "src_dev", "name": "Development", "writeKeys": [credentials["write_key"]]}],
            }
        ],
    }
    path.write_text(
        "# Created by `collector serve` because no config was given. Holds secrets: do not commit.\n"
        + yaml.safe_dump(doc, sort_keys=False),
        encoding="utf-8",
    )
    path.chmod(0o600)
    return credentials
