"""The doctor: a read-only readout of Restate (``probes``), rendered for people (``render``) and
turned into the findings automations act on (``findings``)."""
