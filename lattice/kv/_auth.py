"""
etcd v3 authentication: users, roles, key-range permissions and simple tokens.

Pure and synchronous.  The state is persisted by the store as one JSON document (``to_json``);
tokens live in memory only, as etcd's simple tokens do, and expire after ``token_ttl`` seconds
without use.  Passwords are stored as salted PBKDF2-SHA256 hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

from lattice.kv._errors import (
    auth_failed,
    auth_not_enabled,
    invalid_auth_management,
    invalid_auth_token,
    permission_denied,
    permission_not_granted,
    role_already_exists,
    role_empty,
    role_not_found,
    role_not_granted,
    root_role_missing,
    root_user_missing,
    user_already_exists,
    user_empty,
    user_not_found,
)
from lattice.kv._mvcc import KeyRange

__all__ = ["READ", "READWRITE", "WRITE", "AuthStore", "Permission"]

READ, WRITE, READWRITE = 0, 1, 2
ROOT = "root"
_ITERATIONS = 20_000


@dataclass(frozen=True)
class Permission:
    """A role's right over a key range: READ, WRITE or READWRITE."""

    type: int
    key: bytes
    range_end: bytes

    def covers(self, wanted: KeyRange, write: bool) -> bool:
        """Whether this permission allows the access to the whole of ``wanted``."""
        if self.type not in (READWRITE, WRITE if write else READ):
            return False
        mine = KeyRange(self.key, self.range_end)
        if wanted.single:
            return wanted.key in mine
        if wanted.key not in mine:
            return False
        if mine.from_key:
            return True
        if wanted.from_key or mine.single:
            return False
        return wanted.end <= mine.end


@dataclass
class _User:
    password: str  # "salt$hash" hex, or "" for a user without password
    roles: list[str] = field(default_factory=list)


def _hash(password: str, salt: bytes) -> str:
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _ITERATIONS)
    return f"{salt.hex()}${digest.hex()}"


