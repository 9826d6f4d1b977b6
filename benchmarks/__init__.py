"""Reproducible measurements (run by hand; they print tables). ``loadkit`` is shared with the tests."""
