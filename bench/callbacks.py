"""Status callback cost: parse time per body, and the ops server's acknowledgement latency over HTTP.

    .venv/bin/python bench/callbacks.py [--requests 2000] [--concurrency 20]

Ack latency is measured at the client (aiohttp, keep-alive) from sending a POST to reading the 200,
with an after-ack application callback attached, as ``serve --ops-port`` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp

from voicebot.dialer.callbacks import StatusEvent, parse_status_callback
from voicebot.dialer.ops import OpsServer, StatusReceiver
from voicebot.emulator import encode_callback

TOKEN = "bench-token-0123456789"


def fields(index: int) -> dict[str, object]:
    return {
        "CallSid": f"{index:032x}",
        "EventType": "terminal",
        "Status": "completed",
        "DateCreated": "2026-08-20 10:15:02",
        "DateUpdated": "2026-08-20 10:19:47",
        "From": "09812345678",
        "To": "",
        "PhoneNumberSid": "08045678901",
        "Direction": "outbound-api",
        "ConversationDuration": 262,
        "CustomField": f"order-{index}",
        "RecordingUrl": "https://recordings.example.com/acme/c0ffee.mp3",
        "Legs": [{"OnCallDuration": 270, "Status": "completed", "AnsweredBy": "Human"}],
    }


def bench_parse(repeats: int) -> None:
    for encoding in ("json", "urlencoded", "multipart"):
        body, content_type = encode_callback(fields(1), encoding)
        began = time.perf_counter()
        for _ in range(repeats):
            parse_status_callback(body, content_type)
        per = (time.perf_counter() - began) / repeats
        print(f"parse {encoding:10s} {len(body):5d} B  {per * 1e6:7.1f} µs")


async def bench_ack(requests: int, concurrency: int) -> None:
    receiver = StatusReceiver(TOKEN)
    handled = 0

    async def count(event: StatusEvent) -> None:
        nonlocal handled
        handled += 1

    receiver.add_callback(count)
    async with OpsServer(receiver) as ops, aiohttp.ClientSession() as session:
        url = ops.url(receiver.path_for())
        for encoding in ("json", "urlencoded", "multipart"):
            bodies = [encode_callback(fields(i), encoding) for i in range(requests)]
            latencies: list[float] = []
            queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
            for item in bodies:
                queue.put_nowait(item)

            async def worker(queue: asyncio.Queue[tuple[bytes, str]], latencies: list[float]) -> None:
                while not queue.empty():
                    body, content_type = queue.get_nowait()
                    began = time.perf_counter()
                    async with session.post(
                        url, data=body, headers={"Content-Type": content_type}
                    ) as response:
                        await response.read()
                        assert response.status == 200
                    latencies.append(time.perf_counter() - began)

            began = time.perf_counter()
            await asyncio.gather(*(worker(queue, latencies) for _ in range(concurrency)))
            elapsed = time.perf_counter() - began
            latencies.sort()
            p50 = statistics.median(latencies) * 1000
            p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
            print(
                f"ack {encoding:10s} {requests} requests, {concurrency} concurrent: "
                f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {latencies[-1] * 1000:.2f} ms, "
                f"{requests / elapsed:.0f} req/s"
            )
            receiver._seen.clear()  # the next encoding re-sends the same CallSids
    assert handled == 3 * requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    bench_parse(5000)
    asyncio.run(bench_ack(args.requests, 1))
    asyncio.run(bench_ack(args.requests, args.concurrency))


if __name__ == "__main__":
    main()
