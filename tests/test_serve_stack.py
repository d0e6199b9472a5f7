"""One serving stack (`server.serve`): the composition `msk serve` and the Python API run.

- the release-workaround table decides per Triton version: on the local 2.51 both workarounds
  are on (and `msk serve` says so when ready); on a release with the fixes, none;
- tritonserver's flags come from one builder, per target, and `msk serve --print-command`
  shows them without starting anything;
- the front door alone holds the internal certificate: the calls our clients make pass, model
  loading and log settings are refused, and Triton's own loopback gRPC port refuses a client
  without the certificate (tests/test_internal_endpoints.py tries it as another local user);
- two `msk serve` on one host with distinct ports start with no other flag, and a port already
  in use is an error naming the port and its flag (the second no longer shares it).
"""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from msk.constants import MURA_ENSEMBLE_MODEL
from server.workarounds import WORKAROUNDS, describe, markdown_table, needed, parse_version
from tests.msk_process import run_msk
from tests.plugins.msk_serve import running_msk_serve

ROOT = Path(__file__).resolve().parents[1]


def test_the_table_decides_per_release() -> None:
    assert parse_version("2.51.0") == (2, 51)
    with pytest.raises(ValueError):
        parse_version("r24.10")
    assert needed((2, 51)) == {"grpc-no-cancel", "stub-watch"}
    assert needed((2, 73)) == frozenset()            # 26.09, the release the image pins
    for workaround in WORKAROUNDS:                   # each one off from its fixed release on
        assert workaround.name in needed((2, workaround.fixed_version[1] - 1))
        assert workaround.name not in needed(workaround.fixed_version)
        assert workaround.bug and workaround.fix and workaround.fixed_release
    assert describe((2, 73)) == "tritonserver 2.73: no release workarounds needed"
    table = markdown_table()
    assert all(f"`{w.name}`" in table for w in WORKAROUNDS)
    assert table in (ROOT / "docs" / "gpu-deployment.md").read_text(), \
        "docs/gpu-deployment.md shows the table server.workarounds.markdown_table() generates"


