"""
Tests for C{deploy/}: the systemd units, C{deploy.sh}, the udev rule and the
nginx site.

These drive the real tools (C{systemd-analyze}, C{shellcheck}, C{nginx},
C{systemd-creds}); a test whose tool is missing is skipped and says which.

C{systemd-analyze verify} checks that every C{ExecStart=} binary exists.  The
shipped units name C{/opt/lattice/venv/bin/twistd}, which exists only on a
deployed machine, so the units are verified with that one prefix replaced by
the virtualenv running these tests (whose C{bin/twistd} is the same program,
installed from the same checkout); everything else is verified as shipped.
C{deploy.sh --venv} does the same substitution when it installs the unit, and
the units it installs, drop-ins included, are verified unchanged.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import site
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from socketserver import UnixStreamServer

from twisted.trial import unittest

from lattice._unixhttp import UnixHTTPConnection
from lattice.config import load_config
from tests.integration._daemon import short_directory

CHECKOUT = Path(__file__).resolve().parent.parent
DEPLOY = CHECKOUT / "deploy"
DEPLOY_SH = DEPLOY / "deploy.sh"
SHIPPED_VENV = "/opt/lattice/venv"
MAX_EXPOSURE = 3.0

# Settings that name the instance's own paths and so differ between
# lattice.service and lattice@.service; every other line must be identical.
PATH_SETTINGS = {
    "Description",
    "ExecStart",
    "WorkingDirectory",
    "StateDirectory",
    "ConfigurationDirectory",
    "RuntimeDirectory",
    "LoadCredential",
}


def _require(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        raise unittest.SkipTest(f"{tool} is not installed (the CI installs it)")
    return path


def _venv_twistd() -> Path:
    twistd = Path(sys.prefix) / "bin" / "twistd"
    if not os.access(twistd, os.X_OK):
        raise unittest.SkipTest(f"{twistd} does not exist: run the tests from the project venv")
    return twistd


def _service_lines(text: str) -> list[tuple[str, str]]:
    """
    The C{key=value} lines of a unit file, in order, without comments.
    """
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        lines.append((key, value))
    return lines


def _values(text: str, key: str) -> list[str]:
    return [value for k, value in _service_lines(text) if k == key]


def _verify(unit: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_require("systemd-analyze"), "verify", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _exposure(unit: Path) -> float:
    result = subprocess.run(
        [_require("systemd-analyze"), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match is not None, result.stdout + result.stderr
    return float(match.group(1))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


class UnitFileTests(unittest.TestCase):
    """
    C{deploy/lattice.service} and C{deploy/lattice@.service}.
    """

    def _verifiable_copy(self, name: str) -> Path:
        """
        A copy of the shipped unit whose venv is the one running the tests.
        """
        twistd = _venv_twistd()
        text = (DEPLOY / name).read_text()
        self.assertIn(f"{SHIPPED_VENV}/bin/twistd", text)
        directory = Path(self.mktemp())
        directory.mkdir(parents=True)
        copy = directory / name
        copy.write_text(text.replace(f"{SHIPPED_VENV}/bin/twistd", str(twistd)))
        return copy

    def test_verify_service(self) -> None:
        """
        C{systemd-analyze verify} prints nothing on stderr for lattice.service.
        """
        result = _verify(self._verifiable_copy("lattice.service"))
        self.assertEqual((result.returncode, result.stderr), (0, ""))

    def test_verify_template(self) -> None:
        """
        C{systemd-analyze verify} prints nothing on stderr for the template and one instance of it.
        """
        template = self._verifiable_copy("lattice@.service")
        for unit in (template, template.parent / "lattice@test.service"):
            result = _verify(unit)
            self.assertEqual((result.returncode, result.stderr), (0, ""), unit.name)

    def test_verify_catches_mistakes(self) -> None:
        """
        The verify check is not vacuous: a misspelt key is reported on stderr.
        """
        copy = self._verifiable_copy("lattice.service")
        copy.write_text(copy.read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
        self.assertIn("NoNewPrivilege", _verify(copy).stderr)

    def test_exposure(self) -> None:
        """
        C{systemd-analyze security --offline=yes} rates both units at 3.0 or lower.
        """
        for name in ("lattice.service", "lattice@.service"):
            exposure = _exposure(DEPLOY / name)
            self.assertLessEqual(exposure, MAX_EXPOSURE, name)

    def test_exposure_parsing(self) -> None:
        """
        The exposure parser reads the score of an unhardened unit as high.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        unit = directory / "bare.service"
        unit.write_text("[Service]\nExecStart=/bin/true\n")
        self.assertGreater(_exposure(unit), 9.0)

    def test_service_settings(self) -> None:
        """
        lattice.service runs twistd as a notify service with the promised settings.
        """
        text = (DEPLOY / "lattice.service").read_text()
        settings = dict(_service_lines(text))
        self.assertEqual(
            settings["ExecStart"],
            f"{SHIPPED_VENV}/bin/twistd --nodaemon --pidfile= lattice "
            "--config /etc/lattice/lattice.ini",
        )
        expected = {
            "Type": "notify",
            "NotifyAccess": "main",
            "ExecReload": "/bin/kill -HUP $MAINPID",
            "Restart": "on-failure",
            "User": "lattice",
            "Group": "lattice",
            "StateDirectory": "lattice",
            "ConfigurationDirectory": "lattice",
            "RuntimeDirectory": "lattice",
            "DeviceAllow": "char-usb_device rw",
            "CapabilityBoundingSet": "",
        }
        self.assertEqual({k: settings.get(k) for k in expected}, expected)
        for key in ("WatchdogSec", "TimeoutStopSec", "LimitNOFILE", "TasksMax", "MemoryMax"):
            self.assertTrue(settings.get(key), key)
        self.assertEqual(
            set(settings["RestrictAddressFamilies"].split()),
            {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"},
        )
        self.assertEqual(
            _values(text, "LoadCredential"),
            [
                "private_key:/etc/lattice/private_key.pem",
                "config:/etc/lattice/config.env",
            ],
        )

    def test_template_matches_service(self) -> None:
        """
        lattice@.service differs from lattice.service only in its paths, which use the instance.
        """
        single = _service_lines((DEPLOY / "lattice.service").read_text())
        template = _service_lines((DEPLOY / "lattice@.service").read_text())
        self.assertEqual(
            [line for line in template if line[0] not in PATH_SETTINGS],
            [line for line in single if line[0] not in PATH_SETTINGS],
        )
        template_paths = dict(template)
        self.assertIn("--config /etc/lattice-%i/lattice.ini", template_paths["ExecStart"])
        for key in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
            self.assertEqual(template_paths[key], "lattice-%i", key)


class UdevRuleTests(unittest.TestCase):
    """
    C{deploy/99-lattice-usb.rules}.
    """

    def test_rule_syntax(self) -> None:
        """
        Every rule line is a list of KEY op "value" pairs, as udev parses them.
        """
        pair = re.compile(r'^[A-Z_]+(\{[^}]+\})?(==|!=|=|\+=|-=|:=)"[^"]*"$')
        for raw in (DEPLOY / "99-lattice-usb.rules").read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            for part in line.split(", "):
                self.assertRegex(part, pair, line)

    def test_grants_usb_devices_to_lattice(self) -> None:
        """
        The rule gives the lattice group rw on USB device nodes and leaves hubs alone.
        """
        text = (DEPLOY / "99-lattice-usb.rules").read_text()
        self.assertIn('GROUP="lattice", MODE="0660"', text)
        self.assertIn('ENV{DEVTYPE}!="usb_device", GOTO="lattice_usb_end"', text)
        self.assertIn('ATTR{bDeviceClass}=="09", GOTO="lattice_usb_end"', text)


class ShellcheckTests(unittest.TestCase):
    """
    C{deploy/deploy.sh} passes shellcheck.
    """

    def test_clean(self) -> None:
        """
        shellcheck reports nothing for deploy.sh.
        """
        result = subprocess.run(
            [_require("shellcheck"), "--shell=bash", str(DEPLOY_SH)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "", ""))


class _Unprivileged:
    """
    How to run C{deploy.sh} as a user without any privilege.
    """

    def __init__(self) -> None:
        self.prefix: list[str] = []
        self.uid = os.geteuid()
        self.gid = os.getegid()
        if self.uid == 0:
            setpriv = _require("setpriv")
            nobody = pwd.getpwnam("nobody")
            self.uid, self.gid = nobody.pw_uid, nobody.pw_gid
            self.prefix = [
                setpriv,
                f"--reuid={self.uid}",
                f"--regid={self.gid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
            ]
        # The project's own code must run as that user: the venv's Python if
        # it may execute it, else the system Python of the same version with
        # the venv's packages on the path.
        self.pythonpath = os.pathsep.join([str(CHECKOUT), *site.getsitepackages()])
        candidates = [sys.executable, f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}"]
        for python in candidates:
            probe = self.run([python, "-c", "import lattice.cli"], {})
            if probe.returncode == 0:
                self.python = python
                break
        else:
            raise unittest.SkipTest(
                f"no Python that uid {self.uid} may run can import lattice.cli (tried {candidates})"
            )

    def environment(self, extra: Mapping[str, str]) -> list[str]:
        variables = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": "/nonexistent",
            "LANG": "C.UTF-8",
            "PYTHONPATH": self.pythonpath,
            **extra,
        }
        return ["env", "-i", *(f"{k}={v}" for k, v in variables.items())]

    def run(
        self, argv: Sequence[str], extra: Mapping[str, str]
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.prefix, *self.environment(extra), *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
            cwd="/",
        )

    def make_directory(self, path: Path) -> None:
        """
        Create C{path}, owned by the unprivileged user.
        """
        path.mkdir(parents=True)
        if os.geteuid() == 0:
            os.chown(path, self.uid, self.gid)


