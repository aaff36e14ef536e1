"""Temporary: the store's settings are :class:`cds_service.config.StoreSettings` (``settings.store``
of ``load_settings()``). Delete this module once the ``hfs-cds db`` commands import that."""

from cds_service.config import StoreSettings

__all__ = ["StoreSettings"]
