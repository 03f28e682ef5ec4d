"""
The errors of the KV store, with etcd's gRPC status codes and messages.

Clients match on these messages (for example ``etcdserver: mvcc: required revision has been
compacted``), so they are etcd's, word for word.  The core raises them; the API boundary turns
them into gRPC statuses.  The status code is kept as its canonical name so that the core does not
depend on the gRPC layer.
"""

from __future__ import annotations

__all__ = [
    "KVError",
    "auth_failed",
    "auth_not_enabled",
    "compacted",
    "duplicate_key",
    "empty_key",
    "future_revision",
    "invalid_auth_management",
    "invalid_auth_token",
    "key_not_found",
    "lease_exists",
    "lease_not_found",
    "lease_provided",
    "lease_ttl_too_large",
    "member_not_found",
    "permission_denied",
    "permission_not_granted",
    "request_too_large",
    "role_already_exists",
    "role_empty",
    "role_not_found",
    "role_not_granted",
    "root_role_missing",
    "root_user_missing",
    "too_many_ops",
    "user_already_exists",
    "user_empty",
    "user_not_found",
    "value_provided",
]


class KVError(Exception):
    """
    A request failed: ``code`` is a gRPC status code name, ``message`` etcd's text.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KVError):
            return NotImplemented
        return (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))

    def __repr__(self) -> str:
        return f"KVError({self.code!r}, {self.message!r})"


def _error(code: str, message: str) -> KVError:
    return KVError(code, message)


def empty_key() -> KVError:
    """A request named no key."""
    return _error("INVALID_ARGUMENT", "etcdserver: key is not provided")


def key_not_found() -> KVError:
    """``ignore_value``/``ignore_lease`` on a key that does not exist."""
    return _error("INVALID_ARGUMENT", "etcdserver: key not found")


def value_provided() -> KVError:
    """``ignore_value`` together with a value."""
    return _error("INVALID_ARGUMENT", "etcdserver: value is provided")


def lease_provided() -> KVError:
    """``ignore_lease`` together with a lease."""
    return _error("INVALID_ARGUMENT", "etcdserver: lease is provided")


def too_many_ops() -> KVError:
    """A transaction with more operations than allowed."""
    return _error("INVALID_ARGUMENT", "etcdserver: too many operations in txn request")


def duplicate_key() -> KVError:
    """A transaction writes the same key twice."""
    return _error("INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request")


def request_too_large() -> KVError:
    """A request above the configured size limit."""
    return _error("INVALID_ARGUMENT", "etcdserver: request is too large")


def compacted() -> KVError:
    """A revision older than the last compaction."""
    return _error("OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted")


def future_revision() -> KVError:
    """A revision newer than the store's."""
    return _error("OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision")


def lease_not_found() -> KVError:
    """An unknown (or expired, or another tenant's) lease."""
    return _error("NOT_FOUND", "etcdserver: requested lease not found")


def lease_exists() -> KVError:
    """A grant with an ID already in use."""
    return _error("FAILED_PRECONDITION", "etcdserver: lease already exists")


def lease_ttl_too_large() -> KVError:
    """A grant above the configured maximum TTL."""
    return _error("OUT_OF_RANGE", "etcdserver: too large lease TTL")


def member_not_found() -> KVError:
    """A cluster request for a member that does not exist."""
    return _error("NOT_FOUND", "etcdserver: member not found")


def root_user_missing() -> KVError:
    """Enabling authentication without a root user."""
    return _error("FAILED_PRECONDITION", "etcdserver: root user does not exist")


def root_role_missing() -> KVError:
    """Enabling authentication while root lacks the root role."""
    return _error("FAILED_PRECONDITION", "etcdserver: root user does not have root role")


def user_already_exists() -> KVError:
    """Adding a user that exists."""
    return _error("FAILED_PRECONDITION", "etcdserver: user name already exists")


def user_empty() -> KVError:
    """A user request without a name."""
    return _error("INVALID_ARGUMENT", "etcdserver: user name is empty")


def user_not_found() -> KVError:
    """A request for an unknown user."""
    return _error("FAILED_PRECONDITION", "etcdserver: user name not found")


def role_already_exists() -> KVError:
    """Adding a role that exists."""
    return _error("FAILED_PRECONDITION", "etcdserver: role name already exists")


def role_empty() -> KVError:
    """A role request without a name."""
    return _error("INVALID_ARGUMENT", "etcdserver: role name is empty")


def role_not_found() -> KVError:
    """A request for an unknown role."""
    return _error("FAILED_PRECONDITION", "etcdserver: role name not found")


def role_not_granted() -> KVError:
    """Revoking a role the user does not have."""
    return _error("FAILED_PRECONDITION", "etcdserver: role is not granted to the user")


def permission_not_granted() -> KVError:
    """Revoking a permission the role does not have."""
    return _error("FAILED_PRECONDITION", "etcdserver: permission is not granted to the role")


def auth_not_enabled() -> KVError:
    """Authenticating while authentication is disabled."""
    return _error("FAILED_PRECONDITION", "etcdserver: authentication is not enabled")


def auth_failed() -> KVError:
    """Wrong user name or password."""
    return _error(
        "INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password"
    )


def invalid_auth_token() -> KVError:
    """A request with an unknown or expired token."""
    return _error("UNAUTHENTICATED", "etcdserver: invalid auth token")


def invalid_auth_management() -> KVError:
    """Removing root's powers while authentication is on."""
    return _error("INVALID_ARGUMENT", "etcdserver: invalid auth management")


def permission_denied() -> KVError:
    """The authenticated user may not do this."""
    return _error("PERMISSION_DENIED", "etcdserver: permission denied")
