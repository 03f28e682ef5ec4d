"""
Where the daemon may connect, and who a request came from (no Twisted here).

Outbound: a URL is split strictly (no user info, http or https only, a host,
a port); its host is resolved once, every address is checked, and the
checked address is the one connected to (flaw 8: C{http://good.com:x@127.0.0.1/}
is refused because it carries user info, and DNS cannot change its answer
between the check and the connection).

Inbound: the client address is the socket peer, unless that peer is a
configured trusted proxy; then the right-most untrusted address of
C{X-Forwarded-For} or C{Forwarded} is used (flaw 9).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = [
    "ForwardedPolicy",
    "PolicyError",
    "Target",
    "address_allowed",
    "parse_target",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PolicyError(ValueError):
    """
    The target may not be contacted; the message says why.
    """


@dataclass(frozen=True)
class Target:
    """
    A checked URL: scheme, host, port and the path prefix of its base URL.
    """

    scheme: str
    host: str
    port: int
    base_path: str


def parse_target(url: str) -> Target:
    """
    Split a base URL strictly.

    @raise PolicyError: the URL is not a plain http(s) URL.
    """
    if not isinstance(url, str) or len(url) > 512 or any(c in url for c in "\\\r\n\t "):
        raise PolicyError("malformed URL")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise PolicyError(f"malformed URL: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise PolicyError("only http and https URLs may be contacted")
    if "@" in parts.netloc or parts.username is not None or parts.password is not None:
        raise PolicyError("URLs with user info are refused")
    if parts.query or parts.fragment:
        raise PolicyError("base URLs take no query or fragment")
    host = parts.hostname
    if not host:
        raise PolicyError("URL has no host")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, host, port, parts.path.rstrip("/"))


def address_allowed(address: str, allow_private: bool) -> bool:
    """
    Whether a resolved address may be connected to.
    """
    try:
        ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return False
    if allow_private:
        return True
    return not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or not ip.is_global
    )


def _networks(entries: Iterable[str]) -> tuple[IPNetwork, ...]:
    result = []
    for entry in entries:
        result.append(ipaddress.ip_network(entry.strip(), strict=False))
    return tuple(result)


def _strip_port(value: str) -> str:
    value = value.strip().strip('"')
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


class ForwardedPolicy:
    """
    Find a request's client address, trusting forwarding headers only from
    configured proxies.
    """

    def __init__(self, trusted_proxies: Sequence[str] = ()):
        self.trusted = _networks(trusted_proxies)

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.trusted)

    def client_address(self, peer: str, forwarded_for: str | None, forwarded: str | None) -> str:
        """
        The client address of a request from socket peer C{peer} (a unix
        socket peer is C{"unix"}).
        """
        if not self._is_trusted(peer):
            return peer
        hops: list[str] = []
        if forwarded:
            for element in forwarded.split(","):
                for pair in element.split(";"):
                    name, _, value = pair.strip().partition("=")
                    if name.lower() == "for" and value:
                        hops.append(_strip_port(value))
        elif forwarded_for:
            hops = [_strip_port(hop) for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer
