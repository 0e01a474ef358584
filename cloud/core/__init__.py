"""Process-wide configuration and shared core pieces of the control plane."""
