"""Issue 14, image faults: a broken image is named (file:row, image, reason) before work is lost, and an
image URL is fetched only when asked for, from public hosts, within a deadline and a size cap.

No test reaches beyond this machine: the autouse ``no_network`` guard refuses any connection or name
lookup that is not loopback, and the remote tests that fetch talk to a stub server on 127.0.0.1.
"""

from __future__ import annotations

import http.server
import io
import ipaddress
import itertools
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pytest
from PIL import Image

from vift_plugin.cli import main
from vift_plugin.data.captions import convert_caption_file
from vift_plugin.data.files import ImageError
from vift_plugin.data.images import load_image
from vift_plugin.data.schema import caption_messages

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse every connection and DNS lookup that is not loopback (or an IP literal, which needs no DNS)."""
    connect, lookup = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(self: socket.socket, address: Any) -> Any:
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            raise AssertionError(f"a test tried to connect to {address}")
        return connect(self, address)

    def guarded_lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            ipaddress.ip_address(str(host).strip("[]"))
        except ValueError:
            if host not in LOOPBACK:
                raise AssertionError(f"a test tried to look up {host!r}") from None
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)


def picture(seed: int = 0, size: int = 64) -> Image.Image:
    """Noise, so the compressed data is long and cutting it loses pixels, not just trailing bytes."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def encoded(fmt: str, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    picture(seed).save(buffer, format=fmt)
    return buffer.getvalue()