class AuthStore:
    """The authentication state of one store."""

    def __init__(self, clock: Callable[[], float], token_ttl: float = 300.0) -> None:
        self._clock = clock
        self._token_ttl = token_ttl
        self.enabled = False
        self.revision = 1
        self._users: dict[str, _User] = {}
        self._roles: dict[str, list[Permission]] = {}
        self._tokens: dict[str, tuple[str, float]] = {}
        self._counter = 0

    # -- persistence ---------------------------------------------------------------------

    def to_json(self) -> bytes:
        """The persisted form."""
        return json.dumps(
            {
                "enabled": self.enabled,
                "revision": self.revision,
                "users": {n: [u.password, u.roles] for n, u in sorted(self._users.items())},
                "roles": {
                    name: [[p.type, p.key.hex(), p.range_end.hex()] for p in perms]
                    for name, perms in sorted(self._roles.items())
                },
            },
            sort_keys=True,
        ).encode()

    def load_json(self, data: bytes) -> None:
        """Restore the persisted form."""
        state = json.loads(data)
        self.enabled = bool(state["enabled"])
        self.revision = int(state["revision"])
        self._users = {n: _User(p, list(r)) for n, (p, r) in state["users"].items()}
        self._roles = {
            name: [Permission(t, bytes.fromhex(k), bytes.fromhex(e)) for t, k, e in perms]
            for name, perms in state["roles"].items()
        }

    def _changed(self) -> None:
        self.revision += 1

    # -- enabling ------------------------------------------------------------------------

    def enable(self) -> None:
        """Turn authentication on; root must exist and hold the root role."""
        if self.enabled:
            return
        root = self._users.get(ROOT)
        if root is None:
            raise root_user_missing()
        if ROOT not in root.roles:
            raise root_role_missing()
        self.enabled = True
        self._tokens.clear()
        self._changed()

    def disable(self) -> None:
        """Turn authentication off."""
        if self.enabled:
            self.enabled = False
            self._tokens.clear()
            self._changed()

    # -- users ---------------------------------------------------------------------------

    def user_add(self, name: str, password: str, no_password: bool = False) -> None:
        """Add a user."""
        if not name:
            raise user_empty()
        if name in self._users:
            raise user_already_exists()
        hashed = "" if no_password else _hash(password, secrets.token_bytes(16))
        self._users[name] = _User(hashed)
        self._changed()

    def _user(self, name: str) -> _User:
        if not name:
            raise user_empty()
        user = self._users.get(name)
        if user is None:
            raise user_not_found()
        return user

    def user_delete(self, name: str) -> None:
        """Delete a user (root only while authentication is off)."""
        self._user(name)
        if self.enabled and name == ROOT:
            raise invalid_auth_management()
        del self._users[name]
        self._tokens = {t: v for t, v in self._tokens.items() if v[0] != name}
        self._changed()

    def user_change_password(self, name: str, password: str) -> None:
        """Set a user's password; the user's tokens stop working (as etcd's)."""
        user = self._user(name)
        user.password = _hash(password, secrets.token_bytes(16))
        self._tokens = {t: v for t, v in self._tokens.items() if v[0] != name}
        self._changed()

    def user_grant_role(self, name: str, role: str) -> None:
        """Give a user a role."""
        user = self._user(name)
        if role != ROOT and role not in self._roles:
            raise role_not_found()
        if role not in user.roles:
            user.roles.append(role)
            user.roles.sort()
            self._changed()

    def user_revoke_role(self, name: str, role: str) -> None:
        """Take a role from a user."""
        user = self._user(name)
        if self.enabled and name == ROOT and role == ROOT:
            raise invalid_auth_management()
        if role not in user.roles:
            raise role_not_granted()
        user.roles.remove(role)
        self._changed()

    def user_get(self, name: str) -> list[str]:
        """A user's roles."""
        return list(self._user(name).roles)

    def user_list(self) -> list[str]:
        """Every user name, sorted."""
        return sorted(self._users)

    # -- roles ---------------------------------------------------------------------------

    def role_add(self, name: str) -> None:
        """Add a role."""
        if not name:
            raise role_empty()
        if name in self._roles:
            raise role_already_exists()
        self._roles[name] = []
        self._changed()

    def _role(self, name: str) -> list[Permission]:
        if not name:
            raise role_empty()
        perms = self._roles.get(name)
        if perms is None:
            raise role_not_found()
        return perms

    def role_delete(self, name: str) -> None:
        """Delete a role and take it from every user."""
        if self.enabled and name == ROOT:
            raise invalid_auth_management()
        self._role(name)
        del self._roles[name]
        for user in self._users.values():
            if name in user.roles:
                user.roles.remove(name)
        self._changed()

    def role_get(self, name: str) -> list[Permission]:
        """A role's permissions."""
        return list(self._role(name))

    def role_list(self) -> list[str]:
        """Every role name, sorted."""
        return sorted(self._roles)

    def role_grant_permission(self, name: str, permission: Permission) -> None:
        """Add (or replace the type of) a key-range permission."""
        perms = self._role(name)
        for i, existing in enumerate(perms):
            if (existing.key, existing.range_end) == (permission.key, permission.range_end):
                perms[i] = permission
                break
        else:
            perms.append(permission)
            perms.sort(key=lambda p: (p.key, p.range_end))
        self._changed()

    def role_revoke_permission(self, name: str, key: bytes, range_end: bytes) -> None:
        """Remove a key-range permission."""
        perms = self._role(name)
        for i, existing in enumerate(perms):
            if (existing.key, existing.range_end) == (key, range_end):
                del perms[i]
                self._changed()
                return
        raise permission_not_granted()

    # -- tokens and checks ---------------------------------------------------------------

    def authenticate(self, name: str, password: str) -> str:
        """Check a password and issue a token."""
        if not self.enabled:
            raise auth_not_enabled()
        user = self._users.get(name)
        if user is None or not user.password:
            raise auth_failed()
        salt, _, _ = user.password.partition("$")
        if not hmac.compare_digest(_hash(password, bytes.fromhex(salt)), user.password):
            raise auth_failed()
        self._counter += 1
        token = f"{secrets.token_urlsafe(12)}.{self._counter}"
        self._tokens[token] = (name, self._clock() + self._token_ttl)
        return token

    def user_of(self, token: str) -> str:
        """The user a token belongs to (refreshing it), or etcd's invalid-token error."""
        entry = self._tokens.get(token)
        now = self._clock()
        if entry is None or entry[1] < now or entry[0] not in self._users:
            self._tokens.pop(token, None)
            raise invalid_auth_token()
        self._tokens[token] = (entry[0], now + self._token_ttl)
        return entry[0]

    def is_admin(self, user: str) -> bool:
        """Whether ``user`` holds the root role."""
        record = self._users.get(user)
        return record is not None and ROOT in record.roles

    def check_admin(self, user: str | None) -> None:
        """Raise permission denied unless authentication is off or ``user`` is an admin."""
        if self.enabled and (user is None or not self.is_admin(user)):
            raise permission_denied()

    def check(self, user: str | None, wanted: KeyRange, write: bool) -> None:
        """Raise permission denied unless ``user`` may read (or write) all of ``wanted``."""
        if not self.enabled:
            return
        if user is None:
            raise permission_denied()
        record = self._users.get(user)
        if record is None:
            raise permission_denied()
        if ROOT in record.roles:
            return
        for role in record.roles:
            for perm in self._roles.get(role, ()):
                if perm.covers(wanted, write):
                    return
        raise permission_denied()
