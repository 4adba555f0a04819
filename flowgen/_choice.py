"""One base for flowgen's closed sets of named options (predictions, methods, grids, …).

Inside the library options are enum members; at the public boundary (Python calls, YAML, the CLI)
:meth:`Choice.parse` also accepts the member's value or an alias, case-, space- and
hyphen-insensitively, and refuses anything else with a ValueError naming the argument and
listing the choices.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Choice"]


def _normalise(value: str) -> str:
    return value.strip().lower().replace("-", "_").replace(" ", "_")


class Choice(str, Enum):
    """A string enum with a forgiving, strict ``parse``.

    Subclasses may set ``__argname__`` (the argument name used in errors), ``__hint__`` (text
    appended to the error) and override :meth:`aliases` (normalised alias → value).
    """

    @classmethod
    def aliases(cls) -> dict:
        """Normalised alias → member value (none by default)."""
        return {}

    @classmethod
    def parse(cls, value, name: str | None = None):
        """The member for ``value`` (a member, its value or an alias); ValueError otherwise."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            member = cls._value2member_map_.get(value)
            if member is None:
                key = _normalise(value)
                member = cls._value2member_map_.get(cls.aliases().get(key, key))
            if member is not None:
                return member
        name = name or getattr(cls, "__argname__", cls.__name__.lower())
        hint = getattr(cls, "__hint__", "")
        raise ValueError(f"unknown {name} {value!r}; expected one of {[m.value for m in cls]}{hint}")
