"""Entry points on top of every layer: the ``mlops`` command, the demo, the local stack, a traffic generator."""
