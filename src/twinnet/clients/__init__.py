"""Talking to a model wherever it runs: in process, a server URL, or a SageMaker endpoint.

- :mod:`.remote`: :class:`~.remote.HttpClient`, and the wire handling both clients share;
- :mod:`.sagemaker`: :class:`~.sagemaker.SageMakerClient`;
- :mod:`.backends`: one :class:`~.backends.Backend` for the CLI and the app, whichever it is.
"""
