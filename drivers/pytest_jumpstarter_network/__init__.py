"""Network tunnels: reach ports on a board from the test host."""
