"""The browser player in a real headless Chromium (Debian chromium + chromium-driver, Selenium): the page loads,
W moves the camera forward and the mouse turns it right (checked on the server's frame poses), a grabbed frame
equals the server's frame at that index (PSNR), a spectator sees the same frames, a replay plays and seeks, a wrong
token is refused, a mocked gamepad steers. One server, one web app and one or two browsers for the module."""

import json
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("selenium")
pytest.importorskip("aiohttp")

from spatia.client.web.browser import chrome, chromedriver_path, data_url_rgb, psnr_db  # noqa: E402

if chromedriver_path() is None:
    pytest.skip("chromium-driver is not installed (apt-get install -y chromium chromium-driver)",
                allow_module_level=True)

from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

from spatia.client.api import WorldClient  # noqa: E402
from spatia.client.web.app import WebConfig, running_web_app  # noqa: E402
from spatia.server.config import ServerConfig  # noqa: E402
from spatia.server.testing import running_server  # noqa: E402

W, H = 128, 72
TOKEN = "s3cret-token"


def wait_for(driver, script, *args, timeout_s=60.0, what=""):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        value = driver.execute_script(script, *args)
        if value:
            return value
        time.sleep(0.1)
    state = driver.execute_script("return {transport: spatia.transport, shown: spatia.framesShown, "
                                  "seq: spatia.seq, err: spatia.lastError, meta: spatia.shownMeta, origin: spatia.rtpOrigin, relearned: spatia.rtpRelearned, shown_rtp: spatia.shownRtp, pts: Array.from(spatia.metaByPts.keys()), "
                                  "lat: spatia.latencies.length, refl: spatia.reflectedSeq, sent: spatia.sent.size}")
    raise AssertionError(f"timed out waiting for {what or script}; page state {state}")


def pose(meta) -> np.ndarray:
    return np.asarray(meta["pose"], dtype=np.float64).reshape(4, 4)  # c2w, world frame


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    with running_server(ServerConfig(data_dir=data, port=0)) as st:
        with WorldClient(st.target) as c:
            c.create_scene("room", 0, W, H, world_id="w")
        # a second web app on the same server: RAW frames from the server even when recording (so the recording
        # holds the exact pixels), H.264 video (tests/test_web_frames.py covers both without a browser)
        with running_web_app(WebConfig(server=st.target, port=0, grace_s=0.5)) as web, \
                running_web_app(WebConfig(server=st.target, port=0, grace_s=0.5, server_frames="raw",
                                          video_codec="h264")) as web_raw:
            driver = chrome()
            try:
                yield {"server": st, "url": web.url, "url_raw": web_raw.url, "driver": driver, "data": data}
            finally:
                driver.quit()


def open_live(driver, url, role="play", transport="ws", world="w"):
    driver.get(url + "/")
    wait_for(driver, f"return document.getElementById('{role}-{world}') !== null", what="the world list")
    driver.execute_script("document.getElementById('transport').value = arguments[0]", transport)
    driver.find_element(By.ID, f"{role}-{world}").click()
    wait_for(driver, "return spatia.transport === arguments[0] && spatia.shownMeta !== null", transport,
             what=f"the first frame over {transport}")


def settle(driver, timeout_s=60.0):
    """Wait until the frame shown reflects the last action sent (the server caught up)."""
    wait_for(driver, "return spatia.shownMeta && spatia.shownMeta.seq >= spatia.seq", timeout_s=timeout_s,
             what="a frame reflecting the last action")
    return driver.execute_script("return spatia.shownMeta")


def hold(driver, key, seconds):
    ActionChains(driver).key_down(key).perform()
    time.sleep(seconds)
    ActionChains(driver).key_up(key).perform()


def recorded(stack, recording_id):
    with WorldClient(stack["server"].target) as c:
        return {f.frame_index: f.rgb for f in c.replay(recording_id)}


def stop(driver):
    driver.execute_script("spatia.stop()")
    time.sleep(1.0)  # the web app closes the session after its 0.5 s grace


