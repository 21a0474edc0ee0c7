"""kernel-jobs: an AIME API server compatible job queue for kernel."""
