"""A local web page to draw a digit with a mouse, a finger or a pen, or to drop a photo of one,
and to watch the model read it while you draw.

    python draw.py                  # then open the address it prints
    python draw.py --port 0         # any free port

The page (static/) is served from this machine only and fetches nothing from elsewhere. Every
picture, drawn or uploaded, goes through the same preparation as ``show.py --image``.
"""
import cli

if __name__ == "__main__":    # importing torch takes seconds: a stop during it ends quietly too
    cli.stop_quietly_while_starting()

import argparse
import base64
import errno
import http.server
import io
import json
import socket
import sys
import threading
from pathlib import Path
from urllib.parse import urlsplit

import torch

import confidence
import datasets
import engine
import handwriting
import net

DEFAULT_PORT = 8028
MAX_UPLOAD = 20_000_000       # bytes; a phone's photo is a few MB
READING_AT_ONCE = 2           # pictures decoded at the same time; the others wait
BUSY_WAIT = 20                # seconds a picture waits for its turn before "busy"
STATIC = Path(__file__).resolve().parent / "static"
# The page's files, by address: nothing else under this folder or beside it is ever served.
PAGES = {"/": "index.html", "/draw.js": "draw.js", "/draw.css": "draw.css",
         "/favicon.svg": "favicon.svg"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve a local web page to draw a digit (or "
                                                 "drop a photo of one) and see LeNet-5 read it.")
    parser.add_argument("--checkpoint", default="save_model/best_model.pth",
                        help="checkpoint to use (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=cli.ranged(int, 0, 65535), default=DEFAULT_PORT,
                        help="port to listen on, 0 for any free one (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=engine.DEVICES,
                        help="where to run (default: %(default)s)")
    parser.add_argument("--data-dir", default=datasets.DATA_DIR,
                        help="data folder, for the test accuracy shown (default: %(default)s)")
    return parser.parse_args(argv)


# What the page shows of each layer, and how many values of each it receives per reading.
SHOWN_LAYERS = ("C1", "S2", "C3", "S4", "C5", "F6")


def as_bytes(values, scale: float = 1.0) -> str:
    """Values in [-scale, scale] as signed bytes (scale -> 127), in base64: 8,084 layer
    values make 10.8 kB of text instead of about 60 kB of JSON numbers."""
    quantized = (values.flatten() / scale * 127).round().clamp(-127, 127).to(torch.int8)
    return base64.b64encode(quantized.numpy().tobytes()).decode("ascii")


class PageReader:
    """The checkpoint's model behind the page: a picture's bytes in, its reading out."""

    def __init__(self, reader: confidence.Reader):
        self.reader = reader

    def read(self, data: bytes) -> dict:
        """The calibrated probabilities, whether the picture holds a digit, and the 28x28 image
        the model saw (0-255, row by row). Raises ``handwriting.ImageProblem`` for a picture
        that cannot be read."""
        prepared = handwriting.prepare(handwriting.open_image(io.BytesIO(data), "the picture"))
        readings, outputs = self.reader.read_inside(self.reader.normalized(prepared))
        reading = readings[0]
        return {"probabilities": [round(p, 6) for p in reading.probabilities.tolist()],
                "digit": reading.digit, "best": reading.best, "sure": round(reading.sure, 6),
                "seen": (prepared * 255).round().byte().flatten().tolist(),
                # tanh outputs (and their 2x2 averages): all within [-1, 1]
                "layers": {name: as_bytes(outputs[name]) for name in SHOWN_LAYERS}}


def describe(reader: confidence.Reader, path: str, test_accuracy: float | None) -> dict:
    """What the page says about the model that answers, and its kernels (each layer's as
    bytes, with the scale of its largest weight)."""
    checkpoint = reader.checkpoint
    kernels = {}
    for name, weights in net.kernels(reader.model).items():
        scale = float(weights.abs().max())
        kernels[name] = {"shape": list(weights.shape), "scale": scale,
                         "values": as_bytes(weights, scale)}
    return {"checkpoint": path, "dataset": datasets.DATASETS[checkpoint["dataset"]].title,
            "classes": checkpoint["classes"], "epoch": checkpoint.get("epoch"),
            "val_accuracy": checkpoint.get("val_accuracy"), "test_accuracy": test_accuracy,
            "calibrated": "calibration" in checkpoint, "kernels": kernels}


def accuracy_on_test_set(reader: confidence.Reader, data_dir: str) -> float | None:
    """The model's accuracy on its set's test images, or None when they are not at hand."""
    try:
        batches = reader.test_batches(data_dir)
    except datasets.DataError:
        return None
    return engine.evaluate(reader.model, batches).accuracy


class Handler(http.server.BaseHTTPRequestHandler):
    """GET (and HEAD): the page's files and the model's description. POST /api/read: a
    picture's bytes. Every answer to a bad request is a status and ``{"error": one line}``."""
    server_version = "draw.py"
    timeout = 30          # seconds a silent client may hold a connection

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/api/model":
            return self.send_json(200, self.server.model_info)
        if path not in PAGES:
            return self.send_error_json(404, f"no such page: {path}")
        file = STATIC / PAGES[path]
        self.send_bytes(200, file.read_bytes(), TYPES[file.suffix])

    def do_HEAD(self):      # GET's answer without its body: curl -I, link checkers
        self.do_GET()

    def do_POST(self):
        path = urlsplit(self.path).path
        length = self.headers.get("Content-Length", "")
        if not (length.isascii() and length.isdigit()):     # "²".isdigit() is True
            return self.send_error_json(411, "send the picture with its length "
                                             "(a Content-Length header of digits)")
        length = int(length)
        if path != "/api/read":
            self.discard(length)
            return self.send_error_json(404, f"no such address: {path}")
        if length > MAX_UPLOAD:
            self.discard(length)
            return self.send_error_json(413, f"the picture is {length / 1e6:.1f} MB; "
                                             f"pictures up to {MAX_UPLOAD // 10**6} MB are read")
        if length == 0:
            return self.send_error_json(400, "nothing was sent: draw a digit or choose a picture")
        # Pictures are read a few at a time: each can take a hundred MB while it is decoded.
        if not self.server.readers.acquire(timeout=BUSY_WAIT):
            self.discard(length)
            return self.send_error_json(503, "the page is busy reading other pictures: "
                                             "try again in a moment")
        try:
            data = self.rfile.read(length)
            if len(data) < length:
                return self.send_error_json(400, f"the picture was cut short ({len(data)} of "
                                                 f"{length} bytes arrived)")
            return self.send_json(200, self.server.reader.read(data))
        except handwriting.ImageProblem as e:
            return self.send_error_json(400, str(e))
        finally:
            self.server.readers.release()

    def discard(self, length: int) -> None:
        """Read a body that will not be used, so the client hears the answer instead of a
        reset connection."""
        while length > 0:
            chunk = self.rfile.read(min(length, 2**20))
            if not chunk:
                break
            length -= len(chunk)

    def send_error(self, code, message=None, explain=None):
        """A request too malformed to reach do_GET or do_POST (a bad request line, overlong
        headers) is answered in JSON too."""
        self.close_connection = True
        # An unparsed request counts as HTTP/0.9, which would get the body without headers.
        self.request_version = "HTTP/1.0"
        self.send_error_json(code, message or http.HTTPStatus(code).phrase)

    def send_json(self, status: int, value) -> None:
        self.send_bytes(status, json.dumps(value).encode(), "application/json")

    def send_error_json(self, status: int, message: str) -> None:
        # A request too malformed to parse has no command or path.
        self.log_message("%s %s: %d %s", getattr(self, "command", None) or "-",
                         (getattr(self, "path", None) or "-")[:200], status, message)
        self.send_json(status, {"error": message})

    def send_bytes(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_request(self, code="-", size="-"):
        pass     # a line per stroke would bury the errors, which send_error_json logs


class PageServer(http.server.ThreadingHTTPServer):
    """A thread per connection. The queue of connections not yet accepted holds a burst of
    many tabs (socketserver's default of 5 reset the rest: 64 uploads at once lost 5-19)."""
    request_queue_size = 128
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that went away before its answer (a closed tab, a phone off the network)
        is no fault of the page's: socketserver printed a traceback for each."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def make_server(host: str, port: int, reader: PageReader, model_info: dict
                ) -> PageServer:
    """A server for the page, listening but not yet serving; several tabs are served at once."""
    try:
        server = PageServer((host, port), Handler)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise cli.Problem(f"port {port} is in use (another draw.py?): stop that "
                              f"program or pass --port N (--port 0 picks a free one)") from None
        raise cli.Problem(f"cannot listen on {host}:{port} ({e.strerror or e}): "
                          f"check --host and --port") from None
    server.reader, server.model_info = reader, model_info
    server.readers = threading.BoundedSemaphore(READING_AT_ONCE)
    return server


def open_page(args: argparse.Namespace) -> PageServer:
    """The page's server for ``args``, listening but not yet serving, with the checkpoint's
    model behind it."""
    reader = confidence.open_reader(args.checkpoint, engine.pick_device(args.device),
                                    digits_for="the page")
    accuracy = accuracy_on_test_set(reader, args.data_dir)
    return make_server(args.host, args.port, PageReader(reader),
                       describe(reader, args.checkpoint, accuracy))


def network_address() -> str | None:
    """This machine's address on its network, which a phone on the same Wi-Fi reaches; None
    when it is on none. Connecting a UDP socket sends nothing: the system only picks the
    address its route out would leave from."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))     # a documentation address (RFC 5737)
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def main(argv=None) -> None:
    args = parse_args(argv)
    server = open_page(args)
    host, port = server.server_address[:2]
    info = server.model_info
    known = (f", test accuracy {info['test_accuracy']:.2%}"
             if info["test_accuracy"] is not None else "")
    print(f"reading digits with {args.checkpoint} (epoch {info['epoch'] or '?'}{known})")
    if host == "0.0.0.0":    # every address of this machine: this one works here
        address = network_address()
        print(f"other machines on this network open http://{address}:{port}/" if address else
              f"other machines reach the page at this machine's address, port {port}")
        host = "127.0.0.1"
    print(f"open http://{host}:{port}/ in a browser; Ctrl-C stops the page", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()


if __name__ == "__main__":
    cli.run_script(main)
