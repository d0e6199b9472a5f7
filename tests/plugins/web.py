"""Fixtures for the web app tests: real-looking radiographs and a running `msk web` process.

The app runs as its own process (`python -m msk.cli web`), exactly as a user starts it, against
the real tritonserver fixtures from `tests/conftest.py`.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from msk.process import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "web"


def synthetic_radiograph(seed: int = 0, height: int = 720, width: int = 560,
                         bits: int = 8) -> np.ndarray:
    """A forearm-like radiograph: dark field, soft-tissue shadow, two bones with cortices, noise.

    Real enough that preprocessing, heatmaps and display behave as with an X-ray (wide dynamic
    range, structure at several scales); no patient data is involved.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    x = (xx - width / 2) / (width / 2)
    y = (yy - height / 2) / (height / 2)
    tilt = rng.uniform(-0.15, 0.15)
    u = x - tilt * y
    img = 0.08 + 0.04 * rng.standard_normal() + 0.0 * x
    img = img + 0.22 * np.exp(-(u / 0.62) ** 6)                                  # soft tissue
    for centre, half_width in ((-0.22 + rng.uniform(-.03, .03), 0.12),
                               (0.2 + rng.uniform(-.03, .03), 0.09)):
        d = np.abs(u - centre) / half_width
        shaft = np.clip(1 - d ** 2, 0, None) ** 0.5                              # bone body
        cortex = np.exp(-((d - 0.85) / 0.12) ** 2)                               # bright rim
        img = img + (0.35 * shaft + 0.3 * cortex) * (np.abs(y) < 0.92)
    # a fracture-like dark line across one bone, at a random height
    line_y = rng.uniform(-0.5, 0.5)
    crack = np.exp(-((y - line_y - 0.3 * (u + 0.22)) / 0.012) ** 2) * (np.abs(u + 0.22) < 0.14)
    img = img - 0.25 * crack
    img = img * (1 - 0.25 * (x ** 2 + y ** 2))                                   # heel effect
    img = img + 0.02 * rng.standard_normal((height, width))
    img = np.clip(img, 0, 1)
    if bits == 16:
        return np.round(img * 4095 + 200).astype(np.uint16)                     # 12-bit in 16
    return np.round(img * 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class WebApp:
    url: str          # "http://127.0.0.1:PORT"
    pid: int          # the `msk web` process (to inspect what it loaded)
    log: Path
    triton_url: str   # the gRPC address it was given


@contextmanager
def running_web_app(triton_url: str | list[str], log_path: Path,
                    extra_args: Sequence[str] = ()) -> Iterator[WebApp]:
    """Start `msk web` as a subprocess and yield it once /api/status answers; several URLs are
    given as repeated `--triton-url` flags, `extra_args` after them (e.g. `--ood refuse`)."""
    urls = [triton_url] if isinstance(triton_url, str) else list(triton_url)
    url_flags = [flag for u in urls for flag in ("--triton-url", u)]
    port = free_port()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "msk.cli", "web", "--port", str(port),
             *url_flags, "--log-level", "warning", *extra_args],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"msk web exited with {proc.returncode}:\n"
                                       + log_path.read_text(errors="replace")[-3000:])
                try:
                    if requests.get(f"{url}/api/status", timeout=5).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("msk web did not answer within 90 s:\n"
                                       + log_path.read_text(errors="replace")[-3000:])
                time.sleep(0.2)
            yield WebApp(url, proc.pid, log_path, urls[-1])
        finally:
            stop_process(proc)


