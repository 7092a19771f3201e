"""Where modules come from: ``module_dirs`` on disk, or OCI registries."""

from .catalog import ModuleCatalog, ModuleNotFound, find_module
from .oci import OciError, OciSource

__all__ = ["ModuleCatalog", "ModuleNotFound", "OciError", "OciSource", "find_module"]
