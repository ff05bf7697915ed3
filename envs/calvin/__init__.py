"""The CALVIN evaluation protocol: chains.py (the 1000 evaluation chains of 5 subtasks, as the
official generator draws them), protocol.py (running chains, average length, success@k),
scene.py (a chain's initial scene as the simulator state the official evaluation sets),
runner.py (the chains on CALVIN's own simulator and task oracle, when calvin_env is installed)."""
