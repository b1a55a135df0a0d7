"""Storage in an S3-compatible bucket (AWS, MinIO, Ceph, ...): ``s3://bucket/optional/prefix``.

Keys are stored under the URL's prefix and returned without it, so both backends give the
same keys. boto3 is imported when an :class:`S3Storage` is built, not when this module is,
so processes that only use local storage never pay for it.

Errors from botocore are mapped onto the error tree in :func:`_translate`: a missing key is
``ObjectNotFound``, a missing bucket or refused credentials ``ConfigError``, an unreachable,
throttling or failing server ``StorageUnavailable`` (after botocore's own retries).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from stoker.config import Settings
from stoker.errors import (
    ConfigError,
    InvalidInput,
    ObjectNotFound,
    PermanentError,
    StokerError,
    StorageUnavailable,
)
from stoker.storage.base import (
    JSON_CONTENT_TYPE,
    OCTET_STREAM,
    ObjectInfo,
    check_expiry,
    json_bytes,
    require_file,
)
from stoker.storage.keys import validate_key, validate_prefix

MiB = 1024 * 1024

# Error codes (HEAD requests have no body, so only the status comes back as the code).
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
_BAD_CREDENTIALS = frozenset({"403", "AccessDenied", "Forbidden", "InvalidAccessKeyId"})
_BAD_CREDENTIALS |= {"SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
_TRANSIENT = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"})
_TRANSIENT |= {"InternalError", "ServiceUnavailable"}
_TRANSIENT_STATUS = {408, 429}


@dataclass(frozen=True)
class S3Tuning:
    """Client knobs. The defaults suit production; tests shrink them."""

    max_attempts: int = 3  # total tries per request, botocore "standard" retry mode
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    multipart_threshold_bytes: int = 8 * MiB  # put_file/download/copy go multipart above this
    multipart_chunk_bytes: int = 8 * MiB
    page_size: int = 1000  # keys per list request; 1000 is S3's maximum


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, key_prefix)`` of ``s3://bucket/some/prefix``; key_prefix is '' or ends in '/'.

    Raises ConfigError if the URL is not of that form.
    """
    parts = urlsplit(url)
    prefix = parts.path.strip("/")
    try:
        if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
            raise InvalidInput("not s3://bucket/prefix")
        validate_prefix(prefix)
    except InvalidInput as exc:
        raise ConfigError(
            f"storage URL {url!r} is not a valid S3 URL; use s3://bucket or s3://bucket/prefix."
        ) from exc
    return parts.netloc, f"{prefix}/" if prefix else ""


