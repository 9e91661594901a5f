"""The free tier's storage quota (Atlas M0: 512 MB), and the warning before it is reached."""

from __future__ import annotations

ATLAS_FREE_BYTES = 512 * 1024 * 1024  # Atlas M0: data + indexes
QUOTA_WARNING_SHARE = 0.8


def quota_warning(storage: dict[str, float] | None, quota_bytes: int = ATLAS_FREE_BYTES) -> str | None:
    """A warning when the database holds more than 80% of the free tier's quota, with how many
    more items of today's average size fit."""
    if not storage or storage["bytes"] < QUOTA_WARNING_SHARE * quota_bytes:
        return None
    left = max(0.0, quota_bytes - storage["bytes"])
    more = f"about {int(left // storage['bytes_per_document']):,} more items" if storage["bytes_per_document"] else (
        "little more")
    return (f"the database holds {storage['bytes'] / 2**20:,.0f} MB of the free tier's {quota_bytes / 2**20:,.0f} MB "
            f"(data and indexes): {more} fit. Export and drop finished runs, or move to a larger cluster, before "
            "writes are refused.")
