"""The remote counters where users read them: the openpi-shaped `DataLoader.stats()` of a config whose
`lerobot_home` is a bucket (its requests are those the server's proxy saw), and the private counter directories
of processes killed without exiting (swept by the next process that opens a remote root)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from fastmix.sources import remote_stats
from tests.remote_server import BUCKET, isolated_remote, proxy_for, serve

s3_server = pytest.fixture(scope="module", name="s3_server")(serve)


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    yield from isolated_remote(tmp_path, monkeypatch)


def test_openpi_data_loader_stats_count_what_the_server_saw(s3_server, video_ds, image_ds, fresh, monkeypatch):
    """`create_data_loader(config)` over `lerobot_home="s3://…"` behind a proxy that answers 3 requests with
    HTTP 503: `loader.stats()` counts exactly the requests the proxy saw after the loader was made, the 3
    retries by cause, the bytes of the ranges fetched; the batches equal those of the same config over a local
    home; a local config's counters are empty."""
    from fastmix.openpi import data_loader as DL
    from tests.test_data_loader import _with_stats

    home = fresh / "home"
    (home / "fastmix-test").mkdir(parents=True)
    for name, root in (("video_ds", video_ds), ("image_ds", image_ds)):
        (home / "fastmix-test" / name).symlink_to(root)
        s3_server.upload(root, f"counters/fastmix-test/{name}")
    repos = ("fastmix-test/video_ds", "fastmix-test/image_ds")
    local = _with_stats(fresh / "local", repo_ids=repos, lerobot_home=str(home), weights=[1.0, 2.0])

    def batches(config) -> tuple[list[np.ndarray], dict[str, int]]:
        loader = DL.create_data_loader(config, shuffle=True, num_batches=4, framework="pytorch")
        try:
            out = [np.asarray(actions) for _obs, actions in loader]
            return out, loader.stats()
        finally:
            loader.close()

    want, local_stats = batches(local)
    with proxy_for(s3_server) as proxy:
        for k, v in s3_server.env(proxy.endpoint).items():
            monkeypatch.setenv(k, v)
        bucket = _with_stats(fresh / "s3", repo_ids=repos, lerobot_home=f"s3://{BUCKET}/counters", weights=[1.0, 2.0])
        loader = DL.create_data_loader(bucket, shuffle=True, num_batches=4, framework="pytorch")
        try:
            before = proxy.requests
            proxy.fail(3, 503)
            got = [np.asarray(actions) for _obs, actions in loader]
            stats, seen = loader.stats(), proxy.requests - before
        finally:
            loader.close()
    assert len(got) == len(want) == 4 and all(np.array_equal(a, b) for a, b in zip(got, want, strict=True))
    assert stats["requests"] == seen > 3
    assert stats["retries"] == stats["retry_http_503"] == 3 and "failures" not in stats
    assert stats["range_gets"] > 0 and stats["range_bytes"] > 0
    assert local_stats == {}


def test_a_killed_processs_counter_directory_is_swept(tmp_path, monkeypatch):
    """A process that made its private counter directory and was killed by SIGKILL (no exit hook ran) leaves it
    behind; the next process that makes one removes it, and leaves a live process's directory alone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(remote_stats.STATS_ENV, raising=False)
    child = textwrap.dedent("""
        import sys, time
        from fastmix.sources import remote_stats
        print(remote_stats.ensure_stats_dir(), flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop(remote_stats.STATS_ENV, None)
    procs = [subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    try:
        dead_dir, live_dir = (p.stdout.readline().strip() for p in procs)
        assert os.path.dirname(dead_dir) == str(tmp_path) and os.path.isdir(dead_dir) and os.path.isdir(live_dir)
        os.kill(procs[0].pid, signal.SIGKILL)
        procs[0].wait(timeout=10)
        assert os.path.isdir(dead_dir)  # no exit hook ran
        mine = remote_stats.ensure_stats_dir()
        assert not os.path.exists(dead_dir)
        assert os.path.isdir(live_dir) and os.path.isdir(mine)
        assert os.path.basename(mine).startswith(f"{remote_stats.STATS_PREFIX}{os.getpid()}-")
        assert remote_stats.sweep_stats_dirs() == []
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            p.stdout.close()
