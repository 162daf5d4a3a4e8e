"""The three clouds' object stores behind the :class:`~joor_pipeline.storage.store.Store` protocol:
``s3://bucket/prefix`` (Amazon S3 or an S3-compatible service), ``gs://bucket/prefix`` (Google Cloud Storage) and
``az://container/prefix`` (Azure Blob Storage).

One implementation, :class:`CloudStore`, over `obstore <https://developmentseed.org/obstore/>`_ (Python bindings
of the Rust ``object_store`` crate), because it is the one library whose public API gives both conditional
writes on all three clouds: ``put(mode="create")`` (S3 and Azure ``If-None-Match: *``, GCS
``x-goog-if-generation-match: 0``) and ``put(mode={"e_tag"|"version": ...})`` (S3 and Azure ``If-Match`` an ETag,
GCS ``x-goog-if-generation-match`` a generation). fsspec's s3fs, gcsfs and adlfs give create-if-absent only;
compare-and-swap would take each one's private client. DuckDB and pyarrow read through a small fsspec file system
over the same obstore store (:class:`ObjectFileSystem`): DuckDB cannot install its ``httpfs`` and ``azure``
extensions offline, and one set of credentials serves writes and reads.

Credentials come only from each cloud's standard variables, read when the store is made:

- S3: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (+ ``AWS_SESSION_TOKEN``), or ``AWS_PROFILE`` (read by
  botocore, the ``s3`` extra), else the instance, container or web-identity role; ``AWS_REGION`` (or
  ``AWS_DEFAULT_REGION``); ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for an S3-compatible service, which
  must honour ``If-Match`` and ``If-None-Match: *`` on PUT.
- GCS: ``GOOGLE_APPLICATION_CREDENTIALS`` (a service-account key file), else the application-default credentials
  or the metadata server; with ``STORAGE_EMULATOR_HOST`` set, that emulator, unauthenticated (as Google's own
  clients do).
- Azure: ``AZURE_STORAGE_CONNECTION_STRING``, or ``AZURE_STORAGE_ACCOUNT_NAME`` with ``AZURE_STORAGE_ACCOUNT_KEY``
  (or ``AZURE_STORAGE_SAS_TOKEN``), else a managed identity / workload identity.

No message, error or ``repr`` carries a credential: errors are :class:`StoreError` (or :class:`Conflict`) naming
the operation and the object's URL, with the service's one-line reason stripped of query strings and of every
secret value set in the environment.

``abfs://`` and ``abfss://`` are refused with a line that names the ``az://`` spelling: they carry the account in
the URL (``abfs://container@account.dfs.core.windows.net/``) and address the Data Lake (dfs) endpoint, while the
account here comes from the variables above; one spelling per cloud keeps every key's URL in messages, manifests
and DuckDB identical.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

from joor_pipeline.joor.errors import ConfigError
from joor_pipeline.storage import lease
from joor_pipeline.storage.store import Conflict, Held, StoreError, Version

if TYPE_CHECKING:
    import duckdb

#: URL scheme -> the optional extra that installs what it needs.
EXTRAS: Final = {"s3": "s3", "gs": "gcs", "az": "azure"}
#: Names of the clouds, for messages.
CLOUDS: Final = {"s3": "S3", "gs": "Google Cloud Storage", "az": "Azure Blob Storage"}
#: Schemes recognised only to be refused with the spelling to use instead.
OTHER_SPELLINGS: Final = {
    "s3a": "s3",
    "s3n": "s3",
    "gcs": "gs",
    "azure": "az",
    "abfs": "az",
    "abfss": "az",
    "wasb": "az",
    "wasbs": "az",
    "adl": "az",
}
_BUCKET: Final = {
    # S3: 3-63 of a-z 0-9 . - ; GCS: the same plus _ (up to 222 with dots); Azure containers: a-z 0-9 - only.
    "s3": re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"),
    "gs": re.compile(r"^[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]$"),
    "az": re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$"),
}
_SCHEME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):/")
_URL: Final = re.compile(r"^(s3|gs|az):/{1,2}([^/]*)(?:/(.*))?$")
TRANSFER_THREADS: Final = 16
#: Variables whose values never appear in a message (checked on every error, whatever the service echoes).
SECRET_VARIABLES: Final = (
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
)


class MissingExtra(ConfigError):
    """The optional package a cloud needs is not installed (one line naming the extra to install)."""


@dataclass(frozen=True)
class CloudURL:
    """A parsed ``scheme://bucket/prefix`` (prefix without leading or trailing ``/``; may be empty)."""

    scheme: str
    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def extra(self) -> str:
        return EXTRAS[self.scheme]


