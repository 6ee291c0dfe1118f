"""A token bucket for Exotel's request limit (200 requests per minute per account, §7.4): pure logic.

No clock inside: every method takes ``now`` (seconds, monotonic), so the rule is testable with plain
numbers and one bucket can be shared by every request an application makes (dials and look-ups).
"""

from __future__ import annotations

from voicebot.errors import ConfigError

__all__ = ["TokenBucket"]

WINDOW = 60.0


class TokenBucket:
    """At most ``rate_per_minute`` requests in any 60-second window, with bursts of up to ``burst``.

    A bucket that holds ``burst`` tokens and refills at ``rate_per_minute - burst`` per minute never
    grants more than ``rate_per_minute`` in a window of 60 s (the burst plus a minute's refill), which is
    the rule Exotel enforces. :meth:`reserve` takes a token now or books the next one: callers wait the
    returned delay, and are served in the order they asked.
    """

    def __init__(self, rate_per_minute: float = 200, *, burst: int = 10, now: float = 0.0) -> None:
        if not rate_per_minute > 0:
            raise ConfigError(f"rate_per_minute: must be > 0, got {rate_per_minute}")
        if not 1 <= burst < rate_per_minute:
            raise ConfigError(
                f"burst: must be from 1 to below rate_per_minute ({rate_per_minute}), got {burst}"
            )
        self.rate_per_minute = rate_per_minute
        self.burst = burst
        self._per_second = (rate_per_minute - burst) / WINDOW
        self._tokens = float(burst)
        self._updated = now

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self._per_second)
            self._updated = now

    def available(self, now: float) -> float:
        """Tokens available at ``now`` (negative while requests are booked ahead)."""
        self._refill(now)
        return self._tokens

    def try_take(self, now: float) -> bool:
        """Take a token if one is available at ``now``; False (nothing taken) otherwise."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def reserve(self, now: float) -> float:
        """Take the next token, available now or later: returns the seconds to wait before sending."""
        self._refill(now)
        self._tokens -= 1.0
        if self._tokens >= 0.0:
            return 0.0
        return -self._tokens / self._per_second
