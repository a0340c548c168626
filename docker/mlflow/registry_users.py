# ruff: noqa: T201 - a one-shot job: its prints are its log
"""Create (or update the password of) the registry users fti's services log in as; run once per `up`.

Users come from the environment: FTI_REGISTRY_USERS="name:password,name:password". The admin account
(MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD) makes them. The training user then owns the
experiment and registered model it creates (it can write them); every other user can only read them
(the server's default permission), so the inference service cannot register or re-point a model.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

URL = os.environ.get("MLFLOW_TRACKING_URI", "http://mlflow:5000").rstrip("/")


def call(method: str, path: str, body: dict[str, str] | None) -> tuple[int, str]:
    token = base64.b64encode(f"{os.environ['MLFLOW_AUTH_ADMIN_USERNAME']}:"
                             f"{os.environ['MLFLOW_AUTH_ADMIN_PASSWORD']}".encode()).decode()
    req = urllib.request.Request(f"{URL}{path}", data=None if body is None else json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def main() -> int:
    users = [u.split(":", 1) for u in os.environ.get("FTI_REGISTRY_USERS", "").split(",") if ":" in u]
    if not users:
        print("registry-users: FTI_REGISTRY_USERS is empty; nothing to do", file=sys.stderr)
        return 2
    for _attempt in range(60):  # the server may still be starting
        status, _ = call("GET", "/api/2.0/mlflow/users/get?username=" + os.environ["MLFLOW_AUTH_ADMIN_USERNAME"], None)
        if status == 200:
            break
        time.sleep(2)
    else:
        print("registry-users: the tracking server did not accept the admin login", file=sys.stderr)
        return 1
    for name, password in users:
        status, text = call("POST", "/api/2.0/mlflow/users/create", {"username": name, "password": password})
        if status == 200:
            print(f"registry-users: created {name}")
            continue
        status, text = call("PATCH", "/api/2.0/mlflow/users/update-password", {"username": name, "password": password})
        if status != 200:
            print(f"registry-users: cannot create or update {name}: {status} {text[:200]}", file=sys.stderr)
            return 1
        print(f"registry-users: {name} exists; password set")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
