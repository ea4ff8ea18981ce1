"""What runs inside the SageMaker serving image.

- :mod:`.main`: the entrypoint (``twinnet container serve``): find the model, start the engine;
- :mod:`.settings`: its environment variables, checked at start;
- :mod:`.gateway` and :mod:`.http`: the public port (``/ping``, ``/invocations``) and its
  loopback pool to the engine;
- :mod:`.ray`: the same container with Ray Serve behind the gateway;
- :mod:`.package`: ``model.tar.gz`` (the ``.mar`` at its root).
"""
