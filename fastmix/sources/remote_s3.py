"""s3:// and gs:// roots: S3's REST API (SigV4-signed with botocore, sent with urllib3), LIST by ListObjectsV2.

**S3 credentials and endpoint**, the standard way (botocore's resolution): `storage_options` (s3fs's names:
`key`, `secret`, `token`, `endpoint_url` or `client_kwargs={"endpoint_url": ...}`, `region_name`, `profile`,
`anon=True`), else `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` / `AWS_PROFILE`, the
shared config files, instance roles; the endpoint from `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` (path-style
addressing), else AWS itself (`https://<bucket>.s3.<region>.amazonaws.com`, region from `AWS_REGION` /
`AWS_DEFAULT_REGION` / the profile, else us-east-1). No credentials: unsigned requests (public buckets).

**gs://** is Google Cloud Storage through its XML API, which speaks S3's protocol with HMAC keys: the same
client, path-style on `https://storage.googleapis.com` (or `storage_options["endpoint_url"]` /
`GOOGLE_STORAGE_ENDPOINT`), signed with `storage_options` key/secret, else `GOOGLE_HMAC_ACCESS_KEY_ID` /
`GOOGLE_HMAC_SECRET` (region "auto"); no keys: unsigned requests (public buckets). The AWS_* variables are not
used for gs:// (they name another store).
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import quote

from fastmix.errors import ConfigError
from fastmix.sources.remote_http import Client, ObjectInfo

GCS_ENDPOINT = "https://storage.googleapis.com"


class S3Client(Client):
    """An S3 bucket (s3://) or a GCS bucket through its XML API (gs://): signed requests, LIST."""

    listable = True

    def setup(self) -> None:
        self.signer = None
        if self.scheme == "gs":
            self._setup_gcs()
        else:
            self._setup_s3()

    def _setup_gcs(self) -> None:
        o = self.options
        endpoint = (o.get("endpoint_url") or (o.get("client_kwargs") or {}).get("endpoint_url")
                    or os.environ.get("GOOGLE_STORAGE_ENDPOINT") or GCS_ENDPOINT)
        self.base = f"{endpoint.rstrip('/')}/{quote(self.bucket)}"
        self.region = o.get("region_name") or "auto"
        key = o.get("key") or os.environ.get("GOOGLE_HMAC_ACCESS_KEY_ID")
        secret = o.get("secret") or os.environ.get("GOOGLE_HMAC_SECRET")
        if o.get("anon") or not (key and secret):
            self.credentials = None
            return
        try:
            from botocore.auth import S3SigV4Auth
            from botocore.credentials import Credentials
        except ImportError as e:
            raise ConfigError(f"gs://{self.bucket}: signed gs:// requests need botocore: pip install "
                              f"'fastmix[remote]'") from e
        self.credentials = Credentials(key, secret)
        self.signer = S3SigV4Auth(self.credentials, "s3", self.region)

    def _setup_s3(self) -> None:
        try:
            import botocore.session
        except ImportError as e:
            raise ConfigError(f"s3://{self.bucket}: s3:// roots need botocore (credentials, request signing): "
                              f"pip install 'fastmix[remote]'") from e

        o = self.options
        session = botocore.session.Session(profile=o.get("profile"))
        self.region = (o.get("region_name") or (o.get("client_kwargs") or {}).get("region_name")
                       or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                       or _quiet(lambda: session.get_config_variable("region")) or "us-east-1")
        endpoint = (o.get("endpoint_url") or (o.get("client_kwargs") or {}).get("endpoint_url")
                    or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
        if endpoint:
            self.base = f"{endpoint.rstrip('/')}/{quote(self.bucket)}"
        else:
            self.base = f"https://{self.bucket}.s3.{self.region}.amazonaws.com"
        self.credentials = None
        if not o.get("anon"):
            key = o.get("key") or o.get("aws_access_key_id")
            secret = o.get("secret") or o.get("aws_secret_access_key")
            if key and secret:
                from botocore.credentials import Credentials

                self.credentials = Credentials(key, secret, o.get("token") or o.get("aws_session_token"))
            else:
                self.credentials = _quiet(session.get_credentials)
        if self.credentials is not None:
            from botocore.auth import S3SigV4Auth

            self.signer = S3SigV4Auth(self.credentials, "s3", self.region)

    def url_for(self, key: str) -> str:
        return f"{self.base}/{quote(key.lstrip('/'), safe='/-_.~')}"

    def headers_for(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        headers = {**self.extra_headers, **headers}
        if self.signer is None:
            return headers
        from botocore.awsrequest import AWSRequest

        req = AWSRequest(method=method, url=url, headers=headers)
        self.signer.add_auth(req)
        return dict(req.headers.items())

    def list(self, prefix: str, name: str) -> dict[str, ObjectInfo]:
        """{key relative to `prefix`: ObjectInfo} of every object under `prefix` (ListObjectsV2, paginated)."""
        prefix = prefix.strip("/") + "/"
        out: dict[str, ObjectInfo] = {}
        token = None
        while True:
            q = f"list-type=2&prefix={quote(prefix, safe='')}&max-keys=1000"
            if token:
                q += f"&continuation-token={quote(token, safe='')}"
            status, headers, body = self.request("GET", f"{self.base}?{q}", name)
            self.check(status, body, name, "LIST")
            root = ET.fromstring(body)
            ns = root.tag[:root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            for c in root.iter(f"{ns}Contents"):
                key = c.findtext(f"{ns}Key") or ""
                if key.startswith(prefix) and not key.endswith("/"):
                    out[key[len(prefix):]] = ObjectInfo(int(c.findtext(f"{ns}Size") or 0),
                                                        (c.findtext(f"{ns}ETag") or "").strip('"'))
            token = root.findtext(f"{ns}NextContinuationToken")
            if (root.findtext(f"{ns}IsTruncated") or "false").lower() != "true" or not token:
                return out

    def access_hint(self) -> str:
        if self.scheme == "gs":
            return ("check the HMAC keys (storage_options key/secret, GOOGLE_HMAC_ACCESS_KEY_ID/GOOGLE_HMAC_SECRET) "
                    "and that they may read this bucket")
        return ("check the credentials (storage_options key/secret/token, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/"
                "AWS_PROFILE) and that they may read this bucket")


def _quiet(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a broken profile file must not hide the rest of the resolution
        return None


__all__ = ["GCS_ENDPOINT", "S3Client"]
