"""The kernel's built-in behaviour, registered as default plugins through the same hooks."""
