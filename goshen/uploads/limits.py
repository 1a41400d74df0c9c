"""UploadLimits: the GOSHEN_MAX_* settings an upload is checked against."""

from __future__ import annotations

from dataclasses import dataclass, fields

from goshen.archives import ArchiveLimits
from goshen.config import Settings


@dataclass(frozen=True)
class UploadLimits:
    """The upload limits of settings, one field per GOSHEN_MAX_* setting of the same name."""

    max_upload_bytes: int
    max_archive_entries: int
    max_uncompressed_bytes: int
    max_compression_ratio: int
    max_image_pixels: int
    max_table_rows: int
    max_table_columns: int

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadLimits:
        return cls(**{field.name: getattr(settings, field.name) for field in fields(cls)})

    @property
    def archive(self) -> ArchiveLimits:
        return ArchiveLimits(
            self.max_archive_entries, self.max_uncompressed_bytes, self.max_compression_ratio
        )