def parse_cloud_url(text: str) -> CloudURL | None:
    """``s3://``, ``gs://`` or ``az://`` ``bucket[/prefix]`` parsed; None for anything that is not a URL (a local
    path, ``C:/...``). A malformed URL or another scheme is a :class:`StoreError` naming what to write instead.

    ``s3:/bucket`` (what :mod:`pathlib` leaves of an URL) is accepted.
    """
    other = _SCHEME.match(text)
    if other is None or len(other.group(1)) == 1:  # "C:/..." is a Windows drive, not a scheme
        return None
    scheme = other.group(1).lower()
    if scheme in OTHER_SPELLINGS:
        spelling = OTHER_SPELLINGS[scheme]
        raise StoreError(
            f"{text!r}: write {spelling}://{'container' if spelling == 'az' else 'bucket'}/prefix, not {scheme}:// "
            "(the account and endpoint come from the cloud's standard variables, not from the URL)"
        )
    found = _URL.match(text)
    if found is None:
        raise StoreError(
            f"{text!r}: a data directory is a local path, s3://bucket/prefix (S3 or an S3-compatible service), "
            f"gs://bucket/prefix (Google Cloud Storage) or az://container/prefix (Azure Blob Storage), not {scheme}://"
        )
    scheme, bucket, prefix = found.group(1), found.group(2), (found.group(3) or "").strip("/")
    if not _BUCKET[scheme].match(bucket):
        kind = "container" if scheme == "az" else "bucket"
        rule = "3-63 of a-z 0-9 -" if scheme == "az" else "3-63 of a-z 0-9 . -" + (" _" if scheme == "gs" else "")
        raise StoreError(f"{text!r}: {bucket!r} is not a valid {CLOUDS[scheme]} {kind} name ({rule})")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise StoreError(f"{text!r} has an empty, '.' or '..' path segment")
    return CloudURL(scheme, bucket, prefix)


def _need_obstore(url: CloudURL) -> Any:
    """obstore, or one line naming the extra to install."""
    try:
        import fsspec  # noqa: F401  (the file system DuckDB and pyarrow read through)
        import obstore
    except ImportError as exc:
        raise MissingExtra(
            f"{url} needs the optional package {exc.name or 'obstore'}: install the {url.extra} extra "
            f"(uv sync --extra {url.extra}, with every other extra this deployment uses; or pip install "
            f"'joor-pipeline[{url.extra}]')"
        ) from None
    return obstore


# ---- configuration from each cloud's standard variables -------------------------------------------------------


