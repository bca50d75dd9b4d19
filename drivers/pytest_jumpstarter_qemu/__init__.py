"""QEMU boards: power, serial console and QMP for guests under qemu-system-*."""
