"""Tests for lattice.lsp."""
