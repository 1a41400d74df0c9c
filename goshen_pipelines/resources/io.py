"""Where asset outputs go between steps: DAGSTER_HOME locally, the S3 bucket when one is set."""

from __future__ import annotations

import dagster as dg

from goshen.config import StorageBackend, load_settings


class AssetStorage(dg.ConfigurableIOManagerFactory[dg.IOManager]):
    """Pickled outputs under GOSHEN_DAGSTER_HOME/storage, or dagster-aws's S3 IO manager.

    The backend follows GOSHEN_STORAGE_BACKEND, read when a run starts, so runs launched on
    other hosts (Docker, Kubernetes, ECS) share outputs through the bucket.
    """

    def create_io_manager(self, context: dg.InitResourceContext) -> dg.IOManager:
        settings = load_settings()
        if settings.storage_backend is StorageBackend.s3:
            from dagster_aws.s3 import S3PickleIOManager, S3Resource

            s3 = S3Resource(
                endpoint_url=settings.s3_endpoint_url,
                region_name=settings.s3_region,
                aws_access_key_id=settings.s3_access_key_id,
                aws_secret_access_key=settings.s3_secret_access_key,
            )
            prefix = f"{settings.s3_prefix.strip('/')}/dagster".lstrip("/")
            assert settings.s3_bucket, "Settings refuses the s3 backend without GOSHEN_S3_BUCKET"
            return S3PickleIOManager(s3_resource=s3, s3_bucket=settings.s3_bucket, s3_prefix=prefix)
        base_dir = settings.resolved_dagster_home / "storage"
        return dg.FilesystemIOManager(base_dir=str(base_dir)).create_io_manager(context)
