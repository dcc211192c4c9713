"""The contract between rtrecon's four processes: what every machine of a session installs.

Messages and their validation (:mod:`~rtrecon.contract.wire`), the ZeroMQ links that carry them
(:mod:`~rtrecon.contract.transport`), the session config (:mod:`~rtrecon.contract.config`), CURVE
keys bound to roles (:mod:`~rtrecon.contract.keys`), the session's on-disk names and durable
writes (:mod:`~rtrecon.contract.layout`), the one log format (:mod:`~rtrecon.contract.logs`) and
child processes that die with their parent (:mod:`~rtrecon.contract.children`).
It imports neither torch nor nilearn, so the scanner console (``rtrecon[bridge]``) and the
stimulus PC (``rtrecon[stimulus]``) install it without the model stack.
"""
