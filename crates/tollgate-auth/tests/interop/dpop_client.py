"""An independent DPoP client (RFC 9449) for tollgate-auth's interop test.

Uses joserfc (https://jose.authlib.org), a maintained JOSE library, for keys,
signatures and RFC 7638 thumbprints; nothing here is shared with the Rust side.
For each algorithm: make a key, get a token bound to it from POST /token (a proof
without `ath`), call GET /me with the DPoP scheme and a proof with `ath`, then
replay that proof. Prints one JSON object per algorithm on stdout.

Usage: python3 dpop_client.py http://127.0.0.1:PORT
"""

import base64
import hashlib
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
import warnings

from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

warnings.simplefilter("ignore")  # joserfc flags EdDSA as deprecated (RFC 9864)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def proof(key, alg, htm, htu, token=None):
    header = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False)}
    claims = {"jti": str(uuid.uuid4()), "htm": htm, "htu": htu, "iat": int(time.time())}
    if token is not None:
        claims["ath"] = b64url(hashlib.sha256(token.encode()).digest())
    return jwt.encode(header, claims, key, algorithms=[alg])


def call(method, url, headers, body=None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def main(base):
    keys = [
        ("ES256", ECKey.generate_key("P-256")),
        ("ES384", ECKey.generate_key("P-384")),
        ("EdDSA", OKPKey.generate_key("Ed25519")),
        ("RS256", RSAKey.generate_key(2048)),
        ("PS256", RSAKey.generate_key(2048)),
    ]
    for alg, key in keys:
        out = {"alg": alg}
        status, body = call("POST", f"{base}/token", {"DPoP": proof(key, alg, "POST", f"{base}/token")}, b"")
        out["token_status"] = status
        if status != 200:
            print(json.dumps(out), flush=True)
            continue
        token = json.loads(body)["access_token"]
        payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        out["jkt_matches"] = payload.get("cnf", {}).get("jkt") == key.thumbprint()
        p = proof(key, alg, "GET", f"{base}/me", token)
        headers = {"Authorization": f"DPoP {token}", "DPoP": p}
        out["me_status"], _ = call("GET", f"{base}/me", headers)
        out["replay_status"], _ = call("GET", f"{base}/me", headers)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
