"""Where the operator routes live. Imports nothing: the CLI's remote mode reads it too."""

PREFIX = "/api/v2/admin/operator/restate"


def route(name: str) -> str:
    """The path of an operator route (``doctor`` -> ``/api/v2/admin/operator/restate/doctor``)."""
    return f"{PREFIX}/{name}"
