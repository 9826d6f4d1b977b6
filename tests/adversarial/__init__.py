"""Tests of adversarial."""
