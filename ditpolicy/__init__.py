"""ditpolicy: diffusion-transformer policies for robots and cars.

Sub-packages: ``ditpolicy.datasets`` (zarr demonstrations), ``ditpolicy.envs`` (MuJoCo
environments, experts, rollouts), ``ditpolicy.policies`` (DiT denoisers, training),
``ditpolicy.deploy`` (real-time runtime, ROS 2).
"""

__version__ = "0.1.0"
