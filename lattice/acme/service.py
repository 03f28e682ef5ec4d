"""
The C{tls} service: the certificate of the public TLS listeners.

C{[tls] mode} says where it comes from:

 - C{files}: the operator's files, followed by the TLS contexts' file watching;
 - C{self-signed}: generated once under C{<state_dir>/tls/} and reused;
 - C{acme}: obtained from an ACME CA with HTTP-01 and renewed at two thirds of its
   lifetime (with jitter); failures are retried with exponential backoff while the
   current certificate keeps serving.

Every certificate is persisted as one PEM bundle (chain + key, 0600) written
atomically, then installed into the TLS contexts made by L{CertificateService.server_context}:
their next connections use it, established ones keep theirs.  Listeners that build
their own contexts from L{CertificateService.server_options} (or the paths) pick it up
at their next file check.

Nothing blocking runs on the reactor once it runs: the ACME client, key generation
and file writes go to a thread pool.  Start-up itself reads (and, the first time,
writes) the bundle synchronously so that listeners started after this service find
a certificate.
"""

from __future__ import annotations

import datetime
import random as _random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web.resource import Resource

from lattice.acme._admin import TlsAdmin
from lattice.acme._certs import (
    CertificateError,
    CertificateInfo,
    generate_key_pem,
    make_csr_pem,
    parse_bundle,
    renewal_time,
    retry_delay,
    self_signed_bundle,
)
from lattice.acme._client import AcmeClientLike, AcmeError, connect
from lattice.acme._http01 import ChallengeStore, challenge_site_root, well_known_resource
from lattice.acme._store import (
    StoreError,
    ensure_directory,
    load_or_create_key,
    read_file,
    write_atomically,
)
from lattice.admin import AdminSurface, QuietSite
from lattice.config import TlsConfig
from lattice.listening import ListenerService
from lattice.readiness import Readiness
from lattice.tls import ReloadingServerContext, TlsConfigurationError, TlsServerOptions

__all__ = ["CertificateService", "ClientFactory"]

T = TypeVar("T")

ClientFactory = Callable[[], AcmeClientLike]
"""
Makes a connected ACME client; blocking, called in the thread pool.
"""

SELF_SIGNED_LIFETIME = 365 * 86400.0

SOURCE_FILES = "files"
SOURCE_SELF_SIGNED = "self-signed"
SOURCE_ACME = "acme"
SOURCE_TEMPORARY = "temporary self-signed (ACME issuance pending)"


class SetupError(Exception):
    """
    The certificate service cannot start; the message names the setting or file.
    """


class _Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.not_after = Gauge(
            "lattice_tls_certificate_not_after_seconds",
            "Unix time when the served certificate expires.",
            registry=registry,
        )
        self.next_renewal = Gauge(
            "lattice_tls_next_renewal_seconds",
            "Unix time of the next renewal attempt (0: none scheduled).",
            registry=registry,
        )
        self.failures = Gauge(
            "lattice_tls_renewal_failures",
            "Consecutive failed issuance or renewal attempts.",
            registry=registry,
        )
        self.attempts = Counter(
            "lattice_tls_renewal_attempts",
            "Issuance and renewal attempts, by result.",
            ["result"],
            registry=registry,
        )