def test_page_plays_w_forward_mouse_right_and_frames_match(stack):
    d = stack["driver"]
    open_live(d, stack["url"], "play", "ws")
    assert "Spatia World" in d.title and d.find_element(By.ID, "hud").text.startswith("play")
    start = pose(d.execute_script("return spatia.shownMeta"))
    hold(d, "w", 1.2)
    moved = pose(settle(d))
    step = moved[:3, 3] - start[:3, 3]
    assert step @ start[:3, 2] > 0.2, f"W did not move forward: {step}"  # column z = forward (y-down world)
    assert abs(step @ start[:3, 0]) < 0.1 * np.linalg.norm(step)

    # mouse: drag right through CDP input events (pointer lock may be unavailable headless)
    d.execute_script("spatia.mouseDx = 0")
    cdp = lambda kind, x, **kw: d.execute_cdp_cmd("Input.dispatchMouseEvent", dict(  # noqa: E731
        type=kind, x=x, y=300, button="left", **kw))
    cdp("mousePressed", 400, clickCount=1, buttons=1)
    for x in range(410, 620, 15):
        cdp("mouseMoved", x, buttons=1)
        time.sleep(0.03)
    cdp("mouseReleased", 620, clickCount=1)
    turned = pose(settle(d))
    assert turned[:3, 2] @ moved[:3, 0] > 0.1, "dragging the mouse right did not turn the camera right"
    assert np.linalg.norm(turned[:3, 3] - moved[:3, 3]) < 0.05  # looking only, no movement

    lat = d.execute_script("return spatia.latencies")
    assert len(lat) > 0 and all(v > 0 for v in lat)
    grab = d.execute_script("return spatia.grab()")
    rec_id = d.execute_script("return spatia.recording")
    stack["recording"] = rec_id
    rgb = data_url_rgb(grab["png"])
    server = recorded(stack, rec_id)[grab["meta"]["index"]]
    assert rgb.shape == server.shape and psnr_db(rgb, server) >= 30.0
    stop(d)


def test_webrtc_frames_and_spectator_sees_the_same(stack):
    d = stack["driver"]
    open_live(d, stack["url"], "play", "webrtc")
    spectator = chrome()
    try:
        open_live(spectator, stack["url"], "watch", "ws")
        wait_for(d, "return spatia.viewers === 1", what="viewer count 1 on the player's HUD")
        assert "viewers 1" in d.find_element(By.ID, "hud").text
        hold(d, "w", 1.2)
        settle(d)
        wait_for(d, "return spatia.rtpOrigin !== null && spatia.latencies.length > 0",
                 what="RTP-mapped key->frame latencies")
        # the web app asked Chromium for no playout delay (frames shown once decoded) and Chromium agreed to it
        assert "rtp-hdrext/playout-delay" in d.execute_script("return spatia.pc.remoteDescription.sdp")
        last = d.execute_script("return spatia.shownMeta.index")
        wait_for(spectator, "return spatia.shownMeta.index === arguments[0]", last, what="the player's last frame")
        frames = recorded(stack, d.execute_script("return spatia.recording"))
        seen = [i for i in spectator.execute_script("return spatia.history") if i >= 0]
        played = [i for i in d.execute_script("return spatia.history") if i >= 0]
        # the same session's frames, in order (each side may drop some: latest wins), ending on the same frame
        assert len(seen) >= 3 and set(seen) <= set(frames) and seen == sorted(seen) and seen[-1] == played[-1]
        assert spectator.execute_script("return spatia.seq") == 0  # spectators send nothing
        g = spectator.execute_script("return spatia.grab()")
        assert psnr_db(data_url_rgb(g["png"]), frames[g["meta"]["index"]]) >= 30.0
        g = d.execute_script("return spatia.grab()")  # the WebRTC video (VP8), drawn into a canvas
        rtc = data_url_rgb(g["png"])
        idx = g["meta"]["index"]
        assert rtc.shape == frames[idx].shape and psnr_db(rtc, frames[idx]) >= 30.0  # 38.2 dB measured
    finally:
        spectator.quit()
    stop(d)


