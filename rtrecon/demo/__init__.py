"""The closed loop, orchestrated: ``rtrecon demo`` and ``rtrecon replay nsd``.

Modules, one concern each:

- :mod:`~rtrecon.demo.cache`: the synthetic dataset and the trained decoder, cached by the
  parameters that made them (``$RTRECON_CACHE`` or ``~/.cache/rtrecon``).
- :mod:`~rtrecon.demo.training`: the demo's decoder (NSD betas → :class:`rtrecon.train.data.TrainingData`;
  shared-subject pretraining, then fine-tuning a new subject's adapter).
- :mod:`~rtrecon.demo.processes`: starting, watching and stopping the session's processes.
- :mod:`~rtrecon.demo.stimulus_pc`: the stimulus PC: trial lists and images for the real stimulus
  program (``rtrecon stimulus run`` with a virtual participant), its display (a private Xvfb
  when there is none), and its records read back.
- :mod:`~rtrecon.demo.live`: one live session through the real processes (bridge, engine with its
  decoding stage, stimulus program) over ZeroMQ on localhost, then its report.
- :mod:`~rtrecon.demo.collect`: a finished session's folder → :mod:`rtrecon.report`.
- :mod:`~rtrecon.demo.golden`: the golden replay (a reproducible session, optionally with its
  processes killed and restarted, compared with stored values; ``python -m rtrecon.demo.golden
  --regenerate FILE`` rewrites them).
- :mod:`~rtrecon.demo.imagery`: ``rtrecon demo --task imagery`` (a synthetic mental imagery session,
  decoded by a linear head trained on perception) on the same machinery.
- :mod:`~rtrecon.demo.command` (``rtrecon demo``) and :mod:`~rtrecon.demo.replay`
  (``rtrecon replay nsd``): the commands.

The other packages (``engine``, ``scanner_bridge``, ``stimulus``) are only ever started as processes
(``python -m rtrecon.cli engine|bridge|stimulus ...``), never imported.
"""
