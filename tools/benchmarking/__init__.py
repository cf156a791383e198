"""The measurements behind ``tools/benchmark.py``, one module per kind:

* :mod:`.measure`: wall-clock time and peak memory of a call, alternating timing of contenders;
* :mod:`.inputs`: the benchmark image and detectron2-style inputs and outputs;
* :mod:`.point_share`: time spent in the point head and the point selection;
* :mod:`.training`: training iteration time and the train loader's throughput;
* :mod:`.pipeline`: the training input pipeline per worker, ours and mmsegmentation's;
* :mod:`.references`: the reference implementations (detectron2, mmsegmentation) to compare with;
* :mod:`.exported`: files of ``tools/export_model.py`` (and eager bf16) timed side by side;
* :mod:`.report`: the results' first fields, the inference fields and the printed table.
"""
