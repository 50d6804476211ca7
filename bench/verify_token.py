"""``python -m bench.verify_token``: CPU per ``relay.auth.verify_token`` call, in µs.

A micro-benchmark for the connect phase's JWT share: one token shaped like the app's
(``issue_token``), verified in a loop, plus the two refusals a client meets most (a bad
signature, an expired token). Best of ``--repeat`` runs of ``--number`` calls, so another
process's burst of CPU is not counted.
"""

from __future__ import annotations

import argparse
import time
import timeit

import jwt

from relay.auth import AuthError, issue_token, verify_token

SECRET = b"0123456789abcdef" * 4  # the size `openssl rand -hex 32` gives


def _refused(token: str) -> None:
    try:
        verify_token(token, SECRET)
    except AuthError:
        return
    raise AssertionError("the token was accepted")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="calls per run")
    parser.add_argument("--repeat", type=int, default=7, help="runs; the best one counts")
    args = parser.parse_args()
    now = int(time.time())
    valid = issue_token("user-12345", SECRET)
    forged = issue_token("user-12345", b"x" * 64)
    expired = jwt.encode({"userId": "user-12345", "iat": now - 7200, "exp": now - 3600,
                          "iss": "papr-app", "aud": "papr-realtime"}, SECRET, algorithm="HS256")
    cases = {
        "valid token": lambda: verify_token(valid, SECRET),
        "bad signature": lambda: _refused(forged),
        "expired": lambda: _refused(expired),
    }
    for name, call in cases.items():
        best = min(timeit.repeat(call, number=args.number, repeat=args.repeat))
        print(f"{name:14} {best / args.number * 1e6:7.2f} µs per verify_token")


if __name__ == "__main__":
    main()
