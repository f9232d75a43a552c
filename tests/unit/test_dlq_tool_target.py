"""Where dlq-tool connects: --address, $RELAYQ_DLQ_GRPC, the local stack's stack.env, default;
and the metadata it sends."""

from __future__ import annotations

from pathlib import Path

import grpc

from dlq_svc.tool.client import call_metadata, server_error
from dlq_svc.tool.target import (
    DEFAULT_ADDRESS,
    Target,
    default_actor,
    find_stack_env,
    parse_env,
    resolve_target,
)

ACTOR = "alice@laptop"


def write_stack_env(root: Path, text: str) -> Path:
    path = root / ".relayq" / "stack.env"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_find_stack_env_walks_up(tmp_path: Path) -> None:
    path = write_stack_env(tmp_path, "RELAYQ_DLQ_GRPC=127.0.0.1:6000\n")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert find_stack_env(deep) == path
    assert find_stack_env(tmp_path) == path


def test_find_stack_env_takes_the_nearest(tmp_path: Path) -> None:
    write_stack_env(tmp_path, "")
    inner = write_stack_env(tmp_path / "sub", "")
    assert find_stack_env(tmp_path / "sub") == inner


def test_find_stack_env_none(tmp_path: Path) -> None:
    (tmp_path / ".relayq").mkdir()  # a state dir without stack.env (stack is down)
    assert find_stack_env(tmp_path) is None


def test_parse_env() -> None:
    text = (
        "# written by relayq-stack\n"
        "\n"
        "RELAYQ_DLQ_GRPC=127.0.0.1:6000\n"
        'export RELAYQ_DLQ_ADMIN_TOKEN="s3cr\\"et"\n'
        "QUOTED='a b' \n"
        "BARE=x # comment\n"
        "not an assignment\n"
    )
    assert parse_env(text) == {
        "RELAYQ_DLQ_GRPC": "127.0.0.1:6000",
        "RELAYQ_DLQ_ADMIN_TOKEN": 's3cr"et',
        "QUOTED": "a b",
        "BARE": "x",
    }


def test_default_without_anything(tmp_path: Path) -> None:
    target = resolve_target(None, {}, tmp_path, ACTOR)
    assert target == Target(DEFAULT_ADDRESS, None, ACTOR, "default")


def test_stack_env_gives_address_and_token(tmp_path: Path) -> None:
    path = write_stack_env(
        tmp_path, "RELAYQ_DLQ_GRPC=127.0.0.1:6000\nRELAYQ_DLQ_ADMIN_TOKEN=local-token\n"
    )
    target = resolve_target(None, {}, tmp_path, ACTOR)
    assert target.address == "127.0.0.1:6000" and target.token == "local-token"
    assert target.source == str(path)


def test_environment_beats_stack_env(tmp_path: Path) -> None:
    write_stack_env(
        tmp_path, "RELAYQ_DLQ_GRPC=127.0.0.1:6000\nRELAYQ_DLQ_ADMIN_TOKEN=local-token\n"
    )
    env = {"RELAYQ_DLQ_GRPC": "dlq.prod:443", "RELAYQ_DLQ_ADMIN_TOKEN": "prod-token"}
    target = resolve_target(None, env, tmp_path, ACTOR)
    assert (target.address, target.token, target.source) == (
        "dlq.prod:443",
        "prod-token",
        "$RELAYQ_DLQ_GRPC",
    )


def test_flag_beats_environment(tmp_path: Path) -> None:
    target = resolve_target("h:1", {"RELAYQ_DLQ_GRPC": "h:2"}, tmp_path, ACTOR)
    assert (target.address, target.source) == ("h:1", "--address")


