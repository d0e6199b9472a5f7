"""msk-triton: musculoskeletal radiograph AI served by NVIDIA Triton.

Research software, not a medical device: results must not be used for diagnosis.
"""

__version__ = "0.1.0"

RESEARCH_USE_NOTICE = (
    "Research use only - not a medical device; results must not be used for diagnosis."
)
