"""kernel-detect: a pyzm.serve-compatible detection server for the kernel."""