def _env(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value
    return None


_RETRY: Final = {"max_retries": 5, "retry_timeout": timedelta(seconds=60)}


def _s3_options(url: CloudURL, environ: Mapping[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    region = _env(environ, "AWS_REGION", "AWS_DEFAULT_REGION")
    endpoint = _env(environ, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    key_id, secret = _env(environ, "AWS_ACCESS_KEY_ID"), _env(environ, "AWS_SECRET_ACCESS_KEY")
    profile = _env(environ, "AWS_PROFILE")
    if endpoint:
        options["endpoint"] = endpoint
        options["client_options"] = {"allow_http": endpoint.startswith("http://")}
    if key_id and secret:
        options.update(access_key_id=key_id, secret_access_key=secret)
        token = _env(environ, "AWS_SESSION_TOKEN")
        if token:
            options["session_token"] = token
    elif profile:
        options["credential_provider"] = _BotocoreProfile(url, profile)
        region = region or options["credential_provider"].region
    if region:
        options["region"] = region
    return options


class _BotocoreProfile:
    """S3 credentials of ``AWS_PROFILE`` (``~/.aws/config``, SSO, assumed roles), read and refreshed by botocore."""

    def __init__(self, url: CloudURL, profile: str) -> None:
        try:
            import botocore.session
        except ImportError:
            raise MissingExtra(
                f"AWS_PROFILE for {url} needs botocore: install the s3 extra (uv sync --extra s3, with every other "
                "extra this deployment uses; or pip install 'joor-pipeline[s3]')"
            ) from None
        self.session = botocore.session.Session(profile=profile)
        self.region: str | None = self.session.get_config_variable("region")
        self.profile = profile

    def __repr__(self) -> str:
        return f"_BotocoreProfile({self.profile!r})"

    def __call__(self) -> dict[str, Any]:
        credentials = self.session.get_credentials()
        if credentials is None:
            raise StoreError(f"AWS_PROFILE={self.profile} gives no credentials")
        frozen = credentials.get_frozen_credentials()
        found: dict[str, Any] = {
            "access_key_id": frozen.access_key,
            "secret_access_key": frozen.secret_key,
            "expires_at": getattr(credentials, "_expiry_time", None),
        }
        if frozen.token:
            found["token"] = frozen.token
        return found


def _emulator_token() -> dict[str, Any]:
    """What Google's clients send to ``STORAGE_EMULATOR_HOST``: no real credential."""
    return {"token": "emulator", "expires_at": None}


def _gcs_options(url: CloudURL, environ: Mapping[str, str]) -> dict[str, Any]:
    emulator = _env(environ, "STORAGE_EMULATOR_HOST")
    if emulator:
        base = emulator if "://" in emulator else f"http://{emulator}"
        return {
            "base_url": base.rstrip("/"),
            "credential_provider": _emulator_token,
            "client_options": {"allow_http": base.startswith("http://")},
        }
    credentials = _env(environ, "GOOGLE_APPLICATION_CREDENTIALS")
    return {"application_credentials": credentials} if credentials else {}


def parse_connection_string(text: str) -> dict[str, str]:
    """An Azure Storage connection string's ``Key=Value;`` pairs (values may contain ``=``)."""
    fields: dict[str, str] = {}
    for part in text.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name:
            fields[name.strip()] = value.strip()
    return fields


#: Azurite's well-known development account (public, documented by Microsoft), for UseDevelopmentStorage=true.
_DEV_ACCOUNT: Final = "devstoreaccount1"
_DEV_KEY: Final = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def _azure_options(url: CloudURL, environ: Mapping[str, str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    connection = _env(environ, "AZURE_STORAGE_CONNECTION_STRING")
    if connection:
        fields = parse_connection_string(connection)
        if fields.get("UseDevelopmentStorage", "").lower() == "true":
            fields = {"AccountName": _DEV_ACCOUNT, "AccountKey": _DEV_KEY, **fields}
            fields.setdefault("BlobEndpoint", f"http://127.0.0.1:10000/{_DEV_ACCOUNT}")
        account = fields.get("AccountName")
        if not account:
            raise StoreError(f"AZURE_STORAGE_CONNECTION_STRING has no AccountName (needed for {url})")
        options["account_name"] = account
        if fields.get("AccountKey"):
            options["access_key"] = fields["AccountKey"]
        elif fields.get("SharedAccessSignature"):
            options["sas_key"] = fields["SharedAccessSignature"]
        endpoint = fields.get("BlobEndpoint")
        if not endpoint and fields.get("EndpointSuffix"):
            protocol = fields.get("DefaultEndpointsProtocol", "https")
            endpoint = f"{protocol}://{account}.blob.{fields['EndpointSuffix']}"
        if endpoint:
            options["endpoint"] = endpoint.rstrip("/")
            options["client_options"] = {"allow_http": endpoint.startswith("http://")}
        return options
    account = _env(environ, "AZURE_STORAGE_ACCOUNT_NAME")
    if account:
        options["account_name"] = account
    key = _env(environ, "AZURE_STORAGE_ACCOUNT_KEY")
    if key:
        options["access_key"] = key
    elif _env(environ, "AZURE_STORAGE_SAS_TOKEN"):
        options["sas_key"] = _env(environ, "AZURE_STORAGE_SAS_TOKEN")
    if not account:
        raise StoreError(
            f"{url} needs an Azure storage account: set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME "
            "with AZURE_STORAGE_ACCOUNT_KEY"
        )
    return options


def _secrets(options: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[str, ...]:
    values = [environ.get(name, "") for name in SECRET_VARIABLES]
    values += [str(options.get(name, "")) for name in ("secret_access_key", "session_token", "access_key", "sas_key")]
    return tuple(sorted({value for value in values if len(value) >= 4}, key=len, reverse=True))


def _obstore_store(url: CloudURL, bucket: str, options: Mapping[str, Any]) -> Any:
    """An obstore store over the whole bucket (keys are full paths in it)."""
    _need_obstore(url)
    from obstore.store import AzureStore, GCSStore, S3Store

    kind = {"s3": S3Store, "gs": GCSStore, "az": AzureStore}[url.scheme]
    kwargs = dict(options)
    kwargs.setdefault("retry_config", _RETRY)
    try:
        return kind(bucket, **kwargs)
    except Exception as exc:
        raise StoreError(f"cannot configure {CLOUDS[url.scheme]} for {url}: {type(exc).__name__}") from None


# ---- errors --------------------------------------------------------------------------------------------------

_QUERY: Final = re.compile(r"\?[^\s\"'<>]*")
_CODE: Final = re.compile(r"<Code>([^<]{1,100})</Code>")
_MESSAGE: Final = re.compile(r"<Message>([^<]{1,300})</Message>")
#: How S3 (and S3-compatible services), Azure and GCS say that the bucket or container is missing.
_NO_BUCKET: Final = re.compile(r"NoSuchBucket|ContainerNotFound|bucket does not exist", re.IGNORECASE)


def _reason(exc: BaseException, secrets: Iterable[str]) -> str:
    """The service's reason in one line: its error code and message when it sent one (S3, Azure and GCS answer
    in XML), else the first line of the client's; without query strings (SAS tokens travel there) or secrets."""
    text = str(exc)
    code = _CODE.search(text)
    if code is not None:
        message = _MESSAGE.search(text)
        first = code.group(1) + (f": {message.group(1).splitlines()[0].strip()}" if message else "")
    else:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = _QUERY.sub("?…", first)[:300]
    for secret in secrets:
        first = first.replace(secret, "***")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class _Errors:
    """Translates obstore's exceptions into the protocol's (the object's URL, never a credential)."""

    def __init__(self, store: CloudStore, operation: str, key: str, *, conflict: bool = False) -> None:
        self.store, self.operation, self.key, self.conflict = store, operation, key, conflict
        #: Only reads say "no such object" with FileNotFoundError (read() and version() turn it into None).
        self.reading = operation in ("read", "head", "download", "delete")

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, StoreError):
            return
        from obstore import exceptions as errors

        where = self.store.uri(self.key) if self.key else self.store.url
        if _NO_BUCKET.search(str(exc)):
            noun = "container" if self.store.cloud.scheme == "az" else "bucket"
            raise StoreError(
                f"{self.operation} {where} failed: the {noun} {self.store.cloud.bucket!r} does not exist"
            ) from None
        if self.conflict and isinstance(exc, errors.AlreadyExistsError | errors.PreconditionError):
            raise Conflict(f"{where}: {'exists already' if isinstance(exc, errors.AlreadyExistsError) else 'changed'}")
        if self.conflict and isinstance(exc, FileNotFoundError):
            raise Conflict(f"{where}: gone (deleted since its version was read)")
        if isinstance(exc, FileNotFoundError) and self.reading:
            raise FileNotFoundError(where) from None
        raise StoreError(f"{self.operation} {where} failed: {_reason(exc, self.store._secrets)}") from None


# ---- the store ------------------------------------------------------------------------------------------------


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise StoreError(f"{key!r} is not a store key (relative, '/'-separated, no empty, '.' or '..' segment)")
    return key


class CloudStore:
    """One ``s3://``, ``gs://`` or ``az://`` data directory (see the module docstring); keys are relative to its
    prefix. Made by :func:`cloud_store` (or :func:`s3_store`, :func:`gcs_store`, :func:`azure_store`)."""

    def __init__(
        self,
        url: CloudURL,
        *,
        environ: Mapping[str, str] | None = None,
        lease_seconds: float = lease.DEFAULT_LEASE_SECONDS,
    ) -> None:
        environ = os.environ if environ is None else environ
        self.cloud = url
        self.url = str(url)
        self.lease_seconds = lease_seconds
        self._obstore = _need_obstore(url)
        self._options = {"s3": _s3_options, "gs": _gcs_options, "az": _azure_options}[url.scheme](url, environ)
        self._secrets = _secrets(self._options, environ)
        self._stores: dict[str, Any] = {}
        self._guard = threading.Lock()
        self.store = self.bucket_store(url.bucket)
        self._fs: Any = None

    def __repr__(self) -> str:
        return f"CloudStore({self.url!r})"

    def bucket_store(self, bucket: str) -> Any:
        """The obstore store of ``bucket`` with this store's configuration (cached)."""
        with self._guard:
            found = self._stores.get(bucket)
            if found is None:
                found = self._stores[bucket] = _obstore_store(self.cloud, bucket, self._options)
            return found

    # keys and URLs
    def path(self, key: str) -> str:
        _check_key(key)
        return f"{self.cloud.prefix}/{key}" if self.cloud.prefix else key

    def uri(self, key: str) -> str:
        return f"{self.cloud.scheme}://{self.cloud.bucket}/{self.path(key)}"

    def _version(self, meta: Mapping[str, Any]) -> Version:
        # GCS: the generation (what x-goog-if-generation-match compares); S3 and Azure: the ETag.
        value = meta.get("version") if self.cloud.scheme == "gs" else meta.get("e_tag")
        if not value:
            raise StoreError(
                f"{self.url}: the service returned no {'generation' if self.cloud.scheme == 'gs' else 'ETag'}"
            )
        return str(value)

    def _update(self, version: Version) -> dict[str, str]:
        return {"version": version} if self.cloud.scheme == "gs" else {"e_tag": version}

    # reading
    def read(self, key: str) -> tuple[bytes, Version] | None:
        try:
            with _Errors(self, "read", key):
                result = self._obstore.get(self.store, self.path(key))
                return bytes(result.bytes()), self._version(result.meta)
        except FileNotFoundError:
            return None

    def version(self, key: str) -> Version | None:
        try:
            with _Errors(self, "head", key):
                return self._version(self._obstore.head(self.store, self.path(key)))
        except FileNotFoundError:
            return None

    def list(self, prefix: str) -> dict[str, int]:
        # object_store lists by whole path segments: prefix "a/b" is everything under "a/b/", never "a/bc".
        root = f"{self.cloud.prefix}/" if self.cloud.prefix else ""
        relative = prefix.strip("/")
        query = self.path(relative) if relative else self.cloud.prefix
        sizes: dict[str, int] = {}
        with _Errors(self, "list", relative):
            for chunk in self._obstore.list(self.store, prefix=query or None, chunk_size=1000):
                sizes.update((str(meta["path"])[len(root) :], int(meta["size"])) for meta in chunk)
        return dict(sorted(sizes.items()))

    # writing
    def write(self, key: str, data: bytes) -> Version:
        with _Errors(self, "write", key):
            return self._version(self._obstore.put(self.store, self.path(key), data, mode="overwrite"))

    def upload(self, key: str, source: Path) -> None:
        with _Errors(self, "upload", key):
            self._obstore.put(self.store, self.path(key), Path(source), mode="overwrite")

    def create(self, key: str, data: bytes) -> Version:
        with _Errors(self, "create", key, conflict=True):
            return self._version(self._obstore.put(self.store, self.path(key), data, mode="create"))

    def swap(self, key: str, data: bytes, expected: Version | None) -> Version:
        if expected is None:
            return self.create(key, data)
        with _Errors(self, "swap", key, conflict=True):
            result = self._obstore.put(self.store, self.path(key), data, mode=self._update(expected))
            return self._version(result)

    def delete(self, keys: Iterable[str]) -> None:
        paths = [(key, self.path(key)) for key in keys]

        def one(item: tuple[str, str]) -> None:
            try:
                with _Errors(self, "delete", item[0]):
                    self._obstore.delete(self.store, item[1])
            except FileNotFoundError:
                pass  # gone already (GCS and Azure say 404; S3 says nothing)

        if len(paths) <= 1:
            for item in paths:
                one(item)
            return
        with ThreadPoolExecutor(min(TRANSFER_THREADS, len(paths))) as pool:
            list(pool.map(one, paths))

    def download(self, key: str, target: Path) -> None:
        target = Path(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, scratch = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as out:
                with _Errors(self, "download", key):
                    for chunk in self._obstore.get(self.store, self.path(key)):
                        out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(scratch, target)
        except BaseException:
            Path(scratch).unlink(missing_ok=True)
            raise

    def lock(self, key: str, what: str) -> Held:
        return lease.acquire(self, key, what, self.lease_seconds)

    # DuckDB and pyarrow
    @property
    def filesystem(self) -> Any:
        """An fsspec file system over this store's account (read-only), for DuckDB and pyarrow."""
        if self._fs is None:
            self._fs = ObjectFileSystem(self)
        return self._fs

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        if not con.filesystem_is_registered(self.filesystem.fsid):
            con.register_filesystem(self.filesystem)

    def open(self, key: str) -> BinaryIO:
        try:
            return self.filesystem.open(self.uri(key), "rb")  # type: ignore[no-any-return]
        except FileNotFoundError:
            raise FileNotFoundError(self.uri(key)) from None


# ---- fsspec, for DuckDB and pyarrow ---------------------------------------------------------------------------


def _file_system_class(scheme: str) -> type:
    import fsspec
    from fsspec.spec import AbstractBufferedFile

    class ObjectFile(AbstractBufferedFile):  # type: ignore[misc]
        """A read-only, seekable file over one object: ranged GETs, buffered by fsspec."""

        def _fetch_range(self, start: int, end: int) -> bytes:
            fs: Any = self.fs
            bucket, path = fs._split(self.path)
            if end <= start:
                return b""
            return fs._call(
                "read", self.path, lambda: bytes(fs._obstore.get_range(fs._bucket(bucket), path, start=start, end=end))
            )

    class _ObjectFileSystem(fsspec.AbstractFileSystem):  # type: ignore[misc]
        """Read-only fsspec file system over a :class:`CloudStore`'s account: ``scheme://bucket/key``."""

        cachable = False
        protocol = (scheme,)  # a class attribute: fsspec strips it in class methods

        def __init__(self, store: CloudStore) -> None:
            super().__init__()
            self._store = store
            self._obstore = store._obstore

        @property
        def fsid(self) -> str:
            return str(self._store.cloud.scheme)

        def __repr__(self) -> str:
            return f"ObjectFileSystem({self._store.url!r})"

        def _bucket(self, bucket: str) -> Any:
            return self._store.bucket_store(bucket)

        def _split(self, path: str) -> tuple[str, str]:
            stripped = self._strip_protocol(path)
            bucket, _, key = stripped.partition("/")
            return bucket, key

        def _call(self, operation: str, path: str, call: Any) -> Any:
            try:
                return call()
            except FileNotFoundError:
                raise FileNotFoundError(self.unstrip_protocol(self._strip_protocol(path))) from None
            except Exception as exc:
                shown = self.unstrip_protocol(self._strip_protocol(path))
                raise OSError(f"{operation} {shown} failed: {_reason(exc, self._store._secrets)}") from None

        def unstrip_protocol(self, name: str) -> str:
            return f"{self.protocol[0]}://{name}"

        def info(self, path: str, **_kwargs: Any) -> dict[str, Any]:
            bucket, key = self._split(path)
            name = f"{bucket}/{key}".rstrip("/")
            if key:
                try:
                    meta = self._call("head", path, lambda: self._obstore.head(self._bucket(bucket), key))
                    return {"name": name, "size": int(meta["size"]), "type": "file", "e_tag": meta.get("e_tag")}
                except FileNotFoundError:
                    pass
            listed = self._call(
                "list",
                path,
                lambda: self._obstore.list_with_delimiter(self._bucket(bucket), prefix=f"{key}/" if key else None),
            )
            if listed["objects"] or listed["common_prefixes"] or not key:
                return {"name": name, "size": 0, "type": "directory"}
            raise FileNotFoundError(self.unstrip_protocol(name))

        def ls(self, path: str, detail: bool = True, **_kwargs: Any) -> list[Any]:
            bucket, key = self._split(path)
            listed = self._call(
                "list",
                path,
                lambda: self._obstore.list_with_delimiter(self._bucket(bucket), prefix=f"{key}/" if key else None),
            )
            entries: list[dict[str, Any]] = [
                {"name": f"{bucket}/{meta['path']}", "size": int(meta["size"]), "type": "file"}
                for meta in listed["objects"]
            ]
            entries += [
                {"name": f"{bucket}/{prefix.rstrip('/')}", "size": 0, "type": "directory"}
                for prefix in listed["common_prefixes"]
            ]
            if not entries and key:
                info = self.info(path)
                entries = [info] if info["type"] == "file" else []
            return entries if detail else [entry["name"] for entry in entries]

        def modified(self, path: str) -> Any:
            bucket, key = self._split(path)
            return self._call("head", path, lambda: self._obstore.head(self._bucket(bucket), key))["last_modified"]

        def cat_file(self, path: str, start: int | None = None, end: int | None = None, **_kwargs: Any) -> bytes:
            with self.open(path, "rb") as handle:
                handle.seek(start or 0, 0 if (start or 0) >= 0 else 2)
                return handle.read(-1 if end is None else max(0, end - handle.tell()))  # type: ignore[no-any-return]

        def _open(self, path: str, mode: str = "rb", block_size: Any = None, **kwargs: Any) -> Any:
            if mode != "rb":
                raise PermissionError(f"{self.unstrip_protocol(self._strip_protocol(path))}: read-only ({mode!r})")
            size = self.info(path)["size"]
            return ObjectFile(self, path, mode, block_size=block_size or 4 * 1024 * 1024, size=size, **kwargs)

    return _ObjectFileSystem


_fs_classes: dict[str, type] = {}


def ObjectFileSystem(store: CloudStore) -> Any:
    """The read-only fsspec file system of ``store`` (its class made on first use: fsspec stays optional)."""
    scheme = store.cloud.scheme
    if scheme not in _fs_classes:
        _fs_classes[scheme] = _file_system_class(scheme)
    return _fs_classes[scheme](store)


# ---- constructors ---------------------------------------------------------------------------------------------


def cloud_store(
    text: str, *, environ: Mapping[str, str] | None = None, lease_seconds: float = lease.DEFAULT_LEASE_SECONDS
) -> CloudStore:
    """The store of an ``s3://``, ``gs://`` or ``az://`` URL (:class:`StoreError` for anything else)."""
    url = parse_cloud_url(text)
    if url is None:
        raise StoreError(f"{text!r} is not an s3://, gs:// or az:// URL")
    return CloudStore(url, environ=environ, lease_seconds=lease_seconds)


def _of_scheme(scheme: str, text: str, **kwargs: Any) -> CloudStore:
    store = cloud_store(text, **kwargs)
    if store.cloud.scheme != scheme:
        raise StoreError(f"{text!r} is not a {scheme}:// URL")
    return store


def s3_store(text: str, **kwargs: Any) -> CloudStore:
    """``s3://bucket/prefix`` on S3 or an S3-compatible service (``AWS_*`` variables)."""
    return _of_scheme("s3", text, **kwargs)


def gcs_store(text: str, **kwargs: Any) -> CloudStore:
    """``gs://bucket/prefix`` on Google Cloud Storage (``GOOGLE_APPLICATION_CREDENTIALS``, or an emulator)."""
    return _of_scheme("gs", text, **kwargs)


def azure_store(text: str, **kwargs: Any) -> CloudStore:
    """``az://container/prefix`` on Azure Blob Storage (``AZURE_STORAGE_*`` variables)."""
    return _of_scheme("az", text, **kwargs)
