"""Serial console devices over a pyserial URL (``socket://``, ``loop://``, ``rfc2217://``, a tty path)."""
