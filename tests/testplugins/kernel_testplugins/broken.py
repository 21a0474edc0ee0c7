"""A plugin whose import fails."""

import kernel_testplugins.no_such_module  # noqa: F401