def test_local_token_is_never_sent_elsewhere(tmp_path: Path) -> None:
    write_stack_env(
        tmp_path, "RELAYQ_DLQ_GRPC=127.0.0.1:6000\nRELAYQ_DLQ_ADMIN_TOKEN=local-token\n"
    )
    elsewhere = resolve_target("dlq.prod:443", {}, tmp_path, ACTOR)
    assert elsewhere.token is None
    same = resolve_target("127.0.0.1:6000", {}, tmp_path, ACTOR)
    assert same.token == "local-token"
    env_only = resolve_target(None, {"RELAYQ_DLQ_GRPC": "127.0.0.1:6000"}, tmp_path, ACTOR)
    assert env_only.token == "local-token"


def test_token_from_environment_with_default_address(tmp_path: Path) -> None:
    target = resolve_target(None, {"RELAYQ_DLQ_ADMIN_TOKEN": "t"}, tmp_path, ACTOR)
    assert target.address == DEFAULT_ADDRESS and target.token == "t"


def test_token_never_in_repr() -> None:
    target = Target("h:1", "very-secret", ACTOR, "--address")
    assert "very-secret" not in repr(target) and "very-secret" not in str(target)


def test_metadata() -> None:
    with_token = call_metadata(Target("h:1", "t0k", ACTOR, "x"))
    assert with_token == (("x-relayq-actor", ACTOR), ("authorization", "Bearer t0k"))
    assert call_metadata(Target("h:1", None, ACTOR, "x")) == (("x-relayq-actor", ACTOR),)


def test_default_actor_is_user_at_host() -> None:
    user, _, host = default_actor().partition("@")
    assert user and host and default_actor().isascii()


class FailedCall(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def test_server_errors_are_one_line() -> None:
    target = Target("h:1", "secret", ACTOR, "$RELAYQ_DLQ_GRPC")
    err = server_error(FailedCall(grpc.StatusCode.NOT_FOUND, "no dead letter\n  x"), target, 30)
    assert str(err) == "NOT_FOUND: no dead letter x" and err.exit_code == 1
    down = server_error(FailedCall(grpc.StatusCode.UNAVAILABLE, "refused"), target, 30)
    assert str(down) == "UNAVAILABLE: cannot reach dlq-svc at h:1 ($RELAYQ_DLQ_GRPC): refused"
    slow = server_error(FailedCall(grpc.StatusCode.DEADLINE_EXCEEDED, "x"), target, 2.5)
    assert str(slow) == "DEADLINE_EXCEEDED: no answer from dlq-svc at h:1 within 2.5s"
    bare = server_error(FailedCall(grpc.StatusCode.PERMISSION_DENIED, ""), target, 30)
    assert str(bare) == "PERMISSION_DENIED: permission denied"
    assert "secret" not in str(down)


def test_tls_files_from_the_environment_or_the_stacks_env_for_its_address(tmp_path: Path) -> None:
    write_stack_env(
        tmp_path,
        "RELAYQ_DLQ_GRPC=localhost:6000\nRELAYQ_TLS_CA_FILE=/stack/ca.pem\n"
        "RELAYQ_TLS_CERT_FILE=/stack/client.pem\nRELAYQ_TLS_KEY_FILE=/stack/client.key\n",
    )
    local = resolve_target(None, {}, tmp_path, ACTOR)
    assert (local.tls_ca_file, local.tls_cert_file, local.tls_key_file) == (
        Path("/stack/ca.pem"),
        Path("/stack/client.pem"),
        Path("/stack/client.key"),
    )
    # Another server gets neither the stack's CA nor its client certificate...
    elsewhere = resolve_target("dlq.prod:443", {}, tmp_path, ACTOR)
    assert (elsewhere.tls_ca_file, elsewhere.tls_cert_file) == (None, None)
    # ...but the environment's, as every relayq client does.
    env = {"RELAYQ_TLS_CA_FILE": "/etc/relayq/ca.pem", "RELAYQ_TLS_CERT_FILE": ""}
    prod = resolve_target("dlq.prod:443", env, tmp_path, ACTOR)
    assert (prod.tls_ca_file, prod.tls_cert_file) == (Path("/etc/relayq/ca.pem"), None)
