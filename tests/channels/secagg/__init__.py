"""Tests of channels/secagg."""
