#!/usr/bin/env python3
"""A stand-in Microsoft identity platform and Graph for broker benchmarks: the token endpoint
answers after DELAY seconds (an identity provider that is slow), /v1.0/me answers at once.

  slow_idp.py PORT DELAY_SECS EMAIL

It checks nothing (the tests' fake in tests/support enforces Microsoft's rules); it only has to
keep sign-ins busy for a known time. Threaded, so every stuck sign-in waits in parallel. The
broker checks the id_token's nonce, which the benchmark cannot get to this fake through a real
authorize step: it sends it inside the code instead (`code=bench.<nonce>`).
"""

import base64
import json
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def b64(obj):
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        nonce = form.get("code", [""])[0].partition(".")[2]
        if self.path.endswith("/oauth2/v2.0/token"):
            time.sleep(DELAY)
            tid = "11111111-2222-3333-4444-555555555555"
            self.reply(200, {
                "token_type": "Bearer", "expires_in": 3600, "scope": "User.Read Mail.Read",
                "access_token": "bench-access", "refresh_token": "bench-refresh",
                "id_token": b64({"alg": "none"}) + "." + b64({
                    "tid": tid, "oid": "00000000-0000-0000-0000-0000000000b1", "nonce": nonce,
                }) + ".sig",
            })
        else:
            self.reply(404, {})

    def do_GET(self):
        if self.path.startswith("/v1.0/me"):
            self.reply(200, {"id": "00000000-0000-0000-0000-0000000000b1", "mail": EMAIL,
                             "userPrincipalName": EMAIL})
        else:
            self.reply(404, {})


if __name__ == "__main__":
    PORT, DELAY, EMAIL = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
