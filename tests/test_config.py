"""
Tests for L{lattice.config}.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from lattice._settings import ENDPOINT, SIZE, SettingError, duration, setting_fields
from lattice.config import (
    ConfigError,
    LatticeConfig,
    config_from_string,
    load_config,
    section_classes,
)

ROOT = Path(__file__).resolve().parent.parent


def _errors(text: str, **kwargs: object) -> list[str]:
    try:
        config_from_string(text, **kwargs)  # type: ignore[arg-type]
    except ConfigError as e:
        return e.errors
    raise AssertionError("no ConfigError")


class ParsingTests(SynchronousTestCase):
    """
    INI text becomes frozen dataclasses.
    """

    def test_defaults(self) -> None:
        """
        An empty file gives the declared defaults.
        """
        config = config_from_string("")
        self.assertEqual(config, LatticeConfig())
        self.assertEqual(config.telemetry.listen, "tcp:9090:interface=127.0.0.1")
        self.assertEqual(config.log.level, "info")

    def test_frozen(self) -> None:
        """
        Sections cannot be changed after parsing.
        """
        config = config_from_string("")
        with self.assertRaises(AttributeError):
            config.log.level = "debug"  # type: ignore[misc]

    def test_typed_values(self) -> None:
        """
        Values are converted to the key's type.
        """
        config = config_from_string(
            "[node]\ntags = a, b ,,c\nshutdown_timeout = 1m\n"
            "[telemetry]\nenabled = no\n[log]\nlevel = DEBUG\n"
        )
        self.assertEqual(config.node.tags, ("a", "b", "c"))
        self.assertEqual(config.node.shutdown_timeout, 60.0)
        self.assertFalse(config.telemetry.enabled)
        self.assertEqual(config.log.level, "debug")

    def test_relative_paths(self) -> None:
        """
        Relative paths resolve against the INI file's directory.
        """
        config = config_from_string(
            "[node]\nstate_dir = ../var\nidentity_key = keys/k.pem\n", base=Path("/srv/x/etc")
        )
        self.assertEqual(config.node.state_dir, Path("/srv/x/var"))
        self.assertEqual(config.node.identity_key, Path("/srv/x/etc/keys/k.pem"))

    def test_identity_key_default(self) -> None:
        """
        An empty identity_key means private_key.pem in the state directory.
        """
        config = config_from_string("[node]\nstate_dir = /s\n")
        self.assertEqual(config.node.identity_key_path, Path("/s/private_key.pem"))

    def test_admin_endpoint_default(self) -> None:
        """
        The admin surface defaults to a 0600 unix socket in the state directory.
        """
        config = config_from_string("[node]\nstate_dir = /s\n")
        self.assertEqual(config.node.admin_endpoint, "unix:/s/admin.sock:mode=600:lockfile=1")

    def test_relative_unix_endpoint(self) -> None:
        """
        A relative unix socket path in an endpoint resolves like other paths.
        """
        config = config_from_string(
            "[node]\nadmin_listen = unix:../var/a.sock:mode=600\n", base=Path("/c/etc")
        )
        self.assertEqual(config.node.admin_listen, "unix:/c/var/a.sock:mode=600")

    def test_shipped_file(self) -> None:
        """
        etc/lattice.ini parses and keeps state under the checkout's var/.
        """
        config = load_config(ROOT / "etc" / "lattice.ini", environ={})
        self.assertEqual(config.node.state_dir, ROOT / "var")
        self.assertEqual(config.source, (ROOT / "etc" / "lattice.ini").absolute())


class ErrorTests(SynchronousTestCase):
    """
    Every problem is reported, together, with its source, section and key.
    """

    def test_all_errors_collected(self) -> None:
        """
        Unknown sections, unknown keys and bad values are all reported at once.
        """
        errors = _errors(
            "[node]\nstate_dirr = x\n[nope]\na = 1\n[telemetry]\nenabled = maybe\n"
            "listen = tcpp:1\n[log]\nlevel = loud\n",
            source="f.ini",
        )
        self.assertEqual(len(errors), 5, errors)
        self.assertIn("f.ini: [node] state_dirr: unknown key", errors[0])
        self.assertIn("f.ini: [nope]: unknown section", errors[1])
        joined = "\n".join(errors)
        self.assertIn("f.ini: [telemetry] enabled: expected true or false, got 'maybe'", joined)
        self.assertIn("f.ini: [telemetry] listen: unknown endpoint type 'tcpp'", joined)
        self.assertIn("f.ini: [log] level: expected one of", joined)

    def test_format(self) -> None:
        """
        Each line has the form 'source: [section] key: reason'.
        """
        for line in _errors("[node]\nshutdown_timeout = soon\n[telemetry]\nlisten = tcp:99999\n"):
            self.assertRegex(line, r"^<string>: \[\w+\] \w+: .+$")

    def test_duplicate_key(self) -> None:
        """
        A key given twice is an error, not a silent override.
        """
        [error] = _errors("[log]\nlevel = info\nlevel = debug\n", source="d.ini")
        self.assertIn("d.ini: [log] level: key appears twice", error)

    def test_text_before_section(self) -> None:
        """
        Text before the first section header is reported with its line.
        """
        [error] = _errors("level = info\n", source="d.ini")
        self.assertIn("d.ini: line 1", error)

    def test_unreadable_file(self) -> None:
        """
        A missing file is one clear error naming it.
        """
        with self.assertRaises(ConfigError) as raised:
            load_config(Path(self.mktemp()), environ={})
        [error] = raised.exception.errors
        self.assertIn("cannot read: No such file or directory", error)

    def test_not_utf8(self) -> None:
        """
        A binary file is refused with a clear error.
        """
        path = Path(self.mktemp())
        path.write_bytes(b"\xff\xfe[node]\n")
        with self.assertRaises(ConfigError) as raised:
            load_config(path, environ={})
        self.assertIn("not UTF-8", raised.exception.errors[0])


class OverrideTests(SynchronousTestCase):
    """
    The environment beats config.env, which beats the file, which beats defaults.
    """

    def test_environment_beats_file(self) -> None:
        """
        LATTICE_<SECTION>_<KEY> overrides the INI value.
        """
        config = config_from_string("[log]\nlevel = warn\n", environ={"LATTICE_LOG_LEVEL": "debug"})
        self.assertEqual(config.log.level, "debug")

    def test_environment_errors_named(self) -> None:
        """
        A bad or unknown override names the variable.
        """
        errors = _errors("", environ={"LATTICE_LOG_LEVEL": "loud", "LATTICE_NODE_STATEDIR": "/x"})
        self.assertEqual(len(errors), 2)
        prefixes = sorted(error.split(":", 2)[0] + ":" + error.split(":", 2)[1] for error in errors)
        self.assertEqual(
            prefixes, ["$LATTICE_LOG_LEVEL: [log] level", "$LATTICE_NODE_STATEDIR: [node] statedir"]
        )

    def test_unrelated_variables_ignored(self) -> None:
        """
        Variables that name no section are none of the configuration's business.
        """
        config = config_from_string("", environ={"LATTICE_PYTHON": "x", "HOME": "/root"})
        self.assertEqual(config, LatticeConfig())

    def test_config_env_file(self) -> None:
        """
        config.env sits between the file and the environment, with the
        predecessor's names.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "config.env").write_text(
            "# operator settings\nAPP_URL=https://example.org\n"
            'LATTICE_BOOTSTRAP_SERVERS="https://a.example, https://b.example#ab12"\n'
            "export LATTICE_LOG_LEVEL=warn\n"
        )
        ini = directory / "lattice.ini"
        ini.write_text("[node]\nconfig_env = config.env\n[log]\nlevel = error\n")
        config = load_config(ini, environ={})
        self.assertEqual(config.discovery.public_url, "https://example.org")
        self.assertEqual(
            config.discovery.bootstrap_servers, ("https://a.example", "https://b.example#ab12")
        )
        self.assertEqual(config.log.level, "warn")
        config = load_config(ini, environ={"LATTICE_LOG_LEVEL": "debug"})
        self.assertEqual(config.log.level, "debug")

    def test_credentials_config(self) -> None:
        """
        $CREDENTIALS_DIRECTORY/config replaces the config.env file.
        """
        credentials = Path(self.mktemp())
        credentials.mkdir()
        (credentials / "config").write_text("APP_URL=https://cred.example\n")
        config = config_from_string(
            "[node]\nconfig_env = /nonexistent\n",
            environ={"CREDENTIALS_DIRECTORY": str(credentials)},
        )
        self.assertEqual(config.discovery.public_url, "https://cred.example")

    def test_bad_config_env(self) -> None:
        """
        A malformed config.env line and a missing config.env are reported.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        (directory / "config.env").write_text("this is not an assignment\n")
        errors = _errors("[node]\nconfig_env = config.env\n", base=directory, source="x.ini")
        self.assertIn("config.env: line 1: expected NAME=value", errors[0])
        errors = _errors("[node]\nconfig_env = missing.env\n", base=directory)
        self.assertIn("missing.env: cannot read", errors[0])


class KindTests(SynchronousTestCase):
    """
    The value kinds parse what they promise and refuse the rest.
    """

    @given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "s", "m", "h", "d"]))
    def test_duration_round_trip(self, number: int, unit: str) -> None:
        """
        Rendering a parsed duration and parsing it again gives the same seconds.
        """
        kind = duration()
        seconds = kind.parse(f"{number}{unit}", Path("/"))
        self.assertEqual(kind.parse(kind.render(seconds), Path("/")), seconds)

    @given(st.integers(min_value=0, max_value=2**40))
    def test_size_round_trip(self, number: int) -> None:
        """
        Rendering a size and parsing it again gives the same byte count.
        """
        self.assertEqual(SIZE.parse(SIZE.render(number), Path("/")), number)

    @given(st.text())
    def test_endpoint_never_crashes(self, text: str) -> None:
        """
        Any text is either accepted as an endpoint or refused with SettingError.
        """
        with contextlib.suppress(SettingError):
            ENDPOINT.parse(text, Path("/"))

    def test_endpoint_ports(self) -> None:
        """
        TCP endpoints need a port in range; systemd endpoints are accepted.
        """
        for bad in ("tcp:", "tcp:x", "tcp:70000", "tcp:interface=1.2.3.4"):
            self.assertRaises(SettingError, ENDPOINT.parse, bad, Path("/"))
        for good in ("tcp:0", "tcp:port=80:interface=::1", "systemd:domain=INET:index=0"):
            self.assertEqual(ENDPOINT.parse(good, Path("/")), good)


class DocumentationTests(SynchronousTestCase):
    """
    Every key of the schema is in etc/lattice.ini and docs/configuration.rst.
    """

    def test_every_key_documented(self) -> None:
        """
        A key missing from the shipped INI file or the reference is a failure.
        """
        ini = (ROOT / "etc" / "lattice.ini").read_text()
        reference = (ROOT / "docs" / "configuration.rst").read_text()
        missing = []
        for section, section_class in section_classes().items():
            ini_section = re.search(
                rf"^\[{section}\]\n(.*?)(?=^\[|\Z)", ini, re.MULTILINE | re.DOTALL
            )
            for field, info in setting_fields(section_class):
                if ini_section is None or not re.search(
                    rf"^;?\s*{field.name}\s*=", ini_section.group(1), re.MULTILINE
                ):
                    missing.append(f"etc/lattice.ini: [{section}] {field.name}")
                if f"``[{section}] {field.name}``" not in reference:
                    missing.append(f"docs/configuration.rst: [{section}] {field.name}")
                self.assertTrue(info.doc, f"[{section}] {field.name} has no doc string")
        self.assertEqual(missing, [])


class EnvironmentIsolationTests(SynchronousTestCase):
    """
    config_from_string is pure unless given an environment.
    """

    def test_ignores_process_environment(self) -> None:
        """
        The process environment does not leak into config_from_string.
        """
        self.patch(os, "environ", {**os.environ, "LATTICE_LOG_LEVEL": "debug"})
        self.assertEqual(config_from_string("").log.level, "info")
