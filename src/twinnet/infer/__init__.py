"""Running a trained model: :class:`~.twin.Twin`, Grad-CAM, the runtime and the cache.

- :mod:`.twin`: compare, embed, search and explain, batched and cached;
- :mod:`.explain`: Grad-CAM for both images of a pair, and overlays;
- :mod:`.runtime`: device, precision, channels-last and threads;
- :mod:`.cache`: bounded LRU caches of encoder features.
"""
