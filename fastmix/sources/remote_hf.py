"""hf:// roots: datasets on the Hugging Face Hub, read through the endpoints `huggingface_hub` uses.

A root is `hf://datasets/<org>/<name>[@<revision>][/<folder>]` (HfFileSystem's syntax; a revision holding "/"
is written %2F-encoded, e.g. `@refs%2Fconvert%2Fparquet`); no revision means `main`. At open the revision is
resolved to its commit once (`GET {endpoint}/api/datasets/<repo>/revision/<revision>` → "sha") and every file of
the dataset is then read at that commit, so a push during a run never mixes two versions: the listing is
`GET {endpoint}/api/datasets/<repo>/tree/<sha>[/<folder>]?recursive=True&expand=False` (paginated by its
`Link: <...>; rel="next"` header; each file's version is its LFS sha256 or its git blob id), the bytes
`GET {endpoint}/datasets/<repo>/resolve/<sha>/<path>` with `Range`, following the Hub's redirects (to its
CDN: the Authorization header is not sent to another host). The CDN URL a file redirects to is then asked
directly for 5 minutes (one Hub request per file, not per range), and the resolve asked again when it answers
401/403/404/410 (its signature expired).

The endpoint is `storage_options["endpoint"]`, else `HF_ENDPOINT`, else https://huggingface.co; the token
`storage_options["token"]`, else `HF_TOKEN`, else `HUGGING_FACE_HUB_TOKEN` (a bearer token; none: anonymous).
HTTP 429 is retried after the `Retry-After` the Hub sends (within the retry budget, see `remote_http`);
`FASTMIX_REMOTE_MAX_RPS` keeps a process under the Hub's request rate.
"""

from __future__ import annotations

import json
import os
import re
from urllib.parse import quote, unquote, urljoin

from fastmix.errors import ConfigError, MissingFileError
from fastmix.sources.remote_http import Client, ObjectInfo, RemoteError

DEFAULT_ENDPOINT = "https://huggingface.co"


def parse(url: str) -> tuple[str, str | None, str]:
    """(repo id, revision or None, path inside the repo) of `hf://datasets/<org>/<name>[@rev][/path]`."""
    rest = url.split("://", 1)[1]
    kind, _, rest = rest.partition("/")
    if kind != "datasets":
        raise ConfigError(f"dataset root {url}: fastmix reads Hub datasets: hf://datasets/<org>/<name>[@revision]"
                          f" (got hf://{kind}/...)")
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ConfigError(f"dataset root {url} names no repo: write hf://datasets/<org>/<name>[@revision]")
    name, _, revision = parts[1].partition("@")
    return f"{parts[0]}/{name}", (unquote(revision) if revision else None), "/".join(parts[2:])


def pinned_url(url: str, sha: str) -> str:
    """`url` with its revision replaced by the commit `sha` (`hf://datasets/<org>/<name>@<sha>[/path]`): the
    URL of a file names its version, so the byte cache and the per-process objects never mix two commits."""
    repo, _, path = parse(url)
    return f"hf://datasets/{repo}@{sha}" + (f"/{path}" if path else "")


class HfClient(Client):
    """One Hub dataset repo (`bucket` is its id) at one commit (`options["_commit"]`, set at open; else the
    revision is resolved on first use); keys are paths inside the repo."""

    listable = True
    pinned = True
    redirect_ttl_s = 300.0  # the CDN URL a resolve redirects to is asked directly for 5 minutes

    def setup(self) -> None:
        o = self.options
        self.endpoint = (o.get("endpoint") or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        token = o.get("token") or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
        self.token_headers = {"Authorization": f"Bearer {token}"} if token and token is not True else {}
        self.commit: str | None = o.get("_commit")

    def headers_for(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        return {**self.extra_headers, **self.token_headers, **headers}

    def resolve(self, revision: str | None, name: str) -> str:
        """The commit sha `revision` (default main) names now; sets it as this client's commit."""
        rev = revision or "main"
        url = f"{self.endpoint}/api/datasets/{self.bucket}/revision/{quote(rev, safe='')}"
        status, headers, body = self.request("GET", url, name)
        if status == 404:
            raise MissingFileError(f"{name}: the Hub has no dataset {self.bucket!r} at revision {rev!r} (HTTP 404 "
                                   f"from {self.endpoint}); check the repo id and revision (a private repo needs "
                                   f"HF_TOKEN)")
        self.check(status, body, name, "revision lookup")
        try:
            sha = json.loads(body)["sha"]
        except (ValueError, KeyError, TypeError):
            raise RemoteError(f"{name}: the Hub's answer for revision {rev!r} holds no commit sha") from None
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise RemoteError(f"{name}: the Hub's answer for revision {rev!r} names no commit (sha={sha!r})")
        self.commit = sha
        return sha

    def _at(self) -> str:
        return quote(self.commit or "main", safe="")

    def url_for(self, key: str) -> str:
        return f"{self.endpoint}/datasets/{self.bucket}/resolve/{self._at()}/{quote(key.lstrip('/'))}"

    def list(self, prefix: str, name: str) -> dict[str, ObjectInfo]:
        """{path relative to `prefix`: ObjectInfo} of every file under `prefix` at the commit (the tree API)."""
        prefix = prefix.strip("/")
        folder = "/" + quote(prefix, safe="") if prefix else ""
        url: str | None = (f"{self.endpoint}/api/datasets/{self.bucket}/tree/{self._at()}{folder}"
                           f"?recursive=True&expand=False")
        out: dict[str, ObjectInfo] = {}
        while url:
            status, headers, body = self.request("GET", url, name)
            self.check(status, body, name, "LIST")
            try:
                entries = json.loads(body)
            except ValueError:
                raise RemoteError(f"{name}: the Hub's tree listing is not JSON") from None
            for e in entries if isinstance(entries, list) else []:
                path = str(e.get("path", ""))
                if e.get("type") != "file" or (prefix and not path.startswith(prefix + "/")):
                    continue
                lfs = e.get("lfs") or {}
                out[path[len(prefix) + 1:] if prefix else path] = ObjectInfo(
                    int(e.get("size", lfs.get("size", 0))), str(lfs.get("oid") or e.get("oid") or ""))
            url = _next_link(headers.get("link", ""), url)
        return out

    def access_hint(self) -> str:
        return (f"check HF_TOKEN (or storage_options={{'token': ...}}) and that it may read dataset {self.bucket} "
                f"on {self.endpoint}")


def _next_link(header: str, base: str) -> str | None:
    """The `rel="next"` URL of a Link header (GitHub's pagination format), or None."""
    for part in header.split(","):
        m = re.match(r'\s*<([^>]*)>\s*;(.*)', part)
        if m and re.search(r'rel\s*=\s*"?next"?', m[2]):
            return urljoin(base, m[1])
    return None


__all__ = ["DEFAULT_ENDPOINT", "HfClient", "parse", "pinned_url"]
