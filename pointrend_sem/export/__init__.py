"""Deploying a model: the whole inference at a fixed input size as one exported graph.

* :mod:`.module`: :class:`~.module.ExportableSegmentor`, the graph's ``nn.Module`` (built from a
  :class:`~pointrend_sem.modeling.PointRendSemanticSegmentor`, needs detectron2's modeling);
  :func:`~.module.export_model` writes ``.onnx``, ``.pt2`` (ExportedProgram) or AOTInductor
  ``.pt2`` packages and the JSON sidecar the runner reads.
* :mod:`.runner`: :class:`~.runner.ExportedPredictor`, which runs an exported file with the
  predictor's pre- and post-processing and needs neither detectron2 nor this package, nor
  PyTorch for ``.onnx`` files (the file runs on its own: copy it next to the exported model).
* :mod:`.quantize`: int8 static quantization of an exported ``.onnx`` (onnxruntime), calibrated
  on images through the runner's pre-processing (``tools/export_model.py --quantize int8``).
* :mod:`.evaluation`: an exported file scored by the project's evaluators
  (``train_net.py --eval-only --exported``).

Nothing is imported here, so that importing :mod:`.runner` stays light.
"""
