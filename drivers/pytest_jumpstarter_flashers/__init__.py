"""Flashers: write an image onto a board's storage and prove it arrived."""
