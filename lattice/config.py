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
    STRING,
    SettingError,
    choice,
    duration,
    setting,
    setting_fields,
)

__all__ = [
    "ConfigError",
    "DiscoveryConfig",
    "LatticeConfig",
    "LogConfig",
    "NodeConfig",
    "TelemetryConfig",
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
        "``$CREDENTIALS_DIRECTORY/private_key`` wins when present.",
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


@dataclass(frozen=True)
class LatticeConfig:
    """
    The whole configuration of one node.
    """

    node: NodeConfig = NodeConfig()
    log: LogConfig = LogConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    discovery: DiscoveryConfig = DiscoveryConfig()
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
