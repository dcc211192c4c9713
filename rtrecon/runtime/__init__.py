"""Optimised inference for MindEye2: ONNX export, ONNX Runtime, TensorRT, retrieval.

- :mod:`rtrecon.runtime.export`: ``export_encoder(model, path, subject)`` (fused), or
  ``export_adapter(model, path, subject)`` + ``export_backbone(model, path)`` (one shared
  backbone for all subjects), ``export_prior_step(model, path, guidance=False)``.
- :mod:`rtrecon.runtime.onnxruntime_backend`: ``OrtEncoder`` (``OrtEncoder.from_parts``),
  ``OrtPrior`` (``step``, ``sample``), ``quantize_dynamic`` (int8).
- :mod:`rtrecon.runtime.tensorrt_backend`: ``build_engine``, ``TrtRunner`` (TensorRT imported lazily).
- :mod:`rtrecon.runtime.retrieval`: ``Retriever``, ``pairmate_distinctiveness``.
- :mod:`rtrecon.runtime.device`: ``Placement`` (``[decoder] device`` and ``precision``: the
  official fp16 autocast), ``precast_for_autocast``, ``check_fits``, ``memory_held_mb``.
- :mod:`rtrecon.runtime.cuda_graphs`: ``GraphedPriorSampler``, the prior's DDIM chain as one CUDA graph.

Submodules are imported on use so that ``import rtrecon.runtime`` costs nothing.
"""
