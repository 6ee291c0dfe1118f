"""Dial out and hear how calls ended: Exotel's Connect Voice AI client and its status callbacks.

* :class:`Dialer` (``client``) places calls (``connect``) and looks them up (``get_call``,
  ``list_calls``, ``reconcile``), configured by :class:`ExotelConfig` (``config``).
* :class:`ConnectRequest` and :class:`CallResource` (``api``) are the request and the call as plain,
  validated data; every rule of exotel-protocol.md §7.2 is checked before anything is sent.
* :func:`parse_status_callback` (``callbacks``) turns a callback body (JSON, urlencoded or multipart)
  into a :class:`StatusEvent`; :class:`StatusReceiver` and :class:`OpsServer` (``ops``) serve them.
* Errors form one tree under :class:`DialerError` (``errors``).

Names are imported lazily, so the pure modules (``api``, ``callbacks``, ``errors``) load without aiohttp.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voicebot.dialer.api import CallResource, ConnectRequest
    from voicebot.dialer.callbacks import Leg, StatusEvent, parse_status_callback
    from voicebot.dialer.client import Dialer
    from voicebot.dialer.config import ExotelConfig
    from voicebot.dialer.errors import (
        AuthError,
        BadRequest,
        DialerError,
        ExotelApiError,
        InvalidCallback,
        NotFound,
        OutcomeUnknown,
        RateLimited,
        RequestRejected,
        TemporaryFailure,
        Unreachable,
        ValidationError,
    )
    from voicebot.dialer.ops import OpsServer, StatusReceiver

_EXPORTS = {
    "CallResource": "voicebot.dialer.api",
    "ConnectRequest": "voicebot.dialer.api",
    "Leg": "voicebot.dialer.callbacks",
    "StatusEvent": "voicebot.dialer.callbacks",
    "parse_status_callback": "voicebot.dialer.callbacks",
    "Dialer": "voicebot.dialer.client",
    "ExotelConfig": "voicebot.dialer.config",
    "AuthError": "voicebot.dialer.errors",
    "BadRequest": "voicebot.dialer.errors",
    "DialerError": "voicebot.dialer.errors",
    "ExotelApiError": "voicebot.dialer.errors",
    "InvalidCallback": "voicebot.dialer.errors",
    "NotFound": "voicebot.dialer.errors",
    "OutcomeUnknown": "voicebot.dialer.errors",
    "RateLimited": "voicebot.dialer.errors",
    "RequestRejected": "voicebot.dialer.errors",
    "TemporaryFailure": "voicebot.dialer.errors",
    "Unreachable": "voicebot.dialer.errors",
    "ValidationError": "voicebot.dialer.errors",
    "OpsServer": "voicebot.dialer.ops",
    "StatusReceiver": "voicebot.dialer.ops",
}

__all__ = [
    "AuthError",
    "BadRequest",
    "CallResource",
    "ConnectRequest",
    "Dialer",
    "DialerError",
    "ExotelApiError",
    "ExotelConfig",
    "InvalidCallback",
    "Leg",
    "NotFound",
    "OpsServer",
    "OutcomeUnknown",
    "RateLimited",
    "RequestRejected",
    "StatusEvent",
    "StatusReceiver",
    "TemporaryFailure",
    "Unreachable",
    "ValidationError",
    "parse_status_callback",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'voicebot.dialer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
