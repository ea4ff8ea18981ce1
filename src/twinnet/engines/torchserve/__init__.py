"""TorchServe: the ``.mar`` (:mod:`.archive`), the handler (:mod:`.handler`), the launcher (:mod:`.launch`)."""
