"""The MLflow server probe: credentials in the URI reach a live server and never an error."""

from __future__ import annotations

import http.server
import socket
import threading

import pytest

from tasks.record import TrackingError, check_tracking


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - the http.server API
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_live_server_passes_with_credentials_in_the_uri():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_tracking(f"http://bob:s3cret@127.0.0.1:{server.server_port}")
        check_tracking(f"http://127.0.0.1:{server.server_port}/")
    finally:
        server.shutdown()


def test_an_unreachable_server_is_named_without_its_password():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(TrackingError) as info:
        check_tracking(f"http://bob:s3cret@127.0.0.1:{port}")
    assert f"http://bob:***@127.0.0.1:{port}" in str(info.value)
    assert "s3cret" not in str(info.value) and info.value.__cause__ is None
