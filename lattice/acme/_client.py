"""
A small blocking ACME (RFC 8555) client over certbot's C{acme} library: account,
order, HTTP-01 challenges, finalization.  No Twisted: the certificate service calls
it in a thread pool.  Every network call has a timeout (C{timeout}, per request) and
an order as a whole has a deadline (C{order_timeout}).

Failures are L{AcmeError}s whose message says which step failed and why, in the CA's
own words where it gave some (for example a failed HTTP-01 validation's detail).
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import requests
from acme import challenges, errors, messages
from acme.client import ClientNetwork, ClientV2
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from josepy.errors import Error as JoseError
from josepy.jwa import ES256, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA

__all__ = [
    "AcmeClient",
    "AcmeClientLike",
    "AcmeError",
    "Http01Challenge",
    "PendingOrder",
    "connect",
]

USER_AGENT = "lattice-acme (certbot acme library)"


class AcmeError(Exception):
    """
    An ACME step failed; the message is meant for the operator as is.
    """


@dataclass(frozen=True)
class Http01Challenge:
    """
    One HTTP-01 challenge: serve C{key_authorization} at
    C{http://<domain>/.well-known/acme-challenge/<token>}.
    """

    domain: str
    token: str
    key_authorization: str


@dataclass(frozen=True)
class PendingOrder:
    """
    An order whose challenges must be published before L{AcmeClientLike.finish_order}.

    C{handle} is the client's own state for the order.
    """

    url: str
    names: tuple[str, ...]
    challenges: tuple[Http01Challenge, ...]
    handle: object


class AcmeClientLike(Protocol):
    """
    What the certificate service needs from an ACME client (blocking calls).
    """

    @property
    def account_url(self) -> str:
        """
        The URL of the ACME account in use.
        """

    def begin_order(self, csr_pem: bytes) -> PendingOrder:
        """
        Create an order for the names of C{csr_pem}; returns the HTTP-01 challenges
        to publish (none for names the CA already considers validated).
        """

    def finish_order(self, order: PendingOrder) -> str:
        """
        Tell the CA the challenges are ready, wait for validation, finalize with the
        order's CSR and return the certificate chain (PEM).
        """

    def cancel(self) -> None:
        """
        Make a running L{finish_order} give up soon (called from another thread).
        """


def _describe(error: BaseException) -> str:
    if isinstance(error, errors.ValidationError):
        parts = []
        for authzr in error.failed_authzrs:
            name = authzr.body.identifier.value
            problems = [str(c.error) for c in authzr.body.challenges if c.error is not None]
            parts.append(f"{name}: {'; '.join(problems) or 'no reason given'}")
        return "validation failed: " + " | ".join(parts)
    if isinstance(error, errors.ConflictError):
        return f"conflict ({error.location})"
    if isinstance(error, requests.exceptions.Timeout):
        return f"timed out: {error}"
    if isinstance(error, requests.exceptions.RequestException):
        return f"cannot reach the ACME server: {error}"
    text = str(error).strip()
    return text or type(error).__name__


_EXPECTED = (
    errors.Error,
    messages.Error,
    requests.exceptions.RequestException,
    JoseError,
    ValueError,
    KeyError,
)


class AcmeClient:
    """
    One ACME account on one CA.  Use L{connect} to make one.
    """

    def __init__(
        self,
        client: ClientV2,
        key: JWK,
        account_url: str,
        order_timeout: float,
    ):
        self._client = client
        self._key = key
        self._account_url = account_url
        self._order_timeout = order_timeout
        self._cancelled = threading.Event()

    @property
    def account_url(self) -> str:
        return self._account_url

    def cancel(self) -> None:
        self._cancelled.set()

    def begin_order(self, csr_pem: bytes) -> PendingOrder:
        try:
            order = self._client.new_order(csr_pem)
        except _EXPECTED as e:
            raise AcmeError(f"cannot create the order: {_describe(e)}") from None
        found: list[Http01Challenge] = []
        answers: list[tuple[messages.ChallengeBody, challenges.ChallengeResponse]] = []
        names = []
        for authzr in order.authorizations:
            name = authzr.body.identifier.value
            names.append(name)
            if authzr.body.status == messages.STATUS_VALID:
                continue
            for challb in authzr.body.challenges:
                if isinstance(challb.chall, challenges.HTTP01):
                    response, validation = challb.chall.response_and_validation(self._key)
                    token = challb.chall.encode("token")
                    found.append(Http01Challenge(name, token, validation))
                    answers.append((challb, response))
                    break
            else:
                offered = ", ".join(str(c.chall.typ) for c in authzr.body.challenges)
                raise AcmeError(
                    f"the CA offers no HTTP-01 challenge for {name} (offered: {offered or 'none'})"
                )
        return PendingOrder(
            url=order.uri or "",
            names=tuple(names),
            challenges=tuple(found),
            handle=(order, answers),
        )

    def finish_order(self, order: PendingOrder) -> str:
        handle: Any = order.handle
        orderr, answers = handle
        deadline = time.monotonic() + self._order_timeout
        try:
            for challb, response in answers:
                self._client.answer_challenge(challb, response)
        except _EXPECTED as e:
            raise AcmeError(f"cannot answer the challenges: {_describe(e)}") from None
        orderr = self._wait_for_authorizations(orderr, deadline)
        remaining = max(deadline - time.monotonic(), 1.0)
        # poll_finalization compares with naive local time.
        local_deadline = datetime.datetime.now() + datetime.timedelta(seconds=remaining)
        try:
            finished = self._client.finalize_order(orderr, local_deadline)
        except errors.TimeoutError:
            raise AcmeError(
                f"the CA did not issue the certificate within {self._order_timeout:g}s"
            ) from None
        except _EXPECTED as e:
            raise AcmeError(f"cannot finalize the order: {_describe(e)}") from None
        chain = finished.fullchain_pem
        if not chain:
            raise AcmeError("the CA returned no certificate")
        return str(chain)

    def _wait_for_authorizations(self, orderr: Any, deadline: float) -> Any:
        """
        Poll each authorization until it is no longer pending, with short waits
        first (a CA usually validates within a second) and at most 2 s apart.
        """
        results = []
        failed = []
        for pending in orderr.authorizations:
            authzr = pending
            wait = 0.1
            while True:
                if self._cancelled.is_set():
                    raise AcmeError("cancelled (the node is stopping)")
                try:
                    authzr, _ = self._client.poll(authzr)
                except _EXPECTED as e:
                    raise AcmeError(f"cannot poll the authorization: {_describe(e)}") from None
                status = authzr.body.status
                if status != messages.STATUS_PENDING:
                    break
                if time.monotonic() + wait > deadline:
                    raise AcmeError(
                        f"the CA did not validate {authzr.body.identifier.value} within "
                        f"{self._order_timeout:g}s"
                    )
                self._cancelled.wait(wait)
                wait = min(wait * 2, 2.0)
            results.append(authzr)
            if status != messages.STATUS_VALID:
                failed.append(authzr)
        if failed:
            raise AcmeError(_describe(errors.ValidationError(failed)))
        return orderr.update(authorizations=results)


def _jwk(key_pem: bytes) -> tuple[JWK, JWASignature]:
    key = load_pem_private_key(key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return JWKEC(key=key), ES256
    return JWKRSA(key=key), RS256


def connect(
    directory_url: str,
    account_key_pem: bytes,
    *,
    contact: Sequence[str] = (),
    agree_terms: bool = False,
    ca_bundle: Path | None = None,
    timeout: float = 30.0,
    order_timeout: float = 120.0,
) -> AcmeClient:
    """
    Fetch the CA's directory and find (or create) the account of C{account_key_pem}.

    @param ca_bundle: PEM file of the CA certificates to trust for the directory's
        HTTPS (test CAs); default: C{requests}' bundle.
    @param timeout: timeout of every HTTP request, in seconds.
    @raise AcmeError: the CA cannot be reached, or refuses the account.
    """
    key, algorithm = _jwk(account_key_pem)
    # requests takes a CA bundle path where ClientNetwork's annotation says bool.
    verify: Any = str(ca_bundle) if ca_bundle is not None else True
    network = ClientNetwork(
        key,
        alg=algorithm,
        verify_ssl=verify,
        user_agent=USER_AGENT,
        timeout=max(1, round(timeout)),
    )
    try:
        directory = ClientV2.get_directory(directory_url, network)
    except _EXPECTED as e:
        raise AcmeError(f"cannot read the ACME directory {directory_url}: {_describe(e)}") from None
    client = ClientV2(directory, network)
    terms = directory.meta.terms_of_service
    if terms and not agree_terms:
        raise AcmeError(
            f"the CA requires agreeing to its terms of service ({terms}); read them, then set "
            "[tls] acme_agree_terms = true"
        )
    registration = messages.NewRegistration(
        contact=tuple(contact), terms_of_service_agreed=bool(terms) or None
    )
    try:
        account = client.new_account(registration)
        account_url = account.uri
    except errors.ConflictError as e:
        # The key already has an account: RFC 8555 7.3.1 answers with its URL.
        account_url = e.location
        network.account = messages.RegistrationResource(uri=account_url, body=registration)
    except _EXPECTED as e:
        raise AcmeError(f"cannot register the ACME account: {_describe(e)}") from None
    if not account_url:
        raise AcmeError("the CA did not return an account URL")
    return AcmeClient(client, key, account_url, order_timeout)
