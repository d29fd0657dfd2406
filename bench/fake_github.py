#!/usr/bin/env python3
"""A local fake GitHub OAuth app and REST API for broker sign-in benchmarks (127.0.0.1 only).

  fake_github.py PORT [--delay SECS] [--client-id ID] [--client-secret SECRET] [--email ADDR]
                       [--app SECS]

  GET  /login/oauth/authorize?client_id&redirect_uri&state&code_challenge&code_challenge_method=S256
       -> 302 to redirect_uri?code=<fresh code>&state=<state> (the challenge is remembered)
  POST /login/oauth/access_token  (form: client_id, client_secret, code, redirect_uri,
       code_verifier) -> after --delay seconds, with Accept: application/json,
       {"access_token","token_type":"bearer","scope"}; codes are one-time, the verifier must
       hash (S256) to the challenge, and errors are HTTP 200 {"error": ...} as GitHub's are
  GET  /user         (Bearer token) -> {"id","login","email":null}
  GET  /user/emails  (Bearer token) -> [{"email": ADDR, "primary": true, "verified": true}]

With --app SECS it is a GitHub App with expiring user tokens: answers carry `expires_in` SECS and
a `refresh_token`, which `grant_type=refresh_token` redeems once (GitHub's rule: a used one is
`bad_refresh_token`) for new tokens; `GET /_stats` answers {"refresh_ms": [...]}, how long each
successful refresh took inside the fake (its own handling, from the request's arrival to its
answer), in order (for bench/connections.py, which subtracts it from what a caller waited).

One asyncio loop, HTTP/1.1 with keep-alive and Content-Length bodies only (all the relay's ureq
client and bench/signins.py send); --delay sleeps without holding anything, so any number of
slow token requests wait in parallel. On SIGTERM or SIGINT it prints one line of counters,
`FAKE_GITHUB authorize=.. token=.. api=.. errors=..`, and exits.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import secrets
import signal
import sys
import time
import urllib.parse
from collections import Counter, OrderedDict

SCOPE = "read:user user:email"
MAX_CODES = 200_000  # unredeemed codes and live tokens kept, oldest dropped first
MAX_TOKENS = 200_000

COUNTS = Counter()


def s256(verifier):
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class FakeGitHub:
    def __init__(self, args):
        self.delay = args.delay
        self.client_id = args.client_id
        self.client_secret = args.client_secret
        self.email = args.email
        self.codes = OrderedDict()  # code -> (challenge, redirect_uri, client_id)
        self.tokens = OrderedDict()  # access token -> user id
        self.refresh = OrderedDict()  # refresh token -> user id (one-time)
        self.app = args.app
        self.refresh_ms = []
        self.next_user = 1000

    @staticmethod
    def remember(table, key, value, cap):
        table[key] = value
        if len(table) > cap:
            table.popitem(last=False)

    def authorize(self, query):
        q = {k: v[0] for k, v in urllib.parse.parse_qs(query).items()}
        redirect_uri, state = q.get("redirect_uri"), q.get("state")
        if (q.get("client_id") != self.client_id or not redirect_uri or not state
                or not q.get("code_challenge") or q.get("code_challenge_method") != "S256"):
            COUNTS["errors"] += 1
            return 400, {"Content-Type": "text/plain"}, b"bad authorize request\n"
        code = secrets.token_hex(10)
        self.remember(self.codes, code, (q["code_challenge"], redirect_uri, q["client_id"]),
                      MAX_CODES)
        COUNTS["authorize"] += 1
        sep = "&" if "?" in redirect_uri else "?"
        location = redirect_uri + sep + urllib.parse.urlencode({"code": code, "state": state})
        return 302, {"Location": location}, b""

    def grant(self, user):
        token = ("ghu_" if self.app else "gho_") + secrets.token_hex(16)
        self.remember(self.tokens, token, user, MAX_TOKENS)
        answer = {"access_token": token, "token_type": "bearer", "scope": "" if self.app else SCOPE}
        if self.app:
            refresh = "ghr_" + secrets.token_hex(32)
            self.remember(self.refresh, refresh, user, MAX_TOKENS)
            answer.update({"expires_in": self.app, "refresh_token": refresh,
                           "refresh_token_expires_in": 15811200})
        return answer

    async def access_token(self, headers, body):
        started = time.perf_counter()
        if self.delay > 0:
            await asyncio.sleep(self.delay)
        form = {k: v[0] for k, v in urllib.parse.parse_qs(body.decode()).items()}
        if self.app and form.get("grant_type") == "refresh_token":
            user = self.refresh.pop(form.get("refresh_token", ""), None)
            if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
                answer = {"error": "incorrect_client_credentials"}
            elif user is None:
                answer = {"error": "bad_refresh_token"}
            else:
                answer = self.grant(user)
                COUNTS["refresh"] += 1
            if "error" in answer:
                COUNTS["errors"] += 1
            else:
                self.refresh_ms.append((time.perf_counter() - started) * 1000)
            return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()
        error = None
        entry = self.codes.pop(form.get("code", ""), None)  # one-time, even when refused
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            error = "incorrect_client_credentials"
        elif entry is None:
            error = "bad_verification_code"
        elif entry[1] != form.get("redirect_uri") or entry[2] != form.get("client_id"):
            error = "redirect_uri_mismatch"
        elif s256(form.get("code_verifier", "")) != entry[0]:
            error = "bad_verification_code"  # GitHub's answer to a wrong PKCE verifier
        if error:
            COUNTS["errors"] += 1
            answer = {"error": error, "error_description": error.replace("_", " ")}
        else:
            self.next_user += 1
            COUNTS["token"] += 1
            answer = self.grant(self.next_user)
        if "application/json" in headers.get("accept", ""):
            return 200, {"Content-Type": "application/json"}, json.dumps(answer).encode()
        return 200, {"Content-Type": "application/x-www-form-urlencoded"}, \
            urllib.parse.urlencode(answer).encode()

    def api(self, path, headers):
        auth = headers.get("authorization", "")
        user = self.tokens.get(auth[7:]) if auth[:7].lower() == "bearer " else None
        if user is None:
            COUNTS["errors"] += 1
            return 401, {"Content-Type": "application/json"}, b'{"message":"Bad credentials"}'
        COUNTS["api"] += 1
        if path == "/user":
            body = {"id": user, "login": f"user{user}", "email": None}
        else:
            body = [{"email": self.email, "primary": True, "verified": True,
                     "visibility": "private"}]
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    async def handle(self, method, target, headers, body):
        path, _, query = target.partition("?")
        if method == "GET" and path == "/login/oauth/authorize":
            return self.authorize(query)
        if method == "POST" and path == "/login/oauth/access_token":
            return await self.access_token(headers, body)
        if method == "GET" and path in ("/user", "/user/emails"):
            return self.api(path, headers)
        if method == "GET" and path == "/_stats":
            body = json.dumps({"refresh_ms": self.refresh_ms}).encode()
            return 200, {"Content-Type": "application/json"}, body
        COUNTS["errors"] += 1
        return 404, {"Content-Type": "application/json"}, b'{"message":"Not Found"}'

    async def serve(self, reader, writer):
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, _, value = line.partition(":")
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                body = await reader.readexactly(length) if length else b""
                status, out_headers, out = await self.handle(method, target, headers, body)
                close = (headers.get("connection", "").lower() == "close"
                         or version == "HTTP/1.0")
                reason = {200: "OK", 302: "Found", 400: "Bad Request", 401: "Unauthorized",
                          404: "Not Found"}[status]
                response = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(out)}"]
                response += [f"{k}: {v}" for k, v in out_headers.items()]
                if close:
                    response.append("Connection: close")
                writer.write(("\r\n".join(response) + "\r\n\r\n").encode() + out)
                await writer.drain()
                if close:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def main(args):
    fake = FakeGitHub(args)
    server = await asyncio.start_server(fake.serve, "127.0.0.1", args.port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print(f"FAKE_GITHUB authorize={COUNTS['authorize']} token={COUNTS['token']} "
          f"refresh={COUNTS['refresh']} api={COUNTS['api']} errors={COUNTS['errors']}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("port", type=int)
    p.add_argument("--delay", type=float, default=0.0, help="seconds the token endpoint waits")
    p.add_argument("--client-id", default="bench-client")
    p.add_argument("--client-secret", default="bench-secret")
    p.add_argument("--email", default="ana@example.com")
    p.add_argument("--app", type=int, default=0,
                   help="a GitHub App: user tokens expire after this many seconds and refresh")
    sys.exit(asyncio.run(main(p.parse_args())))
