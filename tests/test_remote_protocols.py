"""Dataset roots over https://, hf:// and gs://, against servers the tests start (`tests/remote_http_server.py`,
`tests/remote_server.py`).

- https://: a threaded static file server with `Range`, over TLS with a self-signed certificate given as
  `storage_options={"ca_bundle": ...}`; plain HTTP cannot be listed, so the files are found from the metadata.
- hf://: a stand-in of the Hub speaking the endpoints huggingface_hub uses (revision, paginated tree, resolve
  with a 302 to a "CDN" on another port for large files, a bearer token). Not the real Hub.
- gs://: GCS's XML API is S3's protocol with HMAC keys; SeaweedFS stands in for storage.googleapis.com.

Equality: the low-dim columns of every row and the frames of every row (one batched read) equal the local read
of the same dataset bit for bit, and a few items (`src[i]`, task strings included) too; the per-index equality
with lerobot's LeRobotDataset of the same datasets is `tests/test_remote.py` (s3://), whose reading path
(mirror, byte ranges, byte cache) is the one these roots share. Then what each protocol adds: the revision
pinned to a commit, the Authorization header kept from the CDN, the token, 429 with Retry-After, the metadata
mirror's bound, `fastmix cache`, a damaged mirror rebuilt.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fastmix.errors import MissingFileError
from fastmix.sources import remote, remote_file, remote_mirror
from fastmix.sources.lerobot_source import LeRobotSource
from fastmix.sources.remote import RemoteAccessError
from tests.remote_http_server import HubServer, StaticServer, self_signed_cert
from tests.remote_server import BUCKET, KEY, SECRET, isolated_remote, read_frames, serve

pytestmark = pytest.mark.filterwarnings("ignore:The video decoding and encoding capabilities:UserWarning")

NAMES = ("video_ds", "image_ds", "v21_ds")
TOKEN = "hf_fastmix_test_token"
s3_server = pytest.fixture(scope="module", name="s3_server")(serve)


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https(dataset_dir, video_ds, image_ds, v21_ds, tls):
    """The session's datasets served over https://127.0.0.1:<port>/<name> (self-signed certificate)."""
    server = StaticServer(dataset_dir, tls=tls)
    yield server
    server.close()


@pytest.fixture(scope="module")
def hub(video_ds, image_ds, v21_ds):
    """A Hub stand-in holding fastmix-test/<name> for each dataset, behind the token TOKEN."""
    server = HubServer(token=TOKEN)
    for name, root in (("video_ds", video_ds), ("image_ds", image_ds), ("v21_ds", v21_ds)):
        server.push(f"fastmix-test/{name}", root)
    yield server
    server.close()


HUB_AND_TLS_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE",
                         "CURL_CA_BUNDLE", "GOOGLE_HMAC_ACCESS_KEY_ID", "GOOGLE_HMAC_SECRET", "GOOGLE_STORAGE_ENDPOINT")


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """A private fastmix cache and byte cache, none of the Hub's, TLS or GCS variables; this process's remote
    objects, clients and counters start empty and are dropped after."""
    yield from isolated_remote(tmp_path, monkeypatch, unset=HUB_AND_TLS_VARIABLES)


def assert_equal_to_local(src: LeRobotSource, local_root: Path, items=(0, 37, 119, 239)) -> None:
    """Every row's low-dim values and frames (one batched read) equal the local read; so do the items `items`."""
    local = LeRobotSource(root=local_root)
    try:
        assert len(src) == len(local) and src.tasks == local.tasks and src.camera_keys == local.camera_keys
        rows = np.arange(len(local), dtype=np.int64)
        a, b = src.gather_lowdim(rows), local.gather_lowdim(rows)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
        got, want = read_frames(src, rows), read_frames(local, rows)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
        for i in items:
            x, y = src[i], local[i]
            assert list(x) == list(y)
            assert all(x[k] == y[k] if isinstance(x[k], str) else torch.equal(x[k], y[k]) for k in x), i
    finally:
        src.close()
        local.close()


