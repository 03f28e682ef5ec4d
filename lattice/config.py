"""
Lattice configuration: ``lattice.ini`` parsed into frozen dataclasses.

Sources, highest precedence first:

 1. the process environment, ``LATTICE_<SECTION>_<KEY>`` (plus the
    predecessor's ``APP_URL`` and ``LATTICE_BOOTSTRAP_SERVERS``);
 2. the operator's ``config.env`` (``$CREDENTIALS_DIRECTORY/config`` when
    systemd provides it, else the file named by ``[node] config_env``), in
    the same ``NAME=value`` form;
 3. the INI file;
 4. the defaults declared below.

Unknown sections and keys are errors.  Every error is collected, and all are
reported together as ``source: [section] key: reason``.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from lattice._settings import (
    BOOL,
    ENDPOINT,
    LIST,
    OPTIONAL_ENDPOINT,
    OPTIONAL_PATH,
    PATH,
    SIZE,
    STRING,
    SettingError,
    choice,
    duration,
    integer,
    setting,
    setting_fields,
)

__all__ = [
    "ConfigError",
    "DiscoveryConfig",
    "KvConfig",
    "LatticeConfig",
    "LogConfig",
    "NodeConfig",
    "RegistryConfig",
    "TelemetryConfig",
    "TlsConfig",
    "UsbConfig",
    "config_from_string",
    "load_config",
    "section_classes",
]

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")


@dataclass(frozen=True)
class NodeConfig:
    """
    ``[node]``: where the node keeps its state and who it is.
    """

    state_dir: Path = setting(
        Path("/var/lib/lattice"),
        PATH,
        "Directory for all node state (databases, identity key, sockets).",
    )
    identity_key: Path | None = setting(
        None,
        OPTIONAL_PATH,
        "Ed25519 private key (PKCS#8 PEM), created 0600 on first start. "
        "Empty means ``<state_dir>/private_key.pem``. "
        "``$CREDENTIALS_DIRECTORY/private_key`` wins when present, unless the running node "
        "rotated that key (``lattice identity rotate``): then the rotated key in the state "
        "directory is used until the credential is updated (``docs/discovery.rst``).",
    )
    config_env: Path | None = setting(
        None,
        OPTIONAL_PATH,
        "Optional ``NAME=value`` file of overrides (the predecessor's ``config.env``: "
        "``APP_URL``, ``LATTICE_BOOTSTRAP_SERVERS``, ``LATTICE_<SECTION>_<KEY>``). "
        "``$CREDENTIALS_DIRECTORY/config`` is used instead when present.",
    )
    admin_listen: str = setting(
        "",
        OPTIONAL_ENDPOINT,
        "The local admin surface used by the ``lattice`` CLI. Empty means "
        "``unix:<state_dir>/admin.sock:mode=600:lockfile=1``. Anyone who reaches it "
        "administers the node: keep it a 0600 unix socket or loopback.",
    )
    tags: tuple[str, ...] = setting(
        (),
        LIST,
        "Tags of this node (for example ``gateway``), used by service placement policies.",
    )
    shutdown_timeout: float = setting(
        10.0,
        duration(minimum=1.0),
        "Longest time a clean shutdown may take before remaining work is abandoned.",
    )

    @property
    def identity_key_path(self) -> Path:
        """
        The configured identity key path, or its default under the state directory.
        """
        if self.identity_key is not None:
            return self.identity_key
        return self.state_dir / "private_key.pem"

    @property
    def admin_endpoint(self) -> str:
        """
        The admin listener's endpoint string, defaulted under the state directory.
        """
        if self.admin_listen:
            return self.admin_listen
        return f"unix:{self.state_dir / 'admin.sock'}:mode=600:lockfile=1"


@dataclass(frozen=True)
class LogConfig:
    """
    ``[log]``: what is logged and how.
    """

    level: str = setting(
        "info",
        choice(*LOG_LEVELS),
        "Lowest level logged. ``LATTICE_LOG_LEVEL`` overrides it; SIGHUP re-reads it.",
    )
    format: str = setting(
        "text",
        choice("text", "json"),
        "``text`` lines for humans and journald, or ``json``: one JSON object per line.",
    )


@dataclass(frozen=True)
class TelemetryConfig:
    """
    ``[telemetry]``: the Prometheus and health listener.
    """

    enabled: bool = setting(True, BOOL, "Serve ``/metrics``, ``/healthz`` and ``/readyz``.")
    listen: str = setting(
        "tcp:9090:interface=127.0.0.1",
        ENDPOINT,
        "Where the telemetry HTTP listener binds.",
    )


@dataclass(frozen=True)
class DiscoveryConfig:
    """
    ``[discovery]``: federation between servers.
    """

    public_url: str = setting(
        "",
        STRING,
        "Public base URL of this server (the predecessor's ``APP_URL``); "
        "announced endpoints are derived from it.",
    )
    bootstrap_servers: tuple[str, ...] = setting(
        (),
        LIST,
        "Servers to contact first (``LATTICE_BOOTSTRAP_SERVERS``): URLs, each "
        "optionally followed by ``#<fingerprint>`` to pin its key.",
    )
    enabled: bool = setting(
        False,
        BOOL,
        "Run the discovery and federation subsystem (public and admin listeners, timers).",
    )
    server_name: str = setting(
        "",
        STRING,
        "This server's name in ``user@server`` addresses; empty means the host of "
        "``public_url`` (or ``localhost``).",
    )
    listen: str = setting(
        "tcp:1113:interface=127.0.0.1",
        ENDPOINT,
        "The public federation listener (peers, ``/status``, ``/openapi.json``).",
    )
    admin_listen: str = setting(
        "",
        OPTIONAL_ENDPOINT,
        "An extra admin listener for the predecessor's admin routes (``/health``, "
        "``/api/v1/announce`` ...), for example ``tcp:1114:interface=127.0.0.1``. "
        "The routes are always on the node's admin socket as well. Loopback or unix only.",
    )
    database: str = setting(
        "",
        STRING,
        "Empty: SQLite at ``<state_dir>/discovery.sqlite3``; a path: that SQLite file; "
        "a ``postgresql://`` URL: that PostgreSQL database.",
    )
    webhook_url: str = setting(
        "",
        STRING,
        "The application's URL that receives inbound messages (POST, JSON). "
        "Empty: this server does not accept messages.",
    )
    webhook_secret_file: Path | None = setting(
        None,
        OPTIONAL_PATH,
        "File holding the webhook's shared secret; ``$CREDENTIALS_DIRECTORY/webhook_secret`` "
        "wins when present. Required when ``webhook_url`` is set.",
    )
    trusted_proxies: tuple[str, ...] = setting(
        (),
        LIST,
        "Addresses or networks of reverse proxies whose ``X-Forwarded-For``/``Forwarded`` "
        "headers are believed (for per-address limits).",
    )
    allow_private_addresses: bool = setting(
        False,
        BOOL,
        "Allow outbound calls to private, loopback and link-local addresses "
        "(local tests and air-gapped LANs).",
    )
    gossip_interval: float = setting(600.0, duration(0.01), "Time between gossip rounds.")
    delivery_interval: float = setting(
        60.0, duration(0.01), "Time between message delivery passes."
    )
    neighbor_interval: float = setting(
        21600.0, duration(0.01), "Time between neighbor updates (with liveness probes)."
    )
    cleanup_interval: float = setting(86400.0, duration(0.01), "Time between cleanups.")
    timer_jitter: int = setting(
        10, integer(0, 100), "Each timer interval is stretched by a random 0..N percent."
    )
    max_neighbors: int = setting(8, integer(1, 256), "Most neighbors kept.")
    fanout: int = setting(3, integer(1, 64), "Partners per gossip round.")
    neighbor_eligible: float = setting(
        604800.0, duration(1.0), "A peer may be a neighbor if seen within this time."
    )
    neighbor_demote: float = setting(
        2592000.0, duration(1.0), "Neighbors unseen this long are demoted."
    )
    peer_delete: float = setting(7776000.0, duration(1.0), "Peers unseen this long are deleted.")
    message_ttl: float = setting(86400.0, duration(1.0), "Outbound messages expire after this.")
    max_attempts: int = setting(5, integer(1, 100), "Delivery attempts before a message fails.")
    retry_base: float = setting(
        60.0,
        duration(0.001),
        "Retry backoff base: attempt n waits min(retry_base * 2^n, retry_max).",
    )
    retry_max: float = setting(3600.0, duration(0.001), "Longest retry backoff.")
    breaker_threshold: int = setting(
        5, integer(1, 1000), "Consecutive failures that open a peer's circuit breaker."
    )
    breaker_open: float = setting(
        900.0, duration(0.001), "How long an open breaker stays open before a half-open probe."
    )
    received_keep: float = setting(
        604800.0, duration(1.0), "How long received message ids are kept (de-duplication)."
    )
    route_cache: float = setting(86400.0, duration(1.0), "How long a resolved name is cached.")
    peer_rate_limit: int = setting(
        100, integer(1, 1_000_000), "Requests per minute per authenticated peer."
    )
    address_rate_limit: int = setting(
        120,
        integer(1, 1_000_000),
        "Unauthenticated requests (and failed authentications) per minute per client address.",
    )
    max_body: int = setting(1048576, SIZE, "Largest request body accepted on the public listener.")
    outbound_timeout: float = setting(10.0, duration(0.1), "Timeout of every outbound call.")
    outbound_concurrency: int = setting(
        64, integer(1, 10_000), "Most outbound calls in flight (per peer host: a quarter, >= 2)."
    )


@dataclass(frozen=True)
class UsbConfig:
    """
    ``[usb]``: the USB/IP server that exports this machine's USB devices.
    """

    enabled: bool = setting(False, BOOL, "Run the USB/IP server.")
    listen: str = setting(
        "tcp:3240:interface=127.0.0.1",
        ENDPOINT,
        "Plain USB/IP listener (stock ``usbip attach`` and usbip-win2 clients). "
        "Clients are identified by their IP address.",
    )
    tls_listen: str = setting(
        "",
        OPTIONAL_ENDPOINT,
        "Optional TLS listener (a ``tcp:`` endpoint; TLS is added by Lattice). "
        "Clients must present a certificate; its SHA-256 fingerprint is their identity.",
    )
    tls_certificate: Path | None = setting(
        None, OPTIONAL_PATH, "PEM certificate (and chain) of the TLS listener."
    )
    tls_key: Path | None = setting(None, OPTIONAL_PATH, "PEM private key of the TLS listener.")
    tls_client_ca: Path | None = setting(
        None,
        OPTIONAL_PATH,
        "PEM bundle of the CAs (or self-signed client certificates) client certificates "
        "must chain to; required with ``tls_listen``. Approval by fingerprint comes on top.",
    )
    backend: str = setting(
        "pyusb",
        choice("pyusb", "emulated"),
        "``pyusb``: this machine's devices through libusb-1.0; ``emulated``: built-in "
        "emulated devices (an echo device and a keyboard) for tests and demos.",
    )
    auto_share: bool = setting(
        False,
        BOOL,
        "Export every device that matches ``filters`` (at start and on hot-plug). When "
        "false, devices are exported only after ``lattice usb share BUSID``.",
    )
    filters: tuple[str, ...] = setting(
        (),
        LIST,
        "VID:PID patterns a device must match to be exported, e.g. ``1209:*, 04f9:0042``; "
        "empty matches every device. Hubs are never exported.",
    )
    require_approval: bool = setting(
        True,
        BOOL,
        "Only approved clients see and import devices. With no client approved, "
        "nobody is (fail closed).",
    )
    approved_clients: tuple[str, ...] = setting(
        (),
        LIST,
        "Clients approved in advance: certificate SHA-256 fingerprints (TLS listener) "
        "or IP addresses (plain listener).",
    )
    device_clients: tuple[str, ...] = setting(
        (),
        LIST,
        "Per-device client lists, ``PATTERN=CLIENT`` entries (PATTERN is VID:PID or a bus "
        "id): a device matched by any entry is visible only to the clients named for it.",
    )
    keepalive: float = setting(
        5.0,
        duration(minimum=1.0),
        "Idle time before TCP keepalive probes; a silent client loses its device after "
        "about this plus three seconds.",
    )
    poll_interval: float = setting(
        5.0,
        duration(minimum=0.5),
        "How often to rescan for devices when udev hot-plug events are unavailable.",
    )
    hotplug_debounce: float = setting(
        0.5,
        duration(minimum=0.0),
        "Quiet time after a hot-plug event before the devices are rescanned.",
    )


@dataclass(frozen=True)
class TlsConfig:
    """
    ``[tls]``: the certificate shared by the public TLS listeners (files, self-signed or
    ACME).
    """

    enabled: bool = setting(
        False,
        BOOL,
        "Run the certificate service (``tls``) that provides the certificate of the public "
        "TLS listeners, according to ``mode``.",
    )
    mode: str = setting(
        "self-signed",
        choice("self-signed", "files", "acme"),
        "``self-signed``: a certificate generated once under ``<state_dir>/tls/`` and reused "
        "(local development); ``files``: ``certificate`` and ``private_key``, reloaded when "
        "they change; ``acme``: obtained and renewed from an ACME CA (HTTP-01).",
    )
    certificate: Path | None = setting(
        None,
        OPTIONAL_PATH,
        "``files`` mode: PEM certificate followed by its chain (and optionally the key).",
    )
    private_key: Path | None = setting(
        None,
        OPTIONAL_PATH,
        "``files`` mode: PEM private key; empty means it is in the ``certificate`` file.",
    )
    domains: tuple[str, ...] = setting(
        (),
        LIST,
        "Names the certificate is for (``acme``: required, each must reach this node on "
        "port 80; ``self-signed``: empty means ``localhost, 127.0.0.1, ::1``).",
    )
    acme_directory: str = setting(
        "",
        STRING,
        "``acme`` mode: the CA's directory URL, for example "
        "``https://acme-v02.api.letsencrypt.org/directory``.",
    )
    acme_contact: tuple[str, ...] = setting(
        (),
        LIST,
        "Contact URLs of the ACME account, for example ``mailto:ops@example.org``.",
    )
    acme_agree_terms: bool = setting(
        False,
        BOOL,
        "Agree to the CA's terms of service (required by CAs that publish terms).",
    )
    acme_ca_bundle: Path | None = setting(
        None,
        OPTIONAL_PATH,
        "PEM CA certificates to trust for the ACME directory's HTTPS (test CAs such as "
        "pebble); empty means the usual trust store.",
    )
    acme_http_listen: str = setting(
        "",
        OPTIONAL_ENDPOINT,
        "Plain-HTTP listener that answers HTTP-01 challenges at "
        "``/.well-known/acme-challenge/`` (``tcp:80`` in production). Empty: only listeners "
        "that mount the challenge resource answer them.",
    )
    acme_timeout: float = setting(30.0, duration(1.0), "Timeout of each request to the ACME CA.")
    acme_order_timeout: float = setting(
        120.0,
        duration(1.0),
        "Longest an order may take from answering the challenges to the issued certificate.",
    )
    acme_retry_min: float = setting(
        300.0,
        duration(0.001),
        "Wait after a failed issuance or renewal; doubled after each further failure.",
    )
    acme_retry_max: float = setting(
        21600.0, duration(0.001), "Longest wait between failed attempts."
    )


@dataclass(frozen=True)
class KvConfig:
    """
    ``[kv]``: the etcd v3-compatible key-value store (see ``docs/kv.rst``).
    """

    enabled: bool = setting(
        False,
        BOOL,
        "Run the KV store and its etcd v3 gRPC listener (``etc/lattice.ini`` turns it on).",
    )
    listen: str = setting(
        "tcp:2379:interface=127.0.0.1",
        ENDPOINT,
        "etcd v3 gRPC listener; it also answers ``/healthz`` and ``/readyz`` over HTTP/1.1.",
    )
    tls_certificate: Path | None = setting(
        None,
        OPTIONAL_PATH,
        "PEM certificate (and chain) of the listener; empty serves cleartext (h2c).",
    )
    tls_key: Path | None = setting(
        None, OPTIONAL_PATH, "PEM private key of the listener (required with a certificate)."
    )
    tls_client_ca: Path | None = setting(
        None,
        OPTIONAL_PATH,
        "PEM CA bundle; when set, clients must present a certificate chaining to it, and its "
        "common name selects the client's tenant.",
    )
    tls_minimum_version: str = setting("1.2", choice("1.2", "1.3"), "Lowest TLS version accepted.")
    data_file: Path | None = setting(
        None,
        OPTIONAL_PATH,
        "SQLite database of the store; empty means ``<state_dir>/kv.sqlite``.",
    )
    durability: str = setting(
        "sync",
        choice("sync", "async"),
        "``sync``: a write is answered once its commit is on disk (``synchronous=FULL``); "
        "``async``: answered once applied in memory, committed moments later "
        "(``synchronous=NORMAL``): a crash can lose the last acknowledged writes.",
    )
    max_request_bytes: int = setting(
        1572864, SIZE, "Largest Put, DeleteRange or Txn request (etcd's ``--max-request-bytes``)."
    )
    default_tenant: str = setting(
        "default",
        STRING,
        "Tenant of clients without an identity (no client certificate, no auth user).",
    )
    tenant_qps_limit: int = setting(
        0, integer(0, 10_000_000), "Requests per second per tenant; 0 means unlimited."
    )
    tenant_bytes_limit: int = setting(
        0, SIZE, "Request bytes per second per tenant; 0 means unlimited."
    )
    lease_ttl_default: float = setting(60.0, duration(1.0), "TTL of a lease granted with TTL 0.")
    lease_ttl_max: float = setting(
        86400.0, duration(1.0), "Largest lease TTL granted; larger requests fail."
    )
    backend: str = setting(
        "embedded",
        choice("embedded", "etcd"),
        "``embedded``: the node's own SQLite-backed store; ``etcd``: the listener fronts an "
        "etcd cluster (``etcd_endpoints``), see ``docs/kv-cluster.rst``.",
    )
    etcd_endpoints: tuple[str, ...] = setting(
        (),
        LIST,
        "With ``backend = etcd``: the cluster's client URLs (``http://host:port`` or "
        "``https://host:port``), tried in order with failover.",
    )
    etcd_tls_ca: Path | None = setting(
        None, OPTIONAL_PATH, "PEM CA bundle that verifies the etcd members (https endpoints)."
    )
    etcd_tls_certificate: Path | None = setting(
        None, OPTIONAL_PATH, "PEM client certificate presented to the etcd members."
    )
    etcd_tls_key: Path | None = setting(
        None, OPTIONAL_PATH, "PEM private key of ``etcd_tls_certificate``."
    )
    upstream_timeout: float = setting(
        5.0,
        duration(0.1),
        "Deadline of one call to the etcd cluster; a linearizable call that cannot finish in "
        "time fails with UNAVAILABLE (linearizability unavailable).",
    )

    def data_path(self, state_dir: Path) -> Path:
        """The database file, defaulted under the state directory."""
        return self.data_file if self.data_file is not None else state_dir / "kv.sqlite"


@dataclass(frozen=True)
class RegistryConfig:
    """
    ``[registry]``: registry-managed services (external daemons) and the Lattice Store
    Protocol they reach state through (see ``docs/registry.rst``).
    """

    enabled: bool = setting(
        False,
        BOOL,
        "Watch ``/services/`` in the KV store and run the services this node consents to.",
    )
    lsp_listen: str = setting(
        "",
        OPTIONAL_ENDPOINT,
        "The Lattice Store Protocol listener daemons connect to. Empty means "
        "``unix:<state_dir>/lsp.sock:mode=600:lockfile=1``. Keep it a 0600 (or "
        "group-restricted) unix socket: each daemon also needs its token.",
    )
    consent_file: Path | None = setting(
        None,
        OPTIONAL_PATH,
        "Node-local consent and port overrides (JSON, 0600), changed only through "
        "``lattice service consent|port``. Empty means ``<state_dir>/service-consent.json``.",
    )
    kill_timeout: float = setting(
        10.0, duration(minimum=0.1), "Time between SIGTERM and SIGKILL when stopping a daemon."
    )
    restart_min: float = setting(
        1.0, duration(minimum=0.01), "Delay before restarting a crashed daemon the first time."
    )
    restart_max: float = setting(
        60.0,
        duration(minimum=0.01),
        "Longest restart delay (the delay doubles after each crash); a daemon that ran this "
        "long is healthy again and its next restart waits ``restart_min``.",
    )
    advertise_ttl: int = setting(
        15,
        integer(2, 3600),
        "Seconds the ``/nodes/{node_id}/services/{service_id}`` advertisements outlive a node "
        "that stopped keeping their lease alive.",
    )
    database: Path | None = setting(
        None,
        OPTIONAL_PATH,
        "Only with ``[kv] enabled = false``: the registry's own embedded store. Empty means "
        "``<state_dir>/registry-kv.sqlite``.",
    )

    def lsp_endpoint(self, state_dir: Path) -> str:
        """The LSP listener's endpoint string, defaulted under the state directory."""
        if self.lsp_listen:
            return self.lsp_listen
        return f"unix:{state_dir / 'lsp.sock'}:mode=600:lockfile=1"

    def consent_path(self, state_dir: Path) -> Path:
        """The consent file, defaulted under the state directory."""
        return self.consent_file or state_dir / "service-consent.json"

    def database_path(self, state_dir: Path) -> Path:
        """The fallback store's database, defaulted under the state directory."""
        return self.database or state_dir / "registry-kv.sqlite"


