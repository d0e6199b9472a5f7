"""DICOM gateway: PACS/modality -> C-STORE SCP -> durable queue -> Triton -> SR -> C-STORE SCU.

Modules, one job each: `config` (settings from flags or a file), `phi` (PHI-free logging),
`audit` (JSON-lines audit log), `queue` (durable on-disk study queue with retries/backoff and a
dead-letter folder), `scp` (C-STORE/C-ECHO receiver), `scu` (result delivery), `scoring`
(DICOM instances -> routed Triton requests -> StudyResult) and `service` (the loop tying them).
Research use only, not a medical device.
"""