class CertificateService(MultiService):
    """
    Provides, renews and installs the certificate of the public TLS listeners.

    @param reactor: provides C{IReactorTime}, C{IReactorFromThreads} and, for
        C{[tls] acme_http_listen}, C{IReactorTCP}.
    @param client_factory: makes the ACME client (blocking; default: the C{acme}
        library against C{[tls] acme_directory}).
    @param threadpool: where blocking work runs (default: a pool of one thread,
        started and stopped with the service).
    @param random: returns a float in [0, 1), for jitter.
    @param challenges: where HTTP-01 answers are published (default: a new store;
        L{well_known_resource} serves it).
    """

    _log = Logger()

    def __init__(
        self,
        config: TlsConfig,
        reactor: Any,
        *,
        state_dir: Path,
        readiness: Readiness,
        fail: Callable[[str], None],
        admin: AdminSurface | None = None,
        metrics: CollectorRegistry | None = None,
        client_factory: ClientFactory | None = None,
        threadpool: ThreadPool | None = None,
        random: Callable[[], float] = _random.random,
        challenges: ChallengeStore | None = None,
    ):
        super().__init__()
        self.config = config
        self._reactor = reactor
        self._fail = fail
        self._random = random
        self._owns_pool = threadpool is None
        self._pool = threadpool or ThreadPool(minthreads=0, maxthreads=1, name="lattice-tls")
        self._client_factory = client_factory or self._connect
        self._metrics = _Metrics(metrics) if metrics is not None else None
        self._component = readiness.register("tls")

        self.directory = state_dir / "tls"
        self.account_key_path = self.directory / "acme" / "account.key"
        self.certificate_path: Path | None
        self.key_path: Path | None
        if config.mode == "files":
            self.certificate_path = config.certificate
            self.key_path = config.private_key or config.certificate
        elif config.mode == "self-signed":
            self.certificate_path = self.key_path = self.directory / "self-signed.pem"
        else:
            self.certificate_path = self.key_path = self.directory / "acme" / "certificate.pem"

        self.challenges = challenges if challenges is not None else ChallengeStore()
        self.info: CertificateInfo | None = None
        self.source: str | None = None
        self.next_renewal: float | None = None
        self.failures = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_success_at: float | None = None
        self.account_url: str | None = None
        self._timer: IDelayedCall | None = None
        self._attempt: Deferred[CertificateInfo] | None = None
        self._attempt_waiters: list[Deferred[CertificateInfo]] = []
        self._install_waiters: list[Deferred[CertificateInfo]] = []
        self._contexts: list[ReloadingServerContext] = []
        self._client: AcmeClientLike | None = None

        self.http_listener: ListenerService | None = None
        if config.mode == "acme" and config.acme_http_listen:
            self.http_listener = ListenerService(
                reactor,
                config.acme_http_listen,
                QuietSite(challenge_site_root(self.challenges), reactor=reactor),
                readiness.register("acme-http"),
                "[tls] acme_http_listen",
                fail,
            )
            self.http_listener.setServiceParent(self)
        if admin is not None:
            admin.mount("tls", TlsAdmin(self).app.resource())

    # -- what listeners use -------------------------------------------------

    def well_known_resource(self) -> Resource:
        """
        A C{.well-known} resource answering this service's HTTP-01 challenges, for a
        plain-HTTP listener on port 80 to mount (C{root.putChild(b".well-known", ...)}).
        """
        return well_known_resource(self.challenges)

    def server_options(
        self,
        *,
        alpn: tuple[bytes, ...] = (b"h2", b"http/1.1"),
        client_ca: str | None = None,
        minimum_version: str = "1.2",
    ) -> TlsServerOptions:
        """
        L{TlsServerOptions} that point at the certificate this service maintains.
        """
        if self.certificate_path is None or self.key_path is None:
            raise SetupError("[tls] mode = files needs [tls] certificate")
        return TlsServerOptions(
            certificate=str(self.certificate_path),
            private_key=str(self.key_path),
            client_ca=client_ca,
            minimum_version=minimum_version,
            alpn=alpn,
        )

    def server_context(
        self,
        *,
        alpn: tuple[bytes, ...] = (b"h2", b"http/1.1"),
        client_ca: str | None = None,
        minimum_version: str = "1.2",
    ) -> ReloadingServerContext:
        """
        A TLS server context with the current certificate, into which every new
        certificate is installed as soon as it is persisted.  Call it once this
        service has started (listeners start after it); it stops with the service.

        @raise TlsConfigurationError: the files cannot be loaded (or C{client_ca}).
        """
        context = ReloadingServerContext(
            self._reactor,
            self.server_options(alpn=alpn, client_ca=client_ca, minimum_version=minimum_version),
        )
        if self.running:
            context.start()
        self._contexts.append(context)
        return context

    def when_installed(self) -> Deferred[CertificateInfo]:
        """
        Fires with the next certificate installed.
        """
        waiter: Deferred[CertificateInfo] = Deferred()
        self._install_waiters.append(waiter)
        return waiter

    def renew_now(self) -> Deferred[CertificateInfo]:
        """
        Renew (or regenerate) now, or join the attempt under way.  Fires with the
        new certificate, or fails with the reason; either way the schedule goes on
        (the next renewal, or the next retry with backoff).
        """
        if self.config.mode == "files":
            return Deferred.fromCoroutine(self._files_not_renewable())
        waiter: Deferred[CertificateInfo] = Deferred()
        self._attempt_waiters.append(waiter)
        self._start_attempt()
        return waiter

    async def _files_not_renewable(self) -> CertificateInfo:
        raise SetupError("[tls] mode = files: replace the files to renew the certificate")

    def status(self) -> dict[str, object]:
        """
        What C{lattice tls status} shows.
        """
        return {
            "mode": self.config.mode,
            "source": self.source,
            "path": str(self.certificate_path) if self.certificate_path else None,
            "domains": list(self.config.domains),
            "acme_directory": self.config.acme_directory or None,
            "account": self.account_url,
            "certificate": self.info.as_json() if self.info is not None else None,
            "next_renewal": self.next_renewal,
            "renewing": self._attempt is not None,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "last_success_at": self.last_success_at,
            "pending_challenges": len(self.challenges),
            "contexts": len(self._contexts),
        }

    async def refresh(self) -> None:
        """
        In C{files} mode, re-read the files (the operator may have replaced them).
        """
        if self.config.mode != "files":
            return
        try:
            self.info = await self._in_thread(self._read_files)
        except (SetupError, StoreError) as e:
            self.last_error = str(e)
            self.last_error_at = self._reactor.seconds()
        else:
            self._refresh_readiness()

    # -- lifecycle ------------------------------------------------------------

    def startService(self) -> None:
        try:
            self._prepare()
        except (SetupError, StoreError, CertificateError) as e:
            self._component.set_not_ready(str(e))
            self._fail(str(e))
            return
        if self._owns_pool:
            self._pool.start()
        super().startService()
        for context in self._contexts:
            context.start()
        self._refresh_readiness()
        if self.next_renewal is not None:
            self._schedule(self.next_renewal)

    def stopService(self) -> Deferred[None]:
        self._cancel_timer()
        for context in self._contexts:
            context.stop()
        client = self._client
        if client is not None:
            client.cancel()
        stopped = super().stopService()
        return Deferred.fromCoroutine(self._stopped(stopped))

    async def _stopped(self, children: Deferred[None] | None) -> None:
        waits: list[Deferred[Any]] = []
        if children is not None:
            waits.append(children)
        if self._attempt is not None:
            waiter: Deferred[CertificateInfo] = Deferred()
            self._attempt_waiters.append(waiter)
            waits.append(waiter)
        if waits:
            await DeferredList(waits, consumeErrors=True)
        if self._owns_pool and self._pool.started:
            self._pool.stop()
        self._component.set_not_ready("stopped")

    # -- start-up -------------------------------------------------------------

    def _prepare(self) -> None:
        mode = self.config.mode
        if mode == "files":
            self.info = self._read_files()
            self.source = SOURCE_FILES
            self._log.info(
                "TLS: certificate from {path} for {names}, expires {expiry}",
                path=str(self.certificate_path),
                names=", ".join(self.info.names) or self.info.subject,
                expiry=_when(self.info.not_after),
            )
            return
        path = self.certificate_path
        assert path is not None
        if mode == "acme":
            self._check_acme_settings()
        ensure_directory(path.parent)
        info = self._read_bundle(path)
        now = self._reactor.seconds()
        if mode == "self-signed":
            names = self.config.domains
            if info is None or not info.covers(names) or now >= renewal_time(info, lambda: 0.0):
                info = self._write_self_signed(path, names, now)
                self._log.info(
                    "TLS: generated a self-signed certificate for {names} in {path}, "
                    "expires {expiry}",
                    names=", ".join(info.names),
                    path=str(path),
                    expiry=_when(info.not_after),
                )
            else:
                self._log.info(
                    "TLS: reusing the self-signed certificate in {path}, expires {expiry}",
                    path=str(path),
                    expiry=_when(info.not_after),
                )
            self.info, self.source = info, SOURCE_SELF_SIGNED
            self.next_renewal = renewal_time(info, self._random)
            return
        names = self.config.domains
        if info is None or info.self_issued:
            if info is None or now >= info.not_after:
                info = self._write_self_signed(path, names, now)
            self.info, self.source = info, SOURCE_TEMPORARY
            self._log.info(
                "TLS: no ACME certificate yet in {path}; serving a temporary self-signed "
                "certificate until the first issuance",
                path=str(path),
            )
            self.next_renewal = now
        else:
            self.info, self.source = info, SOURCE_ACME
            if not info.covers(names):
                self._log.info(
                    "TLS: the certificate in {path} is for {names}, not for all of {wanted}; "
                    "requesting a new one",
                    path=str(path),
                    names=", ".join(info.names),
                    wanted=", ".join(names),
                )
                self.next_renewal = now
            else:
                self.next_renewal = renewal_time(info, self._random)
                self._log.info(
                    "TLS: ACME certificate in {path} for {names}, expires {expiry}",
                    path=str(path),
                    names=", ".join(info.names),
                    expiry=_when(info.not_after),
                )
        if not self.config.acme_http_listen:
            self._log.warn(
                "TLS: [tls] acme_http_listen is empty: HTTP-01 challenges are answered only by "
                "listeners that mount the challenge resource on port 80"
            )

    def _check_acme_settings(self) -> None:
        problems = []
        if not self.config.acme_directory:
            problems.append("[tls] mode = acme needs [tls] acme_directory")
        if not self.config.domains:
            problems.append("[tls] mode = acme needs [tls] domains")
        if problems:
            raise SetupError("; ".join(problems))

    def _read_files(self) -> CertificateInfo:
        certificate, key = self.config.certificate, self.config.private_key
        if certificate is None:
            raise SetupError("[tls] mode = files needs [tls] certificate")
        data = read_file(certificate)
        if data is None:
            raise SetupError(f"[tls] certificate = {certificate}: no such file")
        if key is not None and key != certificate:
            key_data = read_file(key)
            if key_data is None:
                raise SetupError(f"[tls] private_key = {key}: no such file")
            data = data + b"\n" + key_data
        try:
            return parse_bundle(data)
        except CertificateError as e:
            raise SetupError(f"[tls] certificate = {certificate}: {e}") from None

    def _read_bundle(self, path: Path) -> CertificateInfo | None:
        data = read_file(path)
        if data is None:
            return None
        try:
            return parse_bundle(data)
        except CertificateError as e:
            self._log.warn(
                "TLS: {path} cannot be used ({error}); replacing it", path=str(path), error=str(e)
            )
            return None

    def _write_self_signed(self, path: Path, names: Sequence[str], now: float) -> CertificateInfo:
        bundle = self_signed_bundle(names, now, SELF_SIGNED_LIFETIME)
        write_atomically(path, bundle)
        return parse_bundle(bundle)

    # -- renewal ----------------------------------------------------------------

    def _in_thread(self, f: Callable[..., T], *args: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self._pool, f, *args)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _schedule(self, when: float) -> None:
        self._cancel_timer()
        self.next_renewal = when
        delay = max(0.0, when - self._reactor.seconds())
        self._timer = self._reactor.callLater(delay, self._due)
        if self._metrics is not None:
            self._metrics.next_renewal.set(when)
        self._refresh_readiness()
        if delay > 0:
            self._log.info(
                "TLS: next certificate {what} at {when} (in {delay})",
                what="renewal" if self.config.mode == "acme" else "regeneration",
                when=_when(when),
                delay=_span(delay),
            )

    def _due(self) -> None:
        self._timer = None
        self._start_attempt()

    def _start_attempt(self) -> None:
        if self._attempt is not None:
            return
        self._cancel_timer()
        attempt = Deferred.fromCoroutine(self._renew())
        self._attempt = attempt
        attempt.addBoth(self._attempt_done)

    async def _renew(self) -> CertificateInfo:
        path = self.certificate_path
        assert path is not None
        if self.config.mode == "acme":
            bundle = await self._obtain()
            source = SOURCE_ACME
        else:
            bundle = await self._in_thread(
                self_signed_bundle,
                self.config.domains,
                self._reactor.seconds(),
                SELF_SIGNED_LIFETIME,
            )
            source = SOURCE_SELF_SIGNED
        info = parse_bundle(bundle)
        await self._in_thread(write_atomically, path, bundle)
        self._install(info, source)
        return info

    async def _obtain(self) -> bytes:
        names = list(self.config.domains)
        self._log.info(
            "ACME: requesting a certificate for {names} from {directory}",
            names=", ".join(names),
            directory=self.config.acme_directory,
        )
        client = await self._in_thread(self._client_factory)
        self._client = client
        try:
            self.account_url = client.account_url
            self._log.info("ACME: using account {account}", account=client.account_url)
            key_pem = await self._in_thread(generate_key_pem)
            csr_pem = await self._in_thread(make_csr_pem, key_pem, names)
            order = await self._in_thread(client.begin_order, csr_pem)
            self._log.info(
                "ACME: order {order} for {names}: {count} HTTP-01 challenge(s) to answer",
                order=order.url,
                names=", ".join(order.names),
                count=len(order.challenges),
            )
            for challenge in order.challenges:
                self.challenges.publish(challenge.token, challenge.key_authorization)
                self._log.info(
                    "ACME: serving the HTTP-01 challenge for {domain} at "
                    "http://{domain}/.well-known/acme-challenge/{token}",
                    domain=challenge.domain,
                    token=challenge.token,
                )
            try:
                chain = await self._in_thread(client.finish_order, order)
            finally:
                for challenge in order.challenges:
                    self.challenges.withdraw(challenge.token)
        finally:
            self._client = None
        self._log.info("ACME: order {order} is valid; certificate issued", order=order.url)
        return chain.encode("ascii").rstrip(b"\n") + b"\n" + key_pem

    def _connect(self) -> AcmeClientLike:
        """
        The default client factory (blocking): the account key, created 0600 the
        first time, and an account on C{[tls] acme_directory}.
        """
        ensure_directory(self.account_key_path.parent)
        key, created = load_or_create_key(self.account_key_path)
        if created:
            # This runs in the thread pool: log from the reactor thread.
            self._reactor.callFromThread(
                self._log.info,
                "ACME: created the account key {path}",
                path=str(self.account_key_path),
            )
        config = self.config
        return connect(
            config.acme_directory,
            key,
            contact=config.acme_contact,
            agree_terms=config.acme_agree_terms,
            ca_bundle=config.acme_ca_bundle,
            timeout=config.acme_timeout,
            order_timeout=config.acme_order_timeout,
        )

    def _install(self, info: CertificateInfo, source: str) -> None:
        self.info, self.source = info, source
        reloaded = 0
        for context in self._contexts:
            if context.check():
                reloaded += 1
        self._log.info(
            "TLS: installed certificate {serial} for {names} (issuer {issuer}, expires "
            "{expiry}) from {path}; {reloaded} of {contexts} TLS context(s) reloaded now, new "
            "connections use it",
            serial=info.serial,
            names=", ".join(info.names),
            issuer=info.issuer,
            expiry=_when(info.not_after),
            path=str(self.certificate_path),
            reloaded=reloaded,
            contexts=len(self._contexts),
        )
        if self._metrics is not None:
            self._metrics.not_after.set(info.not_after)

    def _attempt_done(self, result: CertificateInfo | Failure) -> None:
        self._attempt = None
        now = self._reactor.seconds()
        if isinstance(result, Failure):
            self.failures += 1
            if result.check(AcmeError, StoreError, CertificateError, TlsConfigurationError):
                self.last_error = result.getErrorMessage()
            else:
                self._log.failure("TLS: unexpected error while renewing", result)
                self.last_error = f"internal error: {result.getErrorMessage()}"
            self.last_error_at = now
            if self._metrics is not None:
                self._metrics.attempts.labels("failure").inc()
                self._metrics.failures.set(self.failures)
            if self.running:
                delay = retry_delay(
                    self.failures,
                    self.config.acme_retry_min,
                    self.config.acme_retry_max,
                    self._random,
                )
                self._log.error(
                    "TLS: certificate {what} failed ({failures} in a row): {error}; the current "
                    "certificate ({source}, expires {expiry}) keeps serving; retrying in "
                    "{delay}",
                    what="issuance" if self.config.mode == "acme" else "generation",
                    failures=self.failures,
                    error=self.last_error,
                    source=self.source,
                    expiry=_when(self.info.not_after) if self.info else "?",
                    delay=_span(delay),
                )
                self._schedule(now + delay)
        else:
            self.failures = 0
            self.last_error = None
            self.last_success_at = now
            if self._metrics is not None:
                self._metrics.attempts.labels("success").inc()
                self._metrics.failures.set(0)
            if self.running:
                self._schedule(renewal_time(result, self._random))
            installed, self._install_waiters = self._install_waiters, []
            for waiter in installed:
                waiter.callback(result)
        waiters, self._attempt_waiters = self._attempt_waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def _refresh_readiness(self) -> None:
        if not self.running or self.info is None:
            return
        detail = (
            f"{self.source} certificate for {', '.join(self.info.names) or self.info.subject}, "
            f"expires {_when(self.info.not_after)}"
        )
        if self.next_renewal is not None and self.config.mode != "files":
            detail += f", next renewal {_when(self.next_renewal)}"
        if self.failures:
            detail += f"; {self.failures} failed attempt(s), last: {self.last_error}"
        self._component.set_ready(detail)


def _when(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _span(seconds: float) -> str:
    for unit, size in (("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.1f}s"
