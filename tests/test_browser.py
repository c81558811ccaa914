"""The web page end to end in a real headless browser, and upload limits over a real socket.

uvicorn serves the tiny index on a free loopback port in a background thread; Playwright drives Debian's
``chromium`` (``executable_path``, never a downloaded browser). Every wait is bounded and the server is always
shut down. Where the browser or Playwright is missing, the test skips and says what to install.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("uvicorn", reason="the service needs the serve extra: pip install 'dcd-itr[serve]'")
import uvicorn  # noqa: E402

from dcd_itr.search.retriever import Retriever  # noqa: E402
from dcd_itr.search.schemas import ServiceLimits  # noqa: E402
from dcd_itr.search.service import create_app  # noqa: E402

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000  # generous for 2 shared CPU cores; every wait below is bounded by it


def serve_in_thread(app):
    """Start uvicorn on a loopback socket chosen by the OS; returns (base_url, stop)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if not server.started:
        server.should_exit = True
        raise RuntimeError("uvicorn did not start within 30 s")

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


@pytest.fixture(scope="module")
def live_service(tiny_search, tiny_index):
    tiny = tiny_search
    retriever = Retriever(tiny_index("images"), cross_dir=tiny.cross)
    base_url, stop = serve_in_thread(create_app(retriever))
    try:
        yield base_url
    finally:
        stop()


@pytest.fixture
def chromium_page(tmp_path):
    playwright_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright is not installed: pip install 'dcd-itr[serve]'"
    )
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip(
            "no chromium on PATH: install it with scripts/install_system_deps.sh (apt-get install chromium)"
        )
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data-dir per test
            executable_path=executable,
            headless=True,
            args=CHROMIUM_FLAGS,
            timeout=WAIT_MS,
        )
        try:
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            context.close()


def test_type_a_query_and_see_images(live_service, chromium_page):
    page = chromium_page
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(live_service + "/")
    page.wait_for_selector("#text-form:not(.hidden)")
    assert "11 images indexed" in page.text_content("#about")
    page.fill("#query", "a blue square")
    page.fill("#k", "5")
    page.click("#text-form button[type=submit]")
    page.wait_for_selector("#results figure.hit img")
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"
    )
    figures = page.query_selector_all("#results figure.hit")
    assert len(figures) == 5
    assert page.eval_on_selector("#results img", "img => img.naturalWidth") > 0  # the gallery file loaded
    assert "score" in figures[0].text_content()
    status = page.text_content("#status")
    assert "5 results" in status and "server" in status and "ms" in status  # the query's latency is shown

    page.check("#rerank")
    page.fill("#rerank-k", "8")
    page.click("#text-form button[type=submit]")
    page.wait_for_function("() => document.querySelector('#status').textContent.includes('re-ranked top 8')")
    assert "cross" in page.query_selector("#results figure.hit").text_content()
    assert errors == []


def test_errors_are_shown_not_thrown(live_service, chromium_page):
    page = chromium_page
    page.goto(live_service + "/")
    page.wait_for_selector("#text-form:not(.hidden)")
    page.fill("#query", "x" * 300)  # over the service's 256-character limit
    page.click("#text-form button[type=submit]")
    page.wait_for_selector("#status.error")
    assert "256" in page.text_content("#status")


def test_chunked_upload_is_cut_off_while_streaming(tiny_search, tiny_index):
    """Over a real socket, with no Content-Length: the server answers 413 before the client finishes sending."""
    tiny = tiny_search
    limits = ServiceLimits(max_upload_bytes=64 * 1024)
    retriever = Retriever(tiny_index("captions"))
    base_url, stop = serve_in_thread(create_app(retriever, limits=limits))
    assert tiny.cross.exists()
    host, port = base_url.removeprefix("http://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as connection:
            connection.sendall(
                b"POST /search/image HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
            )
            part = (
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="q.png"\r\n'
                b"Content-Type: image/png\r\n\r\n"
            )
            connection.sendall(b"%x\r\n%s\r\n" % (len(part), part))  # a valid start: the parser reads on
            chunk, sent, answer = b"z" * 16384, 0, b""
            connection.settimeout(0.05)
            while sent < 64 * 1024 * 1024 and b"\r\n\r\n" not in answer:  # would be 64 MiB in all
                try:
                    connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
                with contextlib.suppress(TimeoutError):
                    answer += connection.recv(4096)
            connection.settimeout(10)
            while b"\r\n\r\n" not in answer:
                data = connection.recv(4096)
                if not data:
                    break
                answer += data
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert sent < 4 * limits.max_upload_bytes  # refused after about the limit, not after 64 MiB
    finally:
        stop()
