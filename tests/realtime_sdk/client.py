"""Drives hearken's /v1/realtime with the official `openai` Python SDK.

Run by tests/realtime_sdk.rs, one scenario per run:

    python client.py --port PORT --scenario NAME --audio FIXTURE_24K.pcm --out DIR

Every server event is checked against the SDK's own types (strictly: an event with an
unknown or beta-era name, or a field of the wrong type, fails the run). The result is
one JSON object on stdout; the Rust test makes the assertions (the reply audio is
transcribed there, with the server's own recogniser). Every wait is bounded.
"""

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path

import pydantic
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent

# Bound on any single wait for an event (s); a CI machine can be slow, never this slow.
WAIT = 60.0
# Audio sent per append (ms) and its size at 24 kHz PCM16.
CHUNK_MS = 40
CHUNK_BYTES = 24_000 * 2 * CHUNK_MS // 1000

STRICT = pydantic.TypeAdapter(RealtimeServerEvent)


class Session:
    """One connection: every event received, validated and kept."""

    def __init__(self, connection):
        self.connection = connection
        self.events = []

    async def next(self):
        raw = await asyncio.wait_for(self.connection.recv_bytes(), WAIT)
        event = json.loads(raw)
        try:
            STRICT.validate_json(raw)
        except pydantic.ValidationError as error:
            raise SystemExit(f"event does not match the SDK's types: {event}\n{error}")
        self.events.append(event)
        return event

    async def until(self, *types):
        while True:
            event = await self.next()
            if event["type"] in types:
                return event
            if event["type"] == "error":
                raise SystemExit(f"unexpected error event: {event}")

    async def stream(self, pcm, chunk=CHUNK_BYTES):
        for at in range(0, len(pcm), chunk):
            piece = base64.b64encode(pcm[at : at + chunk]).decode()
            await self.connection.input_audio_buffer.append(audio=piece)


def reply_summary(events, response_id):
    """Audio bytes, transcript deltas and text deltas of one response, and whether any
    audio came after its response.done."""
    audio, transcript, text = bytearray(), [], []
    done_at, audio_after_done = None, 0
    for index, event in enumerate(events):
        if event.get("response_id") != response_id and event.get("response", {}).get("id") != response_id:
            continue
        kind = event["type"]
        if kind == "response.output_audio.delta":
            if done_at is not None:
                audio_after_done += 1
            audio.extend(base64.b64decode(event["delta"]))
        elif kind == "response.output_audio_transcript.delta":
            transcript.append(event["delta"])
        elif kind == "response.output_text.delta":
            text.append(event["delta"])
        elif kind == "response.done":
            done_at = index
    return bytes(audio), "".join(transcript), "".join(text), audio_after_done


AUDIO_24K = {"type": "audio/pcm", "rate": 24000}


async def vad(session, pcm, out):
    """Server VAD: speak, get the transcript and a spoken reply; truncate it."""
    await session.connection.session.update(session={
        "type": "realtime",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": AUDIO_24K,
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                "transcription": {"model": "whisper-1"},
            },
            "output": {"format": AUDIO_24K, "voice": "marin"},
        },
    })
    await session.until("session.updated")
    await session.stream(pcm)
    user = await session.until("conversation.item.input_audio_transcription.completed")
    done = await session.until("response.done")
    response = done["response"]
    audio, transcript, _, after = reply_summary(session.events, response["id"])
    (out / "vad_reply.pcm").write_bytes(audio)
    final = next(e for e in session.events if e["type"] == "response.output_audio_transcript.done")
    item_id = response["output"][0]["id"]
    # The listener stopped halfway: cut the reply there, then read it back.
    half_ms = len(audio) // 48 // 2
    await session.connection.conversation.item.truncate(
        item_id=item_id, content_index=0, audio_end_ms=half_ms)
    truncated = await session.until("conversation.item.truncated")
    await session.connection.conversation.item.retrieve(item_id=item_id)
    retrieved = await session.until("conversation.item.retrieved")
    return {
        "user_transcript": user["transcript"],
        "speech_events": [e["type"] for e in session.events if e["type"].startswith("input_audio_buffer.")],
        "status": response["status"],
        "conversation_id": response["conversation_id"],
        "transcript_deltas": transcript,
        "transcript_done": final["transcript"],
        "audio_bytes": len(audio),
        "audio_after_done": after,
        "output_transcript": response["output"][0]["content"][0]["transcript"],
        "truncated": truncated,
        "half_ms": half_ms,
        "retrieved_transcript": retrieved["item"]["content"][0]["transcript"],
    }