class S3Storage:
    """A :class:`~stoker.storage.base.Storage` in an S3 bucket; one boto3 client per instance.

    ``settings`` supplies the endpoint, region, credentials (None: boto3's own chain of
    environment, ~/.aws and instance roles) and the default presigned-URL expiry.
    Raises ConfigError for a malformed URL or endpoint. Does not contact the server.
    """

    remote = True

    def __init__(self, url: str, settings: Settings, tuning: S3Tuning | None = None) -> None:
        self.url = url
        self.bucket, self._prefix = parse_s3_url(url)
        self._tuning = tuning or S3Tuning()
        self._expiry_s = settings.presign_expiry_s
        self._client = _make_client(settings, self._tuning)
        self._transfer = _transfer_config(self._tuning)
        self._bucket_checked = False

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r})"

    def close(self) -> None:
        """Close the client's connections (optional; not part of the Storage protocol)."""
        self._client.close()

    # --- writing ----------------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes, content_type: str = OCTET_STREAM) -> ObjectInfo:
        with self._errors(key):
            self._client.put_object(
                Bucket=self.bucket, Key=self._full(key), Body=data, ContentType=content_type
            )
        return ObjectInfo(key, len(data), content_type)

    def put_file(self, key: str, path: Path, content_type: str = OCTET_STREAM) -> ObjectInfo:
        size = require_file(path, validate_key(key))
        extra = {"ContentType": content_type}
        with self._errors(key):
            # Managed transfer: streams from disk, multipart above the threshold.
            self._client.upload_file(
                str(path), self.bucket, self._full(key), ExtraArgs=extra, Config=self._transfer
            )
        return ObjectInfo(key, size, content_type)

    def put_json(self, key: str, obj: Any) -> ObjectInfo:
        return self.put_bytes(key, json_bytes(obj), JSON_CONTENT_TYPE)

    def copy(self, src_key: str, dst_key: str, content_type: str = OCTET_STREAM) -> ObjectInfo:
        source = {"Bucket": self.bucket, "Key": self._full(src_key)}
        target = self._full(dst_key)
        size = self.stat(src_key).size_bytes  # ObjectNotFound names the source
        # REPLACE: CopyObject keeps the source's metadata otherwise, and refuses a copy
        # onto itself that changes nothing. (A multipart copy sets it at creation.)
        extra = {"ContentType": content_type, "MetadataDirective": "REPLACE"}
        with self._errors(dst_key):
            # No byte passes through this process either way. Below the multipart
            # threshold, one CopyObject: the managed copy would HEAD the source again
            # for the size the stat above just read (three requests instead of two).
            if size < self._transfer.multipart_threshold:
                self._client.copy_object(CopySource=source, Bucket=self.bucket, Key=target, **extra)
            else:  # UploadPartCopy parts (CopyObject stops at 5 GB)
                self._client.copy(
                    source, self.bucket, target, ExtraArgs=extra, Config=self._transfer
                )
        return ObjectInfo(dst_key, size, content_type)

    def delete(self, key: str) -> None:
        # S3 answers 204 for a missing key too: idempotent without a check.
        with self._errors(key):
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))

    # --- reading ----------------------------------------------------------------------

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as body:
            return body.read()

    def download(self, key: str, path: Path) -> Path:
        full = self._full(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors(key):
            # s3transfer writes to a temp name and renames, so a failure leaves no partial file.
            self._client.download_file(self.bucket, full, str(path), Config=self._transfer)
        return path

    def open(self, key: str) -> BinaryIO:
        with self._errors(key):
            response = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
        raw = _MappedBody(response["Body"], self, key)
        return io.BufferedReader(raw, buffer_size=MiB)

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def stat(self, key: str) -> ObjectInfo:
        with self._errors(key):
            head = self._client.head_object(Bucket=self.bucket, Key=self._full(key))
        return ObjectInfo(key, int(head["ContentLength"]), head.get("ContentType"))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=self._prefix + prefix,
            PaginationConfig={"PageSize": self._tuning.page_size},
        )
        strip = len(self._prefix)
        # S3 returns keys in UTF-8 byte order, page after page: already sorted.
        with self._errors(prefix or "(every key)"):
            for page in pages:
                for item in page.get("Contents", ()):
                    modified = item["LastModified"].timestamp()
                    yield ObjectInfo(item["Key"][strip:], int(item["Size"]), modified_at=modified)

    def url_for(self, key: str, expires_s: int | None = None) -> str:
        check_expiry(expires_s)
        params = {"Bucket": self.bucket, "Key": self._full(key)}
        expiry_s = self._expiry_s if expires_s is None else expires_s
        with self._errors(key):
            url = self._client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expiry_s
            )
        return str(url)

    # --- helpers ----------------------------------------------------------------------

    def _full(self, key: str) -> str:
        return self._prefix + validate_key(key)

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        """Re-raise botocore/boto3 errors of the block as stoker errors about ``key``."""
        try:
            yield
        except StokerError:
            raise
        except Exception as exc:
            mapped = _translate(exc, key, self.url, self._client.meta.endpoint_url)
            if mapped is None:
                raise
            if isinstance(mapped, ObjectNotFound):
                self._check_bucket()  # HEAD gives a bare 404 for a missing bucket too
            raise mapped from exc

    def _check_bucket(self) -> None:
        """Raise ConfigError if the bucket is missing; checked once per instance."""
        if self._bucket_checked:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            mapped = _translate(exc, "", self.url, self._client.meta.endpoint_url)
            if isinstance(mapped, ObjectNotFound):
                mapped = _no_bucket(self.url)
            if mapped is None:
                raise
            raise mapped from exc
        self._bucket_checked = True


