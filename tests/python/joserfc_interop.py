"""Drives Python's joserfc for trustwire's interop tests (tests/interop_python.rs).

Reads one JSON request from standard input and writes one JSON response to
standard output. Exits 0 whenever it produced a response, including when a token is
rejected ({"ok": false, "error": ...}), and 2 on a bad request.

  {"op": "verify", "token", "jwks", "issuer", "audience", "algorithms"}
    -> {"ok": true, "header", "claims"} or {"ok": false, "error", "message"}
  {"op": "sign", "alg", "claims"}
    -> {"token", "jwk"}: a fresh key pair; jwk is the public key with its
       RFC 7638 thumbprint as kid, which is also the token's kid
  {"op": "thumbprint", "jwk"} -> {"thumbprint"}
"""

import json
import sys
import warnings

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, import_key
from joserfc.jwt import JWTClaimsRegistry

TYP = "trustwire+jwt"

# joserfc warns that "EdDSA" is deprecated by RFC 9864; trustwire still
# emits it by default for older verifiers, so the warning is expected here.
warnings.filterwarnings("ignore", message="EdDSA is deprecated")


def verify(request):
    keys = KeySet.import_key_set(request["jwks"])
    try:
        token = jwt.decode(request["token"], keys, algorithms=request["algorithms"])
        if token.header.get("typ", "").lower() != TYP:
            return {"ok": False, "error": "WrongType", "message": f"typ is {token.header.get('typ')!r}"}
        registry = JWTClaimsRegistry(
            iss={"essential": True, "value": request["issuer"]},
            aud={"essential": True, "value": request["audience"]},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
        )
        registry.validate(token.claims)
    except JoseError as error:
        return {"ok": False, "error": type(error).__name__, "message": str(error)}
    return {"ok": True, "header": token.header, "claims": token.claims}


def generate_key(alg):
    if alg in ("EdDSA", "Ed25519"):
        return OKPKey.generate_key("Ed25519")
    if alg == "ES256":
        return ECKey.generate_key("P-256")
    raise ValueError(f"unsupported alg {alg!r}; expected EdDSA, Ed25519 or ES256")


def sign(request):
    alg = request["alg"]
    key = generate_key(alg)
    kid = key.thumbprint()
    header = {"alg": alg, "kid": kid, "typ": TYP}
    token = jwt.encode(header, request["claims"], key, algorithms=[alg])
    jwk = key.as_dict(private=False)
    jwk.update({"kid": kid, "alg": alg, "use": "sig"})
    return {"token": token, "jwk": jwk}


def thumbprint(request):
    return {"thumbprint": import_key(request["jwk"]).thumbprint()}


OPERATIONS = {"verify": verify, "sign": sign, "thumbprint": thumbprint}


def main():
    request = json.load(sys.stdin)
    operation = OPERATIONS.get(request.get("op"))
    if operation is None:
        print(f"unknown op {request.get('op')!r}; expected verify, sign or thumbprint", file=sys.stderr)
        return 2
    json.dump(operation(request), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
