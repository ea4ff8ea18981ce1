"""``teardown``: delete an endpoint and everything deploy made for it, and nothing else.

It deletes only configs and models tagged by twinnet for that endpoint, and only the
artifacts in that endpoint's own key layout; anything else it finds (a config switched to
by hand, another team's model, another endpoint's artifacts nested under the prefix) is
named and left. Deletions run one by one and every failure is reported at the end, so one
refusal does not leave the rest standing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from twinnet.aws.endpoints import missing_endpoint
from twinnet.aws.ledger import Reporter, quiet
from twinnet.aws.resources import (
    TAG_ARTIFACTS_PREFIX,
    Owned,
    check_managed,
    describe_endpoint,
    find_owned,
    is_ours,
    model_data_url,
    object_exists,
    tag_dict,
    validate_endpoint_name,
    variant_models,
)
from twinnet.aws.scaling import read_scaling, removal_steps
from twinnet.aws.session import aws, client, describe_error, error_code, not_found, open_session
from twinnet.errors import TwinnetError

__all__ = ["teardown"]

#: An artifact key directly under an endpoint's artifact prefix: ``<digest[:16]>/model.tar.gz``.
#: Anything deeper (``<prefix>/<endpoint>/<other endpoint>/...``) belongs to another endpoint.
_ARTIFACT_KEY_RE = re.compile(r"^[0-9a-f]{16}/model\.tar\.gz$")
#: The most keys one DeleteObjects call takes.
_DELETE_BATCH = 1000


def teardown(
    endpoint: str,
    delete_artifacts: bool = False,
    session: Any = None,
    report: Reporter = quiet,
) -> list[str]:
    """Delete the endpoint, its scaling (and an async endpoint's wake-up alarm), every
    endpoint config and model deploy made for it.

    Also deletes what a crashed deploy left (found by tag), and with ``delete_artifacts``
    the S3 objects of the endpoint's own artifact layout. Only configs and models tagged by
    twinnet for this endpoint are deleted, with their artifacts: anything else the endpoint
    uses (a config switched to by hand, another team's model) is named through
    ``report("kept", ...)`` and left, with its artifact. Returns what was deleted.

    Raises:
        TwinnetError: the endpoint does not exist (and nothing of it is left), it was not
            created by twinnet, or some deletions failed (the message says which).
    """
    validate_endpoint_name(endpoint)
    session = session or open_session()
    sm = client(session, "sagemaker")
    desc, plan = _survey(sm, endpoint, session.region_name)
    for what in plan.kept:
        report("kept", what)
    deleter = _Deleter(report)
    _delete_scaling(
        client(session, "application-autoscaling"), client(session, "cloudwatch"), endpoint, deleter
    )
    if desc is not None:
        deleter.attempt(f"endpoint {endpoint}", lambda: sm.delete_endpoint(EndpointName=endpoint))
    for config in plan.configs:
        deleter.attempt(
            f"endpoint config {config}",
            lambda c=config: sm.delete_endpoint_config(EndpointConfigName=c),
        )
    for model in plan.models:
        deleter.attempt(f"model {model}", lambda m=model: sm.delete_model(ModelName=m))
    if delete_artifacts:
        s3 = client(session, "s3")
        _delete_objects(s3, sorted(_artifact_keys(s3, plan, deleter)), deleter)
    if deleter.failed:
        done = (
            f"deleted {len(deleter.deleted)} resource(s)" if deleter.deleted else "deleted nothing"
        )
        raise TwinnetError(
            f"teardown of {endpoint} incomplete: {done}; NOT deleted: {'; '.join(deleter.failed)}"
        )
    return deleter.deleted


def _delete_scaling(aas: Any, cw: Any, endpoint: str, deleter: _Deleter) -> None:
    """The same removal steps deploy uses (alarm, policies, target), each attempted even
    when an earlier one failed."""
    with aws(f"read scaling of {endpoint}"):
        scaling = read_scaling(aas, endpoint, cw)
    if scaling is not None:
        for what, call in removal_steps(aas, endpoint, scaling, cw):
            deleter.attempt(what, call)


@dataclass
class _Plan:
    """What teardown deletes, and what it names and leaves (not twinnet's for this endpoint)."""

    configs: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    prefixes: set[str] = field(default_factory=set)
    artifacts: set[str] = field(default_factory=set)
    keep_urls: set[str] = field(default_factory=set)
    kept: list[str] = field(default_factory=list)


def _survey(sm: Any, endpoint: str, region: str) -> tuple[dict[str, Any] | None, _Plan]:
    """The endpoint (if it exists, and only if twinnet made it) and the plan of what to delete."""
    with aws(f"describe endpoint {endpoint}"):
        desc = describe_endpoint(sm, endpoint)
        if desc is not None:
            check_managed(sm, desc)
        owned = find_owned(sm, endpoint)
    if desc is None and not owned.configs and not owned.models:
        raise TwinnetError(missing_endpoint(endpoint, region))
    with aws(f"describe models of {endpoint}"):
        return desc, _plan_teardown(sm, endpoint, desc, owned)


def _resource_tags(sm: Any, kind: str, name: str) -> dict[str, str] | None:
    """Tags of an endpoint config or model; ``None`` if it does not exist."""
    from botocore.exceptions import ClientError

    try:
        if kind == "model":
            arn = sm.describe_model(ModelName=name)["ModelArn"]
        else:
            arn = sm.describe_endpoint_config(EndpointConfigName=name)["EndpointConfigArn"]
    except ClientError as exc:
        if not_found(exc):
            return None
        raise
    return tag_dict(sm, arn)


def _plan_teardown(sm: Any, endpoint: str, desc: dict[str, Any] | None, owned: Owned) -> _Plan:
    """Split the endpoint's configs and models into ours (to delete) and the rest (to leave).

    Ours means tagged by twinnet for this endpoint. The endpoint's current config may have
    been switched to someone else's by hand; that config, and every model it uses, stay.
    """
    plan = _Plan(configs=list(owned.configs))
    foreign: list[str] = []
    current = desc["EndpointConfigName"] if desc is not None else None
    if current is not None and current not in owned.configs:
        tags = _resource_tags(sm, "config", current)
        if tags is not None and is_ours(tags, endpoint):
            plan.configs.append(current)
        elif tags is not None:
            foreign.append(current)
            plan.kept.append(f"endpoint config {current} (not created by twinnet for {endpoint})")
    used_by_kept = {m: c for c in foreign for m in variant_models(sm, c)}
    candidates = list(owned.models)
    for config in plan.configs:
        candidates += [m for m in variant_models(sm, config) if m not in candidates]
    candidates += [m for m in used_by_kept if m not in candidates]
    for model in candidates:
        _plan_model(sm, endpoint, model, owned.models.get(model), used_by_kept.get(model), plan)
    return plan


def _plan_model(
    sm: Any,
    endpoint: str,
    model: str,
    tags: dict[str, str] | None,
    kept_config: str | None,
    plan: _Plan,
) -> None:
    url = model_data_url(sm, model)
    tags = tags if tags is not None else _resource_tags(sm, "model", model)
    if tags is None:  # already gone
        return
    if kept_config is not None:
        why = f"used by endpoint config {kept_config}, which stays"
    elif not is_ours(tags, endpoint):
        why = f"not created by twinnet for {endpoint}"
    else:
        plan.models.append(model)
        if tags.get(TAG_ARTIFACTS_PREFIX):
            plan.prefixes.add(tags[TAG_ARTIFACTS_PREFIX])
        if url:
            plan.artifacts.add(url)
        return
    plan.kept.append(f"model {model} ({why})")
    if url:
        plan.keep_urls.add(url)


class _Deleter:
    """Runs deletions one by one, and reports every failure at the end instead of stopping."""

    def __init__(self, report: Reporter) -> None:
        self.report = report
        self.deleted: list[str] = []
        self.failed: list[str] = []

    def attempt(self, what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - keep going, report everything at the end
            if not not_found(exc):
                self.failed.append(f"{what} ({describe_error('delete', exc)})")
        else:
            self.done(what)

    def done(self, what: str) -> None:
        self.deleted.append(what)
        self.report("step", f"deleted {what}")


def _parse_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://") :] if uri.startswith("s3://") else uri
    bucket, _, key = rest.partition("/")
    return bucket, key


def _artifact_keys(s3: Any, plan: _Plan, deleter: _Deleter) -> set[tuple[str, str]]:
    """This endpoint's artifacts in S3: its own layout under its prefix, and its models' URLs."""
    keys: set[tuple[str, str]] = set()
    for uri in plan.prefixes:
        bucket, key_prefix = _parse_s3(uri)
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(
                Bucket=bucket, Prefix=key_prefix
            ):
                for obj in page.get("Contents", []):
                    if _ARTIFACT_KEY_RE.match(obj["Key"][len(key_prefix) :]):
                        keys.add((bucket, obj["Key"]))
        except Exception as exc:  # noqa: BLE001
            if not not_found(exc) and error_code(exc) != "NoSuchBucket":
                deleter.failed.append(f"listing {uri} ({describe_error('list', exc)})")
    # S3 deletes succeed for absent keys too: only what exists is deleted and reported.
    for bucket, key in {_parse_s3(url) for url in plan.artifacts} - keys:
        try:
            if object_exists(s3, bucket, key):
                keys.add((bucket, key))
        except Exception as exc:  # noqa: BLE001
            if error_code(exc) != "NoSuchBucket":
                deleter.failed.append(
                    f"S3 object s3://{bucket}/{key} ({describe_error('check', exc)})"
                )
    return keys - {_parse_s3(url) for url in plan.keep_urls}


def _delete_objects(s3: Any, keys: Iterable[tuple[str, str]], deleter: _Deleter) -> None:
    """DeleteObjects per bucket, 1,000 keys a call; each key is reported deleted or failed."""
    by_bucket: dict[str, list[str]] = {}
    for bucket, key in keys:
        by_bucket.setdefault(bucket, []).append(key)
    for bucket, names in by_bucket.items():
        for start in range(0, len(names), _DELETE_BATCH):
            batch = names[start : start + _DELETE_BATCH]
            try:
                answer = s3.delete_objects(
                    Bucket=bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            except Exception as exc:  # noqa: BLE001 - the whole batch failed: name each key
                why = describe_error("delete", exc)
                deleter.failed += [f"S3 object s3://{bucket}/{k} ({why})" for k in batch]
                continue
            errors = {e["Key"]: e for e in answer.get("Errors", [])}
            for key in batch:
                if key in errors:
                    err = errors[key]
                    why = f"delete failed: {err.get('Code', 'error')}: {err.get('Message', '')}"
                    deleter.failed.append(f"S3 object s3://{bucket}/{key} ({why})")
                else:
                    deleter.done(f"S3 object s3://{bucket}/{key}")
