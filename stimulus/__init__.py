"""The stimulus program: PsychoPy perception, mental-imagery and feedback tasks locked to the scanner.

Its settings are the session config's ``[stimulus]`` table (:class:`rtrecon.contract.config.StimulusSection`).
One module per concern:

- :mod:`stimulus.trials`: trial lists (TSV), checked before the run with file and line in errors;
- :mod:`stimulus.soundfiles`: which cue files are sounds, decoded and checked before the run;
- :mod:`stimulus.timeline`: a run's plan, segments in seconds since the first trigger;
- :mod:`stimulus.trigger`: key input (keyboard, serial, scheduled) and the scanner trigger;
- :mod:`stimulus.screen`: the window and what each task phase draws;
- :mod:`stimulus.feedback`: reconstruction / retrieved images / score, drawn as results arrive;
- :mod:`stimulus.link`: events to and results from the engine, off the frame loop;
- :mod:`stimulus.records`: BIDS events, PsychoPy data file, results, triggers, frame timing, and the
  journal a killed run resumes from;
- :mod:`stimulus.participant`: a virtual participant and scanner;
- :mod:`stimulus.app`: the run itself (:func:`~stimulus.app.prepare_run`,
  :class:`~stimulus.app.StimulusProgram`: the frame loop), with :mod:`stimulus.pacing` (speed,
  trigger wait, frame period), :mod:`stimulus.eventlog` (segments shown, responses),
  :mod:`stimulus.results` (results from arrival to the screen), :mod:`stimulus.operator_view`
  (the operator's window) and :mod:`stimulus.resume` (a killed run read back);
- :mod:`stimulus.commands`: ``rtrecon stimulus check|run``.

PsychoPy is imported only where a window is needed, so that trial lists can be checked on a
machine without a display.
"""
