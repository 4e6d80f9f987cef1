"""The blob store the settings name: files under the data dir (default) or an S3 bucket."""

from __future__ import annotations

from dicomweb.blobs import BlobStore, FileBlobStore, S3BlobStore

from .settings import Settings


def from_settings(settings: Settings) -> BlobStore:
    if settings.blob_store == "file":
        return FileBlobStore(settings.blob_path(), fsync=settings.blob_fsync)
    import boto3  # only deployments on object storage need it

    def secret(value: object) -> str | None:
        return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]

    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=secret(settings.s3_access_key_id),
        aws_secret_access_key=secret(settings.s3_secret_access_key),
    )
    return S3BlobStore(client, settings.s3_bucket, settings.blob_path() / "spool")
