"""s3:// and gs:// roots: S3's REST API (SigV4-signed here, credentials resolved by botocore, sent by
`remote_wire`), LIST by ListObjectsV2.

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

import hashlib
import hmac
import os
import time
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import quote, unquote

from fastmix.errors import ConfigError
from fastmix.sources.remote_http import Client, ObjectInfo
from fastmix.sources.remote_wire import host_header, split_url

GCS_ENDPOINT = "https://storage.googleapis.com"


class S3Client(Client):
    """An S3 bucket (s3://) or a GCS bucket through its XML API (gs://): signed requests, LIST."""

    listable = True

    def setup(self) -> None:
        self._keys: dict[tuple, bytes] = {}  # SigV4 signing keys by (secret, date, region): one per day
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
            from botocore.credentials import Credentials
        except ImportError as e:
            raise ConfigError(f"gs://{self.bucket}: signed gs:// requests need botocore: pip install "
                              f"'fastmix[remote]'") from e
        self.credentials = Credentials(key, secret)

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

    def url_for(self, key: str) -> str:
        return f"{self.base}/{quote(key.lstrip('/'), safe='/-_.~')}"

    def headers_for(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        headers = {**self.extra_headers, **headers}
        if self.credentials is None:
            return headers
        return sign_v4(self.credentials.get_frozen_credentials(), self.region, method, url, headers, self._keys)

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


_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_UNSIGNED = frozenset({"authorization", "user-agent", "expect", "transfer-encoding", "x-amzn-trace-id"})


def sign_v4(creds: Any, region: str, method: str, url: str, headers: dict[str, str],
            keys: dict[tuple, bytes] | None = None) -> dict[str, str]:
    """`headers` with AWS Signature Version 4 for S3 added (x-amz-date, x-amz-content-sha256 of the empty
    body, x-amz-security-token with a session token, Authorization), signing every header sent but those S3
    leaves unsigned, and Host as the transport sends it (`remote_wire.host_header`). `creds`: botocore frozen
    credentials (access_key, secret_key, token); `keys`: a cache of signing keys (derived once per day and
    region). Requests without a body only (GET, HEAD, LIST)."""
    parts = split_url(url)
    now = time.gmtime()
    amz_date = time.strftime("%Y%m%dT%H%M%SZ", now)
    day = amz_date[:8]
    out = {k: v for k, v in headers.items() if k.lower() not in ("authorization", "x-amz-date",
                                                                  "x-amz-content-sha256", "x-amz-security-token")}
    out["X-Amz-Date"] = amz_date
    out["X-Amz-Content-SHA256"] = _EMPTY_SHA256
    if creds.token:
        out["X-Amz-Security-Token"] = creds.token
    signed = {"host": host_header(parts)}
    for k, v in out.items():
        if k.lower() not in _UNSIGNED:
            signed[k.lower()] = " ".join(str(v).split())
    names = sorted(signed)
    query = sorted((quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~"))
                   for k, _, v in (q.partition("=") for q in parts.query.split("&") if q))
    canonical = "\n".join([method, parts.path or "/", "&".join(f"{k}={v}" for k, v in query),
                           "".join(f"{n}:{signed[n]}\n" for n in names), ";".join(names), _EMPTY_SHA256])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    cache = {} if keys is None else keys
    key = cache.get((creds.secret_key, day, region))
    if key is None:
        key = f"AWS4{creds.secret_key}".encode()
        for part in (day, region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        if len(cache) > 16:
            cache.clear()
        cache[(creds.secret_key, day, region)] = key
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, "
                            f"SignedHeaders={';'.join(names)}, Signature={signature}")
    return out


def _quiet(fn: Any) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a broken profile file must not hide the rest of the resolution
        return None


__all__ = ["GCS_ENDPOINT", "S3Client", "sign_v4"]
