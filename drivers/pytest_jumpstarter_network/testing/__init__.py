"""Test doubles for network tests, importable by users' tests too: :mod:`.echo_server` (TCP echo,
TCP discard-and-count and UDP echo servers, run as a child process, e.g. inside a namespace)."""
