"""Subcommands of `msk`: one module per capability, each with `register(subparsers)`.

Modules must import heavy dependencies (torch, ultralytics, ...) inside their handler, not at
module level, so `msk --help` stays fast and client-only commands never import torch.
"""
