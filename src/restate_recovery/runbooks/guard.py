"""The guard every write runbook passes first: the doctor must have reached the admin API."""

from __future__ import annotations

from restate_recovery.errors import AdminUnreachableError
from restate_recovery.models import DoctorReadout


def guard_admin(readout: DoctorReadout) -> None:
    """Refuse (``RESTATE_ADMIN_UNREACHABLE``) unless the doctor before reached the admin API."""
    if readout.admin.status != "ok":
        raise AdminUnreachableError(
            f"The Restate admin API is {readout.admin.status}: fix connectivity first, then rerun "
            "doctor (no write was attempted)"
        )
