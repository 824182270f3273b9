"""A remote mp4 opened for decoding (`fastmix.sources.frames` uses it for every URL): the container over a
`RemoteFile`, and where decoding from a time starts.

Where the sample table (`mp4_index`) is known and frames are not reordered (no B-frames: decode order is
presentation order), decoding needs no demuxer: `frames_from(t)` feeds the stream's own decoder the packets
from the keyframe a decode for `t` starts from (`SampleIndex.start_of`) on, each one's bytes straight from
what the work item's prefetch holds (`RemoteObject.pread`; fetched then when not held), with the pts, dts,
time base and keyframe flag the demuxer would give it — so no container seek, no read through the gaps
between frames, no Python file reads per packet. A frame decoded this way is the demuxed decode's, bit for
bit (the packet bytes, order and timestamps are the same: tests/test_remote.py checks every index against
the local read and lerobot).

Otherwise (reordered frames, no usable table) the container is sought and demuxed as for a local file; with
a table, gaps FFmpeg reads through are served as zeros (`RemoteFile.zero_fill`) and a demuxed packet that
overlaps them gets its real bytes before decoding (`remote_file.real_packets`).
"""

from __future__ import annotations

from collections.abc import Iterator

import av
import av.logging

from fastmix.sources.remote_file import RemoteFile, object_for, real_packets


class RemoteVideo:
    """The open container of the mp4 at `url` (`fmt`: the demuxer to use, or None to probe) and its sample
    table (`index`, None when unusable)."""

    def __init__(self, url: str, fmt: str | None) -> None:
        self.obj = object_for(url)
        self.index = self.obj.sample_index()  # read first: the container's header then comes from memory
        file = RemoteFile(self.obj)
        with av.logging.Capture():  # FFmpeg's note that a Python file object names no protocol
            self.container = av.open(file, format=fmt, metadata_errors="ignore")
        file.zero_fill = self.index is not None  # gaps read through, never parsed: zeros (see real_packets)
        self.direct = self.index is not None and not self.index.reorder
        self._pts: list[int] | None = None

    def frames_from(self, stream: av.video.stream.VideoStream, t: float, early_s: float) -> Iterator[av.VideoFrame]:
        """Decoded frames of `stream` from the last keyframe at or before `t` + `early_s` seconds on (the
        first keyframe when none is)."""
        if not self.direct:
            self.container.seek(int(round(max(t, 0.0) / float(stream.time_base))), backward=True,
                                any_frame=False, stream=stream)
            if self.index is None:
                return self.container.decode(stream)
            return (f for p in real_packets(self.container.demux(stream), self.obj) for f in p.decode())
        return self._direct(stream, t + early_s)

    def _direct(self, stream: av.video.stream.VideoStream, t: float) -> Iterator[av.VideoFrame]:
        index, obj, ctx, tb = self.index, self.obj, stream.codec_context, stream.time_base
        assert index is not None
        if self._pts is None:  # the demuxer's integer pts (the table's seconds, equal to PyAV's to 1e-9 s)
            self._pts = [round(float(p) / float(tb)) for p in index.pts_s]
        pts, offset, size, sync = self._pts, index.offset, index.size, index.sync
        ctx.flush_buffers()
        for j in range(index.start_of(t), len(pts)):
            packet = av.Packet(obj.pread(int(offset[j]), int(size[j])))
            packet.pts = packet.dts = pts[j]
            packet.time_base = tb
            packet.is_keyframe = bool(sync[j])
            yield from ctx.decode(packet)
        yield from ctx.decode(None)  # the end of the stream: what the decoder still holds

    def close(self) -> None:
        self.container.close()


__all__ = ["RemoteVideo"]