# -- https:// -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_https_root_equals_the_local_read(name, https, tls, fresh, request):
    """v3.0 video, v3.0 image-in-parquet and v2.1 over https:// (TLS verified against the given CA): equal to
    the local read; the server was never asked to list (HEADs and GETs of the files the metadata names)."""
    src = LeRobotSource(root=f"{https.url}/{name}", storage_options={"ca_bundle": str(tls[0])})
    assert src.url == f"{https.url}/{name}" and src.name == name
    assert_equal_to_local(src, request.getfixturevalue(name))
    paths = {p for _, p, _ in https.requests if p.startswith(f"/{name}/")}
    assert paths and all(p.split("/")[2] in ("meta", "data", "videos") for p in paths)
    assert {m for m, _, _ in https.requests} <= {"GET", "HEAD"}


def test_https_warm_open_downloads_nothing_and_a_changed_file_is_read_again(https, tls, dataset_dir, fresh,
                                                                           tmp_path, monkeypatch):
    """A second open of an https:// root asks for each file's HEAD only (no GET); a file changed on the server
    (other ETag) is downloaded again and its new content read. The CA from SSL_CERT_FILE here."""
    root = tmp_path / "served"
    shutil.copytree(dataset_dir / "v21_ds", root / "v21_ds")
    server = StaticServer(root, tls=tls)
    try:
        monkeypatch.setenv("SSL_CERT_FILE", str(tls[0]))
        url = f"{server.url}/v21_ds"
        LeRobotSource(root=url).close()
        server.requests.clear()
        remote.close_clients()
        src = LeRobotSource(root=url)
        assert server.requests and {m for m, _, _ in server.requests} == {"HEAD"}
        src.close()
        tasks = root / "v21_ds/meta/tasks.jsonl"
        tasks.write_text(tasks.read_text().replace('"task": "', '"task": "new: '))
        src = LeRobotSource(root=url)
        assert all(t.startswith("new: ") for t in src.tasks.values())
        src.close()
    finally:
        server.close()


def test_an_untrusted_certificate_is_one_error_at_once(https, fresh):
    """No CA given for a self-signed certificate: RemoteAccessError at open naming the URL and how to give the CA,
    after one attempt (a certificate is not retried)."""
    start = time.monotonic()
    with pytest.raises(RemoteAccessError) as info:
        LeRobotSource(root=f"{https.url}/video_ds")
    assert time.monotonic() - start < 5
    msg = str(info.value)
    assert f"{https.url}/video_ds/meta/info.json" in msg and "ca_bundle" in msg and "SSL_CERT_FILE" in msg
    assert remote.stats().get("retries", 0) == 0


# -- hf:// ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_hf_root_equals_the_local_read(name, hub, fresh, request, monkeypatch):
    """hf://datasets/<repo> on the stand-in (HF_TOKEN as the bearer token): equal to the local read; the revision
    was resolved once and every file read at that commit; the tree listing followed its pages; the token went
    to the Hub and never to the CDN; a file's CDN URL was asked directly after its first resolve."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub.requests.clear()
    hub.cdn.requests.clear()
    src = LeRobotSource(root=f"hf://datasets/fastmix-test/{name}", storage_options={"endpoint": hub.url})
    assert_equal_to_local(src, request.getfixturevalue(name))
    sha = hub.refs[(f"fastmix-test/{name}", "main")]
    paths = [p for _, p, _ in hub.requests]
    assert paths.count(f"/api/datasets/fastmix-test/{name}/revision/main") == 1
    assert sum(p.startswith(f"/api/datasets/fastmix-test/{name}/tree/{sha}?") for p in paths) > 1  # pages
    resolves = [p for p in paths if "/resolve/" in p]
    assert resolves and all(p.startswith(f"/datasets/fastmix-test/{name}/resolve/{sha}/") for p in resolves)
    assert all(h.get("Authorization") == f"Bearer {TOKEN}" for _, _, h in hub.requests)
    assert hub.cdn.requests and not any("Authorization" in h for _, _, h in hub.cdn.requests)
    # each file's CDN URL is remembered: an mp4 is resolved once (twice when two threads race), not per range
    mp4 = [p for p in resolves if p.endswith(".mp4")]
    assert len(mp4) <= 2 * len(set(mp4))
    if name == "video_ds":  # one mp4 per camera, read by many ranges
        assert remote.stats()["redirects_remembered"] >= 1


def test_hf_revision_is_pinned_for_the_whole_run(hub, video_ds, v21_ds, fresh, tmp_path):
    """A push after the open (main now names another commit with other files) changes nothing for the open
    dataset: its frames are still the opened commit's. A new open reads the new commit; `@<sha>` the old."""
    repo = "fastmix-test/pinned"
    old = hub.push(repo, video_ds)
    options = {"endpoint": hub.url, "token": TOKEN}
    src = LeRobotSource(root=f"hf://datasets/{repo}", storage_options=options)
    changed = tmp_path / "changed"
    shutil.copytree(video_ds, changed)
    a, b = sorted((changed / "videos").iterdir())  # the two cameras' videos swapped in the new commit
    a.rename(changed / "swap")
    b.rename(a)
    (changed / "swap").rename(b)
    new = hub.push(repo, changed)
    assert new != old
    assert_equal_to_local(src, video_ds)
    again = LeRobotSource(root=f"hf://datasets/{repo}", storage_options=options)
    assert again._remote.options["_commit"] == new
    rows = np.arange(0, 240, 7, dtype=np.int64)
    got, want = read_frames(again, rows), read_frames(LeRobotSource(root=video_ds), rows)
    assert np.array_equal(got[a.name], want[b.name]) and np.array_equal(got[b.name], want[a.name])
    again.close()
    pinned = LeRobotSource(root=f"hf://datasets/{repo}@{old}", storage_options=options)
    assert pinned._remote.options["_commit"] == old
    assert_equal_to_local(pinned, video_ds, items=())


