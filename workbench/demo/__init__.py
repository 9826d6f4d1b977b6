"""Demo data and demo node configurations (three hospitals and an open dataset)."""
