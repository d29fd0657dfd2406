"""An MCP server that requires an OAuth access token, for tests/mcp.rs: the official MCP Python
SDK's MCPServer over Streamable HTTP on 127.0.0.1, protected-resource metadata (RFC 9728) naming
the authorization server, and a token verifier that accepts only a JWT access token (RFC 9068)
signed by that server's keys, for this resource, with the required scope. One tool, `whoami`,
answers with the token's subject and scopes.

    python server.py '{"port": P, "issuer": "http://127.0.0.1:...", "resource": "http://127.0.0.1:P/mcp",
                       "scope": "mcp:tools"}'

Prints {"event":"listening","url":...} on stdout once it serves, and stops when stdin closes.
"""

import json
import sys
import threading
import os

import anyio
import jwt
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer

config = json.loads(sys.argv[1])
ISSUER, RESOURCE, SCOPE = config["issuer"], config["resource"], config["scope"]


class JwtAccessTokens:
    """Verifies RFC 9068 JWT access tokens with the authorization server's published keys."""

    def __init__(self) -> None:
        self.keys = jwt.PyJWKClient(f"{ISSUER}/jwks")

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            key = await anyio.to_thread.run_sync(self.keys.get_signing_key_from_jwt, token)
            claims = jwt.decode(
                token,
                key.key,
                algorithms=["RS256"],
                issuer=ISSUER,
                audience=RESOURCE,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as error:
            print(json.dumps({"event": "token_refused", "error": str(error)}), file=sys.stderr, flush=True)
            return None
        return AccessToken(
            token=token,
            client_id=claims.get("client_id", ""),
            scopes=claims.get("scope", "").split(),
            expires_at=claims["exp"],
            resource=RESOURCE,
            subject=claims["sub"],
            claims={"iss": claims["iss"]},
        )


server = MCPServer(
    "relay-test",
    token_verifier=JwtAccessTokens(),
    auth=AuthSettings(
        issuer_url=ISSUER,
        resource_server_url=RESOURCE,
        required_scopes=[SCOPE],
        validate_token_resource=True,
    ),
)


@server.tool()
def whoami() -> str:
    """Who the access token was issued to, and for what."""
    token = get_access_token()
    return json.dumps({"subject": token.subject, "scopes": token.scopes, "client_id": token.client_id})


def stop_when_stdin_closes() -> None:
    sys.stdin.read()
    os._exit(0)


async def main() -> None:
    import uvicorn

    app = server.streamable_http_app(streamable_http_path="/mcp")
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=config["port"], log_level="warning"))

    async def announce() -> None:
        while not uv.started:
            await anyio.sleep(0.05)
        print(json.dumps({"event": "listening", "url": RESOURCE}), flush=True)

    async with anyio.create_task_group() as tg:
        tg.start_soon(announce)
        await uv.serve()


threading.Thread(target=stop_when_stdin_closes, daemon=True).start()
anyio.run(main)
