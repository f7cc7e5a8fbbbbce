"""Serving the exports: TF Serving's REST (`http`, `rest`) and gRPC (`grpc_service`) APIs over
batched model runners (`runner`), with one set of errors and limits (`errors`).

Needs the [serve] extra; `python -m cyclegan.serve` is the command.
"""
