"""A Range-capable static HTTP server on 127.0.0.1 for yt-dlp tests (http.server ignores Range)."""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class RangeHandler(SimpleHTTPRequestHandler):
    # path -> HTTP status to answer instead of the file (e.g. 429 for a rate-limited "video")
    forced: dict[str, int] = {}
    # path -> requests seen, to tell whether something was downloaded again
    requests: Counter = Counter()

    def log_message(self, *args):
        pass

    def send_head(self):
        self.requests[self.path] += 1
        if (code := self.forced.get(self.path)) is not None:
            self.send_error(code)
            return None
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        size = os.path.getsize(path)
        m = re.match(r"bytes=(\d*)-(\d*)$", self.headers.get("Range", ""))
        f = open(path, "rb")  # noqa: SIM115 - closed by the base class after copyfile
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else size - 1
            else:
                start, end = size - int(m.group(2)), size - 1
            end = min(end, size - 1)
            if start >= size:
                f.close()
                self.send_error(416)
                return None
            f.seek(start)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.send_header("Content-Length", str(end - start + 1))
            self._remaining = end - start + 1
        else:
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self._remaining = size
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        return f

    def copyfile(self, source, outputfile):
        remaining = getattr(self, "_remaining", None)
        while remaining is None or remaining > 0:
            chunk = source.read(min(65536, remaining) if remaining is not None else 65536)
            if not chunk:
                break
            try:
                outputfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # ffmpeg closes connections when it seeks
            if remaining is not None:
                remaining -= len(chunk)


class RangeServer:
    def __init__(self, directory: str):
        handler = partial(RangeHandler, directory=directory)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