@dataclass(frozen=True)
class LatticeConfig:
    """
    The whole configuration of one node.
    """

    node: NodeConfig = NodeConfig()
    log: LogConfig = LogConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
    usb: UsbConfig = UsbConfig()
    tls: TlsConfig = TlsConfig()
    kv: KvConfig = KvConfig()
    registry: RegistryConfig = RegistryConfig()
    source: Path | None = None


def section_classes() -> dict[str, type]:
    """
    Map each INI section name to the dataclass that describes it.
    """
    return {f.name: type(f.default) for f in fields(LatticeConfig) if f.name != "source"}


# The predecessor's variable names, still accepted in the environment and in
# config.env.
ALIASES: Mapping[str, tuple[str, str]] = {
    "APP_URL": ("discovery", "public_url"),
    "LATTICE_BOOTSTRAP_SERVERS": ("discovery", "bootstrap_servers"),
}


class ConfigError(Exception):
    """
    The configuration is invalid.  C{errors} holds one line per problem.
    """

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


class _Collector:
    """
    Raw text values per section and key, with where each one came from.
    """

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], tuple[str, str]] = {}
        self.errors: list[str] = []

    def set(self, section: str, key: str, raw: str, source: str) -> None:
        self.values[(section, key)] = (raw, source)


def _read_ini(text: str, source: str, collector: _Collector, schema: dict[str, type]) -> None:
    parser = configparser.ConfigParser(
        interpolation=None,
        strict=True,
        empty_lines_in_values=False,
        default_section="\x00no default section",
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        collector.errors.append(f"{source}: {_describe_parse_error(e)}")
        return
    for section in parser.sections():
        section_class = schema.get(section)
        if section_class is None:
            known = ", ".join(sorted(schema))
            collector.errors.append(f"{source}: [{section}]: unknown section (known: {known})")
            continue
        known_keys = {f.name for f, _ in setting_fields(section_class)}
        for key, raw in parser.items(section):
            if key not in known_keys:
                collector.errors.append(
                    f"{source}: [{section}] {key}: unknown key "
                    f"(known: {', '.join(sorted(known_keys))})"
                )
                continue
            collector.set(section, key, raw.strip(), source)


def _describe_parse_error(error: configparser.Error) -> str:
    if isinstance(error, configparser.DuplicateSectionError):
        return f"[{error.section}]: section appears twice (line {error.lineno})"
    if isinstance(error, configparser.DuplicateOptionError):
        return f"[{error.section}] {error.option}: key appears twice (line {error.lineno})"
    if isinstance(error, configparser.MissingSectionHeaderError):
        return f"line {error.lineno}: text before the first [section] header: {error.line!r}"
    if isinstance(error, configparser.ParsingError):
        lines = ", ".join(f"line {lineno}: {line!r}" for lineno, line in error.errors)
        return f"cannot parse {lines}"
    return str(error).splitlines()[0]


def _read_env_file(path: Path, source: str, collector: _Collector) -> dict[str, str]:
    """
    Parse a C{NAME=value} file (C{#} comments, optional quotes, optional C{export}).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        collector.errors.append(f"{source}: cannot read: {e.strerror}")
        return {}
    except UnicodeDecodeError:
        collector.errors.append(f"{source}: not UTF-8 text")
        return {}
    result: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export ") :].lstrip()
        name, sep, value = stripped.partition("=")
        name = name.strip()
        if not sep or not name.replace("_", "").isalnum():
            collector.errors.append(f"{source}: line {lineno}: expected NAME=value, got {line!r}")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        result[name] = value
    return result


def _apply_variables(
    variables: Mapping[str, str],
    source_for: str,
    collector: _Collector,
    schema: dict[str, type],
) -> None:
    """
    Apply C{LATTICE_<SECTION>_<KEY>} and alias variables as overrides.
    """
    for name in sorted(variables):
        value = variables[name]
        where = f"{source_for}{name}"
        if name in ALIASES:
            section, key = ALIASES[name]
            collector.set(section, key, value.strip(), where)
            continue
        if not name.startswith("LATTICE_"):
            continue
        rest = name[len("LATTICE_") :]
        for section, section_class in schema.items():
            prefix = section.upper() + "_"
            if rest.startswith(prefix):
                key = rest[len(prefix) :].lower()
                known_keys = {f.name for f, _ in setting_fields(section_class)}
                if key in known_keys:
                    collector.set(section, key, value.strip(), where)
                else:
                    collector.errors.append(
                        f"{where}: [{section}] {key}: unknown key "
                        f"(known: {', '.join(sorted(known_keys))})"
                    )
                break


def _build(
    collector: _Collector, base: Path, schema: dict[str, type], source: Path | None
) -> LatticeConfig:
    sections: dict[str, Any] = {}
    for section, section_class in schema.items():
        values: dict[str, Any] = {}
        for f, info in setting_fields(section_class):
            entry = collector.values.get((section, f.name))
            if entry is None:
                continue
            raw, where = entry
            try:
                values[f.name] = info.kind.parse(raw, base)
            except SettingError as e:
                collector.errors.append(f"{where}: [{section}] {f.name}: {e}")
        sections[section] = section_class(**values)
    if collector.errors:
        raise ConfigError(collector.errors)
    return replace(LatticeConfig(**sections), source=source)


def config_from_string(
    text: str,
    source: str = "<string>",
    base: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> LatticeConfig:
    """
    Parse INI text into a L{LatticeConfig}.

    @param source: the name used in error messages.
    @param base: the directory relative paths resolve against (default: the
        current directory).
    @param environ: the environment to take overrides from (default: none,
        so that parsing a string is pure).
    @raise ConfigError: listing every problem found.
    """
    return _load(text, source, base or Path.cwd(), environ or {}, None)


def load_config(path: Path, environ: Mapping[str, str] | None = None) -> LatticeConfig:
    """
    Read and parse the INI file at C{path}, applying C{config.env} and
    environment overrides (from C{os.environ} unless C{environ} is given).

    @raise ConfigError: listing every problem found, including an unreadable file.
    """
    if environ is None:
        environ = os.environ
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    absolute = path.absolute()
    return _load(text, str(path), absolute.parent, environ, absolute)


def _load(
    text: str,
    source: str,
    base: Path,
    environ: Mapping[str, str],
    path: Path | None,
) -> LatticeConfig:
    schema = section_classes()
    collector = _Collector()
    _read_ini(text, source, collector, schema)

    # config.env sits between the INI file and the environment.  Where it
    # lives is itself configuration, so find it from the INI and environment.
    env_file = _config_env_path(collector, environ, base)
    if env_file is not None:
        variables = _read_env_file(env_file, str(env_file), collector)
        _apply_variables(variables, f"{env_file}: ", collector, schema)

    _apply_variables(environ, "$", collector, schema)
    return _build(collector, base, schema, path)


def _config_env_path(collector: _Collector, environ: Mapping[str, str], base: Path) -> Path | None:
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials:
        candidate = Path(credentials) / "config"
        if candidate.exists():
            return candidate
    raw = environ.get("LATTICE_NODE_CONFIG_ENV")
    if raw is None:
        entry = collector.values.get(("node", "config_env"))
        raw = entry[0] if entry else ""
    try:
        return OPTIONAL_PATH.parse(raw, base)
    except SettingError:
        return None  # reported when the [node] section is built
