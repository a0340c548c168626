"""Basic auth for fti's registry, with read-only users that can write nothing at all.

MLflow's basic-auth app gives every user READ on what others made, but lets any logged-in user create
new experiments, runs and registered models (the creator becomes their manager). For the inference and
monitor services' account that is a write into the registry they should never make. This function is
the server's ``authorization_function`` (docker/mlflow/basic_auth.ini): it authenticates as MLflow's own
does, then refuses with 403 every request of a user named in ``FTI_REGISTRY_READ_ONLY_USERS`` (comma
separated) that is not a read. Reads are GET/HEAD/OPTIONS and the POST search endpoints MLflow's client
uses for listing (``.../search``); anything else -- create, update, delete, log, set alias or tag,
artifact upload, GraphQL -- is a write. MLflow calls it on its Flask and FastAPI paths alike.
"""

from __future__ import annotations

import os

from flask import Response, make_response, request
from mlflow.server.auth import authenticate_request_basic_auth

READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def read_only_users() -> frozenset[str]:
    return frozenset(u.strip() for u in os.environ.get("FTI_REGISTRY_READ_ONLY_USERS", "").split(",") if u.strip())


def is_read(method: str, path: str) -> bool:
    if method.upper() in READ_METHODS:
        return True
    return method.upper() == "POST" and path.rstrip("/").endswith("/search") and "/graphql" not in path


def authenticate():  # -> Authorization | Response (werkzeug's types; untyped here on purpose)
    authorization = authenticate_request_basic_auth()
    if isinstance(authorization, Response):
        return authorization
    if authorization.username in read_only_users() and not is_read(request.method, request.path):
        res = make_response(f"Permission denied: {authorization.username} is a read-only registry user")
        res.status_code = 403
        return res
    return authorization
