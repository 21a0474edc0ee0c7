"""kernel: a plugin-based microkernel model server.

This module is the public API plugins use; everything else is the kernel's own.
"""

from kernel.__about__ import __version__
from kernel.app import DEFAULT_PLUGINS, Kernel, create_kernel
from kernel.auth import Principal, TokenIssuer, bearer_token, requires
from kernel.backends import (
    DATATYPES,
    Backend,
    InvalidInput,
    Session,
    TensorInfo,
    datatype_name,
    validate_inputs,
)
from kernel.config import ByteSize, byte_size
from kernel.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    KernelError,
    ModelError,
    NotFound,
    PayloadTooLarge,
    StartupError,
    Unauthorized,
    Unavailable,
)
from kernel.errors_http import detail_shape, error_handlers
from kernel.hookimpl import hookimpl
from kernel.options import OptionGroup
from kernel.registry import Model, ModelRegistry, ModelSource, ModelSpec, file_revision
from kernel.storage import FileStorage, InvalidKey, Storage, check_key, fsync_dir
from kernel.zerocopy import send_file

__all__ = [
    "DATATYPES", "DEFAULT_PLUGINS", "Backend", "BadRequest", "ByteSize", "Conflict", "FileStorage",
    "Forbidden", "InvalidInput", "InvalidKey", "Kernel", "KernelError", "Model", "ModelError",
    "ModelRegistry", "ModelSource", "ModelSpec", "NotFound", "OptionGroup", "PayloadTooLarge",
    "Principal", "Session", "StartupError", "Storage", "TensorInfo", "TokenIssuer",
    "Unauthorized", "Unavailable", "__version__", "bearer_token", "byte_size", "check_key", "create_kernel",
    "datatype_name", "detail_shape", "error_handlers", "file_revision", "fsync_dir", "hookimpl", "requires", "send_file",
    "validate_inputs",
]
