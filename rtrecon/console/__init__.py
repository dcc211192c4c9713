"""The operator console: the live session in a web page (``rtrecon console --config session.toml``).

Modules, one concern each:

- :mod:`~rtrecon.console.feeds`: the ZeroMQ links: the engine's status feed in (``[network]
  status``: per-volume status, link health, copies of the trial results), on a thread; the
  operator's controls out to the stimulus program (``[network] operator``).
- :mod:`~rtrecon.console.folder`: the session folder read back (motion, events, each trial's
  releases with their decodings, run ends), to backfill what the feed missed (a late start, an engine restart).
- :mod:`~rtrecon.console.state`: the session as the page shows it, aggregated from both, with
  the banners and the FD alarm.
- :mod:`~rtrecon.console.records`: the operator's controls, recorded in the session's records
  (``sourcedata/console/``).
- :mod:`~rtrecon.console.app`: the ASGI app (Starlette): the page, its WebSocket push, the
  controls, the access token for a non-local bind.
- :mod:`~rtrecon.console.command`: the ``rtrecon console`` command (uvicorn).
- ``static/``: the page (HTML, its script and style; no external resources).

No patient data reaches the page: volume indices, motion numbers, stimulus ids and images.
"""
