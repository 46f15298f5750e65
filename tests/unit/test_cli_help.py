"""The command line explains itself: every command has a description and an example, the top
level names the settings and the exit codes, and options show their defaults."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator

import aiohttp
from aiohttp.client_reqrep import ConnectionKey

from syncsvc.cli import build_parser
from syncsvc.http import describe_network_error


def _leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable command (a parser without sub-commands) with its words."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield path, parser
        return
    for name, child in actions[0].choices.items():
        yield from _leaves(child, (*path, name))


def test_every_command_has_a_description_and_an_example() -> None:
    commands = dict(_leaves(build_parser()))
    assert len(commands) >= 20
    assert ("keys", "init") in commands
    assert ("config", "check") in commands
    for words, parser in commands.items():
        assert parser.description, words
        assert parser.epilog, words
        assert f"syncsvc {' '.join(words)}" in parser.epilog, words
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (words, action.dest)


def test_the_top_level_help_names_settings_and_exit_codes() -> None:
    text = build_parser().format_help()
    for name in (
        "SYNCSVC_DATABASE_URL",
        "SYNCSVC_PUBLIC_URL",
        "SYNCSVC_VAULT_KEY_FILE",
        "SYNCSVC_LINK_SIGNING_KEY",
        "SYNCSVC_API_KEYS",
        "SYNCSVC_ADMIN_TOKEN",
    ):
        assert name in text
    assert "exit codes:" in text
    assert "2  wrong usage or configuration" in text
    assert "assembles the parser" not in text


def test_options_show_their_defaults() -> None:
    commands = dict(_leaves(build_parser()))
    serve = commands[("serve",)].format_help()
    assert "(default: 8000)" in serve
    assert "(default: 127.0.0.1)" in serve
    assert "--wait-for-db SECONDS" in serve


def _key(host: str, port: int) -> ConnectionKey:
    return ConnectionKey(host, port, False, True, None, None, None)


def test_network_errors_are_words() -> None:
    dns = aiohttp.ClientConnectorDNSError(_key("fhir.invalid", 443), socket.gaierror(-2, "x"))
    assert describe_network_error(dns) == "could not resolve fhir.invalid"
    refused = aiohttp.ClientConnectorError(
        _key("127.0.0.1", 5999), ConnectionRefusedError(111, "Connection refused")
    )
    assert describe_network_error(refused) == "connection refused by 127.0.0.1:5999"
    assert describe_network_error(aiohttp.ServerTimeoutError()) == (
        "timed out waiting for an answer"
    )
