"""`msk gateway` as a command: settings from flags and a config file, clear refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from clients.gateway.queue import StudyQueue
from server.launcher import free_port

MSK = [sys.executable, "-m", "msk.cli", "gateway"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MSK, *args], capture_output=True, text=True, timeout=120)


def test_print_config_merges_file_and_flags(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("ae_title: HOSPAI\ntriton-url: 10.1.2.3:8001\n"
                      "destination: PACS@pacs.example:104\nstable_seconds: 45\n")
    proc = _run("--config", str(config), "--port", "4242", "--allowed-calling-ae", "PACS",
                "--data-dir", str(tmp_path / "q"), "--print-config")
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)
    assert settings["ae_title"] == "HOSPAI" and settings["port"] == 4242
    assert settings["destination"] == "PACS@pacs.example:104"
    assert settings["stable_seconds"] == 45 and settings["allowed_calling_aes"] == ["PACS"]
    assert settings["audit_log"] == str(tmp_path / "q" / "audit.jsonl")


def test_bad_destination_is_refused_naming_it() -> None:
    proc = _run("--triton-url", "127.0.0.1:8001", "--destination", "PACS-at-host")
    assert proc.returncode == 2
    assert "PACS-at-host" in proc.stderr and "AET@HOST:PORT" in proc.stderr


def test_missing_settings_are_named() -> None:
    proc = _run("--destination", "PACS@h:104")
    assert proc.returncode == 2 and "triton_url" in proc.stderr
    proc = _run("--triton-url", "127.0.0.1:8001", "--allowed-calling-ae", "PACS")
    assert proc.returncode == 2 and "--destination-dicomweb" in proc.stderr
    proc = _run("--triton-url", "127.0.0.1:8001", "--allowed-calling-ae", "PACS",
                "--destination-dicomweb", "pacs.example/dicom-web")
    assert proc.returncode == 2 and "pacs.example/dicom-web" in proc.stderr


def test_second_gateway_on_same_data_dir_is_refused(tmp_path: Path) -> None:
    queue = StudyQueue(tmp_path / "q")          # this process holds the data dir
    try:
        proc = _run("--triton-url", "127.0.0.1:1", "--destination", "P@127.0.0.1:104",
                    "--host", "127.0.0.1", "--port", str(free_port()),
                    "--allowed-calling-ae", "PACS",
                    "--data-dir", str(tmp_path / "q"))
    finally:
        queue.close()
    assert proc.returncode == 3 and "in use by another gateway" in proc.stderr


def test_connection_limit_flags_override_the_file(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("triton_url: 10.1.2.3:8001\ndestination: PACS@pacs.example:104\n"
                      "allowed_calling_aes: [PACS@10.1.2.3]\nmax_associations: 20\n"
                      "max_associations_per_peer: 5\n")
    base = ("--config", str(config), "--data-dir", str(tmp_path / "q"))
    proc = _run(*base, "--artim-timeout", "2.5", "--max-associations", "12",
                "--max-associations-per-peer", "3", "--reserved-associations", "4",
                "--print-config")
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)
    assert (settings["artim_timeout_s"], settings["max_associations"],
            settings["max_associations_per_peer"], settings["reserved_associations"]) == \
        (2.5, 12, 3, 4)
    proc = _run(*base, "--print-config")      # the file's values, defaults for the rest
    assert proc.returncode == 0, proc.stderr
    settings = json.loads(proc.stdout)
    assert (settings["artim_timeout_s"], settings["max_associations"],
            settings["max_associations_per_peer"], settings["reserved_associations"]) == \
        (5.0, 20, 5, 16)


def test_bad_connection_limit_flags_are_refused_naming_them(tmp_path: Path) -> None:
    base = ("--triton-url", "127.0.0.1:8001", "--destination", "PACS@h:104",
            "--allowed-calling-ae", "PACS", "--data-dir", str(tmp_path / "q"), "--print-config")
    for flags, name in ((("--max-associations-per-peer", "0"), "max_associations_per_peer"),
                        (("--max-associations", "0"), "max_associations"),
                        (("--reserved-associations", "32"), "reserved_associations"),
                        (("--artim-timeout", "0"), "artim_timeout_s"),
                        (("--artim-timeout", "inf"), "artim_timeout_s")):
        proc = _run(*base, *flags)
        assert proc.returncode == 2, (flags, proc.stdout)
        assert name in proc.stderr and not proc.stdout, (flags, proc.stderr)
    proc = _run(*base, "--max-associations", "many")       # argparse: not an int
    assert proc.returncode == 2 and "--max-associations" in proc.stderr


def test_every_setting_has_one_description_reachable_from_file_and_flags(tmp_path: Path) -> None:
    """Issue "one settings model": each GatewayConfig field is a flag (with its default in
    --help) and a config-file key, from the field's own metadata; nothing is listed twice."""
    import argparse
    from dataclasses import fields

    from clients.gateway.config import GatewayConfig, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    by_dest = {a.dest: a for a in parser._actions if a.dest != "help"}
    assert set(by_dest) == {f.name for f in fields(GatewayConfig)}
    assert "(default 30.0)" in by_dest["dicom_timeout_s"].help          # shown from the field
    assert by_dest["dicom_timeout_s"].option_strings == ["--dicom-timeout"]
    base = ("--triton-url", "127.0.0.1:1", "--destination", "PACS@127.0.0.1:104",
            "--allowed-calling-ae", "PACS", "--data-dir", str(tmp_path / "q"))
    from_flag = json.loads(_run(*base, "--dicom-timeout", "7", "--poll-interval", "0.25",
                                "--print-config").stdout)
    assert (from_flag["dicom_timeout_s"], from_flag["poll_interval_s"]) == (7.0, 0.25)
    config = tmp_path / "gateway.yaml"
    config.write_text("dicom-timeout-s: 9\npoll_interval_s: 2\n")
    from_file = json.loads(_run(*base, "--config", str(config), "--print-config").stdout)
    assert (from_file["dicom_timeout_s"], from_file["poll_interval_s"]) == (9, 2)
    refused = _run(*base, "--dicom-timeout", "0", "--print-config")
    assert refused.returncode == 2 and "dicom_timeout_s" in refused.stderr
