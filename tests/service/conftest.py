"""Service fixtures: a small random bundle, an in-process app, and the real gunicorn on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
GUNICORN = Path(sys.executable).with_name("gunicorn")
CAPTIONS = [
    "the bird has a yellow crown and a black eyering that is round",
    "this bird has a red breast, a short black bill and brown wings",
    "a small blue bird with a white belly and a long tail",
    "this bird is grey with a white nape and an orange bill",
]


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight bundle, gf_dim 8 (fast), vocabulary from the example captions."""
    from attngan.bundle import write_random_bundle
    from attngan.model import ModelConfig
    from attngan.text import Vocabulary, tokenize

    vocab = Vocabulary.build(tokenize(c) for c in CAPTIONS)
    out = tmp_path_factory.mktemp("bundle") / "tiny"
    return write_random_bundle(out, config=ModelConfig(n_words=len(vocab), gf_dim=8), vocab=vocab, seed=0)


@pytest.fixture(scope="session")
def ranked_bundle_dir(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bundle_dir's networks plus a DAMSM image encoder, which CANDIDATES > 1 ranks the draws with."""
    from attngan.bundle import load_bundle, write_bundle
    from tests.conftest import ranking_image_encoder

    tiny = load_bundle(bundle_dir)
    return write_bundle(tmp_path_factory.mktemp("ranked") / "tiny", config=tiny.config, vocab=tiny.vocab,
                        generator=tiny.read_state("generator"), text_encoder=tiny.read_state("text_encoder"),
                        image_encoder=ranking_image_encoder(tiny.config), info={"source": "test"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(bucket: str):
    """moto's S3 server on a free loopback port with `bucket` made: (server, endpoint, boto3 client).

    Skips the test when boto3 or moto is missing; the caller stops the server.
    """
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    port = free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    client.create_bucket(Bucket=bucket)
    return server, endpoint, client


class Server:
    """The real gunicorn (service/gunicorn_conf.py) on 127.0.0.1, stopped with SIGTERM at the end."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("AWS_", "BUCKET_", "PROMETHEUS_")) and k not in ("API_KEY", "ACCESS_KEY_ID",
                                                                                     "ACCESS_SECRET_KEY")}
        full_env.update({"HOST": "127.0.0.1", "PORT": str(self.port), "OMP_NUM_THREADS": "1", "TORCH_THREADS": "1",
                         "PRECISION": "fp32", "LOG_LEVEL": "warning", "GRACEFUL_TIMEOUT": "20"})
        full_env.update(env)
        self.log = log_path.open("wb")
        self.proc = subprocess.Popen([str(GUNICORN), "-c", "service/gunicorn_conf.py", "service.app:create_app()"],
                                     cwd=REPO, env=full_env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90.0) -> Server:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                r = requests.get(f"{self.url}/readyz", timeout=5)
                if r.status_code == 200:
                    return self
                last = r.text
            except requests.RequestException as exc:
                last = repr(exc)
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"gunicorn not ready in {timeout} s (last /readyz: {last}):\n{self.output()[-3000:]}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory, bundle_dir: Path) -> Iterator:
    """Factory: start_server(**env) -> a ready Server; all are stopped at the end of the session."""
    servers: list[Server] = []

    def start(wait: bool = True, **env: str) -> Server:
        work = tmp_path_factory.mktemp("server")
        env = {"BUNDLE_DIR": str(bundle_dir), "IMAGE_DIR": str(work / "images"), **env}
        server = Server(env, work / "gunicorn.log")
        servers.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def server(start_server) -> Server:
    """The shipped configuration (batching on, local storage) on loopback, shared by the tests that only read."""
    return start_server()


@pytest.fixture(scope="module")
def app(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from service.app import create_app

    images = tmp_path_factory.mktemp("images")
    app = create_app({"bundle_dir": str(bundle_dir), "image_dir": str(images), "precision": "fp32",
                      "torch_threads": 1, "max_batch_size": 4})
    maker = app.extensions["attngan"]
    assert maker.engine.wait_ready(60), maker.engine.error
    yield app
    maker.engine.stop()


@pytest.fixture()
def client(app):
    return app.test_client()
