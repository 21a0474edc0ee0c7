"""kernel-streams: the PTG data store as a kernel plugin (`kernel serve --plugins streams`)."""