def write_truncated(path: Path, fmt: str = "JPEG") -> Path:
    """A real image file cut in half, as an interrupted download leaves it: its header still reads."""
    data = encoded(fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as header_only:
        assert header_only.size == (64, 64)
    return path


def write_good(path: Path, fmt: str = "PNG", seed: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded(fmt, seed))
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def caption_rows(names: list[str]) -> list[dict[str, Any]]:
    return [{"id": f"r{i}", "image": name, "caption": f"picture number {i}"} for i, name in enumerate(names)]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- vift convert: decoding


def test_convert_stops_at_a_truncated_jpeg_naming_file_row_image_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_good(tmp_path / "a.png")
    write_truncated(tmp_path / "cut.jpg")
    source = write_jsonl(tmp_path / "captions.jsonl", caption_rows(["a.png", "cut.jpg", "a.png"]))
    output = tmp_path / "out.jsonl"
    assert main(["convert", "captions", str(source), "-o", str(output)]) == 2
    error = capsys.readouterr().err
    assert f"{source}:2: " in error and "cut.jpg" in error and "truncated" in error
    assert not output.exists()
    # --no-verify-images still trusts the files (paths are checked, pixels are not decoded)
    assert main(["convert", "captions", str(source), "-o", str(output), "--no-verify-images"]) == 0
    assert len(read_jsonl(output)) == 3


def test_convert_skip_bad_counts_a_truncated_png_under_its_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_good(tmp_path / "a.png")
    write_truncated(tmp_path / "img" / "cut.png", "PNG")
    write_truncated(tmp_path / "img" / "cut2.jpg", "JPEG")
    names = ["a.png", "img/cut.png", "a.png", "img/cut2.jpg"]
    source = write_jsonl(tmp_path / "captions.jsonl", caption_rows(names))
    output, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
    argv = ["convert", "captions", str(source), "-o", str(output), "--skip-bad", "--rejects", str(rejects)]
    assert main(argv) == 0
    assert [r["id"] for r in read_jsonl(output)] == ["r0", "r2"]
    listed = {r["location"]: r["reason"] for r in read_jsonl(rejects)}
    assert set(listed) == {f"{source}:2", f"{source}:4"}
    assert "cut.png" in listed[f"{source}:2"] and "truncated" in listed[f"{source}:2"]
    assert "cut2.jpg" in listed[f"{source}:4"] and "truncated" in listed[f"{source}:4"]
    summary = capsys.readouterr().out
    assert "skipped 2 bad row(s)" in summary
    reasons = [line.split(maxsplit=1) for line in summary.splitlines() if line.strip()[:1].isdigit()]
    assert sum(int(count) for count, _ in reasons) == 2
    assert all(kind.startswith("cannot decode image ... image file is truncated") for _, kind in reasons)


def test_convert_decodes_in_threads_and_keeps_row_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    write_good(tmp_path / "a.png")
    write_truncated(tmp_path / "cut.jpg")
    bad = {5, 17, 18, 40}
    names = ["cut.jpg" if i in bad else "a.png" for i in range(48)]
    source = write_jsonl(tmp_path / "captions.jsonl", caption_rows(names))
    decoders: set[str] = set()
    original = ImageFile.ImageFile.load

    def recording_load(self: Any) -> Any:
        decoders.add(threading.current_thread().name)
        time.sleep(0.002)  # long enough for the workers to overlap
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    output, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
    report = convert_caption_file(source, output, verify_threads=4, chunk_size=16, skip_bad=True, rejects_path=rejects)
    assert [r["id"] for r in read_jsonl(output)] == [f"r{i}" for i in range(48) if i not in bad]
    assert [r["location"] for r in read_jsonl(rejects)] == [f"{source}:{i + 1}" for i in sorted(bad)]
    assert (report.read, report.written) == (48, 44)
    assert len(decoders) > 1 and threading.current_thread().name not in decoders


def test_threaded_map_is_ordered_and_reads_ahead_a_bounded_window() -> None:
    from vift_plugin.data.images import threaded_map

    taken: list[int] = []

    def source() -> Iterator[int]:
        for value in itertools.count():
            taken.append(value)
            yield value

    def square(value: int) -> int:
        if value == 3:
            raise ValueError("three is a bad image")
        return value * value

    results = threaded_map(square, source(), threads=2)
    first = list(itertools.islice(results, 10))
    assert first[:3] == [0, 1, 4] and isinstance(first[3], ValueError) and first[4:] == [v * v for v in range(4, 10)]
    assert len(taken) <= 10 + 4 * 2  # a stream is read ahead by the in-flight window only
    results.close()


# ------------------------------------------------------------------------- training: before step 1


def chat_records(names: list[str]) -> list[dict[str, Any]]:
    return [
        {"id": f"c{i}", "messages": caption_messages("Describe the image.", f"picture {i}"), "images": [name]}
        for i, name in enumerate(names)
    ]


def test_check_images_names_bad_training_rows_before_step_one(tmp_path: Path) -> None:
    from vift_plugin.data.images import check_images

    write_good(tmp_path / "a.png")
    write_truncated(tmp_path / "cut.jpg")
    dataset = datasets.Dataset.from_list(chat_records(["a.png", "cut.jpg", "a.png", "gone.png"]))
    with pytest.raises(ImageError) as error:
        check_images(dataset, tmp_path, max_pixels=64 * 64)
    message = str(error.value)
    assert "2 row(s)" in message and "row 1 (id 'c1')" in message and "cut.jpg" in message
    assert "truncated" in message and "row 3 (id 'c3')" in message and "gone.png" in message
    assert "row 0 " not in message and "row 2 " not in message
    # an Image feature (bytes inside the dataset) is checked undecoded, so the bad row is still named
    embedded = datasets.Dataset.from_dict(
        {"id": ["e0", "e1"], "images": [[{"bytes": encoded("PNG"), "path": None}], [str(tmp_path / "cut.jpg")]]},
        features=datasets.Features({"id": datasets.Value("string"), "images": datasets.List(datasets.Image())}),
    )
    with pytest.raises(ImageError, match=r"row 1 \(id 'e1'\): cannot decode image .*cut\.jpg: image file is truncated"):
        check_images(embedded)


def test_check_images_skip_bad_leaves_the_rows_out_and_counts_them(tmp_path: Path) -> None:
    from vift_plugin.data.images import check_images

    write_good(tmp_path / "a.png")
    write_truncated(tmp_path / "cut.png", "PNG")
    dataset = datasets.Dataset.from_list(chat_records(["a.png", "cut.png", "a.png"]))
    kept, rejects = check_images(dataset, tmp_path, skip_bad=True, threads=2)
    assert kept["id"] == ["c0", "c2"]
    assert [r["location"] for r in rejects] == ["row 1 (id 'c1')"] and "truncated" in rejects[0]["reason"]
    same, none = check_images(kept, tmp_path)
    assert none == [] and same["id"] == ["c0", "c2"]


def test_token_lengths_name_the_row_whose_image_the_processor_refuses(checkpoint_dir: Any, tmp_path: Path) -> None:
    from vift_plugin import load_processor
    from vift_plugin.data.mixing import add_modality_and_length

    write_good(tmp_path / "a.png")
    Image.new("RGB", (3000, 4), "red").save(tmp_path / "wide.png")  # Qwen2-VL takes aspect ratios up to 200
    dataset = datasets.Dataset.from_list(chat_records(["a.png", "wide.png"]))
    processor = load_processor(checkpoint_dir("qwen2_vl"))
    with pytest.raises(ImageError, match=r"row 1: image wide\.png: Qwen2VLProcessor cannot take a 3000x4 image: .*200"):
        add_modality_and_length(dataset, processor, image_root=tmp_path)


def test_the_collator_names_the_row_whose_image_the_processor_refuses(checkpoint_dir: Any, tmp_path: Path) -> None:
    from vift_plugin import load_processor
    from vift_plugin.data.collator import ViFTDataCollator

    write_good(tmp_path / "a.png")
    Image.new("RGB", (4, 3000), "red").save(tmp_path / "tall.png")
    collator = ViFTDataCollator(load_processor(checkpoint_dir("qwen2_vl")), image_root=tmp_path)
    features = chat_records(["a.png", "tall.png", "a.png"])
    assert collator([features[0], features[2]])["input_ids"].shape[0] == 2
    with pytest.raises(ValueError, match=r"row c1: Qwen2VLProcessor cannot take its image\(s\) \(4x3000, .*200"):
        collator(features)


def test_a_lazily_opened_pil_image_is_named_by_its_file(tmp_path: Path) -> None:
    path = write_truncated(tmp_path / "lazy.jpg")
    with Image.open(path) as lazy, pytest.raises(ImageError, match=r"cannot decode image .*lazy\.jpg: .*truncated"):
        load_image(lazy)


# ------------------------------------------------------------------------------------- vift eval


def benchmark_file(folder: Path, images: list[str]) -> Path:
    rows = [
        {"id": f"q{i}", "image": image, "question": "What is shown?", "answer": "noise"}
        for i, image in enumerate(images)
    ]
    return write_jsonl(folder / "bench.jsonl", rows)


@pytest.mark.parametrize("allowed", [False, True])
def test_pil_set_to_load_truncated_images_is_named_by_every_image_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, allowed: bool
) -> None:
    """``ImageFile.LOAD_TRUNCATED_IMAGES = True`` (user code, an imported library) lets a cut file decode;
    the checks then cannot see it, so each says so instead of passing it in silence."""
    from PIL import ImageFile

    from vift_plugin.data.images import check_images
    from vift_plugin.evaluation.benchmark import read_benchmark

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", allowed)
    write_truncated(tmp_path / "cut.jpg")
    source = write_jsonl(tmp_path / "captions.jsonl", caption_rows(["cut.jpg"]))
    records = datasets.Dataset.from_list(chat_records(["cut.jpg"]))
    bench = benchmark_file(tmp_path, [str(tmp_path / "cut.jpg")])
    checks = {
        "vift convert captions": lambda: convert_caption_file(source, tmp_path / "out.jsonl"),
        "check_images": lambda: check_images(records, tmp_path),
        "the benchmark's image check": lambda: read_benchmark(bench),
    }
    for check, run in checks.items():
        caplog.clear()
        with caplog.at_level("WARNING", logger="vift_plugin.data.images"):
            if allowed:
                run()  # the cut file passes: PIL filled it in
            else:
                with pytest.raises(ValueError, match="truncated"):  # ImageError, or RowError naming the row
                    run()
        warned = [r.getMessage() for r in caplog.records if "LOAD_TRUNCATED_IMAGES" in r.getMessage()]
        assert len(warned) == int(allowed), check
        assert all(w.startswith(f"{check}: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True") for w in warned)


