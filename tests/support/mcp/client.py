"""An MCP client that signs in through oauth-relay, for tests/mcp.rs: the official MCP Python
SDK's OAuthClientProvider with the relay's /callback as its redirect URI. It cannot receive the
redirect itself, as an agent in a cluster cannot: its redirect handler registers the
authorization request's state with the relay together with the hash of a retrieval secret
(registered-states mode, no operator token) and sends the person (Chromium, browse.mjs) to the
authorization URL; its callback handler long-polls the relay for the code with that secret and
hands the SDK the code, the state and the `iss` exactly as the relay returned them (RFC 9207:
the SDK checks `iss` against the authorization server's metadata). Then it calls a tool.

    python client.py '{"mcp_url", "relay_public", "relay_internal", "issuer", "client_id",
                       "client_secret", "browse": {"dir", "login", "password"}}'

Prints one JSON line: {"tool": <the tool's text>, "retrieved": <the relay's JSON without the
code>, "registered": <status>, "browser": <browse.mjs outcome>, "polls": n}, or {"error": ...}
with exit status 1.
"""

import asyncio
import base64
import hashlib
import json
import secrets
import sys
import time
from urllib.parse import parse_qs, quote, urlparse

import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientInformationFull, OAuthClientMetadata, OAuthToken

config = json.loads(sys.argv[1])
report: dict = {"polls": 0}


class Memory:
    """Token storage: the pre-registered client, and whatever tokens the flow gets."""

    def __init__(self, client: OAuthClientInformationFull) -> None:
        self.client, self.tokens = client, None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


class Relay:
    """The redirect and callback handlers: the relay stands in for a local redirect listener."""

    def __init__(self) -> None:
        self.state: str | None = None
        self.secret: str | None = None
        self.browser: asyncio.subprocess.Process | None = None

    async def redirect(self, authorization_url: str) -> None:
        # The SDK made the state; claim it at the relay before anyone is sent anywhere.
        self.state = parse_qs(urlparse(authorization_url).query)["state"][0]
        self.secret = secrets.token_urlsafe(32)
        digest = hashlib.sha256(self.secret.encode()).digest()
        retrieval_hash = base64.urlsafe_b64encode(digest).decode().rstrip("=")
        async with httpx2.AsyncClient() as http:
            r = await http.post(
                f"{config['relay_internal']}/api/states",
                json={"state": self.state, "retrieval_hash": retrieval_hash},
            )
        report["registered"] = r.status_code
        if r.status_code != 201:
            raise RuntimeError(f"the relay refused the registration: {r.status_code} {r.text}")
        # The person: a real browser through the provider's login and consent pages, which
        # ends at the relay's /callback (the test reads what it saw when the flow is over).
        browse = config["browse"]
        request = {
            "url": authorization_url,
            "issuer": config["issuer"],
            "login": browse["login"],
            "password": browse["password"],
        }
        self.browser = await asyncio.create_subprocess_exec(
            "node", "browse.mjs", json.dumps(request), cwd=browse["dir"],
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )

    async def callback(self) -> AuthorizationCodeResult:
        # Long-poll until the code is there: at the wait's end "not yet" is 404, or 202 to the
        # proven owner of a registered state on relays that tell it apart.
        url = f"{config['relay_internal']}/api/callback/{quote(self.state, safe='')}?wait=60"
        deadline = time.monotonic() + 300  # bounds a broken set-up; not a timing assertion
        async with httpx2.AsyncClient(timeout=90) as http:
            while True:
                report["polls"] += 1
                r = await http.get(url, headers={"X-Retrieval-Secret": self.secret})
                if r.status_code not in (202, 404) or time.monotonic() > deadline:
                    break
        body = r.json()
        report["retrieved"] = {k: v for k, v in body.items() if k != "auth_code"}
        report["retrieved"]["status_code"] = r.status_code
        if r.status_code != 200:
            raise RuntimeError(f"the relay answered {r.status_code}: {body}")
        if body.get("error"):
            raise RuntimeError(f"the sign-in failed at the provider: {body['error']}")
        # `iss` as the provider sent it to the relay, or None: never made up here.
        return AuthorizationCodeResult(code=body["auth_code"], state=body["state"], iss=body.get("iss"))

    async def browser_result(self) -> dict:
        if self.browser is None:
            return {}
        out, err = await self.browser.communicate()
        try:
            result = json.loads(out)
        except ValueError:
            return {"error": f"browse.mjs printed no result: {out!r} {err!r}"}
        return {k: result.get(k) for k in ("outcome", "pages", "status", "error") if k in result}


async def main() -> None:
    relay = Relay()
    client = OAuthClientInformationFull(
        client_id=config["client_id"],
        client_secret=config["client_secret"],
        token_endpoint_auth_method="client_secret_basic",
        redirect_uris=[f"{config['relay_public']}/callback"],
        grant_types=["authorization_code", "refresh_token"],
    )
    auth = OAuthClientProvider(
        server_url=config["mcp_url"],
        client_metadata=OAuthClientMetadata(
            redirect_uris=[f"{config['relay_public']}/callback"],
            token_endpoint_auth_method="client_secret_basic",
        ),
        storage=Memory(client),
        redirect_handler=relay.redirect,
        callback_handler=relay.callback,
    )
    try:
        async with httpx2.AsyncClient(auth=auth, timeout=120) as http:
            async with Client(streamable_http_client(config["mcp_url"], http_client=http)) as mcp:
                result = await mcp.call_tool("whoami", {})
        report["tool"] = [c.text for c in result.content if getattr(c, "type", "") == "text"]
        report["tool_error"] = bool(getattr(result, "is_error", getattr(result, "isError", False)))
    finally:
        report["browser"] = await relay.browser_result()


try:
    asyncio.run(main())
except BaseException as error:  # noqa: BLE001 - the test reads the report either way
    report["error"] = repr(error)
    if isinstance(error, BaseExceptionGroup):
        report["error"] += " " + repr(error.exceptions)
    print(json.dumps(report), flush=True)
    sys.exit(1)
print(json.dumps(report), flush=True)
