"""
Package namespaces whose names are imported on first use (PEP 562), so that importing one
part of a package does not load the others.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(
    package: str, homes: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """
    The module ``__getattr__`` and ``__dir__`` of ``package``: each name in ``homes`` is
    read from the submodule it maps to (``"_client"`` for ``package._client``) when first
    used, then kept in ``namespace`` (the package's ``globals()``).
    """

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(homes)

    return __getattr__, __dir__