CODEC_IN_USE = ("if (!spatia.pc) return null; return spatia.pc.getStats().then(st => { let id = null, m = {}; "
                "st.forEach(x => { if (x.type === 'inbound-rtp' && x.kind === 'video') id = x.codecId; "
                "if (x.type === 'codec') m[x.id] = x.mimeType; }); return id ? m[id] : null; })")


def test_webrtc_from_raw_server_frames_in_h264_and_a_websocket_spectator(stack):
    """The session a WebRTC page opens next to the server asks for RAW frames (no JPEG on the server, none decoded
    in the web app): the video (H.264 when Chromium decodes it, else VP8) and a WebSocket spectator's JPEG, made
    once from the RAW frame in the web app, both match the recorded frames."""
    d = stack["driver"]
    open_live(d, stack["url_raw"], "play", "webrtc")
    spectator = chrome()
    try:
        open_live(spectator, stack["url_raw"], "watch", "ws")
        hold(d, "w", 0.8)
        settle(d)
        wait_for(d, "return spatia.rtpOrigin !== null && spatia.latencies.length > 0",
                 what="RTP-mapped key->frame latencies")
        offered = d.execute_script("return RTCRtpReceiver.getCapabilities('video').codecs.map(c => c.mimeType)")
        assert d.execute_script(CODEC_IN_USE) == ("video/H264" if "video/H264" in offered else "video/VP8")
        last = d.execute_script("return spatia.shownMeta.index")
        wait_for(spectator, "return spatia.shownMeta.index === arguments[0]", last, what="the player's last frame")
        frames = recorded(stack, d.execute_script("return spatia.recording"))
        for who in (d, spectator):
            g = who.execute_script("return spatia.grab()")
            rgb, want = data_url_rgb(g["png"]), frames[g["meta"]["index"]]
            assert rgb.shape == want.shape and psnr_db(rgb, want) >= 30.0
    finally:
        spectator.quit()
    stop(d)


def test_mocked_gamepad_steers(stack):
    d = stack["driver"]
    d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                      {"source": "window.__pads = []; navigator.getGamepads = () => window.__pads;"})
    open_live(d, stack["url"], "play", "ws")
    start = pose(d.execute_script("return spatia.shownMeta"))
    d.execute_script("window.__pads = [{axes: [0, -1, 0, 0], buttons: []}]")  # left stick pushed up
    time.sleep(1.2)
    d.execute_script("window.__pads = []")
    moved = pose(settle(d))
    assert (moved[:3, 3] - start[:3, 3]) @ start[:3, 2] > 0.2
    stop(d)


def test_replay_plays_and_seeks(stack):
    d = stack["driver"]
    rec_id = stack.get("recording") or pytest.skip("needs the play test's recording")
    frames = recorded(stack, rec_id)
    order = list(frames)
    d.get(stack["url"] + "/")
    wait_for(d, f"return document.getElementById('replay-{rec_id}') !== null", what="the recording list")
    d.find_element(By.ID, f"replay-{rec_id}").click()
    wait_for(d, "return spatia.history.length >= 3", what="replay frames")
    hist = d.execute_script("return spatia.history")
    # in recorded order from the start; a page that decodes slower than the frames come skips some (latest wins)
    pos = [order.index(i) for i in hist]
    assert pos[0] == 0 and pos == sorted(set(pos)), f"shown {hist}, recorded {order}"
    k = len(order) - 2
    d.execute_script("spatia.replaySeek(arguments[0])", k)
    wait_for(d, "return spatia.replayPos >= arguments[0]", k, what="the seek")
    meta = d.execute_script("return spatia.shownMeta")
    assert meta["index"] in order[k:]
    g = d.execute_script("return spatia.grab()")
    assert psnr_db(data_url_rgb(g["png"]), frames[g["meta"]["index"]]) >= 30.0
    d.execute_script("spatia.stop()")


