"""Where modules come from: ``module_dirs`` on disk, or OCI registries."""

from .catalog import SHIPPED, Fetched, ModuleCatalog, ModuleNotFound, find_module
from .oci import OciError, OciSource

__all__ = ["SHIPPED", "Fetched", "ModuleCatalog", "ModuleNotFound", "OciError", "OciSource", "find_module"]
