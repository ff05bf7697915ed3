"""Highway driving in highway-env's simulator (IDM/MOBIL traffic) for trajectory planners.

A plan is 8 ego-frame waypoints (x ahead, y to the right like highway-env's y axis, metres)
0.5 s apart over 4 s, flattened to 16 numbers: the policy's action, with horizon 1.
``DrivingEnv`` follows each plan for 0.5 s with a pure-pursuit controller at the simulator's
10 Hz; ``scene.py`` turns the road into the observation vector; ``expert.py`` records
demonstrations from highway-env's own IDM/MOBIL driver; ``metrics.py`` scores episodes and
``evaluate.py`` runs planners and the expert on held-out seeds. Needs the ``driving`` extra.
"""

from .controller import PlanFollower
from .env import DrivingEnv
from .scene import SCENE_DIM, scene_vector

__all__ = ["SCENE_DIM", "DrivingEnv", "PlanFollower", "scene_vector"]
