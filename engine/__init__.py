"""rtrecon's real-time engine: one module per concern.

* :mod:`engine.motion`  rigid realignment (inverse-compositional Gauss-Newton), Power FD
* :mod:`engine.design`  a run's design with nilearn's HRF, regressor and drift functions
* :mod:`engine.glm`     incremental OLS with sufficient statistics; LSA and LSS trial betas
* :mod:`engine.trials`  when each release of a trial is due; Welford z-scoring, repeat averaging
* :mod:`engine.store`   the BIDS session store, crash-safe appends
* :mod:`engine.timing`  per-stage timing of volumes and trials
* :mod:`engine.server`  the engine process (receive → persist → realign → GLM → publish)
* :mod:`engine.replay`  a recorded run through the engine, offline (``rtrecon engine replay``)
* :mod:`engine.commands` ``rtrecon engine --config session.toml``
"""