def _snapshot(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """
    Mode, modification time and content of everything under C{root}.
    """
    result = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        content = path.read_bytes() if path.is_file() else None
        result[str(path.relative_to(root))] = (info.st_mode, info.st_mtime_ns, content)
    return result


def _identity_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if re.search(r"(node_id|fingerprint): ", line)]


class DeployScriptTests(unittest.TestCase):
    """
    C{deploy.sh --prefix DIR --no-systemctl}, run without privileges.
    """

    def setUp(self) -> None:
        self.user = _Unprivileged()
        # Under /tmp rather than _trial_temp, whose per-test directories are
        # 0700 and so closed to the unprivileged user.
        scratch = Path(tempfile.mkdtemp(prefix="lattice-deploy-test-"))
        self.addCleanup(shutil.rmtree, scratch)
        scratch.chmod(0o755)
        self.base = scratch / "base"
        self.user.make_directory(self.base)
        self.root = self.base / "root"

    def deploy(
        self, *arguments: str, environ: Mapping[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        extra = {"LATTICE_PYTHON": self.user.python, **(environ or {})}
        argv = [str(DEPLOY_SH), "--prefix", str(self.root), "--no-systemctl"]
        argv += ["--venv", str(Path(sys.prefix))]
        result = self.user.run([*argv, *arguments], extra)
        if check:
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        return result

    def test_tree_and_modes(self) -> None:
        """
        The tree holds the units, drop-in, udev rule, nginx files, config and key with their modes.
        """
        self.deploy("--app-url", "https://node.example.org")
        expected = {
            "etc/lattice": 0o750,
            "etc/lattice/lattice.ini": 0o640,
            "etc/lattice/config.env": 0o600,
            "etc/lattice/private_key.pem": 0o600,
            "var/lib/lattice": 0o750,
            "etc/systemd/system/lattice.service": 0o644,
            "etc/systemd/system/lattice.service.d/credentials.conf": 0o644,
            "etc/udev/rules.d/99-lattice-usb.rules": 0o644,
            "etc/nginx/snippets/lattice-discovery.conf": 0o644,
            "etc/nginx/sites-available/lattice-discovery": 0o644,
        }
        actual = {name: oct(_mode(self.root / name)) for name in expected}
        self.assertEqual(actual, {name: oct(mode) for name, mode in expected.items()})
        files = {str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()}
        self.assertEqual(files, {name for name in expected if (self.root / name).is_file()})
        for path in self.root.rglob("*"):
            self.assertFalse(_mode(path) & 0o002, path)
        self.assertEqual(
            (self.root / "etc/udev/rules.d/99-lattice-usb.rules").read_text(),
            (DEPLOY / "99-lattice-usb.rules").read_text(),
        )

    def test_key_is_the_projects(self) -> None:
        """
        The key is an Ed25519 identity that lattice.identity loads, and deploy.sh printed its id.
        """
        from lattice.identity import load_identity

        result = self.deploy()
        identity = load_identity(self.root / "etc/lattice/private_key.pem")
        self.assertIn(f"node_id: {identity.node_id}", result.stdout)
        self.assertIn(f"fingerprint: {identity.fingerprint}", result.stdout)

    def test_idempotent(self) -> None:
        """
        A second run changes no file, no mode and no timestamp, and reports the same node id.
        """
        first = self.deploy("--app-url", "https://node.example.org")
        before = _snapshot(self.root)
        second = self.deploy("--app-url", "https://node.example.org")
        self.assertEqual(_snapshot(self.root), before)
        self.assertIn("nothing changed", second.stdout)
        self.assertNotIn("wrote ", second.stdout)
        self.assertEqual(_identity_lines(second.stdout), _identity_lines(first.stdout))
        self.assertEqual(len(_identity_lines(first.stdout)), 2)

    def test_config_validates(self) -> None:
        """
        The node's own parser accepts lattice.ini with config.env given as the config credential.
        """
        self.deploy(
            "--app-url",
            "https://node.example.org",
            "--bootstrap-servers",
            "https://a.example.net,https://b.example.net",
        )
        credentials = Path(self.mktemp())
        credentials.mkdir()
        shutil.copy(self.root / "etc/lattice/config.env", credentials / "config")
        config = load_config(
            self.root / "etc/lattice/lattice.ini",
            environ={"CREDENTIALS_DIRECTORY": str(credentials)},
        )
        self.assertEqual(config.discovery.public_url, "https://node.example.org")
        self.assertEqual(
            config.discovery.bootstrap_servers,
            ("https://a.example.net", "https://b.example.net"),
        )
        self.assertEqual(str(config.node.state_dir), "/var/lib/lattice")
        self.assertEqual(str(config.node.identity_key_path), "/etc/lattice/private_key.pem")

    def test_config_env_update(self) -> None:
        """
        A later --app-url replaces that line only, keeping the operator's other lines.
        """
        self.deploy("--app-url", "https://old.example.org")
        config_env = self.root / "etc/lattice/config.env"
        config_env.write_text(config_env.read_text() + "LATTICE_LOG_LEVEL=debug\n")
        self.deploy("--app-url", "https://new.example.org")
        lines = config_env.read_text().splitlines()
        self.assertIn("APP_URL=https://new.example.org", lines)
        self.assertNotIn("APP_URL=https://old.example.org", lines)
        self.assertEqual(lines[-1], "LATTICE_LOG_LEVEL=debug")
        self.assertEqual(_mode(config_env), 0o600)

    def test_installed_units_verify(self) -> None:
        """
        The installed unit with its credentials drop-in passes systemd-analyze verify unchanged.
        """
        _venv_twistd()
        self.deploy()
        unit = self.root / "etc/systemd/system/lattice.service"
        self.assertIn(f"{sys.prefix}/bin/twistd", unit.read_text())
        result = _verify(unit)
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        drop_in = (self.root / "etc/systemd/system/lattice.service.d/credentials.conf").read_text()
        self.assertEqual(
            _service_lines(drop_in),
            [
                ("LoadCredential", ""),
                ("LoadCredential", "private_key:/etc/lattice/private_key.pem"),
                ("LoadCredential", "config:/etc/lattice/config.env"),
            ],
        )

    def test_encrypted_credentials(self) -> None:
        """
        With systemd-creds, the key, config and webhook secret are encrypted and decrypt back.
        """
        creds = _require("systemd-creds")
        _venv_twistd()
        secret = self.base / "webhook-secret"
        secret.write_text("hook-secret\n")
        secret.chmod(0o644)
        # A host key of the test's own, instead of /var/lib/systemd/credential.secret.
        environ = {"SYSTEMD_CREDENTIAL_SECRET": str(self.base / "host.secret")}
        arguments = ["--credentials", "encrypted", "--webhook-secret-file", str(secret)]
        first = self.deploy(*arguments, environ=environ)
        etc = self.root / "etc/lattice"
        self.assertFalse((etc / "private_key.pem").exists())
        self.assertFalse((etc / "webhook_secret").exists())
        for name in ("private_key.cred", "config.cred", "webhook_secret.cred", "config.env"):
            self.assertEqual(_mode(etc / name), 0o600, name)

        def decrypt(name: str, path: Path) -> bytes:
            return self.user.run(
                [creds, "decrypt", f"--name={name}", str(path), "-"], environ
            ).stdout.encode()

        self.assertEqual(decrypt("config", etc / "config.cred"), (etc / "config.env").read_bytes())
        self.assertEqual(decrypt("webhook_secret", etc / "webhook_secret.cred"), b"hook-secret\n")
        from lattice.identity import _parse_private_key

        identity = _parse_private_key(decrypt("private_key", etc / "private_key.cred"), "cred")
        self.assertIn(f"node_id: {identity.node_id}", first.stdout)

        drop_in = self.root / "etc/systemd/system/lattice.service.d/credentials.conf"
        self.assertEqual(
            _service_lines(drop_in.read_text()),
            [
                ("LoadCredential", ""),
                ("LoadCredentialEncrypted", "private_key:/etc/lattice/private_key.cred"),
                ("LoadCredentialEncrypted", "config:/etc/lattice/config.cred"),
                ("LoadCredentialEncrypted", "webhook_secret:/etc/lattice/webhook_secret.cred"),
            ],
        )
        result = _verify(self.root / "etc/systemd/system/lattice.service")
        self.assertEqual((result.returncode, result.stderr), (0, ""))

        before = _snapshot(self.root)
        second = self.deploy(*arguments, environ=environ)
        self.assertEqual(_snapshot(self.root), before)
        self.assertEqual(_identity_lines(second.stdout), _identity_lines(first.stdout))

    def test_encrypted_only_identity_is_never_replaced(self) -> None:
        """
        Once the key exists only encrypted, a plain run refuses instead of minting a new one.
        """
        _require("systemd-creds")
        environ = {"SYSTEMD_CREDENTIAL_SECRET": str(self.base / "host.secret")}
        self.deploy("--credentials", "encrypted", environ=environ)
        result = self.deploy("--credentials", "plain", environ=environ, check=False)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("private_key.cred holds the identity", result.stderr)
        self.assertFalse((self.root / "etc/lattice/private_key.pem").exists())

    def test_old_systemd_has_no_encryption(self) -> None:
        """
        Below systemd 250 (a fake systemd-creds says 249), encrypted credentials are refused.
        """
        tools = self.base / "old-systemd"
        self.user.make_directory(tools)
        for tool in ("systemd-creds", "systemctl"):
            fake = tools / tool
            fake.write_text('#!/bin/sh\necho "systemd 249 (249.11-0ubuntu3)"\n')
            fake.chmod(0o755)
        path = {"PATH": f"{tools}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
        refused = self.deploy("--credentials", "encrypted", environ=path, check=False)
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("need systemd >= 250", refused.stderr)
        fallback = self.deploy(environ=path)
        self.assertIn("credentials: plain (systemd 249)", fallback.stdout)
        self.assertEqual(_mode(self.root / "etc/lattice/private_key.pem"), 0o600)

    def test_instance(self) -> None:
        """
        --instance NAME installs the template with the instance's own directories and credentials.
        """
        _venv_twistd()
        self.deploy("--instance", "edge")
        etc = self.root / "etc"
        self.assertEqual(_mode(etc / "lattice-edge/private_key.pem"), 0o600)
        self.assertEqual(_mode(etc / "lattice-edge/config.env"), 0o600)
        self.assertEqual(_mode(self.root / "var/lib/lattice-edge"), 0o750)
        self.assertFalse((etc / "lattice").exists())
        self.assertFalse((etc / "systemd/system/lattice.service").exists())
        drop_in = etc / "systemd/system/lattice@edge.service.d/credentials.conf"
        self.assertIn("private_key:/etc/lattice-edge/private_key.pem", drop_in.read_text())
        self.assertIn(
            "state_dir = /var/lib/lattice-edge", (etc / "lattice-edge/lattice.ini").read_text()
        )
        result = _verify(etc / "systemd/system/lattice@edge.service")
        self.assertEqual((result.returncode, result.stderr), (0, ""))

    def test_live_system_needs_root(self) -> None:
        """
        Without --prefix and without root, deploy.sh stops before touching anything.
        """
        result = self.user.run(
            [str(DEPLOY_SH), "--no-systemctl", "--no-venv"], {"LATTICE_PYTHON": self.user.python}
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("run as root, or use --prefix DIR", result.stderr)
        self.assertEqual(result.stdout, "")


def _nginx_conf(directory: Path, site: str, extra: str = "") -> Path:
    """
    A minimal nginx.conf in C{directory} that includes the site like Debian's does.
    """
    (directory / "snippets").mkdir(parents=True, exist_ok=True)
    (directory / "tmp").mkdir(exist_ok=True)
    (directory / "site.conf").write_text(site)
    conf = directory / "nginx.conf"
    conf.write_text(
        f"pid {directory}/nginx.pid;\n"
        "error_log stderr;\n"
        f"{extra}"
        "events {}\n"
        "http {\n"
        "    access_log off;\n"
        + "".join(
            f"    {kind}_temp_path {directory}/tmp;\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + "    include site.conf;\n"
        "}\n"
    )
    return conf


class _EchoHandler(BaseHTTPRequestHandler):
    """
    Answers every request with what it received, as header lines.
    """

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        lines = [f"{self.command} {self.path}", *(f"{k}: {v}" for k, v in self.headers.items())]
        answer = ("\n".join(lines) + "\n\n").encode() + body
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_HEAD = _echo

    def address_string(self) -> str:
        return "nginx"

    def log_message(self, format: str, *args: object) -> None:
        pass


class NginxTests(unittest.TestCase):
    """
    C{deploy/nginx/}: the site and its C{/discovery/} snippet.
    """

    def setUp(self) -> None:
        self.nginx = _require("nginx")
        # nginx and the echo server listen on unix sockets under it.
        self.directory = short_directory(self)

    def test_config_test(self) -> None:
        """
        C{nginx -t} accepts the site with the snippet included as installed.
        """
        conf = _nginx_conf(self.directory, (DEPLOY / "nginx/lattice-site.conf").read_text())
        shutil.copy(DEPLOY / "nginx/lattice-discovery.conf", self.directory / "snippets")
        result = subprocess.run(
            [self.nginx, "-t", "-p", str(self.directory), "-e", "stderr", "-c", str(conf)],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("test is successful", result.stderr)

    @contextmanager
    def _running(self) -> Iterator[str]:
        """
        nginx serving the site on a unix socket, proxying to an echo server on another.

        The only change to the shipped files is the upstream address: the
        echo server's socket instead of 127.0.0.1:1113.
        """
        backend = self.directory / "backend.sock"
        listen = self.directory / "nginx.sock"
        snippet = (DEPLOY / "nginx/lattice-discovery.conf").read_text()
        self.assertEqual(snippet.count("http://127.0.0.1:1113$"), 2)
        snippet = snippet.replace("http://127.0.0.1:1113$", f"http://unix:{backend}:$")
        site = (DEPLOY / "nginx/lattice-site.conf").read_text()
        site = site.replace("listen 80;", f"listen unix:{listen};").replace("listen [::]:80;", "")
        conf = _nginx_conf(self.directory, site, "daemon off;\nmaster_process off;\n")
        (self.directory / "snippets/lattice-discovery.conf").write_text(snippet)

        server = UnixStreamServer(str(backend), _EchoHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        process = subprocess.Popen(
            [self.nginx, "-p", str(self.directory), "-e", "stderr", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            # nginx has no readiness signal; its socket appears once it listens.
            deadline = time.monotonic() + 20
            while not listen.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"nginx did not start: {process.stderr!r}")
                time.sleep(0.02)
            yield str(listen)
        finally:
            process.terminate()
            process.communicate(timeout=20)
            server.shutdown()
            server.server_close()
            thread.join()

    def _request(
        self, socket_path: str, method: str, path: str, body: bytes | None = None
    ) -> tuple[int, str]:
        connection = UnixHTTPConnection(socket_path, host="lattice.example.org", timeout=10)
        try:
            connection.request(
                method,
                path,
                body=body,
                headers={"X-Forwarded-For": "6.6.6.6", "Forwarded": "for=6.6.6.6"},
            )
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def test_routes(self) -> None:
        """
        Public routes reach the node under their own path; admin routes and other methods do not.
        """
        with self._running() as listen:
            status, echo = self._request(listen, "GET", "/discovery/status?verbose=1")
            self.assertEqual(status, 200)
            self.assertEqual(echo.splitlines()[0], "GET /status?verbose=1")
            for path in ("/api/v1/identity", "/api/v1/announcement"):
                status, echo = self._request(listen, "GET", "/discovery" + path)
                self.assertEqual((status, echo.splitlines()[0]), (200, f"GET {path}"))
            for path in (
                "/api/v1/gossip/receive",
                "/api/v1/domain/query",
                "/api/v1/federation/messages/receive",
            ):
                status, echo = self._request(listen, "POST", "/discovery" + path, b"{}")
                self.assertEqual((status, echo.splitlines()[0]), (200, f"POST {path}"))
                self.assertTrue(echo.endswith("\n\n{}"))

            admin = [
                "/health",
                "/api/v1/announce",
                "/api/v1/peers",
                "/api/v1/route/example.org",
                "/api/v1/messages/send",
                "/api/v1/domain/verify",
                "/api/v1/domain/register",
                "/api/v1/maintenance/update_neighbors",
                "/api/v1/maintenance/process_messages",
                "/api/v1/maintenance/cleanup",
                "/api/v1/identity/../peers",
                "/api/v1/status",
                "/",
                "",
            ]
            for path in admin:
                for method in ("GET", "POST"):
                    status, echo = self._request(listen, method, "/discovery" + path, b"{}")
                    self.assertEqual(status, 404, f"{method} /discovery{path}: {echo}")
            for method, path in (("POST", "/status"), ("GET", "/api/v1/gossip/receive")):
                status, _ = self._request(listen, method, "/discovery" + path, b"{}")
                self.assertEqual(status, 403, f"{method} {path}")

    def test_forwarding_headers(self) -> None:
        """
        The node sees the client address nginx saw, and none the client claimed.
        """
        with self._running() as listen:
            status, echo = self._request(listen, "GET", "/discovery/status")
        self.assertEqual(status, 200)
        headers = dict(line.split(": ", 1) for line in echo.split("\n\n")[0].splitlines()[1:])
        # A unix-socket client's address is "unix:"; it contains a colon, so
        # Forwarded brackets it the way RFC 7239 wants IPv6 addresses.
        self.assertEqual(headers["X-Real-IP"], "unix:")
        self.assertEqual(headers["X-Forwarded-For"], "unix:")
        self.assertEqual(
            headers["Forwarded"], 'for="[unix:]";proto=http;host="lattice.example.org"'
        )
        self.assertEqual(headers["X-Forwarded-Proto"], "http")
        self.assertEqual(headers["Host"], "lattice.example.org")
        self.assertNotIn("6.6.6.6", echo)
