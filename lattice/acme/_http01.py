"""
HTTP-01 challenge responses: the tokens of running orders (L{ChallengeStore}, no
Twisted) and the resource that serves them at
C{/.well-known/acme-challenge/<token>} (L{ChallengeResource}).

The resource can be mounted on any plain-HTTP listener reachable on port 80 of the
certified names: C{[tls] acme_http_listen}, or the discovery public listener (mount
L{well_known_resource} as its C{.well-known} child).
"""

from __future__ import annotations

import threading

from twisted.logger import Logger
from twisted.web.resource import IResource, NoResource, Resource
from twisted.web.server import Request

__all__ = ["ChallengeResource", "ChallengeStore", "challenge_site_root", "well_known_resource"]

# RFC 8555 8.3: tokens are base64url (no padding), at least 128 bits of entropy.
_TOKEN_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


class ChallengeStore:
    """
    The key authorizations to serve, by token.  Safe to use from several threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._answers: dict[str, str] = {}

    def publish(self, token: str, key_authorization: str) -> None:
        """
        Serve C{key_authorization} for C{token}.
        """
        with self._lock:
            self._answers[token] = key_authorization

    def withdraw(self, token: str) -> None:
        """
        Stop serving C{token}.
        """
        with self._lock:
            self._answers.pop(token, None)

    def get(self, token: str) -> str | None:
        """
        The key authorization published for C{token}, if any.
        """
        with self._lock:
            return self._answers.get(token)

    def __len__(self) -> int:
        with self._lock:
            return len(self._answers)


class _Answer(Resource):
    isLeaf = True

    def __init__(self, token: str, answer: str):
        super().__init__()
        self._token = token
        self._answer = answer

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Cache-Control", b"no-store")
        return self._answer.encode("ascii")

    render_HEAD = render_GET


class ChallengeResource(Resource):
    """
    C{/.well-known/acme-challenge/}: each published token answers with its key
    authorization; anything else is a 404.
    """

    _log = Logger()

    def __init__(self, store: ChallengeStore):
        super().__init__()
        self._store = store

    def getChild(self, path: bytes, request: Request) -> IResource:
        host = request.getHeader(b"host") or b"?"
        client = request.getClientAddress()
        peer = getattr(client, "host", str(client))
        if path and set(path) <= _TOKEN_ALPHABET and request.postpath == []:
            token = path.decode("ascii")
            answer = self._store.get(token)
            if answer is not None:
                self._log.info(
                    "ACME: answered HTTP-01 challenge {token} for {host} (from {peer})",
                    token=token,
                    host=host.decode("ascii", "replace"),
                    peer=peer,
                )
                return _Answer(token, answer)
        self._log.info(
            "ACME: no HTTP-01 challenge {path} (for {host}, from {peer})",
            path=path.decode("ascii", "replace"),
            host=host.decode("ascii", "replace"),
            peer=peer,
        )
        return NoResource("No such ACME challenge.")

    def render_GET(self, request: Request) -> bytes:
        return NoResource("No such ACME challenge.").render(request)  # type: ignore[no-any-return]


def well_known_resource(store: ChallengeStore) -> Resource:
    """
    A C{.well-known} resource with the C{acme-challenge} child, to mount at
    C{/.well-known} of a listener.
    """
    root = Resource()
    root.putChild(b"acme-challenge", ChallengeResource(store))
    return root


def challenge_site_root(store: ChallengeStore) -> Resource:
    """
    The root of a listener that serves only the HTTP-01 challenges.
    """
    root = Resource()
    root.putChild(b".well-known", well_known_resource(store))
    return root
