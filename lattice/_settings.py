"""
The typed vocabulary of configuration keys.

Each section of ``lattice.ini`` is a frozen dataclass whose fields are declared
with L{setting}: a default, a L{Kind} that parses the text form, and one line
of documentation.  L{lattice.config} walks these declarations to parse files,
apply overrides and check that the documentation is complete.
"""

from __future__ import annotations

import os.path
import re
from dataclasses import Field, field, fields
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class SettingError(ValueError):
    """
    A value could not be parsed; the message says why, without the key name.
    """


class Kind(Protocol[T_co]):
    """
    How one kind of value is written in the INI file.
    """

    name: str

    def parse(self, raw: str, base: Path) -> T_co:
        """
        Turn the text of a value into its typed form, resolving relative
        paths against C{base}, or raise L{SettingError}.
        """

    def render(self, value: Any) -> str:
        """
        The text form of a (default) value, as the INI file would hold it.
        """


class _Str:
    name = "string"

    def parse(self, raw: str, base: Path) -> str:
        return raw

    def render(self, value: Any) -> str:
        return str(value)


class _Bool:
    name = "boolean"
    _words = {
        "true": True,
        "yes": True,
        "on": True,
        "1": True,
        "false": False,
        "no": False,
        "off": False,
        "0": False,
    }

    def parse(self, raw: str, base: Path) -> bool:
        try:
            return self._words[raw.lower()]
        except KeyError:
            raise SettingError(f"expected true or false, got {raw!r}") from None

    def render(self, value: Any) -> str:
        return "true" if value else "false"


class _Int:
    def __init__(self, minimum: int | None = None, maximum: int | None = None):
        self.minimum = minimum
        self.maximum = maximum
        self.name = "integer"
        if minimum is not None and maximum is not None:
            self.name = f"integer {minimum}..{maximum}"
        elif minimum is not None:
            self.name = f"integer >= {minimum}"

    def parse(self, raw: str, base: Path) -> int:
        try:
            value = int(raw, 10)
        except ValueError:
            raise SettingError(f"expected an integer, got {raw!r}") from None
        if self.minimum is not None and value < self.minimum:
            raise SettingError(f"must be at least {self.minimum}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise SettingError(f"must be at most {self.maximum}, got {value}")
        return value

    def render(self, value: Any) -> str:
        return str(value)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class _Duration:
    name = "duration (seconds, or a number with ms/s/m/h/d)"

    def __init__(self, minimum: float = 0.0):
        self.minimum = minimum

    def parse(self, raw: str, base: Path) -> float:
        match = _DURATION.match(raw)
        if match is None:
            raise SettingError(f"expected a duration such as 30s, 10m or 6h, got {raw!r}")
        value = float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]
        if value < self.minimum:
            raise SettingError(f"must be at least {self.minimum:g}s, got {raw!r}")
        return value

    def render(self, value: Any) -> str:
        seconds = float(value)
        for unit in ("d", "h", "m"):
            size = _DURATION_UNITS[unit]
            if seconds >= size and seconds % size == 0:
                return f"{int(seconds // size)}{unit}"
        if seconds.is_integer():
            return f"{int(seconds)}s"
        milliseconds = seconds * 1000
        if milliseconds.is_integer():
            return f"{int(milliseconds)}ms"
        return f"{seconds:.6f}".rstrip("0") + "s"


_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_SIZE_UNITS = {
    "B": 1,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
}


class _Size:
    name = "size (bytes, or a number with KiB/MiB/GiB)"

    def parse(self, raw: str, base: Path) -> int:
        match = _SIZE.match(raw)
        if match is None:
            raise SettingError(f"expected a size such as 4MiB, got {raw!r}")
        return int(match.group(1)) * _SIZE_UNITS[match.group(2) or "B"]

    def render(self, value: Any) -> str:
        number = int(value)
        for unit in ("GiB", "MiB", "KiB"):
            size = _SIZE_UNITS[unit]
            if number >= size and number % size == 0:
                return f"{number // size}{unit}"
        return str(number)


class _Path:
    name = "path (relative paths resolve against the INI file's directory)"

    def __init__(self, optional: bool = False):
        self.optional = optional
        if optional:
            self.name = "path or empty " + self.name[len("path ") :]

    def parse(self, raw: str, base: Path) -> Path | None:
        if not raw:
            if self.optional:
                return None
            raise SettingError("must not be empty")
        if "\x00" in raw:
            raise SettingError("contains a NUL byte")
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = base / path
        return Path(_normalise(path))

    def render(self, value: Any) -> str:
        return "" if value is None else str(value)


