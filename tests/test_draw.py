"""draw.py: the page's server answers every request, good or bad, and keeps answering; the page
itself is driven in a real browser (headless Chromium) with real pointer strokes."""
import base64
import contextlib
import http.client
import io
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pillow_heif
import pytest
import torch
from PIL import Image, ImageDraw

import confidence
import datasets
import draw
import handwriting
import net
import nondigits
from checkpoint import load_checkpoint
from conftest import ROOT, assert_one_line_error, next_line, run_main

TEST_IMAGES, TEST_LABELS = datasets.load(ROOT / "data", "test")


@pytest.fixture(scope="module")
def server(reader):
    """The page as `python draw.py --port 0 --checkpoint tests/data/...` serves it, in this
    process."""
    with contextlib.chdir(ROOT):
        server = draw.open_page(draw.parse_args(["--checkpoint", str(reader.relative_to(ROOT)),
                                                 "--port", "0", "--device", "cpu"]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def request(server, method, path, body=None, headers=None):
    """The status and decoded body of one request, sent exactly as given (no path cleaning)."""
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    connection.putrequest(method, path, skip_accept_encoding=True)
    for name, value in (headers or {}).items():
        connection.putheader(name, value)
    if body is not None and "Content-Length" not in (headers or {}):
        connection.putheader("Content-Length", str(len(body)))
    connection.endheaders()
    if body:
        connection.send(body)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    kind = response.getheader("Content-Type", "")
    return response.status, json.loads(data) if kind == "application/json" else data


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def drawing(index: int) -> Image.Image:
    """MNIST test image ``index`` as a drawing pad would send it: black strokes on white,
    enlarged to the pad's size."""
    digit = Image.fromarray(255 - TEST_IMAGES[index].numpy()).resize((280, 280), Image.BICUBIC)
    return digit.convert("RGBA")


def number(*indices: int) -> Image.Image:
    """MNIST test images side by side, a number of several digits, as a pad would send it."""
    page = Image.new("RGBA", (280 * len(indices), 280), "white")
    for place, index in enumerate(indices):
        page.paste(drawing(index), (280 * place, 0))
    return page


def test_the_page_and_its_files_are_served_and_fetch_nothing_from_elsewhere(server):
    status, page = request(server, "GET", "/")
    assert status == 200 and b'<canvas id="pad"' in page
    for name in draw.PAGES.values():
        text = (draw.STATIC / name).read_text()
        text = re.sub(r'xmlns="[^"]*"', "", text)      # an SVG's namespace names, fetches nothing
        assert not re.search(r"(https?:)?//[\w.-]+\.\w+/", text), name    # no CDN, no fonts
    for address in re.findall(rb'(?:src|href)="([^"]+)"', page):
        status, _ = request(server, "GET", address.decode())
        assert status == 200, address


@pytest.mark.parametrize("path", ["/../draw.py", "/static/../draw.py", "/%2e%2e/draw.py",
                                  "/draw.py", "/..%2fdraw.py", "//etc/passwd",
                                  "/draw.js/../../train.py", "/index.html", "/static/draw.js"])
def test_no_file_outside_the_page_is_served(server, path):
    status, body = request(server, "GET", path)
    assert status == 404 and body["error"].startswith("no such page: /")


def test_a_drawing_is_read_with_the_same_preparation_as_show(server):
    picture = drawing(0)
    status, reading = request(server, "POST", "/api/read", png(picture))
    assert status == 200
    probabilities = torch.tensor(reading["probabilities"])
    assert probabilities.shape == (10,) and abs(float(probabilities.sum()) - 1) < 1e-4
    assert int(probabilities.argmax()) == int(TEST_LABELS[0])
    prepared = handwriting.prepare(handwriting.open_image(io.BytesIO(png(picture))))
    assert reading["seen"] == (prepared * 255).round().byte().flatten().tolist()


def test_an_iphone_photo_is_read(server):
    """HEIC, the format an iPhone saves its photos in, which a browser may not show but sends."""
    buffer = io.BytesIO()
    pillow_heif.from_pillow(drawing(0).convert("RGB")).save(buffer)
    status, reading = request(server, "POST", "/api/read", buffer.getvalue())
    assert status == 200, reading
    assert int(torch.tensor(reading["probabilities"]).argmax()) == int(TEST_LABELS[0])


def signed_bytes(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.int8).float()


def test_a_reading_carries_every_layer_as_bytes_and_the_model_its_kernels(server, reader):
    """What the page draws inside the network is what the model computed for the picture
    (to the byte's rounding), and small: 8,084 values as 10.8 kB of text."""
    data = png(drawing(0))
    status, reading = request(server, "POST", "/api/read", data)
    assert status == 200
    model = confidence.open_reader(reader, torch.device("cpu"))
    prepared = handwriting.prepare(handwriting.open_image(io.BytesIO(data)))
    outputs = net.look_inside(model.model, model.normalized(prepared))
    assert set(reading["layers"]) == set(draw.SHOWN_LAYERS)
    for name in draw.SHOWN_LAYERS:
        sent = signed_bytes(reading["layers"][name]) / 127
        assert sent.shape == (outputs[name].numel(),), name
        assert (sent - outputs[name].flatten()).abs().max() <= 0.5 / 127 + 1e-6, name
    assert sum(len(text) for text in reading["layers"].values()) < 11_000

    status, info = request(server, "GET", "/api/model")
    for name, weights in net.kernels(model.model).items():
        kernel = info["kernels"][name]
        assert kernel["shape"] == list(weights.shape)
        assert kernel["scale"] == pytest.approx(float(weights.abs().max()))
        sent = signed_bytes(kernel["values"]) / 127 * kernel["scale"]
        assert (sent - weights.flatten()).abs().max() <= kernel["scale"] / 254 + 1e-6


def truncated_png() -> bytes:
    noisy = Image.fromarray(torch.randint(0, 256, (200, 200), dtype=torch.uint8,
                                          generator=torch.Generator().manual_seed(0)).numpy())
    data = png(noisy)
    return data[:len(data) // 2]


@pytest.mark.parametrize("body, status, message", [
    (b"", 400, "nothing was sent"),
    (png(Image.new("RGBA", (280, 280), "white")), 400, "the picture is blank"),
    (b"GIF89a? not really", 400, "cannot read the picture"),
    (b"%PDF-1.4 a document", 400, "cannot read the picture: not a picture (PNG"),
    (truncated_png(), 400, "cannot read the picture: image file is truncated"),
    (bytes(50_000_000), 413, "the picture is 50.0 MB; pictures up to 20 MB are read"),
    (png(number(1, 2)), 400, "side by side: crop the picture to one digit"),
], ids=["empty", "blank", "not a GIF", "a PDF", "truncated PNG", "50 MB", "a number"])
def test_bad_input_gets_a_status_and_one_line_and_the_next_request_works(
        server, body, status, message):
    got, reply = request(server, "POST", "/api/read", body)
    assert got == status and message in reply["error"] and "\n" not in reply["error"]
    good, reading = request(server, "POST", "/api/read", png(drawing(1)))
    assert good == 200 and len(reading["probabilities"]) == 10


def test_head_answers_what_get_would_without_the_body(server):
    connection = http.client.HTTPConnection(*server.server_address[:2], timeout=60)
    for path in ("/", "/api/model", "/missing"):
        answers = {}
        for method in ("GET", "HEAD"):
            connection.request(method, path)
            response = connection.getresponse()
            answers[method] = (response.status, response.getheader("Content-Length"),
                               response.read())
        (status, length, body), head = answers["GET"], answers["HEAD"]
        assert head == (status, length, b"") and int(length) == len(body) > 0, path
    connection.close()


def test_a_client_that_goes_away_is_no_error_of_the_page(server, capsys):
    """A tab closed before its answer (BrokenPipeError, ConnectionResetError) leaves no
    traceback in the terminal; a fault of the server's own still does."""
    for error in (BrokenPipeError(32, "Broken pipe"), ConnectionResetError(104, "reset"),
                  ValueError("a fault of the server's")):
        try:
            raise error
        except Exception:
            server.handle_error(None, ("127.0.0.1", 50000))
        printed = capsys.readouterr().err
        assert ("Traceback" in printed) == isinstance(error, ValueError), printed


def test_requests_the_server_does_not_take(server):
    status, reply = request(server, "POST", "/api/read", png(drawing(0)),
                            {"Transfer-Encoding": "chunked", "Content-Length": "x"})
    assert status == 411 and "Content-Length" in reply["error"]
    status, reply = request(server, "POST", "/api/elsewhere", b"data")
    assert status == 404 and reply["error"] == "no such address: /api/elsewhere"


def test_a_drawing_says_whether_it_is_a_digit_and_how_sure(server):
    status, reading = request(server, "POST", "/api/read", png(drawing(0)))
    assert status == 200 and reading["digit"] is True
    assert reading["best"] == int(TEST_LABELS[0]) and reading["sure"] > 0.95
    scribble = Image.new("L", (280, 280), 255)
    ImageDraw.Draw(scribble).line([(40, 40), (240, 60), (50, 140), (230, 170), (60, 240),
                                   (220, 230), (120, 30)], fill=0, width=20, joint="curve")
    status, reading = request(server, "POST", "/api/read", png(scribble))
    assert status == 200 and reading["digit"] is False


@pytest.mark.parametrize("headers, status", [
    ({"Content-Length": "\u00b2".encode("latin-1").decode("latin-1")}, 411),   # "²".isdigit()
    ({"Content-Length": "-5"}, 411),
    ({"Content-Length": "12 34"}, 411),
])
def test_a_malformed_length_gets_a_json_answer(server, headers, status):
    got, reply = request(server, "POST", "/api/read", b"", headers)
    assert got == status and "Content-Length" in reply["error"]


def raw_exchange(server, data: bytes, half_close: bool = False) -> tuple[int, dict]:
    """Bytes sent as they are on a socket; the status and JSON body that come back."""
    import socket
    with socket.create_connection(server.server_address[:2], timeout=60) as connection:
        connection.sendall(data)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in head, head
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("data, expected", [
    (b"NONSENSE\r\n\r\n", 400),
    (b"GET / HTTP/9.9\r\n\r\n", 505),                  # HTTP's own answer to an unknown version
    (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"POST /api/read HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", 431)])
def test_a_malformed_request_gets_a_json_answer(server, data, expected):
    status, reply = raw_exchange(server, data)
    assert status == expected and reply["error"]


def test_a_body_shorter_than_its_length_is_refused(server):
    status, reply = raw_exchange(server, b"POST /api/read HTTP/1.1\r\nContent-Length: 5000"
                                         b"\r\n\r\n" + png(drawing(0))[:100], half_close=True)
    assert status == 400 and "cut short" in reply["error"]
    good, reading = request(server, "POST", "/api/read", png(drawing(1)))
    assert good == 200


def huge_png(side: int = 12000) -> bytes:
    """A small file (about 170 kB) that claims side x side pixels: one stroke on white."""
    picture = Image.new("1", (side, side), 1)
    ImageDraw.Draw(picture).line([(side // 3, side // 4), (side // 2, 3 * side // 4)], fill=0,
                                 width=side // 40)
    return png(picture)


@pytest.mark.processes
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak memory in /proc")
def test_huge_pictures_are_refused_by_their_size_and_the_server_keeps_its_memory(reader):
    """Sixteen uploads at once of a small file claiming 144 megapixels: each is refused from
    its header, the server's peak memory stays near its idle size, and the page still reads."""
    page = subprocess.Popen([sys.executable, str(ROOT / "draw.py"), "--checkpoint", str(reader),
                             "--port", "0", "--device", "cpu"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        next_line(page.stdout)
        port = int(re.search(r":(\d+)/", next_line(page.stdout))[1])
        served = type("Served", (), {"server_address": ("127.0.0.1", port)})

        def peak_mb():
            status = open(f"/proc/{page.pid}/status").read()
            return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 1024

        assert request(served, "POST", "/api/read", png(drawing(0)))[0] == 200
        idle = peak_mb()
        body = huge_png()
        with ThreadPoolExecutor(16) as pool:
            replies = list(pool.map(lambda _: request(served, "POST", "/api/read", body),
                                    range(16)))
        assert all(status == 400 and "12000 x 12000 pixels" in reply["error"] and
                   "megapixels" in reply["error"] for status, reply in replies), replies[0]
        assert peak_mb() - idle < 100, (idle, peak_mb())
        status, reading = request(served, "POST", "/api/read", png(drawing(2)))
        assert status == 200 and reading["best"] == int(TEST_LABELS[2])
    finally:
        page.kill()
        page.communicate()


def test_a_burst_of_connections_is_answered_not_reset(server):
    """64 uploads at once: every one is queued and answered (a queue of 5 reset some)."""
    body = png(drawing(2))
    for _ in range(3):
        with ThreadPoolExecutor(64) as pool:
            statuses = list(pool.map(lambda _: request(server, "POST", "/api/read", body)[0],
                                     range(64)))
        assert statuses == [200] * 64


def test_several_tabs_at_once(server):
    indices = range(2, 18)
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda i: request(server, "POST", "/api/read",
                                                  png(drawing(i))), indices))
    assert all(status == 200 for status, _ in replies)
    read = [int(torch.tensor(r["probabilities"]).argmax()) for _, r in replies]
    right = sum(r == int(TEST_LABELS[i]) for r, i in zip(read, indices))
    assert right >= len(indices) - 1, read


def test_the_page_says_which_model_answers(server, reader):
    status, info = request(server, "GET", "/api/model")
    checkpoint = load_checkpoint(reader)
    assert status == 200
    assert info["epoch"] == checkpoint["epoch"] and info["dataset"] == "MNIST"
    assert info["val_accuracy"] == checkpoint["val_accuracy"]
    assert abs(info["test_accuracy"] - 0.9945) <= 2e-4       # tests/data/README.md: 99.45 %
    assert info["classes"] == list("0123456789")


@pytest.mark.processes
def test_a_person_runs_it_a_second_one_finds_the_port_taken_ctrl_c_stops_it(trained):
    command = [sys.executable, str(ROOT / "draw.py"), "--checkpoint",
               str(trained / "best_model.pth"), "--port", "0"]
    page = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        first = next_line(page.stdout)
        address = next_line(page.stdout)
        assert first.startswith(f"reading digits with {trained / 'best_model.pth'} (epoch 2, "
                                f"test accuracy "), first
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", address)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("GET", "/")
        assert connection.getresponse().status == 200
        second = subprocess.run(command[:-1] + [str(port)], cwd=ROOT, capture_output=True,
                                text=True, timeout=120)
        assert_one_line_error(second, f"port {port} is in use", "--port")
        page.send_signal(signal.SIGINT)
        out, err = page.communicate(timeout=30)
    finally:
        page.kill()
    assert page.returncode == 0 and err.strip() == "stopped", err


@pytest.mark.processes
def test_served_to_the_network_it_prints_the_address_other_machines_open(reader):
    """--host 0.0.0.0 (a phone on the same Wi-Fi): the address printed for other machines is
    this machine's own on its network, and the page answers there."""
    address = draw.network_address()
    if address is None:
        pytest.skip("this machine is on no network")
    page = subprocess.Popen([sys.executable, str(ROOT / "draw.py"), "--checkpoint", str(reader),
                             "--host", "0.0.0.0", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        next_line(page.stdout)
        elsewhere, here = next_line(page.stdout), next_line(page.stdout)
        port = int(re.search(r"http://127\.0\.0\.1:(\d+)/", here)[1])
        assert elsewhere == f"other machines on this network open http://{address}:{port}/\n"
        connection = http.client.HTTPConnection(address, port, timeout=30)
        connection.request("GET", "/")
        assert connection.getresponse().status == 200
    finally:
        page.kill()
        page.communicate()


def test_a_missing_checkpoint_or_another_data_set_is_one_line(tmp_path, small_runs,
                                                              small_sets):
    assert_one_line_error(run_main(draw, "--checkpoint", tmp_path / "none.pth"),
                          "no checkpoint at", "python train.py")
    fashion = small_runs["fashion-mnist"][0] / "best_model.pth"
    assert_one_line_error(run_main(draw, "--checkpoint", fashion, "--data-dir", small_sets),
                          "Fashion-MNIST", "needs a model trained on MNIST")


# The page in a real browser ------------------------------------------------------------------

def launch_browser(playwright):
    """Debian's Chromium when it is installed, else Playwright's own download."""
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    return playwright.chromium.launch(executable_path=executable, args=[
        "--no-sandbox", "--disable-gpu", "--disable-background-networking"])


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright "
                                   "(pip install -r requirements-dev.txt)")
    with sync_api.sync_playwright() as playwright:
        try:
            browser = launch_browser(playwright)
        except sync_api.Error as e:
            pytest.skip(f"needs Chromium (Debian: apt-get install chromium): "
                        f"{str(e).splitlines()[0]}")
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    """The page open in a fresh tab that takes mouse and touch, and every address it asked."""
    context = browser.new_context(has_touch=True, viewport={"width": 1000, "height": 640})
    tab = context.new_page()
    tab.asked = []
    tab.on("request", lambda r: tab.asked.append(r.url))
    tab.goto(f"http://127.0.0.1:{server.server_address[1]}/")
    tab.wait_for_function("document.getElementById('model').textContent.startsWith('Model:')")
    yield tab
    context.close()


def ellipse(cx, cy, rx, ry, steps=24):
    return [(cx + rx * math.sin(2 * math.pi * t / steps),
             cy - ry * math.cos(2 * math.pi * t / steps)) for t in range(steps + 1)]


STROKES = {     # on the 280x280 pad, as a person draws them
    "0": [ellipse(140, 140, 60, 95)],
    "1": [[(150, 45), (145, 140), (140, 235)]],
    "7": [[(75, 55), (205, 55), (160, 140), (120, 235)]],
    "4": [[(170, 235), (170, 40), (70, 170), (215, 170)]],
}


def stroke_with_mouse(tab, points):
    box = tab.locator("#pad").bounding_box()
    tab.mouse.move(box["x"] + points[0][0], box["y"] + points[0][1])
    tab.mouse.down()
    for x, y in points[1:]:
        tab.mouse.move(box["x"] + x, box["y"] + y, steps=6)
    tab.mouse.up()


def stroke_with_finger(tab, points):
    """Touch events as a touchscreen sends them (Chromium makes them pointer events)."""
    box = tab.locator("#pad").bounding_box()
    cdp = tab.context.new_cdp_session(tab)
    kinds = ["touchStart"] + ["touchMove"] * (len(points) - 1)
    for kind, (x, y) in zip(kinds, points):
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [
            {"x": box["x"] + x, "y": box["y"] + y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


def answer(tab) -> str:
    """The digit the page shows once everything drawn or chosen has been read."""
    tab.wait_for_function("document.body.dataset.state === 'idle'")
    return tab.get_attribute("#answer", "data-digit")


@pytest.mark.processes
@pytest.mark.parametrize("digit", STROKES)
def test_digits_drawn_with_the_mouse_are_read(page, digit):
    for points in STROKES[digit]:
        stroke_with_mouse(page, points)
    assert answer(page) == digit, page.inner_text("#answer")
    bars = page.locator("#bars li .percent").all_inner_texts()
    assert len(bars) == 10 and abs(sum(float(b.rstrip("%")) for b in bars) - 100) < 1


@pytest.mark.processes
def test_a_digit_drawn_with_a_finger_is_read(page):
    stroke_with_finger(page, STROKES["7"][0])
    assert answer(page) == "7", page.inner_text("#answer")


@pytest.mark.processes
def test_a_photo_is_read_a_bad_file_is_an_error_and_nothing_is_fetched_elsewhere(
        page, tmp_path, server):
    photo = Image.new("L", (400, 300), 230)
    photo.paste(Image.fromarray(255 - TEST_IMAGES[3].numpy()).resize((168, 168)), (150, 60))
    ImageDraw.Draw(photo).ellipse([10, 10, 14, 14], fill=0)
    photo.save(tmp_path / "photo.jpg")
    page.set_input_files("#file", str(tmp_path / "photo.jpg"))
    assert answer(page) == str(int(TEST_LABELS[3]))
    seen = page.evaluate("Array.from(document.getElementById('seen').getContext('2d')"
                         ".getImageData(0, 0, 28, 28).data.filter((_, i) => i % 4 == 0))")
    assert max(seen) > 200 and sum(seen) / len(seen) < 80        # a light digit on black
    (tmp_path / "notes.png").write_text("not a picture")
    page.set_input_files("#file", str(tmp_path / "notes.png"))
    page.wait_for_selector("#error:not([hidden])")
    assert page.inner_text("#error") == \
        f"cannot read the picture: not a picture ({handwriting.READABLE})"
    page.click("#clear")
    stroke_with_mouse(page, STROKES["1"][0])
    assert answer(page) == "1" and page.is_hidden("#error")
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    assert page.asked and all(url.startswith(base) for url in page.asked), page.asked


@pytest.mark.processes
def test_screenshot(page, tmp_path):
    """The README's picture of the page, taken as the page is used."""
    for points in STROKES["4"]:
        stroke_with_mouse(page, points)
    assert answer(page) == "4"
    page.screenshot(path=tmp_path / "draw.png",
                    clip={"x": 0, "y": 0, "width": 1000, "height": 560})
    with Image.open(tmp_path / "draw.png") as shot:
        assert shot.size == (1000, 560)


TANGLE = [(140 + 90 * math.cos(0.245 * i) * math.cos(0.0805 * i), 140 + 90 * math.sin(0.385 * i))
          for i in range(60)]


@pytest.mark.processes
def test_a_scribble_a_line_and_letters_are_not_digits(page):
    for strokes in [[TANGLE], [[(40, 150), (240, 160)]], nondigits.STROKES["A"],
                    nondigits.STROKES["H"]]:
        page.click("#clear")
        for points in strokes:
            stroke_with_mouse(page, points)
        assert answer(page) is None, page.inner_text("#answer")
        assert page.inner_text("#answer").startswith("Not a digit (as a digit: ")
        assert page.evaluate("document.body.dataset.reading") == "none"


@pytest.mark.processes
@pytest.mark.parametrize("corner", [(15, 15), (185, 185)])
def test_a_small_digit_in_a_corner_is_read_like_a_large_one(page, corner):
    """The page's pen is 23 px wide whatever the digit's size."""
    small = [[(corner[0] + 0.3 * x, corner[1] + 0.3 * y) for x, y in stroke]
             for stroke in STROKES["7"]]
    for points in small:
        stroke_with_mouse(page, points)
    assert answer(page) == "7", page.inner_text("#answer")
    assert "sure" in page.inner_text("#answer")


@pytest.mark.processes
def test_an_error_clears_the_previous_reading(page, tmp_path):
    stroke_with_mouse(page, STROKES["1"][0])
    assert answer(page) == "1"
    (tmp_path / "notes.png").write_text("not a picture")
    page.set_input_files("#file", str(tmp_path / "notes.png"))
    page.wait_for_selector("#error:not([hidden])")
    answer(page)
    assert page.inner_text("#answer") == "No reading"
    assert set(page.locator("#bars li .percent").all_inner_texts()) == {"0%"}
    seen = page.evaluate("Array.from(document.getElementById('seen').getContext('2d')"
                         ".getImageData(0, 0, 28, 28).data)")
    assert max(seen) == 0


@pytest.mark.processes
def test_on_a_phone_the_answer_the_error_and_the_28x28_view_are_on_screen(
        browser, server, tmp_path):
    context = browser.new_context(has_touch=True, is_mobile=True,
                                  viewport={"width": 390, "height": 844})
    tab = context.new_page()
    tab.goto(f"http://127.0.0.1:{server.server_address[1]}/")
    tab.wait_for_function("document.getElementById('model').textContent.startsWith('Model:')")
    stroke_with_finger(tab, STROKES["7"][0])
    assert answer(tab) == "7"
    for selector in ("#answer", "#seen", "#bars li:last-child"):
        box = tab.locator(selector).bounding_box()
        assert box["y"] + box["height"] <= 844 and box["x"] + box["width"] <= 390, selector
    (tmp_path / "notes.png").write_text("not a picture")
    tab.set_input_files("#file", str(tmp_path / "notes.png"))
    tab.wait_for_selector("#error:not([hidden])")
    box = tab.locator("#error").bounding_box()
    assert box["y"] + box["height"] <= 844
    context.close()


@pytest.mark.processes
def test_choose_a_photo_is_reached_with_the_keyboard(page):
    reached = []
    for _ in range(8):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.id"))
    assert "clear" in reached and "file" in reached, reached


@pytest.mark.processes
def test_the_final_answer_is_announced_once_per_stroke_not_per_reading(page):
    page.evaluate("""window.announced = [];
        new MutationObserver(() => announced.push(document.getElementById('spoken').textContent))
            .observe(document.getElementById('spoken'), {childList: true, characterData: true,
                                                        subtree: true});""")
    eight = [ellipse(140, 90, 45, 50), ellipse(140, 190, 55, 50)]
    for points in eight:
        stroke_with_mouse(page, points)
        answer(page)
    announced = page.evaluate("announced")
    assert 1 <= len(announced) <= len(eight), announced
    assert announced[-1] == page.inner_text("#answer")


@pytest.mark.processes
def test_a_photo_shows_that_it_is_being_read_and_no_request_fails(page, tmp_path, server):
    photo = Image.new("RGB", (3000, 2000), (235, 235, 230))
    photo.paste(Image.fromarray(255 - TEST_IMAGES[5].numpy()).resize((900, 900)), (1000, 500))
    photo.save(tmp_path / "big.jpg", quality=90)
    failed = []
    page.on("response", lambda r: r.status >= 400 and failed.append(r.url))
    page.evaluate("""window.states = [];
        new MutationObserver(() => states.push(document.getElementById('answer').textContent))
            .observe(document.getElementById('answer'), {childList: true, subtree: true});""")
    page.set_input_files("#file", str(tmp_path / "big.jpg"))
    assert answer(page) == str(int(TEST_LABELS[5]))
    assert "Reading the photo…" in page.evaluate("states")
    assert not failed, failed
    status, _ = request(server, "GET", "/favicon.svg")
    assert status == 200


def layer_pixels(tab) -> dict:
    """Each map's pixels on the page, by layer and map."""
    return tab.evaluate("""Object.fromEntries([...document.querySelectorAll('#layers canvas')]
        .map((c) => [`${c.dataset.layer} ${c.dataset.index}`,
                     Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height)
                                .data)]))""")


@pytest.mark.processes
def test_the_layers_appear_change_with_the_drawing_and_name_their_kernels(page):
    """Inside the network: every map and strip is drawn once a reading comes, changes as the
    digit grows, and a map under the pointer is named with its kernels."""
    blank = layer_pixels(page)
    assert len(blank) == 6 + 6 + 16 + 16 + 1 + 1
    assert all(not any(pixels) for pixels in blank.values())        # nothing read yet
    stroke_with_mouse(page, STROKES["4"][0][:3])                   # the 4's first strokes
    answer(page)
    first = layer_pixels(page)
    assert all(any(pixels) for pixels in first.values()), "every map and strip is drawn"
    stroke_with_mouse(page, [(70, 170), (215, 170)])               # its bar
    answer(page)
    second = layer_pixels(page)
    changed = [name for name in first if first[name] != second[name]]
    assert len(changed) >= 40, changed

    page.hover('#layers canvas[data-layer="C3"][data-index="5"]')
    assert page.inner_text("#detail-name").startswith("C3 map 5: its 6 kernels")
    assert page.locator("#detail-kernels canvas").count() == 6
    page.hover('#layers canvas[data-layer="C1"][data-index="2"]')
    assert page.inner_text("#detail-name").startswith("C1 map 2: its 5×5 kernel")
    assert page.locator("#detail-kernels canvas").count() == 1
    page.hover('#layers canvas[data-layer="S4"][data-index="0"]')
    assert "no kernel of its own" in page.inner_text("#detail-name")
    assert page.locator("#detail-kernels canvas").count() == 0
    page.click('#layers canvas[data-layer="F6"]', position={"x": 1, "y": 5})
    assert re.match(r"F6 unit 0: output -?\d\.\d\d$", page.inner_text("#detail-name"))

    page.click("#clear")
    assert all(not any(pixels) for pixels in layer_pixels(page).values())
