"""Prints an HS256 JWT for SUB (argv[1]), valid for an hour, signed with
$JWT_SECRET: what an identity provider would issue, for CI's runs against
the server that takes tokens."""

import base64
import hashlib
import hmac
import json
import os
import sys
import time


def part(value: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


now = int(time.time())
body = part({"alg": "HS256", "typ": "JWT"}) + "." + part({"sub": sys.argv[1], "iat": now, "exp": now + 3600})
signature = hmac.new(os.environ["JWT_SECRET"].encode(), body.encode(), hashlib.sha256).digest()
print(body + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode())