def _normalise(path: Path) -> str:
    return os.path.normpath(str(path))


# Endpoint types a server listens on: Twisted's own, plus the systemd socket
# activation parser.  Anything else is most likely a typo.
_SERVER_ENDPOINT_TYPES = frozenset({"tcp", "tcp6", "unix", "ssl", "systemd"})


class _Endpoint:
    name = "Twisted server endpoint string"

    def __init__(self, optional: bool = False):
        self.optional = optional
        if optional:
            self.name = "Twisted server endpoint string, or empty to disable"

    def parse(self, raw: str, base: Path) -> str:
        if not raw:
            if self.optional:
                return ""
            raise SettingError("must not be empty")
        kind, _, rest = raw.partition(":")
        if kind not in _SERVER_ENDPOINT_TYPES:
            known = ", ".join(sorted(_SERVER_ENDPOINT_TYPES))
            raise SettingError(
                f"unknown endpoint type {kind!r} in {raw!r} (expected one of {known})"
            )
        if not rest:
            raise SettingError(f"endpoint {raw!r} has no address")
        if kind in ("tcp", "tcp6", "ssl"):
            port = rest.split(":", 1)[0]
            if "=" in port:
                port = ""
                for part in rest.split(":"):
                    if part.startswith("port="):
                        port = part[len("port=") :]
            if not port.isdigit() or int(port) > 65535:
                raise SettingError(f"endpoint {raw!r} has no valid port (0..65535)")
        if kind == "unix":
            head, sep, tail = rest.partition(":")
            prefix = ""
            if head.startswith("address="):
                prefix, head = "address=", head[len("address=") :]
            if not head:
                raise SettingError(f"endpoint {raw!r} has no socket path")
            if not head.startswith("/"):
                head = _normalise(base / head)
            return f"unix:{prefix}{head}{sep}{tail}"
        return raw

    def render(self, value: Any) -> str:
        return str(value)


class _Choice:
    def __init__(self, *choices: str):
        self.choices = choices
        self.name = "one of " + ", ".join(choices)

    def parse(self, raw: str, base: Path) -> str:
        value = raw.lower()
        if value not in self.choices:
            raise SettingError(f"expected one of {', '.join(self.choices)}, got {raw!r}")
        return value

    def render(self, value: Any) -> str:
        return str(value)


class _List:
    name = "comma-separated list"

    def parse(self, raw: str, base: Path) -> tuple[str, ...]:
        return tuple(item.strip() for item in raw.split(",") if item.strip())

    def render(self, value: Any) -> str:
        return ", ".join(value)


STRING: Kind[str] = _Str()
BOOL: Kind[bool] = _Bool()
SIZE: Kind[int] = _Size()
LIST: Kind[tuple[str, ...]] = _List()
PATH: Kind[Path | None] = _Path()
OPTIONAL_PATH: Kind[Path | None] = _Path(optional=True)
ENDPOINT: Kind[str] = _Endpoint()
OPTIONAL_ENDPOINT: Kind[str] = _Endpoint(optional=True)


def integer(minimum: int | None = None, maximum: int | None = None) -> Kind[int]:
    """
    An integer kind with optional bounds.
    """
    return _Int(minimum, maximum)


def duration(minimum: float = 0.0) -> Kind[float]:
    """
    A duration kind (seconds as a float), at least C{minimum} seconds.
    """
    return _Duration(minimum)


def choice(*choices: str) -> Kind[str]:
    """
    A kind that accepts exactly one of C{choices} (case-insensitive).
    """
    return _Choice(*choices)


class SettingInfo(Generic[T]):
    """
    What the schema knows about one key.
    """

    def __init__(self, kind: Kind[T], doc: str):
        self.kind = kind
        self.doc = doc


def setting(default: Any, kind: Kind[Any], doc: str) -> Any:
    """
    Declare a configuration key as a dataclass field.
    """
    return field(default=default, metadata={"lattice": SettingInfo(kind, doc)})


def setting_fields(section: type) -> list[tuple[Field[Any], SettingInfo[Any]]]:
    """
    The declared keys of a section class, in declaration order.
    """
    result = []
    for f in fields(section):
        info = f.metadata.get("lattice")
        if isinstance(info, SettingInfo):
            result.append((f, info))
    return result
