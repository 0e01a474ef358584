"""GET /events: Server-Sent Events relaying the Redis pub/sub channel
``settings.events_channel`` (default ``citybrain:events``): task progress
published by workers and by the API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from cloud.api.deps import SettingsDep, ViewerUser
from cloud.api.errors import ERROR_RESPONSES
from cloud.core.config import Settings
from cloud.errors import Unavailable

KEEPALIVE_S = 15.0

router = APIRouter(tags=["events"], responses=ERROR_RESPONSES)


async def _subscribe(redis_url: str, channel: str):  # type: ignore[no-untyped-def]
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url, socket_connect_timeout=2)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel)
    except Exception as e:  # noqa: BLE001 - any connection failure is "unavailable"
        await client.aclose()
        raise Unavailable(f"cannot subscribe to live events on Redis: {e}") from None
    return client, pubsub


def sse(data: str, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return head + "".join(f"data: {line}\n" for line in data.splitlines() or [""]) + "\n"


@router.get(
    "/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "event stream"}},
)
async def events(request: Request, _: ViewerUser, settings: SettingsDep) -> StreamingResponse:
    """Live task updates: each SSE `data:` is one JSON object
    `{"type": "task", "task_id", "kind", "status", "progress", "message"}`."""
    channel = settings.events_channel
    client, pubsub = await _subscribe(settings.redis_url, channel)

    async def stream() -> AsyncIterator[str]:
        try:
            yield sse(json.dumps({"type": "hello", "channel": channel}), "hello")
            idle = 0.0
            while True:
                if await request.is_disconnected():
                    break
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is None:
                    idle += 1.0
                    if idle >= KEEPALIVE_S:
                        idle = 0.0
                        yield ": keepalive\n\n"
                    continue
                idle = 0.0
                data = msg["data"]
                if isinstance(data, bytes):
                    data = data.decode("utf-8", "replace")
                yield sse(str(data))
        except asyncio.CancelledError:
            pass
        finally:
            await pubsub.aclose()
            await client.aclose()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def publish_event(settings: Settings, payload: dict) -> bool:
    """Best-effort publish of a live update (False when Redis cannot be reached)."""
    try:
        import redis

        r = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            r.publish(settings.events_channel, json.dumps(payload, default=str))
        finally:
            r.close()
        return True
    except Exception:  # noqa: BLE001 - live updates are best effort; the DB is the record
        return False
