"""The two ways dlq-tool fails: the operator asked for something it will not do, or the server
said no. Each carries its exit code, so ``main`` has one place that turns them into a line."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SERVER = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class ToolError(Exception):
    """dlq-tool could not do what was asked."""

    exit_code = EXIT_SERVER


class UsageError(ToolError):
    """The command line asks for something dlq-tool will not do (exit 2)."""

    exit_code = EXIT_USAGE


class ServerError(ToolError):
    """dlq-svc answered with a gRPC error status, or could not be reached (exit 1)."""

    exit_code = EXIT_SERVER

    def __init__(self, code: str, message: str) -> None:
        # One line, whatever the server or the transport put in the details.
        self.code = code
        self.message = " ".join(message.split())
        super().__init__(f"{code}: {self.message}")
