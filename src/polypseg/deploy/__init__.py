"""Deployment: the inference runtimes, export to ONNX / OpenVINO (+ int8), and the cache of exports.

* :mod:`~polypseg.deploy.backends`: ``backend(images) -> logits`` for PyTorch, ONNX Runtime, OpenVINO;
  :func:`~polypseg.deploy.backends.choose_backend` (``--backend auto``).
* :mod:`~polypseg.deploy.export`: :func:`~polypseg.deploy.export.export_model` (``polypseg export``).
* :mod:`~polypseg.deploy.runtime`: :func:`~polypseg.deploy.runtime.load_backend`, exporting once and caching.

This package runs a network but never takes a class map: it imports nothing from
:mod:`polypseg.inference`, which stands on it.
"""
