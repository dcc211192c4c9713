"""Data: the Natural Scenes Dataset reader (``nsd``) and synthetic subjects in NSD's layout
(``synthetic``, built from ``images``, ``brains`` and ``timeseries``)."""
