"""Tests for lattice.irc (the lattice-irc daemon)."""
