"""Serving the operator API: uvicorn (httptools), with a bound on the request's head.

httptools buffers a request's headers whole before the application sees any of them, so a
40 MB header would be held in memory before the API key is even looked at. ``BoundedHead``
counts the bytes of each request's head as they arrive and answers ``431`` (and closes the
connection) past ``MAX_HEAD_BYTES``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

MAX_HEAD_BYTES = 32 * 1024  # request line and headers; X-Api-Key and a 2000-character reason fit


class BoundedHead(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = True
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_head:  # count up to the end of the head (the body has its own cap)
            end = data.find(b"\r\n\r\n")
            self._head_bytes += len(data) if end < 0 else end + 4
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse()
                return
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0  # the next request on this connection

    def _refuse(self) -> None:
        self._refused = True
        request_id = f"req_{uuid.uuid4().hex}"
        body = json.dumps(
            {
                "code": "REQUEST_HEADERS_TOO_LARGE",
                "message": f"Request line and headers exceed {MAX_HEAD_BYTES} bytes",
                "requestId": request_id,
            }
        ).encode()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n"
            b"x-request-id: " + request_id.encode() + b"\r\n"
            b"connection: close\r\n\r\n" + body
        )
        self.transport.close()


def serve(app: Any, *, host: str, port: int) -> None:
    # proxy_headers off: nothing here reads the client's address (a caller is its API key), and
    # rewriting it from X-Forwarded-For on every request is work for nothing.
    uvicorn.run(app, host=host, port=port, log_level="info", http=BoundedHead, proxy_headers=False)