async def manual(session, pcm, out):
    """No turn detection: the client commits and asks for the response."""
    await session.connection.session.update(session={
        "type": "realtime",
        "audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}},
    })
    updated = await session.until("session.updated")
    await session.stream(pcm)
    await session.connection.input_audio_buffer.commit()
    committed = await session.until("input_audio_buffer.committed")
    await session.connection.response.create()
    done = await session.until("response.done")
    audio, transcript, _, _ = reply_summary(session.events, done["response"]["id"])
    user = [e for e in session.events if e["type"] == "conversation.item.input_audio_transcription.completed"]
    speech = [e for e in session.events if e["type"].startswith("input_audio_buffer.speech_")]
    return {
        "turn_detection": updated["session"]["audio"]["input"]["turn_detection"],
        "committed_item": committed["item_id"],
        "user_transcript": user[0]["transcript"] if user else None,
        "user_item_before_response": user[0]["item_id"] == committed["item_id"] if user else False,
        "speech_events": len(speech),
        "status": done["response"]["status"],
        "conversation_id": done["response"]["conversation_id"],
        "transcript": transcript,
        "audio_bytes": len(audio),
    }


async def text(session, pcm, out):
    """Text modality: a typed question, a written answer, no audio."""
    await session.connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
    await session.until("session.updated")
    await session.connection.conversation.item.create(item={
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "What is the weather like today?"}],
    })
    added = await session.until("conversation.item.added")
    await session.connection.response.create()
    done = await session.until("response.done")
    audio, _, written, _ = reply_summary(session.events, done["response"]["id"])
    final = next(e for e in session.events if e["type"] == "response.output_text.done")
    return {
        "added_role": added["item"]["role"],
        "status": done["response"]["status"],
        "conversation_id": done["response"]["conversation_id"],
        "modalities": done["response"]["output_modalities"],
        "text": written,
        "text_done": final["text"],
        "audio_bytes": len(audio),
    }


async def item_audio(session, pcm, out):
    """A user message created with its audio: heard, stored, answered on request."""
    await session.connection.session.update(session={
        "type": "realtime", "output_modalities": ["text"],
        "audio": {"input": {"turn_detection": None, "transcription": {"model": "whisper-1"}}},
    })
    await session.until("session.updated")
    await session.connection.conversation.item.create(item={
        "type": "message", "role": "user",
        "content": [{"type": "input_audio", "audio": base64.b64encode(pcm).decode()}],
    })
    await session.connection.response.create()
    added = await session.until("conversation.item.added")
    completed = await session.until("conversation.item.input_audio_transcription.completed")
    done = await session.until("response.done")
    item_done = next(
        e for e in session.events
        if e["type"] == "conversation.item.done" and e["item"]["id"] == added["item"]["id"]
    )
    _, _, written, _ = reply_summary(session.events, done["response"]["id"])
    return {
        "added_content": added["item"]["content"][0],
        "same_item": completed["item_id"] == added["item"]["id"],
        "transcript": completed["transcript"],
        "done_transcript": item_done["item"]["content"][0]["transcript"],
        "status": done["response"]["status"],
        "conversation_id": done["response"]["conversation_id"],
        "text": written,
    }


async def cancel(session, pcm, out):
    """Cancel mid-reply: the response ends cancelled and its audio stops."""
    await session.connection.session.update(session={
        "type": "realtime", "audio": {"input": {"turn_detection": None}}})
    await session.until("session.updated")
    await session.connection.conversation.item.create(item={
        "type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "Tell me a very long story."}],
    })
    await session.until("conversation.item.added")
    await session.connection.response.create()
    first = await session.until("response.output_audio.delta")
    await session.connection.response.cancel()
    done = await session.until("response.done")
    # Anything still to come: read until the server has been quiet a while.
    try:
        while True:
            await asyncio.wait_for(session.next(), 1.5)
    except asyncio.TimeoutError:
        pass
    audio, _, _, after = reply_summary(session.events, first["response_id"])
    return {
        "status": done["response"]["status"],
        "reason": (done["response"].get("status_details") or {}).get("reason"),
        "conversation_id": done["response"]["conversation_id"],
        "audio_bytes": len(audio),
        "audio_after_done": after,
    }


async def drop(session, pcm, out):
    """Stream, then drop the TCP connection without a Close frame."""
    created = session.events[0]
    await session.stream(pcm[: len(pcm) // 4 * 2])  # the first half, whole samples
    await session.until("input_audio_buffer.speech_started")
    session.connection._connection.transport.abort()
    return {"conversation_id": created["session"]["conversation_id"], "dropped": True}


SCENARIOS = {
    "vad": vad, "manual": manual, "text": text, "item_audio": item_audio, "cancel": cancel,
    "drop": drop,
}


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), required=True)
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    pcm = args.audio.read_bytes()
    client = AsyncOpenAI(api_key="hearken-test", websocket_base_url=f"ws://127.0.0.1:{args.port}/v1")
    connection = await client.realtime.connect(model="gpt-realtime").enter()
    session = Session(connection)
    created = await session.next()
    if created["type"] != "session.created":
        raise SystemExit(f"the first event is {created['type']}, not session.created")
    result = await SCENARIOS[args.scenario](session, pcm, args.out)
    result["first_event"] = created["type"]
    result["model"] = created["session"]["model"]
    result["events"] = len(session.events)
    if args.scenario != "drop":
        # A clean close; the dropped connection is gone already.
        await connection.close()
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        asyncio.run(asyncio.wait_for(main(), 4 * WAIT))
    except asyncio.TimeoutError:
        sys.exit("the scenario did not finish in time")
