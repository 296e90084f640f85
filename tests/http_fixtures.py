"""A loopback HTTP server for download tests (no network needed).

``serve_archives(routes)`` serves ``routes[path] = (body, content_length)``
on 127.0.0.1 at a free port, from a thread, and records every requested path
in ``server.requests``. Sending a Content-Length larger than the body
simulates a connection dropped mid-download (HTTP/1.0: the connection closes
after each response).

Usage::

    with serve_archives({"/a.zip": (data, len(data))}) as server:
        urllib.request.urlopen(server.url("/a.zip"))
        assert server.requests == ["/a.zip"]
"""

import contextlib
import http.server
import threading


class ArchiveHandler(http.server.BaseHTTPRequestHandler):
    """Answers GET with ``server.routes[path]``, 404 for unknown paths."""

    def do_GET(self):
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, length = route
        self.send_response(200)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serve_archives(routes):
    """Runs the server for the duration of the ``with`` block.

    Yields the server, with ``routes``, ``requests`` (paths in request order)
    and ``url(path)`` (the full URL of ``path``)."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ArchiveHandler)
    httpd.routes = routes
    httpd.requests = []
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
