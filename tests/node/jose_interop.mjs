// Drives Node's `jose` for trustwire's interop tests (tests/interop_node.rs).
//
// Reads one JSON request from standard input and writes one JSON response
// to standard output. Exits 0 whenever it produced a response, including when a
// token is rejected ({"ok": false, "code": ...}), and 2 on a bad request.
//
//   {"op": "verify", "token", "jwks", "issuer", "audience", "algorithms"}
//     -> {"ok": true, "header", "payload"} or {"ok": false, "code", "message"}
//   {"op": "sign", "alg", "claims"}
//     -> {"token", "jwk"}: a fresh key pair; jwk is the public key with its
//        RFC 7638 thumbprint as kid, which is also the token's kid
//   {"op": "thumbprint", "jwk"} -> {"thumbprint"}

import * as jose from 'jose';

const TYP = 'trustwire+jwt';

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

async function verify(request) {
  const keys = jose.createLocalJWKSet(request.jwks);
  try {
    const { payload, protectedHeader } = await jose.jwtVerify(request.token, keys, {
      issuer: request.issuer,
      audience: request.audience,
      typ: TYP,
      algorithms: request.algorithms,
    });
    return { ok: true, header: protectedHeader, payload };
  } catch (error) {
    return { ok: false, code: error.code ?? 'ERR_UNKNOWN', message: String(error.message) };
  }
}

async function sign(request) {
  const { publicKey, privateKey } = await jose.generateKeyPair(request.alg, { extractable: true });
  const jwk = await jose.exportJWK(publicKey);
  const kid = await jose.calculateJwkThumbprint(jwk);
  const token = await new jose.SignJWT(request.claims)
    .setProtectedHeader({ alg: request.alg, kid, typ: TYP })
    .sign(privateKey);
  return { token, jwk: { ...jwk, kid, alg: request.alg, use: 'sig' } };
}

async function thumbprint(request) {
  return { thumbprint: await jose.calculateJwkThumbprint(request.jwk) };
}

const operations = { verify, sign, thumbprint };

const request = await readStdin();
const operation = operations[request.op];
if (operation === undefined) {
  process.stderr.write(`unknown op ${JSON.stringify(request.op)}; expected verify, sign or thumbprint\n`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(await operation(request)));
