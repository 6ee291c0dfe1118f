"""Outbound campaigns: dial a contact list under Exotel's limits, with durable, shared state.

* :mod:`~voicebot.campaign.contacts` reads and validates the CSV contact list.
* :mod:`~voicebot.campaign.bucket` is the token bucket under Exotel's 200 requests per minute (pure).
* :mod:`~voicebot.campaign.store` is the ``CampaignStore`` interface and ``SqliteStore``.
* :mod:`~voicebot.campaign.runner` dials: channel leases, retries, reconciliation, restarts.
* :mod:`~voicebot.campaign.handler` is the base of bots that report outcomes to the campaign.
* :mod:`~voicebot.campaign.progress` draws the live progress line.
"""

from __future__ import annotations
