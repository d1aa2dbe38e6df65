"""The SQL databases behind a team's tracking server and shared sweeps: driver names and a fast reachability
check, so a wrong password or an unreachable host is one line within seconds instead of a traceback after
minutes of retries."""

from __future__ import annotations

import importlib.util
from urllib.parse import urlsplit, urlunsplit

from anima.errors import ConfigError
from anima.tracking.redact import redact_text


def with_driver(url: str) -> str:
    """SQLAlchemy 2.1 (and so MLflow and Optuna) read plain postgresql:// as psycopg 3; name psycopg2 when only
    that driver is installed."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url


def _libpq_url(url: str) -> str:
    """postgresql+psycopg2://... -> postgresql://... (what libpq itself accepts)."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.split("+")[0] in ("postgresql", "postgres") else url


def _first_line(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return text[:300] or type(exc).__name__


def check_postgres(url: str, key: str, timeout: float = 5.0, create: bool = False) -> bool:
    """Connect to the PostgreSQL database at `url` within `timeout` seconds; with `create`, create the database
    when it does not exist (returns True then). Fails in one line naming `key` and the URL (password masked)."""
    try:
        import psycopg2
    except ImportError:
        raise ConfigError(f"{key}={redact_text(url)}: the psycopg2 driver is not installed "
                          "(pip install psycopg2-binary)") from None
    dsn = _libpq_url(url)
    try:
        psycopg2.connect(dsn, connect_timeout=max(1, int(timeout))).close()
        return False
    except psycopg2.OperationalError as e:
        missing = "does not exist" in str(e) and "database" in str(e)
        if not (create and missing):
            hint = " (add server.create_db=true to create it)" if missing else ""
            raise ConfigError(f"{key}={redact_text(url)}: cannot connect: {_first_line(e)}{hint}") from None
    _create_database(dsn, key, timeout)
    return True


def _create_database(dsn: str, key: str, timeout: float) -> None:
    import psycopg2
    from psycopg2 import sql

    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    admin = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
    try:
        conn = psycopg2.connect(admin, connect_timeout=max(1, int(timeout)))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
    except psycopg2.Error as e:
        raise ConfigError(f"{key}={redact_text(dsn)}: cannot create database {name!r}: {_first_line(e)}") from None


def is_postgres(url: str) -> bool:
    return url.partition("://")[0].split("+")[0] in ("postgresql", "postgres")
