"""Leases from a Jumpstarter controller (placeholder; filled in below)."""
