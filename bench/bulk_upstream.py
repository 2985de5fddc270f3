#!/usr/bin/env python3
"""A minimal Bulk Data upstream for bench/bulk.sh (127.0.0.1 only).

Serves, under /fhir/R4/: `Group/{id}/$export` (202 + Content-Location), `$bulk-status/1`
(200 manifest at once), `$bulk-files/1/0` (an NDJSON file of SIZE_MB megabytes generated on the
fly, never held whole), DELETE on the status URL; and `/oauth2/token` (client credentials) for
Medplum's client-credentials install. Every FHIR call needs `Authorization: Bearer bench-token`.
Usage: bulk_upstream.py PORT SIZE_MB
"""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
SIZE = int(sys.argv[2]) * 1024 * 1024
BASE = f"http://127.0.0.1:{PORT}/fhir/R4/"
TOKEN = "bench-token"
LINE = (
    json.dumps(
        {
            "resourceType": "Observation",
            "id": "obs-0000000",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/pat-0001"},
            "valueQuantity": {"value": 72, "unit": "/min"},
            "text": {"status": "generated", "div": "<div>" + "x" * 700 + "</div>"},
        }
    )
    + "\n"
).encode()
CHUNK = LINE * 64


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, body=b"", headers=()):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def authorized(self):
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self.send(401, b'{"resourceType":"OperationOutcome","issue":[]}')
            return False
        return True

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        if self.path.startswith("/oauth2/token"):
            body = json.dumps({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})
            return self.send(200, body.encode(), [("Content-Type", "application/json")])
        self.send(404)

    def do_DELETE(self):
        if self.authorized():
            self.send(202)

    def do_GET(self):
        path = self.path.split("?")[0]
        if not path.startswith("/fhir/R4/"):
            return self.send(404)
        rest = path[len("/fhir/R4/"):]
        if rest.startswith(".well-known") or rest == "metadata":
            return self.send(404)
        if not self.authorized():
            return
        if rest.endswith("$export"):
            return self.send(202, b"", [("Content-Location", BASE + "$bulk-status/1")])
        if rest == "$bulk-status/1":
            lines = SIZE // len(LINE)
            manifest = {
                "transactionTime": "2026-12-01T00:00:00Z",
                "request": BASE + "Group/bench/$export",
                "requiresAccessToken": True,
                "output": [{"type": "Observation", "url": BASE + "$bulk-files/1/0", "count": lines}],
                "error": [],
            }
            return self.send(200, json.dumps(manifest).encode(), [("Content-Type", "application/json")])
        if rest == "$bulk-files/1/0":
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            sent = 0
            while sent < SIZE:
                piece = CHUNK[: min(len(CHUNK), SIZE - sent)]
                piece = piece[: len(piece) - len(piece) % len(LINE)] or LINE
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                sent += len(piece)
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send(404)


ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
