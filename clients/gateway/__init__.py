"""DICOM gateway: PACS/modality -> C-STORE SCP or STOW-RS -> durable queue -> Triton -> TID 1500
SR (+ heatmap SEG) -> C-STORE SCU and/or STOW-RS.

Modules, one job each: `config` (settings from flags or a file), `phi` (PHI-free logging),
`audit` (JSON-lines audit log), `queue` (durable on-disk study queue with retries/backoff and a
dead-letter folder), `scp` (C-STORE/C-ECHO receiver, allowed senders), `stow_in` (STOW-RS
receiver), `tls` (DICOM TLS contexts), `scu` (C-STORE delivery), `stow_out` (STOW-RS delivery),
`scoring` (DICOM instances -> routed Triton requests -> StudyResult) and `service` (the loop
tying them). Research use only, not a medical device.
"""
