"""A local Restate and a sample workflow service, for the demo job and the test fixtures."""
