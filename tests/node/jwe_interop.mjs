// Drives Node's `jose` for trustwire's sealed-message interop tests
// (tests/interop_node_jwe.rs).
//
// Reads one JSON request from standard input and writes one JSON response
// to standard output. Exits 0 whenever it produced a response, including
// when decryption fails ({"ok": false, "code": ...}), and 2 on a bad request.
// Byte strings travel as base64url.
//
//   {"op": "decrypt", "jwe", "jwk"}
//     jwe: a compact JWE string or a general JSON JWE object; jwk: a private JWK
//     -> {"ok": true, "plaintext", "protectedHeader"} or {"ok": false, "code", "message"}
//   {"op": "encrypt", "jwk", "plaintext", "protectedHeader"}
//     -> {"jwe"}: compact, to the public jwk, with the given protected header
//   {"op": "encrypt_general", "recipients", "plaintext", "protectedHeader"}
//     recipients: public JWKs; each gets {alg, kid} in its own header
//     -> {"jwe"}: general JSON serialization

import * as jose from 'jose';

const ALG = 'ECDH-ES+A256KW';

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

async function decrypt(request) {
  const key = await jose.importJWK(request.jwk, ALG);
  const options = { keyManagementAlgorithms: [ALG], contentEncryptionAlgorithms: ['A256GCM'] };
  try {
    if (typeof request.jwe === 'string') {
      const { plaintext, protectedHeader } = await jose.compactDecrypt(request.jwe, key, options);
      return { ok: true, plaintext: jose.base64url.encode(plaintext), protectedHeader };
    }
    const { plaintext, protectedHeader } = await jose.generalDecrypt(request.jwe, key, options);
    return { ok: true, plaintext: jose.base64url.encode(plaintext), protectedHeader };
  } catch (error) {
    return { ok: false, code: error.code ?? 'ERR_UNKNOWN', message: String(error.message) };
  }
}

async function encrypt(request) {
  const key = await jose.importJWK(request.jwk, ALG);
  const jwe = await new jose.CompactEncrypt(jose.base64url.decode(request.plaintext))
    .setProtectedHeader(request.protectedHeader)
    .encrypt(key);
  return { jwe };
}

async function encryptGeneral(request) {
  const encryption = new jose.GeneralEncrypt(jose.base64url.decode(request.plaintext)).setProtectedHeader(
    request.protectedHeader,
  );
  for (const jwk of request.recipients) {
    const key = await jose.importJWK(jwk, ALG);
    encryption.addRecipient(key).setUnprotectedHeader({ alg: ALG, kid: jwk.kid });
  }
  return { jwe: await encryption.encrypt() };
}

const operations = { decrypt, encrypt, encrypt_general: encryptGeneral };

const request = await readStdin();
const operation = operations[request.op];
if (operation === undefined) {
  process.stderr.write(`unknown op ${JSON.stringify(request.op)}; expected decrypt, encrypt or encrypt_general\n`);
  process.exit(2);
}
process.stdout.write(JSON.stringify(await operation(request)));
