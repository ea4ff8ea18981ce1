"""The HTTP contract, engine-neutral: what every server answers and how.

- :mod:`.protocol`: requests and replies (multipart fields ``left``, ``right``, ``cam``;
  JSON; errors), with the caps that keep a bad request from hurting the server;
- :mod:`.service`: :class:`~.service.TwinService`, rows in, one reply each, over one model;
- :mod:`.options`: :class:`~.options.ServeOptions`, the archive's ``model-config.yaml``;
- :mod:`.gallery`: the gallery index an archive may carry, for ``identify``.
"""
