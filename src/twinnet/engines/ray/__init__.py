"""Ray Serve: the deployment (:mod:`.engine`), its HTTP side (:mod:`.ingress`), the background
process (:mod:`.launch`) and start/status/stop (:mod:`.server`).
"""
