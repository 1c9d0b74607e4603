"""Drives Python's joserfc for trustwire's sealed-message interop tests
(tests/interop_python_jwe.rs).

Reads one JSON request from standard input and writes one JSON response to
standard output. Exits 0 whenever it produced a response, including when
decryption fails ({"ok": false, "error": ...}), and 2 on a bad request.
Byte strings travel as base64url.

  {"op": "decrypt", "jwe", "jwk"}
    jwe: a compact JWE string or a general JSON JWE object; jwk: a private JWK
    -> {"ok": true, "plaintext", "protected"} or {"ok": false, "error", "message"}
  {"op": "encrypt", "jwk", "plaintext", "protected"}
    -> {"jwe"}: compact, to the public jwk, with the given protected header
  {"op": "encrypt_general", "recipients", "plaintext", "protected"}
    recipients: public JWKs; each gets {alg, kid} in its own header
    -> {"jwe"}: general JSON serialization
"""

import base64
import json
import sys

from joserfc import jwe
from joserfc.errors import JoseError
from joserfc.jwk import import_key
from joserfc.registry import HeaderParameter

ALG = "ECDH-ES+A256KW"
ENC = "A256GCM"


def registry():
    # trustwire copies the token's iss and jti into the protected header.
    # joserfc rejects header members it does not know, so they are
    # registered here.
    return jwe.JWERegistry(
        header_registry={
            "iss": HeaderParameter("Issuer", "str"),
            "jti": HeaderParameter("JWT ID", "str"),
        },
        algorithms=[ALG, ENC],
    )


def b64decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64encode(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def decrypt_own_entry(document, jwk):
    # joserfc 1.8.0 looks up a key for every recipient entry before it
    # decrypts: a key set fails on the first unknown kid, and a bare key
    # fails with a KeyError on an entry of another curve. So the driver keeps
    # only the entry addressed to its kid. Every entry wraps the same content
    # key, and the entries are not part of the AES-GCM additional data.
    own = [entry for entry in document["recipients"] if entry.get("header", {}).get("kid") == jwk["kid"]]
    if not own:
        raise ValueError(f"no recipient entry has kid {jwk['kid']!r}")
    return jwe.decrypt_json({**document, "recipients": own}, import_key(jwk), registry=registry())


def decrypt(request):
    try:
        if isinstance(request["jwe"], str):
            result = jwe.decrypt_compact(request["jwe"], import_key(request["jwk"]), registry=registry())
        else:
            result = decrypt_own_entry(request["jwe"], request["jwk"])
    except (JoseError, ValueError) as error:
        return {"ok": False, "error": type(error).__name__, "message": str(error)}
    return {"ok": True, "plaintext": b64encode(result.plaintext), "protected": result.protected}


def encrypt(request):
    key = import_key(request["jwk"])
    token = jwe.encrypt_compact(request["protected"], b64decode(request["plaintext"]), key, registry=registry())
    return {"jwe": token}


def encrypt_general(request):
    message = jwe.GeneralJSONEncryption(protected=request["protected"], plaintext=b64decode(request["plaintext"]))
    for jwk in request["recipients"]:
        message.add_recipient({"alg": ALG, "kid": jwk["kid"]}, import_key(jwk))
    return {"jwe": jwe.encrypt_json(message, None, registry=registry())}


OPERATIONS = {"decrypt": decrypt, "encrypt": encrypt, "encrypt_general": encrypt_general}


def main():
    request = json.load(sys.stdin)
    operation = OPERATIONS.get(request.get("op"))
    if operation is None:
        print(f"unknown op {request.get('op')!r}; expected decrypt, encrypt or encrypt_general", file=sys.stderr)
        return 2
    json.dump(operation(request), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
