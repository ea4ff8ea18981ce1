"""Fixtures of the integration tests that talk to AWS: a moto server, a clean account."""

from __future__ import annotations

import pytest
import requests
from motoserver import BUCKET, REGION, aws_env, start_moto, stop


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory):
    proc, url = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    yield url
    stop(proc)


@pytest.fixture
def aws(moto_url, monkeypatch, tmp_path):
    """A clean moto account; returns a boto3 session for inspecting it."""
    import boto3

    requests.post(f"{moto_url}/moto-api/reset", timeout=10).raise_for_status()
    aws_env(monkeypatch, tmp_path, moto_url)
    session = boto3.Session(region_name=REGION)
    session.client("s3").create_bucket(Bucket=BUCKET)
    return session
