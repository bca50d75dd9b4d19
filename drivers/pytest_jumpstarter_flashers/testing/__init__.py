"""Test doubles for flasher tests, importable by users' tests too: :mod:`.dfu_sim` (a software USB
DFU device behind pyusb's backend interface; ``backend: simulated`` of the ``dfu`` driver) and
:mod:`.tftp` (a TFTP server in a network namespace with a TAP device, to take a server down
mid-transfer; the ``uboot-tftp`` flasher itself uses the board's TFTP folder)."""
