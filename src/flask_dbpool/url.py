"""Database URL parsing and redaction.

A URL names the dialect and, optionally, the driver: ``postgresql+psycopg2://user:pw@host/db``.
The password is kept out of every string this module produces (:meth:`DatabaseURL.redacted`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from flask_dbpool.errors import ConfigError

__all__ = ["DatabaseURL", "parse_url", "redact"]

_REDACTED = "***"


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL. ``repr()`` and :meth:`redacted` never show the password."""

    dialect: str
    """``sqlite``, ``postgresql`` or ``mysql`` (``postgres`` and ``mariadb`` are normalised)."""
    driver: str | None
    """The part after ``+`` in the scheme (``psycopg2`` in ``postgresql+psycopg2``), if any."""
    scheme: str
    """The scheme exactly as written."""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    host: str | None = None
    port: int | None = None
    database: str | None = None
    query: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    def redacted(self) -> str:
        """The URL as a string with the password replaced by ``***``."""
        netloc = ""
        if self.username is not None:
            netloc = self.username
            if self.password is not None:
                netloc += ":" + _REDACTED
            netloc += "@"
        if self.host is not None:
            netloc += f"[{self.host}]" if ":" in self.host else self.host
        if self.port is not None:
            netloc += f":{self.port}"
        text = f"{self.scheme}://{netloc}"
        if self.database is not None:
            text += "/" + self.database
        if self.query:
            text += "?" + "&".join(
                f"{k}={_REDACTED if _is_secret(k) else v}" for k, v in self.query
            )
        return text

    def __str__(self) -> str:
        return self.redacted()


_DIALECT_ALIASES = {"postgres": "postgresql", "mariadb": "mysql"}


def _is_secret(key: str) -> bool:
    """Query options whose value is a secret (``password``, ``sslpassword`` …)."""
    return "password" in key.lower()


def parse_url(url: str) -> DatabaseURL:
    """Parse ``url`` into a :class:`DatabaseURL`.

    Raises :class:`ConfigError` (whose message never contains the password) when the URL has
    no scheme or a malformed port.
    """
    if not isinstance(url, str):
        raise ConfigError(f"database URL must be a string, got {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ConfigError(
            f"database URL {redact(url)!r} has no scheme; expected e.g. "
            "'postgresql://user:password@host:5432/db' or 'sqlite:///path.db'"
        )
    scheme = scheme.lower()
    dialect, _, driver = scheme.partition("+")
    dialect = _DIALECT_ALIASES.get(dialect, dialect)
    if dialect == "sqlite":
        # sqlite:///relative.db, sqlite:////absolute.db, sqlite:///:memory:, sqlite://
        path, _, query = rest.partition("?")
        if path.startswith("/"):
            path = path[1:]
        return DatabaseURL(
            dialect=dialect,
            driver=driver or None,
            scheme=scheme,
            database=unquote(path) or None,
            query=tuple(parse_qsl(query, keep_blank_values=True)),
        )
    try:
        parts = urlsplit(f"x://{rest}")
    except ValueError as error:  # e.g. "Invalid IPv6 URL" for an unclosed '['
        raise ConfigError(
            f"database URL {redact(url)!r} cannot be parsed ({error}); an IPv6 host goes in "
            "brackets, e.g. 'postgresql://user@[::1]:5432/db', and special characters in "
            "the user name and password are percent-encoded"
        ) from None
    if "@" in parts.path or parts.fragment or "@" in parts.query.partition("=")[0]:
        # An unescaped '/', '?' or '#' in the password cut the URL in the wrong place.
        raise ConfigError(
            f"database URL {redact(url)!r} cannot be parsed: percent-encode special characters "
            "('/', '?', '#', '@', ':') in the user name and password"
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"database URL {redact(url)!r} has an invalid port") from None
    database = unquote(parts.path[1:]) if parts.path.startswith("/") else None
    return DatabaseURL(
        dialect=dialect,
        driver=driver or None,
        scheme=scheme,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        host=unquote(parts.hostname) if parts.hostname else None,
        port=port,
        database=database or None,
        query=tuple(parse_qsl(parts.query, keep_blank_values=True)),
    )


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, without validating it.

    Works on strings that :func:`parse_url` would reject, so that error messages about a bad
    URL can quote it safely. Both ``user:password@`` and ``?password=`` are redacted.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _REDACTED if ("@" in url or "password" in url.lower()) else url
    netloc_end = len(rest)
    for stop in "/?#":
        idx = rest.find(stop)
        if idx != -1:
            netloc_end = min(netloc_end, idx)
    netloc, tail = rest[:netloc_end], rest[netloc_end:]
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{_REDACTED}@{hostport}" if colon else f"{user}@{hostport}"
    elif "@" in tail and ":" in netloc:
        # A password holding '/', '?' or '#' unescaped: hide everything up to the last '@'.
        user = netloc.partition(":")[0]
        return f"{scheme}://{user}:{_REDACTED}@{tail.rpartition('@')[2]}"
    if "password" in tail.lower():
        head, _, query = tail.partition("?")
        pairs = [
            f"{k}={_REDACTED}" if _is_secret(k) else f"{k}={v}"
            for k, v in parse_qsl(query, keep_blank_values=True)
        ]
        tail = head + "?" + "&".join(pairs)
    return f"{scheme}://{netloc}{tail}"
