"""Raw HTTP/1.1 over loopback sockets: a client that sends exactly the bytes given, and an upstream that
records exactly the requests it parsed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from yarl import URL


@dataclass
class Received:
    head: str
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return None


@dataclass
class RecordingUpstream:
    """An HTTP/1.1 upstream on loopback that records each request it parses, as bytes, and answers 200."""

    received: list[Received] = field(default_factory=list)
    url: str = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                request = Received(head, b"")
                length = request.header("content-length")
                if length is not None:
                    request.body = await reader.readexactly(int(length))
                elif (request.header("transfer-encoding") or "").lower() == "chunked":
                    while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
                        request.body += await reader.readexactly(size)
                        await reader.readexactly(2)
                    await reader.readuntil(b"\r\n")
                self.received.append(request)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def send(gateway: str, raw: bytes) -> tuple[int, bytes]:
    """Sends ``raw`` as one request on a new connection; the status and body of the answer."""
    url = URL(gateway)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(raw)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        return int(head.split()[1]), await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()


def post(path: str, body: bytes, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: gateway", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