def test_hf_endpoint_token_and_lerobot_home_from_the_environment(hub, image_ds, fresh, monkeypatch):
    """HF_ENDPOINT, HUGGING_FACE_HUB_TOKEN and HF_LEROBOT_HOME=hf://datasets with a repo id: the same dataset."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", TOKEN)
    monkeypatch.setenv("HF_LEROBOT_HOME", "hf://datasets")
    src = LeRobotSource("fastmix-test/image_ds")
    assert src.url == "hf://datasets/fastmix-test/image_ds"
    assert_equal_to_local(src, image_ds, items=(5,))


def test_hf_rate_limit_retry_after_is_waited_for(hub, video_ds, fresh):
    """Two answers HTTP 429 with Retry-After: 0.4 (the Hub's rate limit): each waited for in full, counted,
    then the open completes."""
    hub.fail(2, 429, retry_after=0.4)
    start = time.monotonic()
    src = LeRobotSource(root="hf://datasets/fastmix-test/video_ds", storage_options={"endpoint": hub.url,
                                                                                     "token": TOKEN})
    assert time.monotonic() - start >= 0.8
    counts = remote.stats()
    assert counts["retry_http_429"] == 2 and counts["retries"] == 2
    assert_equal_to_local(src, video_ds, items=())


def test_hf_bad_token_repo_or_revision_are_clear_errors(hub, fresh):
    """A wrong token: RemoteAccessError naming the URL, HTTP 401 and HF_TOKEN; an unknown repo or revision:
    MissingFileError naming the dataset, repo and revision."""
    with pytest.raises(RemoteAccessError) as info:
        LeRobotSource(root="hf://datasets/fastmix-test/video_ds", storage_options={"endpoint": hub.url,
                                                                                    "token": "wrong"})
    msg = str(info.value)
    assert "dataset 'video_ds'" in msg and "hf://datasets/fastmix-test/video_ds" in msg and "HTTP 401" in msg
    assert "HF_TOKEN" in msg
    for root, what in (("hf://datasets/fastmix-test/nothing", "'fastmix-test/nothing' at revision 'main'"),
                       ("hf://datasets/fastmix-test/video_ds@v9", "'fastmix-test/video_ds' at revision 'v9'")):
        with pytest.raises(MissingFileError, match=what):
            LeRobotSource(root=root, storage_options={"endpoint": hub.url, "token": TOKEN})


# -- gs:// ----------------------------------------------------------------------------------------------------
def test_gs_root_through_the_xml_api(s3_server, video_ds, fresh, monkeypatch):
    """gs://bucket/prefix with HMAC keys against an S3-compatible endpoint (SeaweedFS standing in for
    storage.googleapis.com): storage_options, then GOOGLE_HMAC_* / GOOGLE_STORAGE_ENDPOINT; AWS_* not used."""
    s3_server.upload(video_ds, "gcs/video_ds")
    url = f"gs://{BUCKET}/gcs/video_ds"
    src = LeRobotSource(root=url, storage_options={"key": KEY, "secret": SECRET, "endpoint_url": s3_server.endpoint})
    assert src.url == url
    assert_equal_to_local(src, video_ds, items=(3,))
    remote_file.forget_objects()
    remote.close_clients()
    monkeypatch.setenv("GOOGLE_HMAC_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("GOOGLE_HMAC_SECRET", SECRET)
    monkeypatch.setenv("GOOGLE_STORAGE_ENDPOINT", s3_server.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # would fail if used
    monkeypatch.delenv(remote.ROOTS_ENV)
    assert_equal_to_local(LeRobotSource(root=url), video_ds, items=())


# -- the metadata mirror: bound, fastmix cache, damage ------------------------------------------------------
def test_mirror_is_bounded_listed_cleared_and_rebuilt_when_damaged(https, tls, image_ds, fresh, monkeypatch,
                                                                   capsys):
    """FASTMIX_REMOTE_META_MAX below two mirrors: opening the second removes the first (not in use any more),
    never one in use; `fastmix cache list` shows the mirrors, `clear --dataset` removes one; a truncated or
    edited local copy is downloaded again on the next open (values equal)."""
    import gc

    from fastmix import cli

    opts = {"ca_bundle": str(tls[0])}
    video = LeRobotSource(root=f"{https.url}/video_ds", storage_options=opts)
    video_entry = video.root.parent
    size = sum(f.stat().st_size for f in video_entry.rglob("*") if f.is_file())
    monkeypatch.setenv(remote_mirror.ENV_MAX, str(size + 1024))
    LeRobotSource(root=f"{https.url}/v21_ds", storage_options=opts).close()
    assert video_entry.is_dir()  # in use: kept although over the bound
    video.close()
    del video
    gc.collect()
    image = LeRobotSource(root=f"{https.url}/image_ds", storage_options=opts)
    assert not video_entry.exists()
    assert cli.main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert f"remote metadata {remote_mirror.mirror_base()}" in out and remote_mirror.ENV_MAX in out
    assert f"{https.url}/image_ds" in out and f"{https.url}/video_ds" not in out
    # damage: a truncated data parquet and an edited info.json are downloaded again
    tree = image.root
    parquet = next((tree / "data").rglob("*.parquet"))
    parquet.write_bytes(parquet.read_bytes()[:100])
    info = tree / "meta/info.json"
    info.write_text(info.read_text().replace('"fps"', '"fps_broken"'))
    image.close()
    again = LeRobotSource(root=f"{https.url}/image_ds", storage_options=opts)
    assert_equal_to_local(again, image_ds, items=(1,))
    del again, image
    gc.collect()
    assert cli.main(["cache", "clear", "--dataset", "image_ds"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert not tree.parent.exists()


# -- norm stats and verify over a bucket ----------------------------------------------------------------------
def test_norm_stats_and_verify_over_an_s3_lerobot_home(s3_server, video_ds, image_ds, fresh, tmp_path, monkeypatch):
    """A config whose lerobot_home is s3://… (credentials and endpoint from AWS_*): `fastmix compute-norm-stats`
    writes the same norm_stats.json as the same config over a local home, and `verify` draws the same counts,
    runs the same checks with the same outcomes."""
    from fastmix import cli
    from fastmix.openpi import registry as R
    from fastmix.tools import verify as V
    from tests.test_data_loader import _cfg

    home = tmp_path / "home"
    for name, root in (("video_ds", video_ds), ("image_ds", image_ds)):
        (home / "fastmix-test").mkdir(parents=True, exist_ok=True)
        (home / "fastmix-test" / name).symlink_to(root)
        s3_server.upload(root, f"home/fastmix-test/{name}")
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    repos = ("fastmix-test/video_ds", "fastmix-test/image_ds")
    results = {}
    for where, lerobot_home in (("s3", f"s3://{BUCKET}/home"), ("local", str(home))):
        cfg = R.register(_cfg(tmp_path / where, repos, name=f"remote_ns_{where}", lerobot_home=lerobot_home,
                              weights=[1.0, 2.0]))
        try:
            assert cli.main(["compute-norm-stats", cfg.name]) == 0
            stats = (tmp_path / where / "assets" / "shared" / "norm_stats.json").read_text()
            report = V.verify(cfg, 120, plot_path=tmp_path / f"{where}.png", out=lambda s: None)
        finally:
            R.unregister(cfg.name)
        results[where] = (stats, report.observed_counts, report.expected_shares,
                          [(c.name, c.ok) for c in report.checks], report.p_value)
    assert results["s3"] == results["local"]
    assert sum(results["s3"][1]) == 120 and remote.stats()["requests"] > 0
