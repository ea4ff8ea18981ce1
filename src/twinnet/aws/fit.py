"""Will the model fit a serverless endpoint? Checked before anything is created.

A serverless endpoint has 1-6 GB of memory, a 10 GB image and no way to tell, before it
first fails to start, that the model was too big. ``deploy --mode serverless`` therefore:

- measures the memory one worker needs (:func:`twinnet.infer.footprint.measure`: a fresh
  process loads the model and answers once with Grad-CAM), adds what the model server's
  frontend and the gateway take (:data:`FRONTEND_MB`) and compares the sum, times the
  workers, with ``--memory-mb``;
- reads the image's size from ECR when the image lives there and the caller may read it,
  and adds ``model.tar.gz`` (the files it holds, before compression) to it.

A model that cannot fit is refused with the figures and the smallest memory that fits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinnet.aws.ledger import Reporter
from twinnet.aws.modes import SERVERLESS_IMAGE_BYTES, SERVERLESS_MEMORY_MB, Serverless
from twinnet.aws.session import client, describe_error
from twinnet.container.settings import settings_from_env
from twinnet.engines.torchserve.archive import archive_files
from twinnet.errors import TwinnetError
from twinnet.index import store
from twinnet.infer.footprint import Footprint, measure

__all__ = ["FRONTEND_MB", "Fit", "archive_bytes", "check_image", "check_serverless"]

#: TorchServe's Java frontend and the container's gateway, next to the workers. Measured in
#: a memory cgroup on the container (tests/integration/test_container_serverless.py checks that the
#: estimate covers the container's peak): Java about 240 MB resident, the gateway 30 MB.
FRONTEND_MB = 384

_ECR_RE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?/"
    r"(?P<repo>[a-z0-9][a-z0-9._/-]*?)(?::(?P<tag>[\w.-]+)|@(?P<digest>sha256:[0-9a-f]{64}))?$"
)


@dataclass(frozen=True)
class Fit:
    """What the serverless check found (sizes in MB unless said)."""

    memory_mb: int
    needed_mb: float
    worker_mb: float
    workers: int
    precision: str
    archive_bytes: int

    def describe(self) -> str:
        return (
            f"needs about {self.needed_mb:.0f} MB: {self.workers} worker(s) x "
            f"{self.worker_mb:.0f} MB measured ({self.precision}) + {FRONTEND_MB} MB for the "
            f"model server's frontend; the endpoint has {self.memory_mb} MB"
        )


def archive_bytes(model_dir: str | Path, options: Mapping[str, Any]) -> int:
    """The bytes ``model.tar.gz`` holds before compression: the model files and any index."""
    files = list(archive_files(Path(model_dir)))
    if options.get("index"):
        files += [Path(options["index"]) / name for name in store.FILES]
    return sum(path.stat().st_size for path in files)


def check_serverless(
    model_dir: str | Path,
    serverless: Serverless,
    options: Mapping[str, Any],
    env: Mapping[str, str],
    report: Reporter,
    measure_worker: Callable[[str | Path], Footprint] = measure,
) -> Fit:
    """Refuse a model whose measured memory exceeds the endpoint's; returns the figures."""
    workers = int(settings_from_env(env).overrides.get("workers") or 1)
    report(
        "step", f"measuring the memory of {model_dir} (a fresh process loads it and answers once)"
    )
    footprint = measure_worker(model_dir)
    fit = Fit(
        memory_mb=serverless.memory_mb,
        needed_mb=FRONTEND_MB + workers * footprint.peak_mb,
        worker_mb=footprint.peak_mb,
        workers=workers,
        precision=footprint.precision,
        archive_bytes=archive_bytes(model_dir, options),
    )
    if fit.needed_mb > fit.memory_mb:
        bigger = [m for m in SERVERLESS_MEMORY_MB if m >= fit.needed_mb]
        way = (
            f"deploy with --memory-mb {bigger[0]}"
            if bigger
            else f"a serverless endpoint has at most {SERVERLESS_MEMORY_MB[-1]} MB: use --mode "
            "realtime or --mode async"
        )
        raise TwinnetError(
            f"the model does not fit a serverless endpoint: it {fit.describe()}; {way}"
        )
    report("step", f"serverless fit: the model {fit.describe()}")
    return fit


def check_image(session: Any, image: str, archive: int, report: Reporter) -> int | None:
    """The image's size from ECR, refused when it and the archive pass the 10 GB limit.

    Returns the image's size, or ``None`` when ECR cannot say (not an ECR URI, no such
    image, or no ``ecr:DescribeImages`` permission): then only SageMaker can tell.
    """
    match = _ECR_RE.match(image)
    if not match:
        report("step", f"image size not checked: {image} is not an ECR image URI")
        return None
    image_id = (
        {"imageDigest": match["digest"]}
        if match["digest"]
        else {"imageTag": match["tag"] or "latest"}
    )
    try:
        ecr = client(session, "ecr", match["region"])
        found = ecr.describe_images(
            registryId=match["account"], repositoryName=match["repo"], imageIds=[image_id]
        )["imageDetails"]
    except Exception as exc:  # noqa: BLE001 - a check we cannot make is said, not fatal
        report("step", f"image size not checked ({describe_error('describe image', exc)})")
        return None
    size = int(found[0].get("imageSizeInBytes") or 0) if found else 0
    if size + archive > SERVERLESS_IMAGE_BYTES:
        raise TwinnetError(
            f"the image ({size / 1e9:.1f} GB in ECR) and model.tar.gz ({archive / 1e9:.1f} GB) "
            f"pass a serverless endpoint's {SERVERLESS_IMAGE_BYTES / 1e9:.0f} GB limit; use a "
            "smaller image or --mode realtime / --mode async"
        )
    report("step", f"image {size / 1e9:.2f} GB + model {archive / 1e6:.0f} MB, within 10 GB")
    return size
