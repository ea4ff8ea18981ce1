"""The numeric precisions a model can run at, as names: no torch needed to check them.

The serving container's gateway and the settings it reads check a precision's name
without loading torch (half a gigabyte of memory, which a 1 GB serverless endpoint
cannot spare); :mod:`twinnet.infer.runtime` decides what each name means on a device.
"""

from __future__ import annotations

__all__ = ["FLOAT_PRECISIONS", "PRECISIONS"]

#: What inference accepts: ``auto`` picks int8, bf16 or fp32 for the device and the model.
PRECISIONS = ("auto", "int8", "bf16", "fp32")
#: What training and in-memory models accept: int8 needs an encoder made by ``twinnet quantize``.
FLOAT_PRECISIONS = ("auto", "bf16", "fp32")