def test_vift_eval_names_a_truncated_image_row_before_loading_the_model(
    checkpoint_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import vift_plugin.loading as loading

    write_good(tmp_path / "a.png")
    write_truncated(tmp_path / "cut.jpg")
    write_truncated(tmp_path / "cut.png", "PNG")
    bench = benchmark_file(tmp_path, ["a.png", "a.png", "cut.jpg", "missing.png", "cut.png"])
    loads = Counter[str]()
    load_model = loading.load_model

    def counting_load(*args: Any, **kwargs: Any) -> Any:
        loads["model"] += 1
        return load_model(*args, **kwargs)

    monkeypatch.setattr(loading, "load_model", counting_load)
    out = tmp_path / "results"
    argv = ["eval", str(checkpoint_dir("qwen2_vl")), "--data", str(bench), "--output-dir", str(out)]
    assert main([*argv, "--inference", "plain", "--max-new-tokens", "2", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "3 image(s) cannot be used" in error
    assert f"{bench}:3: " in error and "cut.jpg" in error and "truncated" in error
    assert f"{bench}:4: " in error and "missing.png" in error and f"{bench}:5: " in error
    assert loads["model"] == 0 and not out.exists()


def test_evaluate_checks_row_images_before_generating(tiny_qwen: tuple[Any, Any], tmp_path: Path) -> None:
    from vift_plugin.evaluation import GenerationSettings
    from vift_plugin.evaluation.evaluator import evaluate

    model, processor = tiny_qwen
    write_good(tmp_path / "a.png")
    write_truncated(tmp_path / "cut.jpg")
    rows = [
        {"id": "ok", "image": str(tmp_path / "a.png"), "question": "What?", "answer": "x"},
        {"id": "bad", "image": str(tmp_path / "cut.jpg"), "question": "What?", "answer": "x"},
    ]
    calls = Counter[str]()
    generate = model.generate

    def counting_generate(*args: Any, **kwargs: Any) -> Any:
        calls["generate"] += 1
        return generate(*args, **kwargs)

    model.generate = counting_generate
    with pytest.raises(ImageError, match=r"items\[1\]: cannot decode image .*cut\.jpg"):
        evaluate(model, processor, rows, modes=["plain"], settings=GenerationSettings(max_new_tokens=2, progress=False))
    assert calls["generate"] == 0


@pytest.fixture
def tiny_qwen(checkpoint_dir: Any) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText

    from vift_plugin import load_processor

    path = checkpoint_dir("qwen2_vl")
    return AutoModelForImageTextToText.from_pretrained(path).eval(), load_processor(path)


# ---------------------------------------------------------------------------------- remote images


def test_remote_images_are_refused_unless_allowed(
    checkpoint_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = "http://images.example/cat.jpg"
    with pytest.raises(ImageError, match="remote images are off.*--allow-remote-images"):
        load_image(url)
    write_good(tmp_path / "a.png")
    source = write_jsonl(tmp_path / "captions.jsonl", caption_rows(["a.png", url]))
    for extra in ([], ["--no-verify-images"]):
        assert main(["convert", "captions", str(source), "-o", str(tmp_path / "out.jsonl"), *extra]) == 2
        error = capsys.readouterr().err
        assert f"{source}:2: " in error and url in error and "--allow-remote-images" in error
    bench = benchmark_file(tmp_path, ["a.png", url])
    argv = ["eval", str(checkpoint_dir("qwen2_vl")), "--data", str(bench), "--output-dir", str(tmp_path / "r")]
    assert main([*argv, "--inference", "plain", "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert f"{bench}:2: " in error and "--allow-remote-images" in error and not (tmp_path / "r").exists()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://images.example/x.png", "gopher://images.example/x"])
def test_only_http_and_https_urls_are_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str], url: str) -> None:
    with pytest.raises(ImageError, match="scheme .* is not allowed; only http and https"):
        load_image(url, allow_remote_images=True)
    write_good(tmp_path / "a.png")
    source = write_jsonl(tmp_path / "captions.jsonl", caption_rows(["a.png", url]))
    argv = ["convert", "captions", str(source), "-o", str(tmp_path / "out.jsonl"), "--allow-remote-images"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert f"{source}:2: " in error and "only http and https" in error


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "link-local"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "private"),
        ("http://[::ffff:169.254.169.254]/latest/meta-data/", "link-local"),
        ("http://localhost:8080/admin.png", "loopback"),
        ("http://127.0.0.1/x.png", "loopback"),
        ("https://[::1]/x.png", "loopback"),
        ("http://10.1.2.3/x.png", "private"),
        ("http://192.168.0.1/x.png", "private"),
        ("http://0.0.0.0/x.png", "unspecified"),
        ("http://224.0.0.1/x.png", "multicast"),
        ("http://100.64.0.1/x.png", "non-global"),
    ],
)
def test_allowed_remote_images_refuse_private_hosts_before_connecting(
    monkeypatch: pytest.MonkeyPatch, url: str, kind: str
) -> None:
    def refuse(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"connected to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(ImageError, match=rf"refused to fetch from .* \({kind} address\)"):
        load_image(url, allow_remote_images=True)


def test_a_name_that_resolves_to_a_private_address_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def resolve(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        assert host == "images.example"
        public = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port))
        private = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", port))
        return [public, private]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(ImageError, match=r"'images\.example'.*10\.0\.0\.7 \(private address\)"):
        load_image("https://images.example/cat.jpg", allow_remote_images=True)


class StubServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    hits: Counter[str]


class StubHandler(http.server.BaseHTTPRequestHandler):
    """``/picture.png``; ``/redirect`` (to the metadata service); ``/big`` (no length) and ``/huge``
    (declared); ``/silent`` (never answers); ``/drip`` (a byte every 50 ms)."""

    server: StubServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.hits[self.path] += 1
        try:
            if self.path == "/picture.png":
                body = encoded("PNG", seed=7)
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            elif self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
            elif self.path in ("/big", "/huge"):
                self.send_response(200)
                if self.path == "/huge":
                    self.send_header("Content-Length", str(10**10))
                self.end_headers()
                for _ in range(64):
                    self.wfile.write(b"\0" * 65536)
            elif self.path == "/silent":
                time.sleep(3)
            elif self.path == "/drip":
                self.send_response(200)
                self.end_headers()
                for _ in range(100):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.05)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Counter[str]]]:
    """A loopback HTTP server, and the address check told to let 127.0.0.1 (only) through to it."""
    from vift_plugin.data import remote

    check = remote.refused_kind
    monkeypatch.setattr(remote, "refused_kind", lambda address: None if str(address) == "127.0.0.1" else check(address))
    server = StubServer(("127.0.0.1", 0), StubHandler)
    server.hits = Counter()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.hits
    server.shutdown()
    server.server_close()


