"""A web server that answers every path with an HTML page (``misconfigured.sh``)."""

import http.server
import sys


class _Page(http.server.BaseHTTPRequestHandler):
    """200 and a small HTML page for any GET or POST."""

    def _page(self) -> None:
        body = b"<html><body><h1>Welcome to nginx!</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _page
    do_POST = _page

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet."""


if __name__ == "__main__":
    http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), _Page).serve_forever()
