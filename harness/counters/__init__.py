"""The counter vocabulary (samples) and the counting rules every consumer uses."""
