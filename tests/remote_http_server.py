"""HTTP servers for the remote tests: a static file server with `Range` (plain http or TLS with a self-signed
certificate) for https:// roots, and a stand-in of the Hugging Face Hub speaking the endpoints huggingface_hub
uses (`/api/datasets/<repo>/revision/<rev>`, `/api/datasets/<repo>/tree/<rev>[/<path>]?recursive=...` paginated
by a `Link` header, `/datasets/<repo>/resolve/<rev>/<path>` with a 302 to a second "CDN" server for large
files, as the Hub does for LFS files). Each runs in this process on threads, on a free 127.0.0.1 port, and is
closed (socket and threads) by `close()`. python's http.server does not do Range: `_Handler.send_file` does
(single ranges `bytes=a-b`, `bytes=a-`, `bytes=-n`; 416 outside the file).
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client pools connections
    owner: HTTPServerBase

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_GET(self) -> None:
        self._dispatch("GET")

    def _dispatch(self, method: str) -> None:
        owner = self.owner
        with owner.lock:
            owner.requests.append((method, self.path, dict(self.headers.items())))
            fault = owner.faults.pop(0) if owner.faults else None
        if fault is not None:
            status, retry_after = fault
            extra = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            self.send_bytes(status, b'{"error": "injected"}', "application/json", extra, method)
            return
        owner.route(self, method)

    def send_bytes(self, status: int, body: bytes, ctype: str = "application/octet-stream",
                   headers: dict | None = None, method: str = "GET") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def send_file(self, path: Path, method: str, etag: str, headers: dict | None = None) -> None:
        """`path` with Range support, its ETag and Last-Modified."""
        if not path.is_file():
            self.send_bytes(404, b'{"error": "Entry not found"}', "application/json", method=method)
            return
        data = path.read_bytes()
        size = len(data)
        meta = {"ETag": f'"{etag}"', "Accept-Ranges": "bytes",
                "Last-Modified": email.utils.format_datetime(
                    datetime.datetime.fromtimestamp(int(path.stat().st_mtime), datetime.timezone.utc), usegmt=True),
                **(headers or {})}
        rng = self.headers.get("Range")
        if not rng:
            self.send_bytes(200, data, headers=meta, method=method)
            return
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
        if not m or (not m[1] and not m[2]):
            self.send_bytes(400, b"bad range", method=method)
            return
        if m[1]:
            start, end = int(m[1]), min(int(m[2]) if m[2] else size - 1, size - 1)
        else:
            start, end = max(size - int(m[2]), 0), size - 1
        if start >= size or end < start:
            self.send_bytes(416, b"", headers={"Content-Range": f"bytes */{size}"}, method=method)
            return
        self.send_bytes(206, data[start:end + 1], headers={**meta, "Content-Range": f"bytes {start}-{end}/{size}"},
                        method=method)


class HTTPServerBase:
    """A threaded HTTP(S) server on 127.0.0.1; `requests` logs (method, path, headers); `fail(n, status,
    retry_after)` answers the next n requests with `status` (and a Retry-After header in seconds)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict]] = []
        self.faults: list[tuple[int, float | None]] = []
        handler = type("Handler", (_Handler,), {"owner": self})
        self.httpd = _Server(("127.0.0.1", 0), handler)
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.port = self.httpd.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def fail(self, n: int, status: int, retry_after: float | None = None) -> None:
        with self.lock:
            self.faults += [(status, retry_after)] * n

    def route(self, h: _Handler, method: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class StaticServer(HTTPServerBase):
    """Serves the files under `root` at their relative paths, with Range; ETag = md5 of the content."""

    def __init__(self, root: Path, tls: tuple[Path, Path] | None = None) -> None:
        self.root = Path(root)
        super().__init__(tls)

    def route(self, h: _Handler, method: str) -> None:
        rel = unquote(urlsplit(h.path).path).lstrip("/")
        path = (self.root / rel).resolve()
        if not str(path).startswith(str(self.root.resolve())):
            h.send_bytes(403, b"", method=method)
            return
        etag = hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else ""
        h.send_file(path, method, etag)


def self_signed_cert(d: Path) -> tuple[Path, Path]:
    """(cert.pem, key.pem) of a self-signed certificate for 127.0.0.1 and localhost, written under `d`."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fastmix-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    d.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = d / "cert.pem", d / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


# -- a stand-in of the Hub ----------------------------------------------------------------------------------
class HubServer(HTTPServerBase):
    """The Hub's dataset endpoints over local directories: `push(repo, directory)` makes a commit (a new sha
    that `main` then names; earlier commits stay readable by sha). Files of at least `lfs_min` bytes are "LFS":
    listed with an `lfs` entry (sha256) and resolved by a 302 to the `cdn` server (its own port: another host
    for the client, so no Authorization header may reach it; `cdn.requests` shows). `token`: when set, the API
    and resolve endpoints answer 401 without `Authorization: Bearer <token>`. `page_size`: entries per tree page."""

    def __init__(self, token: str | None = None, page_size: int = 7, lfs_min: int = 4096) -> None:
        self.token, self.page_size, self.lfs_min = token, page_size, lfs_min
        self.commits: dict[str, dict[str, Path]] = {}  # sha -> {path in repo: local file}
        self.refs: dict[tuple[str, str], str] = {}  # (repo, branch) -> sha
        self.blobs: dict[str, Path] = {}  # sha256 -> file (the CDN's store)
        self.signature = "sig-0"  # what the CDN accepts in X-Amz-Signature (`rotate()`: earlier URLs expire)
        self.cdn = _Cdn(self)
        super().__init__()

    def push(self, repo: str, directory: Path, branch: str = "main") -> str:
        files = {p.relative_to(directory).as_posix(): p for p in sorted(Path(directory).rglob("*")) if p.is_file()}
        digest = hashlib.sha1(repr((repo, len(self.commits), sorted(files))).encode())
        for p in files.values():
            digest.update(p.read_bytes())
            sha256 = hashlib.sha256(p.read_bytes()).hexdigest()
            self.blobs[sha256] = p
        sha = digest.hexdigest()
        self.commits[sha] = files
        self.refs[(repo, branch)] = sha
        return sha

    def rotate(self) -> None:
        """Expire every CDN URL handed out so far (the CDN answers 403 to their old signature)."""
        self.signature = f"sig-{int(self.signature.split('-')[1]) + 1}"

    def _commit(self, repo: str, rev: str) -> str | None:
        rev = unquote(rev)
        if (repo, rev) in self.refs:
            return self.refs[(repo, rev)]
        return rev if rev in self.commits else None

    def _entry(self, rel: str, p: Path) -> dict:
        data = p.read_bytes()
        out = {"type": "file", "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(), "size": len(data),
               "path": rel}
        if len(data) >= self.lfs_min:
            out["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return out

    def route(self, h: _Handler, method: str) -> None:
        parts = urlsplit(h.path)
        path = parts.path
        if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
            h.send_bytes(401, b'{"error": "Invalid credentials in Authorization header"}', "application/json",
                         method=method)
            return
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/revision/([^/]+)", path)
        if m:
            sha = self._commit(m[1], m[2])
            if sha is None:
                h.send_bytes(404, b'{"error": "Revision Not Found"}', "application/json", method=method)
                return
            h.send_bytes(200, json.dumps({"id": m[1], "sha": sha}).encode(), "application/json", method=method)
            return
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/tree/([^/]+)(/[^/]+)?", path)
        if m:
            self._tree(h, m[1], m[2], unquote(m[3] or "").lstrip("/"), parse_qs(parts.query), method)
            return
        m = re.fullmatch(r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            sha = self._commit(m[1], m[2])
            p = self.commits.get(sha, {}).get(unquote(m[3])) if sha else None
            if p is None:
                h.send_bytes(404, b'{"error": "Entry not found"}', "application/json", method=method)
                return
            entry = self._entry(unquote(m[3]), p)
            if "lfs" in entry:
                oid = entry["lfs"]["oid"]
                h.send_bytes(302, b"", headers={"Location": f"{self.cdn.url}/repos/{oid}?X-Amz-Signature={self.signature}",
                                                "X-Linked-Etag": f'"{oid}"', "X-Linked-Size": str(entry["size"]),
                                                "X-Repo-Commit": sha}, method=method)
                return
            h.send_file(p, method, entry["oid"], {"X-Repo-Commit": sha})
            return
        h.send_bytes(404, b'{"error": "no such endpoint"}', "application/json", method=method)

    def _tree(self, h: _Handler, repo: str, rev: str, folder: str, query: dict, method: str) -> None:
        sha = self._commit(repo, rev)
        if sha is None:
            h.send_bytes(404, b'{"error": "Revision Not Found"}', "application/json", method=method)
            return
        recursive = query.get("recursive", ["False"])[0].lower() == "true"
        files = self.commits[sha]
        entries, dirs = [], set()
        for rel in sorted(files):
            if folder and not rel.startswith(folder + "/"):
                continue
            sub = rel[len(folder) + 1:] if folder else rel
            if not recursive and "/" in sub:
                dirs.add((folder + "/" if folder else "") + sub.split("/", 1)[0])
                continue
            entries.append(self._entry(rel, files[rel]))
        entries = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)] + entries
        if recursive:  # the Hub lists the folders too
            folders = sorted({r.rsplit("/", 1)[0] for r in (e["path"] for e in entries) if "/" in r})
            entries = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in folders] + entries
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + self.page_size]
        headers = {}
        if start + self.page_size < len(entries):
            q = f"recursive={query.get('recursive', ['False'])[0]}&expand=False&cursor={start + self.page_size}"
            folder_part = "/" + quote(folder, safe="") if folder else ""
            headers["Link"] = f'<{self.url}/api/datasets/{repo}/tree/{rev}{folder_part}?{q}>; rel="next"'
        h.send_bytes(200, json.dumps(page).encode(), "application/json", headers, method)

    def close(self) -> None:
        self.cdn.close()
        super().close()


class _Cdn(HTTPServerBase):
    """The Hub's CDN: /repos/<sha256>?X-Amz-Signature=<the hub's current signature> with Range (another
    signature: 403, as an expired signed URL); `requests` shows whether an Authorization header arrived."""

    def __init__(self, hub: HubServer) -> None:
        self.hub = hub
        super().__init__()

    def route(self, h: _Handler, method: str) -> None:
        parts = urlsplit(h.path)
        if parse_qs(parts.query).get("X-Amz-Signature") != [self.hub.signature]:
            h.send_bytes(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                         "application/xml", method=method)
            return
        m = re.fullmatch(r"/repos/([0-9a-f]{64})", parts.path)
        p = self.hub.blobs.get(m[1]) if m else None
        if p is None:
            h.send_bytes(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml", method=method)
            return
        h.send_file(p, method, hashlib.md5(p.read_bytes()).hexdigest())
