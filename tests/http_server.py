"""A local HTTP file server on 127.0.0.1 for streaming tests.

Python's ``http.server`` ignores ``Range``, but fsspec reads parquet footers
with range requests, so this handler answers them (206) like the Hub and
Zenodo do. It logs requests as ``(method, path, Range header)`` tuples (with
all request headers in ``.headers``) so tests can assert how files were read.

Faults for resume tests: ``serve_directory(..., drop_after=N)`` cuts GET
responses of files ending in ``drop_suffix`` after N body bytes by shutting
the socket down (the client sees a body shorter than its Content-Length), for
the first ``drops`` such responses (-1: all of them); ``drop_at=OFFSET`` cuts
them at that file offset instead (a dead spot: resuming there gets nowhere).
``honour_range=False``
makes those files ignore Range like ``http.server`` does (200, whole file).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, List, Optional, Tuple

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class Request(tuple):
    """``(method, path, Range header)``; ``.headers`` holds all the request's headers."""

    headers: dict


@dataclass
class Faults:
    """What the server does wrong to the files ending in ``suffix`` (nothing by default)."""

    drop_after: Optional[int] = None  # body bytes sent before a response is cut
    drops: int = -1  # responses still to cut; -1: every one
    drop_at: Optional[int] = None  # file offset where cut responses stop (instead of drop_after)
    suffix: str = ".tar.zst"
    honour_range: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_drop(self) -> bool:
        with self.lock:
            if (self.drop_after is None and self.drop_at is None) or self.drops == 0:
                return False
            if self.drops > 0:
                self.drops -= 1
            return True


class RangeHandler(SimpleHTTPRequestHandler):
    requests: List[Tuple[str, str, str]]  # (method, path, Range header)
    faults: Faults = Faults()

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _serve(self, head: bool) -> None:
        request = Request((self.command, self.path, self.headers.get("Range", "")))
        request.headers = dict(self.headers)
        self.requests.append(request)
        path = self.translate_path(self.path.split("?")[0])
        if not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        start, end = 0, size - 1
        faulty = self.path.split("?")[0].endswith(self.faults.suffix)
        match = _RANGE.match(self.headers.get("Range", "")) if self.faults.honour_range or not faulty else None
        if match:
            first, last = match.groups()
            if first:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
            else:
                start = max(0, size - int(last))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.end_headers()
                return
        self.send_response(206 if match else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        if match:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        drop = faulty and self.faults.take_drop()
        with open(path, "rb") as f:
            f.seek(start)
            remaining = end - start + 1
            if drop:
                cut = self.faults.drop_after if self.faults.drop_at is None else max(0, self.faults.drop_at - start)
                remaining = min(remaining, cut)
            while remaining > 0:
                chunk = f.read(min(1 << 16, remaining))
                if not chunk:
                    break
                try:
                    self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                remaining -= len(chunk)
        if drop:  # cut the connection mid-body, without a clean end of the response
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def serve_directory(
    directory: str,
    *,
    drop_after: Optional[int] = None,
    drops: int = -1,
    drop_at: Optional[int] = None,
    drop_suffix: str = ".tar.zst",
    honour_range: bool = True,
) -> Iterator[Tuple[str, List[Tuple[str, str, str]]]]:
    """Serve ``directory`` at ``http://127.0.0.1:<free port>``; yields (base URL, request log).

    The fault options are described in the module docstring; the defaults serve correctly.
    """
    log: List[Tuple[str, str, str]] = []
    faults = Faults(drop_after, drops, drop_at, drop_suffix, honour_range)
    handler = type("Handler", (RangeHandler,), {"requests": log, "faults": faults})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=directory))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)  # quick shutdown
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", log
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
