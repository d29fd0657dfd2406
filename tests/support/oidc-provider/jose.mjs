// A caller's side of a sealed hand-off, done with `jose` (panva/jose, pinned in package.json) as
// a Node program would: make a key pair, open a sealed answer. tests/seal.rs runs it with one
// JSON request on stdin and reads one JSON answer on stdout:
//   {"op":"generate","crv":"P-256"|"X25519"}     -> {"private":JWK,"public":JWK}
//   {"op":"thumbprint","jwk":JWK}                  -> {"thumbprint":"..."}
//   {"op":"open","key":JWK,"jwe":"...","issuer":"...","audience":"...","seen":["jti",...],
//    "now":SECONDS?}                               -> {"ok":true,"claims":{...},"header":{...}}
//                                                     or {"ok":false,"error":"..."}
// Opening checks what a careful caller checks: the algorithms and type it expects, `iss`, `aud`
// (the state of the session it created), `exp` (at `now` when given), and a `jti` it has not
// seen (`seen` stands for the caller's replay cache).
import {
  calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, jwtDecrypt,
} from 'jose';

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString('utf8'));

async function answer() {
  switch (request.op) {
    case 'generate': {
      const { publicKey, privateKey } = await generateKeyPair('ECDH-ES', {
        crv: request.crv, extractable: true,
      });
      return { private: await exportJWK(privateKey), public: await exportJWK(publicKey) };
    }
    case 'thumbprint':
      return { thumbprint: await calculateJwkThumbprint(request.jwk, 'sha256') };
    case 'open':
      try {
        const key = await importJWK(request.key, 'ECDH-ES');
        const { payload, protectedHeader } = await jwtDecrypt(request.jwe, key, {
          issuer: request.issuer,
          audience: request.audience,
          keyManagementAlgorithms: ['ECDH-ES'],
          contentEncryptionAlgorithms: ['A256GCM'],
          typ: 'oauth-relay-answer+jwt',
          requiredClaims: ['iss', 'aud', 'iat', 'exp', 'jti'],
          currentDate: request.now === undefined ? undefined : new Date(request.now * 1000),
        });
        if ((request.seen || []).includes(payload.jti)) {
          return { ok: false, error: `replayed: jti ${payload.jti} was seen before` };
        }
        return { ok: true, claims: payload, header: protectedHeader };
      } catch (e) {
        return { ok: false, error: `${e.code || e.name}: ${e.message}` };
      }
    default:
      throw new Error(`unknown op ${request.op}`);
  }
}

process.stdout.write(JSON.stringify(await answer()) + '\n');
