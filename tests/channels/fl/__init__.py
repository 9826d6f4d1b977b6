"""Tests of channels/fl."""
