"""The msk-triton web app (`msk web`): a FastAPI page over the same gRPC clients as everything else.

`create_app(triton_url)` lives in `clients.web.app`; this package imports nothing heavy so that
`msk --help` stays fast. No model runs in the web process and torch is never imported.
"""
