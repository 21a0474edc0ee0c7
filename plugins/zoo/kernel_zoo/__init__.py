"""kernel-zoo: a model zoo server that DeGirum PySDK clients use unchanged.

`kernel serve --plugins zoo --zoo ./zoo` serves `<zoo>/<org>/<zoo>/<model>.zip` archives
under the routes of DeGirum's model zoo server, guarded by the tokens of `tokens.json`,
and offers the archives' runnable models to the kernel's registry as `zoo.<org>.<zoo>.<model>`.
"""

__version__ = "0.1.0"
