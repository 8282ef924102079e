"""ONNX export of trained classifiers: the network, its self-describing metadata, verification
against PyTorch, int8 quantization, and ONNX Runtime sessions.

This layer sits below :mod:`derm_exp.inference`: it takes the loaded model and its source
(duck-typed) and never imports the predictor, so the inference backends can export on the fly.
``onnx`` and ``onnxruntime`` are an optional extra (``pip install derm_exp[onnx]``);
:func:`derm_exp.exporting.runtime.require_onnx` explains how to install them.
"""