def _post(url, body, origin=None, cookie=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    if origin:
        req.add_header("Origin", origin)
    if cookie:
        req.add_header("Cookie", cookie)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers


def test_wrong_token_is_refused_and_the_cookie_is_http_only(tmp_path, stack):
    d = stack["driver"]
    with running_server(ServerConfig(data_dir=tmp_path, port=0, token=TOKEN)) as st, \
            running_web_app(WebConfig(server=st.target, port=0)) as web:
        d.get(web.url + "/")
        wait_for(d, "return !document.getElementById('login').hidden", what="the login form")
        d.find_element(By.ID, "token").send_keys("wrong")
        d.find_element(By.ID, "login-btn").click()
        wait_for(d, "return document.getElementById('login-error').textContent", what="the login error")
        assert "wrong token" in d.find_element(By.ID, "login-error").text
        status = d.execute_script("return fetch('/api/worlds').then(r => r.status)")
        assert status == 401
        assert TOKEN not in d.current_url
        d.find_element(By.ID, "token").clear()
        d.find_element(By.ID, "token").send_keys(TOKEN)
        d.find_element(By.ID, "login-btn").click()
        wait_for(d, "return !document.getElementById('lobby').hidden", what="the lobby after login")
        assert d.execute_script("return document.cookie") == ""  # HttpOnly: not readable by scripts
        cookie = next(c for c in d.get_cookies() if c["name"] == "spatia_session")
        assert cookie["httpOnly"] and cookie.get("sameSite") == "Strict"
        assert d.execute_script("return fetch('/api/worlds').then(r => r.status)") == 200
        # a cross-site request with the session cookie is refused on Origin
        assert _post(web.url + "/api/worlds", {"scene": "room"}, origin="http://evil.example",
                     cookie=f"spatia_session={cookie['value']}")[0] == 403
        assert _post(web.url + "/api/login", {"token": "nope"}, origin=web.url)[0] == 401


def test_a_dropped_connection_reconnects_where_the_camera_was(stack):
    d = stack["driver"]
    open_live(d, stack["url"], "play", "ws")
    hold(d, "w", 0.6)
    before = pose(settle(d))
    d.execute_script("spatia.ws.close()")  # the network drops (not the user leaving)
    wait_for(d, "return spatia.ws !== null && spatia.ws.readyState === 1", what="the reconnect")
    wait_for(d, "return spatia.shownMeta && spatia.shownMeta.t === 'still'", what="the still after reconnecting")
    assert np.allclose(pose(d.execute_script("return spatia.shownMeta")), before, atol=1e-6)
    hold(d, "w", 0.6)
    after = pose(settle(d))
    assert (after[:3, 3] - before[:3, 3]) @ before[:3, 2] > 0.1  # and goes on from there
    stop(d)


def test_viewer_queue_is_bounded_latest_wins_and_keeps_messages():
    import asyncio

    from spatia.client.web.hub import Subscriber, WebFrame

    async def go():
        sub = Subscriber(maxsize=2)
        for i in range(10):
            sub.offer(WebFrame(b"", {"index": i}))
        sub.offer({"t": "status"})
        got = [await sub.get() for _ in range(3)]
        return sub, got

    sub, got = asyncio.run(go())
    assert sub.dropped == 8 and got[0] == {"t": "status"} and [g.meta["index"] for g in got[1:]] == [8, 9]


def test_https_serves_the_page_and_the_cookie_is_secure(tmp_path):
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from spatia.client.web.app import server_ssl_context

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    client_ctx.check_hostname = False
    with running_server(ServerConfig(data_dir=tmp_path / "data", port=0, token=TOKEN)) as st, \
            running_web_app(WebConfig(server=st.target, port=0, tls=True),
                            server_ssl_context(tmp_path / "cert.pem", tmp_path / "key.pem")) as web:
        assert web.url.startswith("https://")
        with urllib.request.urlopen(web.url + "/", context=client_ctx, timeout=30) as r:
            assert r.status == 200 and b"Spatia World" in r.read()
        req = urllib.request.Request(web.url + "/api/login", data=json.dumps({"token": TOKEN}).encode(),
                                     method="POST", headers={"Content-Type": "application/json", "Origin": web.url})
        with urllib.request.urlopen(req, context=client_ctx, timeout=30) as r:
            cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" in cookie