def write_tiny_checkpoints(folder: Path, *, logits: tuple[float, ...],
                           temperatures: tuple[float, ...], cam_spread: float,
                           seed: int) -> dict[str, Path]:
    """Checkpoints (the training format) of tiny stand-in members whose CAMs vary like a trained
    model's: the head is scaled so that, on a reference radiograph, the CAM's spatial standard
    deviation is `cam_spread` logits and the member's logit is `logits[i]` (via the bias).

    Why: the untrained tiny stand-ins have CAMs of a few thousandths of a logit, so their HEATMAP
    is one grey level everywhere (sigmoid(~0) * 255 = 127) and a heatmap test would be vacuous.
    """
    import torch

    from msk.constants import MURA_IMAGE_SIZE, MURA_MEMBERS, MURA_TINY_ARCHITECTURE
    from training.mura_models import build_backbone
    from training.mura_preprocess import preprocess_mura

    folder.mkdir(parents=True, exist_ok=True)
    x = torch.from_numpy(preprocess_mura(synthetic_radiograph(seed)))[None]
    paths = {}
    for i, member in enumerate(MURA_MEMBERS):
        model = build_backbone(MURA_TINY_ARCHITECTURE, seed=seed + i).eval()
        with torch.no_grad():
            _, cam = model.forward_with_cam(x)
            scale = cam_spread / float(cam.std())
            model.head.weight.mul_(scale)
            model.head.bias.fill_(logits[i] - float(cam.mean()) * scale)
        paths[member] = folder / f"{member}.pt"
        torch.save({
            "member": member, "architecture": MURA_TINY_ARCHITECTURE,
            "state_dict": model.state_dict(), "image_size": MURA_IMAGE_SIZE,
            "recipe": {"name": "tiny-test-stand-in"}, "dataset_fingerprint": "none",
            "metrics": {}, "temperature": temperatures[i], "operating_points": {},
            "commit": "test",
        }, paths[member])
    return paths


@pytest.fixture(scope="session")
def web_repository(tmp_path_factory) -> Path:
    """Tiny stand-in MURA repository whose heatmaps have structure (see write_tiny_checkpoints)."""
    from export.repository import build_repository

    root = tmp_path_factory.mktemp("web-repository")
    checkpoints = write_tiny_checkpoints(root / "checkpoints", logits=(0.6, -0.4, 0.9, 0.2),
                                         temperatures=(1.0, 1.3, 0.9, 1.1), cam_spread=1.5,
                                         seed=500)
    build_repository(root / "repository", checkpoints=checkpoints)
    return root / "repository"


@pytest.fixture(scope="session")
def web_triton(web_repository) -> Iterator:
    from server.launcher import TritonServer

    with TritonServer(web_repository) as server:
        yield server


@pytest.fixture(scope="session")
def web_app(web_triton, tmp_path_factory) -> Iterator[WebApp]:
    """`msk web` against the real tritonserver serving `web_repository`."""
    with running_web_app(web_triton.grpc_url, tmp_path_factory.mktemp("web") / "web.log") as app:
        yield app


@pytest.fixture(scope="session")
def web_app_server_down(tmp_path_factory) -> Iterator[WebApp]:
    """`msk web` pointed at a port where no Triton listens (the "server is down" case)."""
    dead = f"127.0.0.1:{free_port()}"
    with running_web_app(dead, tmp_path_factory.mktemp("web-down") / "web.log") as app:
        yield app


@pytest.fixture(scope="session")
def web_app_wrist(web_repository, wrist_repository, tmp_path_factory) -> Iterator[WebApp]:
    """`msk web` against one Triton serving the tiny MURA stand-in AND the wrist detectors
    trained by `tests/plugins/wrist.py` (the two repositories merged by copying)."""
    from server.launcher import TritonServer

    repo = tmp_path_factory.mktemp("web-wrist-repository")
    for source in (Path(web_repository), Path(wrist_repository)):
        for model in source.iterdir():
            if model.is_dir() and (model / "config.pbtxt").exists():
                shutil.copytree(model, repo / model.name)
    with TritonServer(repository=repo) as server, running_web_app(
            server.grpc_url, tmp_path_factory.mktemp("web-wrist") / "web.log") as app:
        yield app


@pytest.fixture(scope="session")
def wrist_upload(web_app_wrist) -> tuple[str, bytes, np.ndarray]:
    """(file name, PNG bytes, pixels) of a synthetic wrist (not seen in training) on which the
    CI detectors find structures: they are briefly trained and miss some images entirely, and
    these tests are about showing the boxes, not about the detectors' recall."""
    from clients.wrist import WristClient
    from tests.plugins.wrist import CI_SEED
    from training.wrist_synthetic import make_wrists

    wrists = make_wrists(6, seed=CI_SEED + 3000, sixteen_bit=False)
    with WristClient(web_app_wrist.triton_url) as client:
        found = [len(r.detections) for r in client.detect([w.image for w in wrists])]
    best = int(np.argmax(found))
    assert found[best] > 0, f"the CI wrist detectors found nothing on {len(wrists)} wrists"
    return "wrist_pa.png", encode(wrists[best].image), wrists[best].image


@pytest.fixture(scope="session")
def web_artifacts() -> Path:
    """Screenshots and pages saved by the web tests (git-ignored `test-artifacts/web/`)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
