"""The exceptions voicebot raises, as one small tree.

``VoicebotError`` is the root. Protocol errors say who is at fault, as h11 does: a
``RemoteProtocolError`` means Exotel (or whatever speaks for it) sent something we cannot accept; a
``LocalProtocolError`` means our own side tried to do something the protocol does not allow.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "VoicebotError",
]


class VoicebotError(Exception):
    """Base class of every exception voicebot raises on purpose."""


class ConfigError(VoicebotError, ValueError):
    """A configuration value is invalid; the message names the setting and the rule."""


class ProtocolError(VoicebotError):
    """Something broke the Exotel stream protocol."""


class RemoteProtocolError(ProtocolError):
    """The peer (Exotel) sent a message that is malformed or out of order."""


class LocalProtocolError(ProtocolError):
    """Our own side tried to send something the protocol does not allow (e.g. media before start)."""
