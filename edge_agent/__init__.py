"""citybrain edge agent: the device side of the platform.

Installable with ``pip install citybrain[edge]`` alone; imports no torch,
fastapi, ray, sqlalchemy, redis, nor any other citybrain package.
``edge_agent.protocol`` is the wire contract every side imports.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