def _print_command(*flags: str) -> dict:
    result = run_msk("serve", "--print-command", *flags, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_print_command_shows_the_production_flags_per_target() -> None:
    for target in ("cpu", "gpu"):
        printed = _print_command("--target", target, "--repository", "/models",
                                 "--host", "0.0.0.0", "--grpc-port", "9001")
        argv = printed["tritonserver"]
        assert argv[0].endswith("tritonserver") and "--model-repository=/models" in argv
        for flag in ("--model-control-mode=none", "--exit-on-error=true",
                     "--strict-readiness=true", "--disable-auto-complete-config",
                     "--allow-metrics=true", "--grpc-infer-allocation-pool-size=64",
                     f"--allow-gpu-metrics={'true' if target == 'gpu' else 'false'}"):
            assert flag in argv, (target, flag)
        assert ("--pinned-memory-pool-byte-size=0" in argv) == (target == "cpu")
        assert "--allow-http=false" in argv and not any("restricted" in a for a in argv)
        assert "--grpc-use-ssl-mutual=true" in argv          # the front door's certificate only
        for tls in ("--grpc-server-cert", "--grpc-server-key", "--grpc-root-cert"):
            assert any(a.startswith(f"{tls}=<internal-tls>/") for a in argv), tls
        for listen in ("--grpc-address", "--metrics-address"):
            assert f"{listen}=127.0.0.1" in argv      # Triton is reached through the door only
        assert printed["front_door"] == {"grpc": "0.0.0.0:9001", "http": "0.0.0.0:8000",
                                         "metrics": "0.0.0.0:8002"}
    assert "--allow-http=false" in _print_command("--http-inference")["tritonserver"]


def _score_one(grpc_url: str) -> None:
    from clients.mura import MuraClient
    from msk.samples import radiograph

    with MuraClient(grpc_url) as client:
        (result,) = client.score([(radiograph(400, 320, 3) * 255).astype(np.uint8)])
    assert result.error is None, result.error


def _internal_grpc_port(serve_pid: int) -> int:
    """Triton's own gRPC port, read from its command line (what a local user could read)."""
    import psutil

    for child in psutil.Process(serve_pid).children(recursive=True):
        if child.name() == "tritonserver":
            for arg in child.cmdline():
                if arg.startswith("--grpc-port="):
                    return int(arg.split("=", 1)[1])
    raise AssertionError("no tritonserver under msk serve")


def test_the_front_door_holds_the_key_and_a_second_server_gets_its_own_ports(
        tiny_repository: Path) -> None:
    with running_msk_serve("serve", "--repository", str(tiny_repository)) as first:
        _score_one(first.grpc_url)
        client = grpcclient.InferenceServerClient(first.grpc_url)
        assert client.get_model_config(MURA_ENSEMBLE_MODEL, as_json=True)["config"]["name"] \
            == MURA_ENSEMBLE_MODEL
        assert client.get_model_repository_index(as_json=True)["models"]
        for call in (lambda: client.unload_model(MURA_ENSEMBLE_MODEL),
                     lambda: client.update_log_settings({"log_verbose_level": 1})):
            with pytest.raises(InferenceServerException, match="PERMISSION_DENIED"):
                call()
        internal = grpcclient.InferenceServerClient(
            f"127.0.0.1:{_internal_grpc_port(first.proc.pid)}")
        with pytest.raises(InferenceServerException, match="UNAVAILABLE"):
            internal.get_model_config(MURA_ENSEMBLE_MODEL, client_timeout=10)

        # A second server on the same host: its own ports, no other flag needed.
        with running_msk_serve("serve", "--repository", str(tiny_repository)) as second:
            assert second.grpc_url != first.grpc_url
            assert second.metrics_url != first.metrics_url
            _score_one(second.grpc_url)

        # A port in use is an error naming the port and its flag, before anything starts.
        taken = first.grpc_url.rsplit(":", 1)[1]
        refused = run_msk("serve", "--repository", str(tiny_repository), "--grpc-port", taken,
                          "--http-port", "0", "--metrics-port", "0", cwd=ROOT, timeout=120)
        assert refused.returncode == 1
        assert f"--grpc-port {taken}: 127.0.0.1:{taken} is already in use" in refused.stderr
        _score_one(first.grpc_url)                   # the first one is untouched


def test_msk_serve_says_which_workarounds_the_running_release_needs(tiny_repository: Path,
                                                                    tmp_path: Path) -> None:
    from tests.msk_process import MskProcess

    proc = MskProcess("serve", "--repository", str(tiny_repository), "--grpc-port", "0",
                      "--http-port", "0", "--metrics-port", "0", cwd=tmp_path)
    try:
        ready = proc.wait_for(r"msk serve: ready .*\((tritonserver [^)]*\)[^)]*)\)")
        assert re.search(r"tritonserver 2\.51: workarounds on: grpc-no-cancel \(until 25\.06\); "
                         r"stub-watch \(until 26\.04\)", ready.group(0)), ready.group(0)
        metrics = re.search(r"metrics=(\S+)", ready.group(0)).group(1)
        with urllib.request.urlopen(metrics, timeout=10) as reply:   # one scrape target
            text = reply.read().decode()
        assert "nv_inference_count" in text and "msk_serve_triton_up 1.0" in text
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]


def test_a_port_flag_must_be_free_even_when_others_are_zero() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = str(holder.getsockname()[1])
        refused = run_msk("serve", "--repository", str(ROOT / "model_repository"),
                          "--metrics-port", port, "--grpc-port", "0", "--http-port", "0",
                          cwd=ROOT, timeout=120)
    assert refused.returncode == 1, refused.stderr
    assert f"--metrics-port {port}" in refused.stderr and "already in use" in refused.stderr


def test_on_a_fixed_release_the_guard_forwards_deadlines_as_grpc_deadlines(tiny_triton) -> None:
    """`cancel_upstream` (releases without the cancellation bugs): the client's deadline travels
    as a gRPC deadline instead of Triton's queue timeout. Only the forward path is exercised on
    2.51 - cancelling there is exactly what crashes it (server/workarounds.py)."""
    from server.grpc_guard import GrpcGuard

    with GrpcGuard(tiny_triton.grpc_url, "127.0.0.1", 0, cancel_upstream=True) as guard:
        _score_one(guard.url)
        assert guard.busy() == 0 and guard.refused == 0