def test_a_redirect_to_the_metadata_service_is_refused(stub: tuple[str, Counter[str]]) -> None:
    base, hits = stub
    assert load_image(f"{base}/picture.png", allow_remote_images=True).size == (64, 64)
    with pytest.raises(ImageError, match=r"169\.254\.169\.254.*link-local"):
        load_image(f"{base}/redirect", allow_remote_images=True)
    assert hits["/redirect"] == 1


def test_remote_images_stop_at_the_size_cap(stub: tuple[str, Counter[str]]) -> None:
    from vift_plugin.data.remote import fetch_image_bytes

    base, _ = stub
    with pytest.raises(ImageError, match=r"/big is over the 1,048,576-byte cap \(stopped reading\)"):
        fetch_image_bytes(f"{base}/big", max_bytes=1 << 20)
    with pytest.raises(ImageError, match=r"/huge is 10,000,000,000 bytes, over the 1,048,576-byte cap"):
        fetch_image_bytes(f"{base}/huge", max_bytes=1 << 20)
    assert len(fetch_image_bytes(f"{base}/big", max_bytes=8 << 20)) == 64 * 65536


def test_remote_images_have_a_deadline(stub: tuple[str, Counter[str]]) -> None:
    from vift_plugin.data.remote import fetch_image_bytes

    base, _ = stub
    start = time.monotonic()
    with pytest.raises(ImageError, match=r"could not fetch image .*/silent: .*timed out"):
        fetch_image_bytes(f"{base}/silent", timeout=0.3)
    with pytest.raises(ImageError, match=r"/drip took longer than 0\.3s"):
        fetch_image_bytes(f"{base}/drip", timeout=0.3)
    assert time.monotonic() - start < 2.5


def test_allowed_remote_images_convert_and_evaluate(
    stub: tuple[str, Counter[str]], checkpoint_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, hits = stub
    url = f"{base}/picture.png"
    write_good(tmp_path / "a.png")
    source = write_jsonl(tmp_path / "captions.jsonl", caption_rows(["a.png", url]))
    output = tmp_path / "out.jsonl"
    assert main(["convert", "captions", str(source), "-o", str(output), "--allow-remote-images"]) == 0
    assert [r["images"] for r in read_jsonl(output)] == [["a.png"], [url]] and hits["/picture.png"] == 1
    bench = benchmark_file(tmp_path, ["a.png", url])
    out = tmp_path / "results"
    argv = ["eval", str(checkpoint_dir("qwen2_vl")), "--data", str(bench), "--output-dir", str(out)]
    argv += ["--allow-remote-images", "--inference", "plain", "--max-new-tokens", "2", "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert [r["id"] for r in read_jsonl(out / "predictions.jsonl")] == ["q0", "q1"]
    assert hits["/picture.png"] == 2  # the benchmark fetched its remote image once, before the model ran
