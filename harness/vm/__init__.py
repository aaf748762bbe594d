"""Emulated machine: QEMU argv, NIC models, data plane, management channel, serial faults."""
