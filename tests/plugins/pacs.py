"""A real PACS for tests: Orthanc (Debian package) on loopback, plus dcmtk's storescu as the
modality, the gateway as a real `msk gateway` process, and DICOM study builders.

Orthanc runs with its own DICOM and REST ports (free-picked), its own storage and index folders
under the test's tmp dir, REST reachable from loopback only; no plugins, or (`orthanc_dicomweb`)
its DICOMweb plugin (Debian orthanc-dicomweb) behind HTTP basic auth.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.uid import generate_uid

from server.launcher import free_port

ROOT = Path(__file__).resolve().parents[2]
PACS_AET = "TESTPACS"
MODALITY_AET = "TESTMODALITY"
GATEWAY_AET = "MSKGW"


def _tool(name: str) -> str:
    exe = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists()
                                 else None)
    assert exe, f"{name} is required (Debian package; scripts/install_test_packages.sh)"
    return exe


# ---------------------------------------------------------------------------------------------
# Orthanc
# ---------------------------------------------------------------------------------------------
@dataclass
class Orthanc:
    """One Orthanc process; stop()/start() keep ports and storage (a PACS outage)."""

    root: Path
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    aet: str = PACS_AET
    process: subprocess.Popen | None = None
    dicomweb: bool = False
    """Load the DICOMweb plugin (then REST and DICOMweb need the basic-auth user below)."""
    extra: dict = field(default_factory=dict)
    """More Orthanc settings (e.g. DicomTls*)."""
    user: str = "mskgw"
    password: str = field(default_factory=lambda: os.urandom(9).hex())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def dicomweb_client(self):
        """dicomweb-client for this Orthanc's DICOMweb root (QIDO-RS, WADO-RS, STOW-RS)."""
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        session.auth = (self.user, self.password)
        return DICOMwebClient(self.dicomweb_url, session=session)

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    @property
    def log_path(self) -> Path:
        return self.root / "orthanc.log"

    def write_config(self) -> Path:
        config = {
            "Name": "msk-test-pacs",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"),
            "DicomAet": self.aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "DicomServerEnabled": True, "HttpServerEnabled": True,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True, "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True, "DicomModalities": {}, "Plugins": [],
            "ConcurrentJobs": 1, "DicomThreadsCount": 2, "HttpThreadsCount": 4,
            "StableAge": 1, "SaveJobs": False,
        }
        if self.dicomweb:
            plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
            assert plugin.exists(), ("Orthanc's DICOMweb plugin is required (Debian "
                                     "orthanc-dicomweb; scripts/install_test_packages.sh)")
            config.update({"Plugins": [str(plugin)], "AuthenticationEnabled": True,
                           "RegisteredUsers": {self.user: self.password},
                           "DicomWeb": {"Enable": True, "Root": "/dicom-web/",
                                        "StudiesMetadata": "Full",
                                        "SeriesMetadata": "Full"}})
        config.update(self.extra)
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2))
        return path

    def start(self, timeout: float = 60.0) -> Orthanc:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.write_config()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([_tool("Orthanc"), str(config)], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"Orthanc exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise AssertionError(f"Orthanc not up:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.process = None

    # -- REST ------------------------------------------------------------------------------
    def request(self, method: str, path: str, body: object | None = None) -> object:
        """REST call; a str body is sent as is (e.g. /tools/lookup), anything else as JSON."""
        data = None if body is None else (body.encode() if isinstance(body, str)
                                          else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if self.dicomweb:
            import base64

            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=60) as resp:
            raw = resp.read()
        ctype = resp.headers.get("Content-Type", "")
        return json.loads(raw) if "json" in ctype else raw

    def get(self, path: str) -> object:
        return self.request("GET", path)

    def add_modality(self, name: str, aet: str, port: int) -> None:
        self.request("PUT", f"/modalities/{name}", {"AET": aet, "Host": "127.0.0.1",
                                                     "Port": port})

    def study_id(self, study_uid: str) -> str | None:
        found = self.request("POST", "/tools/lookup", study_uid)
        ids = [f["ID"] for f in found if f["Type"] == "Study"]
        return ids[0] if ids else None

    def instances(self, study_uid: str, modality: str | None = None) -> list[Dataset]:
        """Every instance of the study (optionally of one modality), read back with pydicom."""
        study = self.study_id(study_uid)
        if study is None:
            return []
        out = []
        for series in self.get(f"/studies/{study}/series"):
            if modality and series["MainDicomTags"].get("Modality") != modality:
                continue
            for instance in series["Instances"]:
                raw = self.get(f"/instances/{instance}/file")
                from io import BytesIO

                out.append(dcmread(BytesIO(raw)))
        return out

    def wait_for_sr(self, study_uid: str, timeout: float = 120.0, count: int = 1,
                    diagnostics=None) -> list[Dataset]:
        deadline = time.monotonic() + timeout
        found: list[Dataset] = []
        while time.monotonic() < deadline:
            found = self.instances(study_uid, "SR")
            if len(found) >= count:
                return found
            time.sleep(0.5)
        extra = diagnostics() if diagnostics else ""
        raise AssertionError(f"no SR for the study in Orthanc after {timeout} s\n{extra}")


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    """A fresh Orthanc PACS for one test."""
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        yield pacs
    finally:
        pacs.stop()


@pytest.fixture
def orthanc_dicomweb(tmp_path: Path) -> Iterator[Orthanc]:
    """A fresh Orthanc with its DICOMweb plugin at /dicom-web/, basic auth required."""
    pacs = Orthanc(tmp_path / "orthanc-dicomweb", dicomweb=True).start()
    try:
        yield pacs
    finally:
        pacs.stop()


# ---------------------------------------------------------------------------------------------
# dcmtk as the modality
# ---------------------------------------------------------------------------------------------
def storescu(files: list[Path], port: int, called_aet: str, calling_aet: str = MODALITY_AET,
             options: tuple[str, ...] = (), check: bool = True) -> subprocess.CompletedProcess:
    """Send files like a modality does (one association; `options` e.g. ("-xs",) to propose
    JPEG lossless so compressed files travel compressed)."""
    cmd = [_tool("storescu"), *options, "-aet", calling_aet, "-aec", called_aet, "127.0.0.1",
           str(port), *[str(f) for f in files]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, f"storescu failed ({proc.returncode}):\n{proc.stderr}"
    return proc


def echoscu(port: int, called_aet: str, calling_aet: str = MODALITY_AET
            ) -> subprocess.CompletedProcess:
    return subprocess.run([_tool("echoscu"), "-aet", calling_aet, "-aec", called_aet,
                           "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------------------------------------
# Test studies from a real radiograph
# ---------------------------------------------------------------------------------------------
@dataclass
class SyntheticPatient:
    name: str
    patient_id: str
    birth_date: str = "19611203"


def pydicom_data_file(name: str) -> Path:
    """A file of PyPI pydicom-data, read from the installed package (never downloaded)."""
    import data_store  # the pydicom-data distribution's package

    path = Path(data_store.__file__).parent / "data" / name
    assert path.is_file(), f"{name} missing from pydicom-data ({path})"
    return path


def real_radiograph() -> Path:
    """A real CR extremity radiograph: 1760x1760, 10 bits stored, MONOCHROME1."""
    return pydicom_data_file("RG3_UNCR.dcm")


def make_study(out_dir: Path, patient: SyntheticPatient, body_parts: list[str | None],
               source: Path | None = None, study_uid: str | None = None) -> list[Path]:
    """One study: a real CR radiograph per body part (None = no BodyPartExamined)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for index, part in enumerate(body_parts):
        ds = dcmread(source or real_radiograph())
        ds.PatientName, ds.PatientID = patient.name, patient.patient_id
        ds.PatientBirthDate = patient.birth_date
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = index + 1
        ds.AccessionNumber = f"ACC{patient.patient_id[-4:]}"
        if part is None:
            ds.pop("BodyPartExamined", None)
        else:
            ds.BodyPartExamined = part
        path = out_dir / f"img{index:02d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_dx_image(path: Path, patient: SyntheticPatient, pixels, body_part: str,
                  study_uid: str | None = None) -> Path:
    """A single-frame DX instance (MONOCHROME2, 8 bits) holding `pixels` (uint8 HxW), windowed
    so that the gateway's scoring image is exactly `pixels`."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = patient.name, patient.patient_id
    ds.PatientBirthDate, ds.PatientSex = patient.birth_date, "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid or generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.Modality = "20240101", "120000", "DX"
    ds.StudyID = "1"    # as modalities set it (dciodvfy warns for results of a study without)
    ds.BodyPartExamined = body_part
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    # LINEAR window C=128, W=256 maps 0..255 onto itself: the scoring image is `pixels` exactly
    ds.WindowCenter, ds.WindowWidth = "128", "256"
    ds.PixelData = pixels.astype("uint8").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_text_sr(out_dir: Path, patient: SyntheticPatient, study_uid: str) -> Path:
    """A non-image instance of the study (Basic Text SR), as a modality might send along."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID = patient.name, patient.patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator = "18748-4", "LN"
    concept.CodeMeaning = "Diagnostic imaging report"
    ds.ConceptNameCodeSequence = [concept]
    ds.ContentSequence = []
    path = out_dir / "note.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------------------
# The gateway as a real process
# ---------------------------------------------------------------------------------------------
@dataclass
class GatewayProcess:
    """`msk gateway` in a subprocess; kill() = SIGKILL (a crash), start() again = restart.

    It runs with `--ood flag` unless the test gives `--ood`: the test repositories' OOD
    reference is the demo's synthetic set, and the real CR radiographs these tests send are,
    rightly, out of distribution for it; the default policy (refuse) has its own tests
    (tests/test_gateway_e2e.py, tests/test_ood_commands.py)."""

    root: Path
    triton_url: str
    destination: str
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    starts: int = 0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.jsonl"

    def log_paths(self) -> list[Path]:
        return sorted(self.root.glob("gateway-*.log")) + sorted(self.root.glob("*.jsonl")) + \
            [p for p in [self.audit_path] if p.exists()]

    def command(self) -> list[str]:
        where = "--destination-dicomweb" if self.destination.startswith("http") else \
            "--destination"
        return [sys.executable, "-m", "msk.cli", "gateway", "--ae-title", GATEWAY_AET,
                "--host", "127.0.0.1", "--port", str(self.port), "--triton-url",
                self.triton_url, where, self.destination, "--data-dir",
                str(self.data_dir), "--stable-seconds", "2", "--backoff-base", "0.5",
                "--backoff-max", "2", "--metrics-port", str(self.metrics_port),
                "--allowed-calling-ae", MODALITY_AET, "--allowed-calling-ae", PACS_AET,
                "--ready-file", str(self.root / "ready"),
                *([] if "--ood" in self.extra else ["--ood", "flag"]), *self.extra]

    def start(self, timeout: float = 60.0) -> GatewayProcess:
        self.root.mkdir(parents=True, exist_ok=True)
        ready = self.root / "ready"
        ready.unlink(missing_ok=True)
        self.starts += 1
        log = self.root / f"gateway-{self.starts}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **self.env}
        with log.open("wb") as fh:
            self.process = subprocess.Popen(self.command(), stdout=fh, stderr=subprocess.STDOUT,
                                            cwd=ROOT, env=env, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited:\n{self.logs()}")
            if ready.exists():
                return self
            time.sleep(0.1)
        raise AssertionError(f"gateway not ready:\n{self.logs()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
        self.process = None

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:]
                         for p in sorted(self.root.glob("gateway-*.log")))

    def audit(self) -> list[dict]:
        if not self.audit_path.exists():
            return []
        return [json.loads(line) for line in self.audit_path.read_text().splitlines() if line]

    def wait_audit(self, event: str, timeout: float = 120.0, count: int = 1) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [e for e in self.audit() if e["event"] == event]
            if len(found) >= count:
                return found
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"gateway exited:\n{self.logs()}")
            time.sleep(0.3)
        raise AssertionError(f"no {event!r} audit entry after {timeout} s; audit "
                             f"{self.audit()}\n{self.logs()}")


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator:
    """Factory: start_gateway(triton_url, destination, *extra_flags, env=None) ->
    GatewayProcess; a destination starting with http is given as --destination-dicomweb."""
    started: list[GatewayProcess] = []

    def start(triton_url: str, destination: str, *extra: str,
              env: dict[str, str] | None = None) -> GatewayProcess:
        gw = GatewayProcess(tmp_path / f"gateway{len(started)}", triton_url, destination,
                            extra=list(extra), env=dict(env or {}))
        started.append(gw)
        return gw.start()

    yield start
    for gw in started:
        gw.stop()


PRIVATE_SCHEME_WARNING = "Warning - Unrecognized defined term <99MSK> for value 1 of attribute " \
    "<Coding Scheme Designator>"
"""The one dciodvfy warning we accept: dicom3tools does not know coding schemes declared in the
object's Coding Scheme Identification Sequence (PS3.3 8.1: private designators start "99"), and
four wrist structures have no SNOMED CT / DCM code."""


def dciodvfy(path: Path) -> list[str]:
    """dciodvfy's (Debian dicom3tools) "Error" and "Warning" lines for a file, less the
    declared-private-scheme warning."""
    proc = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True,
                          timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines()
            if line.startswith(("Error", "Warning")) and line.strip() != PRIVATE_SCHEME_WARNING]


def dciodvfy_errors(ds: Dataset, tmp_dir: Path) -> list[str]:
    """`dciodvfy` findings (errors and warnings) for a dataset, written to `tmp_dir` first."""
    path = tmp_dir / f"dciodvfy-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return dciodvfy(path)


def assert_no_phi(paths: list[Path], patients: list[SyntheticPatient]) -> None:
    """No test patient's name (any component) or ID appears in any of the files."""
    needles = []
    for p in patients:
        needles.append(p.patient_id)
        needles.extend(part for part in p.name.split("^") if len(part) >= 4)
        needles.append(p.birth_date)
    assert paths, "no log files to check"
    for path in paths:
        text = path.read_text(errors="replace")
        for needle in needles:
            assert needle not in text, f"PHI {needle!r} found in {path.name}"
