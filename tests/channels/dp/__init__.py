"""Tests of channels/dp."""
