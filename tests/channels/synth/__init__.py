"""Tests of channels/synth."""
