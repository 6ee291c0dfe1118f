"""Where Exotel's API is and who we are to it: ``ExotelConfig``.

Credentials come from the environment only (DESIGN.md §5): ``EXOTEL_ACCOUNT_SID``, ``EXOTEL_API_KEY``,
``EXOTEL_API_TOKEN``; the region from ``EXOTEL_SUBDOMAIN`` (``in``/``sg`` or the API host name) and an
explicit base URL, for the local emulator or a proxy, from ``EXOTEL_BASE_URL``. The key and token never
appear in a repr, an error message or a log line.
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from voicebot.errors import ConfigError

__all__ = ["REGIONS", "ExotelConfig"]

#: Exotel's API hosts by region (exotel-protocol.md §7.1).
REGIONS: Final[Mapping[str, str]] = {"in": "https://api.in.exotel.com", "sg": "https://api.exotel.com"}
#: Account-local time, which Exotel's ``DateCreated``-style fields use (no zone suffix), by region.
REGION_UTC_OFFSET_MINUTES: Final[Mapping[str, int]] = {"in": 330, "sg": 480}

_SID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HOST = re.compile(r"[A-Za-z0-9.-]+")


@dataclass(frozen=True, kw_only=True)
class ExotelConfig:
    """Exotel account credentials, API location and HTTP timeouts.

    ``base_url`` (e.g. ``http://127.0.0.1:9300`` for ``voicebot emulate``) wins over ``region``.
    ``connect_timeout`` bounds making the connection (failing there means nothing was sent);
    ``request_timeout`` bounds the whole request. ``rate_limit_retries``: how many times a 429 is
    retried after waiting its ``Retry-After`` (never longer than ``max_retry_wait`` seconds).
    ``utc_offset_minutes``: the account's time zone, which Exotel's date fields are written in (default
    by region: India +5:30, Singapore +8:00); used to reconcile a dial whose outcome is unknown.
    """

    account_sid: str
    api_key: str = field(repr=False)
    api_token: str = field(repr=False)
    region: str = "in"
    base_url: str | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 15.0
    rate_limit_retries: int = 2
    max_retry_wait: float = 60.0
    utc_offset_minutes: int | None = None

    def __post_init__(self) -> None:
        if not _SID.fullmatch(self.account_sid):
            raise ConfigError(
                "account_sid: must be 1-64 letters, digits, '_', '.' or '-' (EXOTEL_ACCOUNT_SID)"
            )
        for name, variable in (("api_key", "EXOTEL_API_KEY"), ("api_token", "EXOTEL_API_TOKEN")):
            value = getattr(self, name)
            if not value or any(ch in value for ch in "\r\n"):
                raise ConfigError(f"{name}: must be non-empty, on one line ({variable})")
        if self.region not in REGIONS:
            raise ConfigError(f"region: {self.region!r} is not one of {', '.join(REGIONS)}")
        if self.base_url is not None:
            parts = urllib.parse.urlsplit(self.base_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"base_url: must be an http:// or https:// URL, got {self.base_url!r}")
            if parts.username or parts.password or parts.query or parts.fragment:
                raise ConfigError("base_url: no credentials, query or fragment (credentials go in EXOTEL_*)")
        for name in ("connect_timeout", "request_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be > 0 seconds, got {getattr(self, name)!r}")
        if self.rate_limit_retries < 0:
            raise ConfigError(f"rate_limit_retries: must be >= 0, got {self.rate_limit_retries}")
        if self.max_retry_wait < 0:
            raise ConfigError(f"max_retry_wait: must be >= 0 seconds, got {self.max_retry_wait}")
        if self.utc_offset_minutes is not None and not -720 <= self.utc_offset_minutes <= 840:
            raise ConfigError(f"utc_offset_minutes: {self.utc_offset_minutes} is not a UTC offset")

    def __repr__(self) -> str:
        # Only the key and token are secret; showing that they are set helps diagnosis.
        shown = ", ".join(
            f"{f.name}={'***' if f.name in ('api_key', 'api_token') else repr(getattr(self, f.name))}"
            for f in dataclasses.fields(self)
        )
        return f"ExotelConfig({shown})"

    @property
    def api_base(self) -> str:
        """The API's base URL, without a trailing slash."""
        return (self.base_url or REGIONS[self.region]).rstrip("/")

    @property
    def account_timezone(self) -> datetime.timezone:
        """The account's time zone (fixed offset), which Exotel writes its date fields in."""
        minutes = self.utc_offset_minutes
        if minutes is None:
            minutes = REGION_UTC_OFFSET_MINUTES[self.region]
        return datetime.timezone(datetime.timedelta(minutes=minutes))

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        *,
        base_url: str | None = None,
        region: str | None = None,
        **overrides: float | int | None,
    ) -> ExotelConfig:
        """Read ``EXOTEL_ACCOUNT_SID``, ``EXOTEL_API_KEY``, ``EXOTEL_API_TOKEN``, ``EXOTEL_SUBDOMAIN``
        (``in``, ``sg``, or a host such as ``api.in.exotel.com``) and ``EXOTEL_BASE_URL``.

        ``base_url`` and ``region`` (from flags) win over the variables; ``overrides`` set the other
        fields (timeouts, retries) when not None.
        """
        missing = [
            name
            for name in ("EXOTEL_ACCOUNT_SID", "EXOTEL_API_KEY", "EXOTEL_API_TOKEN")
            if not environ.get(name)
        ]
        if missing:
            raise ConfigError(
                f"{', '.join(missing)}: not set; Exotel credentials come from the environment only"
            )
        chosen_region = region
        chosen_base = base_url or environ.get("EXOTEL_BASE_URL") or None
        subdomain = environ.get("EXOTEL_SUBDOMAIN", "").strip().lower()
        if chosen_region is None and subdomain:
            chosen_region, subdomain_base = _region_of_subdomain(subdomain)
            if chosen_base is None:
                chosen_base = subdomain_base
        values = {key: value for key, value in overrides.items() if value is not None}
        return cls(
            account_sid=environ["EXOTEL_ACCOUNT_SID"].strip(),
            api_key=environ["EXOTEL_API_KEY"].strip(),
            api_token=environ["EXOTEL_API_TOKEN"].strip(),
            region=chosen_region or "in",
            base_url=chosen_base,
            **values,  # type: ignore[arg-type]
        )


def _region_of_subdomain(subdomain: str) -> tuple[str, str | None]:
    """``in`` / ``api.in.exotel.com`` → ``("in", None)``; another host → ``("in", "https://host")``."""
    if subdomain in REGIONS:
        return subdomain, None
    host = subdomain.removeprefix("https://").removeprefix("@").rstrip("/")
    for region, base in REGIONS.items():
        if base == f"https://{host}":
            return region, None
    if not _HOST.fullmatch(host):
        raise ConfigError(f"EXOTEL_SUBDOMAIN: {subdomain!r} is neither in, sg nor an API host name")
    return "in", f"https://{host}"
