"""A caller's side of a sealed hand-off, done with jwcrypto (pinned by scripts/test.sh in
target/test-venv) as a Python program would: make a key pair, open a sealed answer.
tests/seal.rs runs it with one JSON request on stdin and reads one JSON answer on stdout:
  {"op":"generate","crv":"P-256"|"X25519"}     -> {"private":JWK,"public":JWK}
  {"op":"open","key":JWK,"jwe":"...","issuer":"...","audience":"...","seen":["jti",...],
   "now":SECONDS?}                               -> {"ok":true,"claims":{...},"header":{...}}
                                                    or {"ok":false,"error":"..."}
Opening checks what a careful caller checks: the algorithms and type it expects, `iss`, `aud`
(the state of the session it created), `exp` (at `now` when given), and a `jti` it has not seen
(`seen` stands for the caller's replay cache).
"""

import json
import sys
import time
from unittest import mock

from jwcrypto import jwk, jwt

TYP = "oauth-relay-answer+jwt"


def generate(crv):
    kty = "EC" if crv == "P-256" else "OKP"
    key = jwk.JWK.generate(kty=kty, crv=crv)
    return {
        "private": json.loads(key.export_private()),
        "public": json.loads(key.export_public()),
    }


def open_answer(request):
    key = jwk.JWK(**request["key"])
    now = request.get("now")
    try:
        # jwcrypto checks exp against time.time(): `now` moves that clock.
        with mock.patch.object(time, "time", return_value=now if now is not None else time.time()):
            token = jwt.JWT(
                jwt=request["jwe"],
                key=key,
                expected_type="JWE",
                algs=["ECDH-ES", "A256GCM"],
                check_claims={
                    "iss": request["issuer"],
                    "aud": request["audience"],
                    "exp": None,
                    "iat": None,
                    "jti": None,
                },
            )
        header = json.loads(token.header)
        if header.get("typ") != TYP:
            return {"ok": False, "error": f"unexpected typ {header.get('typ')!r}"}
        claims = json.loads(token.claims)
        if claims["jti"] in request.get("seen", []):
            return {"ok": False, "error": f"replayed: jti {claims['jti']} was seen before"}
        return {"ok": True, "claims": claims, "header": header}
    except Exception as e:  # every refusal is an answer, not a crash
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def main():
    request = json.load(sys.stdin)
    if request["op"] == "generate":
        answer = generate(request["crv"])
    elif request["op"] == "open":
        answer = open_answer(request)
    else:
        raise SystemExit(f"unknown op {request['op']}")
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
