"""Locate the official `tritonserver` binary shipped in the `nvidia-pytriton` wheel and assemble
the backend directory it needs on this machine.

Only the binary and its libraries are used, never pytriton's Python API (installed `--no-deps`),
so nothing here imports `pytriton`. The backend directory holds:
  python/       Triton's python backend (library, utils, the stub built for this Python),
  onnxruntime/  our python-based backend (`server/backends/onnxruntime/model.py`), which Triton
                uses for every `backend: "onnxruntime"` model because no native ORT backend is here.
In NVIDIA's container the native ORT/TensorRT backends serve the same configs unchanged; there
`container_runtime()` describes its tritonserver (`/opt/tritonserver`), into whose backends folder
the server image (deploy/server.Dockerfile) copies our python-based `openvino` backend.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

PYTHON_TAG = f"{sys.version_info.major}.{sys.version_info.minor}"
OUR_BACKENDS = Path(__file__).resolve().parent / "backends"


class RuntimeNotFound(RuntimeError):
    """The tritonserver binary or one of its parts is missing from this environment."""


@dataclass(frozen=True)
class TritonRuntime:
    binary: Path
    library_dirs: tuple[Path, ...]
    backend_dir: Path

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for the server process.

        `LD_LIBRARY_PATH` must hold the wheel's libraries (else the python stub cannot load
        libcudart and the server hangs instead of exiting) and this interpreter's lib dir (the stub
        links libpython). The venv's `bin` goes first on PATH: the stub starts the `python` found
        there, and only that one has numpy and onnxruntime.
        """
        env = dict(os.environ if base is None else base)
        libs = [str(p) for p in self.library_dirs]
        if env.get("LD_LIBRARY_PATH"):
            libs.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libs)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env

    def describe(self) -> dict[str, str]:
        return {
            "tritonserver": str(self.binary),
            "libraries": ", ".join(str(p) for p in self.library_dirs),
            "backends": str(self.backend_dir),
            "python": sys.executable,
        }


CONTAINER_HOME = Path("/opt/tritonserver")
"""Where NVIDIA's tritonserver containers install Triton."""


def container_runtime(home: Path = CONTAINER_HOME) -> TritonRuntime:
    """tritonserver as NVIDIA's container installs it: its own libraries and backends, and the
    system Python of the image (the server image installs the project there). Not checked for
    existence: `msk serve --print-command` describes a container command on any machine."""
    return TritonRuntime(binary=home / "bin" / "tritonserver", library_dirs=(home / "lib",),
                         backend_dir=home / "backends")


def default_runtime() -> TritonRuntime:
    """NVIDIA's container where it is (the server image), else the nvidia-pytriton wheel."""
    if (CONTAINER_HOME / "bin" / "tritonserver").is_file():
        return container_runtime()
    return locate_runtime()


def _pytriton_root() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeNotFound(
            "the nvidia-pytriton wheel is not installed (it carries the tritonserver binary); "
            "run `make setup`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _cache_dir() -> Path:
    root = os.environ.get("MSK_CACHE_DIR")
    return Path(root) if root else Path(sys.prefix) / "var" / "msk-triton"


def _content_key(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path).encode())
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()[:16]


def locate_runtime() -> TritonRuntime:
    """Find the binary and build (once per content) the backend directory."""
    root = _pytriton_root() / "tritonserver"
    binary = root / "bin" / "tritonserver"
    python_backend = root / "backends" / "python"
    stub = root / "python_backend_stubs" / PYTHON_TAG / "triton_python_backend_stub"
    libs = _pytriton_root().parent / "nvidia_pytriton.libs"
    for needed in (binary, python_backend / "libtriton_python.so", stub, libs):
        if not needed.exists():
            raise RuntimeNotFound(f"missing from the nvidia-pytriton wheel: {needed}")

    sources = sorted(OUR_BACKENDS.rglob("*.py"))
    backend_dir = _cache_dir() / f"backends-{_content_key(sources + [stub])}"
    if not (backend_dir / ".complete").exists():
        tmp = backend_dir.with_name(backend_dir.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "python").mkdir(parents=True)
        for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copy2(python_backend / name, tmp / "python" / name)
        shutil.copy2(stub, tmp / "python" / "triton_python_backend_stub")
        for backend in OUR_BACKENDS.iterdir():
            if backend.is_dir():
                shutil.copytree(backend, tmp / backend.name,
                                ignore=shutil.ignore_patterns("__pycache__"))
        (tmp / ".complete").touch()
        shutil.rmtree(backend_dir, ignore_errors=True)
        tmp.rename(backend_dir)

    interpreter_lib = Path(sysconfig.get_config_var("LIBDIR") or "")
    return TritonRuntime(
        binary=binary,
        library_dirs=(libs, interpreter_lib),
        backend_dir=backend_dir,
    )
