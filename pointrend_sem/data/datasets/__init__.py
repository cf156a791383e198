"""Dataset registrations; importing this module registers them."""

from . import synthetic  # noqa: F401
from .paths import datasets_root

__all__ = ["datasets_root"]
