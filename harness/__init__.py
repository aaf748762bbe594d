"""xmitbench: Linux vs FreeBSD transmit-path benchmark harness."""
__version__ = "0.1.0"
