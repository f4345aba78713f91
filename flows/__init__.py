"""The Prefect flows, one per runbook file (entrypoints such as ``flows/doctor.py:doctor``)."""
