"""The operator HTTP API (FastAPI): the four spec routes and the alert receiver under
``/api/v2/admin/operator/restate/``, API-key authentication, the error envelope, an audit row per
attempt. ``main.create_app`` builds it; ``routes`` holds the routes, ``deps`` their dependencies,
``errors`` the envelope and its handlers, ``middleware`` the request id and body cap."""
