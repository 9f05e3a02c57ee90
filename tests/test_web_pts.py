"""The WebRTC track's pts let the page find the RTP timestamp origin without aiortc's private state (issue 13):
consecutive pts gaps are distinct within the page's window, so two frames shown in a row leave one candidate
origin. ``learn_origin`` mirrors ``learnRtpOrigin`` in client/web/static/app.js (the browser test drives the
real one: tests/test_web.py's WebRTC test maps frames and grabs one at PSNR >= 30 dB)."""

import random

import pytest

pytest.importorskip("aiortc")

from spatia.client.web.rtc import PTS_WINDOW, VIDEO_CLOCK_HZ, HubVideoTrack  # noqa: E402


def learn_origin(shown_rtp: list[int], announced_pts: set[int]) -> list[int]:
    """The best candidate origins: each (a shown RTP timestamp minus an announced pts) scores the shown frames it
    maps onto an announced pts; the page takes the one best when it maps >= 2 (``learnRtpOrigin`` in app.js)."""
    score: dict[int, int] = {}
    for r in shown_rtp:
        for p in announced_pts:
            o = (r - p) % 2**32
            score[o] = score.get(o, 0) + 1
    best = max(score.values())
    return [o for o, n in score.items() if n == best]


def test_regular_pacing_still_gives_distinct_gaps_and_one_origin():
    track = HubVideoTrack(sub=None, on_message=lambda m: None, fps=30)
    track._t0 = 0.0
    pts = [track._next_pts(k / 30) for k in range(600)]  # perfectly paced: every clock gap is 3000 ticks
    assert pts == sorted(set(pts)) and pts[0] == 0
    gaps = [b - a for a, b in zip(pts, pts[1:])]
    for i in range(len(gaps)):
        window = gaps[max(0, i - PTS_WINDOW + 1) : i + 1]
        assert len(set(window)) == len(window)  # distinct within the window
    late = [p - k * VIDEO_CLOCK_HZ / 30 for k, p in enumerate(pts)]
    assert max(late) <= 2 * PTS_WINDOW  # a few ms behind the clock at most (5.7 ms)
    rng = random.Random(0)
    origin = rng.getrandbits(32)
    announced = set(pts[-256:])  # what the page keeps (metaByPts)
    for k in rng.sample(range(len(pts) - 255, len(pts) - 1), 20):
        shown = [(origin + pts[k]) % 2**32, (origin + pts[k + 1]) % 2**32]  # two frames shown in a row
        assert learn_origin(shown, announced) == [origin]
        # one of them shown before its metadata came (not yet announced): no wrong origin wins meanwhile
        late = announced - {pts[k + 1]}
        assert learn_origin(shown, late) != [] and (len(learn_origin(shown, late)) > 1)
    # a single frame is ambiguous: the page waits for a second one
    assert len(learn_origin([(origin + pts[-1]) % 2**32], announced)) == len(announced)


def test_every_pts_reaches_the_rtp_timestamp_unchanged():
    """aiortc's VP8 encoder rounds a frame's pts through PyAV's microsecond time base and truncates it back to the
    90 kHz RTP clock: most pts would come out one tick low and the page would not find their metadata (found
    in session 4: about half the frames shown were never counted). The track's pts all survive the real encoder."""
    from fractions import Fraction

    import av
    import numpy as np
    from aiortc.codecs.vpx import Vp8Encoder

    from spatia.client.web.rtc import PTS_EXACT_RESIDUES

    planes = np.full((24 * 3 // 2, 32), 128, np.uint8)  # a tiny yuv420p frame
    enc = Vp8Encoder()

    def rtp_of(pts: int) -> int:  # the encoder wants increasing pts
        frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
        frame.pts, frame.time_base = pts, Fraction(1, VIDEO_CLOCK_HZ)
        return enc.encode(frame)[1]

    # the residues the track avoids really do lose a tick (else the check would be vacuous)
    assert any(rtp_of(900_000 + r) != 900_000 + r for r in set(range(9)) - PTS_EXACT_RESIDUES)
    enc = Vp8Encoder()
    track = HubVideoTrack(sub=None, on_message=lambda m: None, fps=30)
    track._t0 = 0.0
    rng = random.Random(1)
    now = 0.0
    for _ in range(300):
        now += rng.uniform(0.001, 0.3)  # frames at any spacing
        pts = track._next_pts(now)
        assert rtp_of(pts) == pts