class _MappedBody(io.RawIOBase):
    """A GET response body whose read errors are mapped like every other call's."""

    def __init__(self, body: Any, storage: S3Storage, key: str) -> None:
        self._body = body
        self._storage = storage
        self._key = key

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        with self._storage._errors(self._key):
            data = self._body.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        # RawIOBase's default reads 8 KiB at a time; one read is far faster for get_bytes().
        with self._storage._errors(self._key):
            return bytes(self._body.read())

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()


def _make_client(settings: Settings, tuning: S3Tuning) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        retries={"max_attempts": tuning.max_attempts, "mode": "standard"},
        connect_timeout=tuning.connect_timeout_s,
        read_timeout=tuning.read_timeout_s,
        # botocore >= 1.36 adds CRC checksums to every upload by default, which several
        # S3-compatible servers reject; only send them where the API requires one.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    secret = settings.s3_secret_access_key
    try:
        # A fresh session per client: boto3's default session is not thread-safe.
        return boto3.session.Session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=config,
        )
    except ValueError as exc:  # botocore's "Invalid endpoint" and friends
        raise ConfigError(
            f"cannot build an S3 client for {settings.s3_endpoint_url!r}: {exc}; "
            f"fix s3_endpoint_url / s3_region."
        ) from exc


def _transfer_config(tuning: S3Tuning) -> Any:
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=tuning.multipart_threshold_bytes,
        multipart_chunksize=tuning.multipart_chunk_bytes,
    )


def _translate(exc: Exception, key: str, url: str, endpoint: str) -> StokerError | None:
    """The stoker error for a boto3/botocore exception, or None if it is not one of theirs."""
    from boto3.exceptions import RetriesExceededError, S3UploadFailedError
    from botocore import exceptions as bc

    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, bc.ClientError):
        exc = exc.__context__  # boto3 wraps the real error, keeping only its text
    if isinstance(exc, bc.ClientError):
        return _client_error(exc.response, key, url)
    if isinstance(exc, bc.ConnectionError | bc.HTTPClientError | bc.IncompleteReadError):
        return _unavailable(f"cannot reach the S3 endpoint {endpoint} ({exc})", key, url)
    if isinstance(exc, RetriesExceededError):
        return _unavailable(f"the download kept failing ({exc.last_exception})", key, url)
    if isinstance(exc, bc.NoCredentialsError | bc.PartialCredentialsError):
        return _bad_credentials(type(exc).__name__, key, url)
    return None


def _client_error(response: dict[str, Any], key: str, url: str) -> StokerError:
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    if code in _NOT_FOUND:
        return ObjectNotFound(f"no object at {key!r} in {url}; check the key or job id.")
    if code == "NoSuchBucket":
        return _no_bucket(url)
    if code in _BAD_CREDENTIALS:
        return _bad_credentials(code, key, url)
    if code in _TRANSIENT or status >= 500 or status in _TRANSIENT_STATUS:
        return _unavailable(f"the server answered {code or status}", key, url)
    message = response.get("Error", {}).get("Message", "")
    return PermanentError(
        f"S3 refused the request for {key!r} in {url} ({code}: {message}); "
        f"check the key and the server's limits."
    )


def _no_bucket(url: str) -> ConfigError:
    return ConfigError(
        f"the bucket of storage URL {url} does not exist; create it "
        f"(e.g. `aws s3 mb s3://{urlsplit(url).netloc}`) or fix storage_url."
    )


def _bad_credentials(why: str, key: str, url: str) -> ConfigError:
    return ConfigError(
        f"S3 refused access to {key!r} in {url} ({why}); check s3_access_key_id and "
        f"s3_secret_access_key (or the AWS credential chain) and the bucket's policy."
    )


def _unavailable(why: str, key: str, url: str) -> StorageUnavailable:
    return StorageUnavailable(
        f"storage {url} is unavailable for {key!r}: {why}; the task will be retried."
    )
