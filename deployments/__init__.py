"""What prefect.yaml cannot say: the serve entrypoint and the automations."""
