"""`.env` read as python-dotenv reads it, one error line for a line it cannot read, and the wandb login that
`make check` finds in `.netrc` (read with the standard library's netrc, as wandb reads it)."""

from __future__ import annotations

import io

import pytest
from conftest import error_line
from dotenv import dotenv_values

from musubi_workspace.environment import read_dotenv

KEY = "0123456789abcdef" * 2 + "01234567"  # the shape of a wandb key: 40 hex digits
TOKEN = "hf_" + "Ab1" * 12

# (what .env holds, what the programs get): the second column is python-dotenv's own result, checked below.
CASES = [
    ("WANDB_API_KEY=abc # my key", {"WANDB_API_KEY": "abc"}),
    ("WANDB_API_KEY=abc#not-a-comment", {"WANDB_API_KEY": "abc#not-a-comment"}),
    ("WANDB_API_KEY=abc\t# a tab before it", {"WANDB_API_KEY": "abc"}),
    ('WANDB_API_KEY="abc # inside the quotes"  # outside', {"WANDB_API_KEY": "abc # inside the quotes"}),
    ("WANDB_API_KEY='abc # inside'", {"WANDB_API_KEY": "abc # inside"}),
    ("export HF_TOKEN=hf_x", {"HF_TOKEN": "hf_x"}),
    ('export HF_TOKEN="hf_x"  # write token', {"HF_TOKEN": "hf_x"}),
    ("HF_TOKEN = hf_x  ", {"HF_TOKEN": "hf_x"}),
    ('A="line one\\nline two"', {"A": "line one\nline two"}),
    ("A='no \\n escape in single quotes'", {"A": "no \\n escape in single quotes"}),
    ('A="two\nlines"\nB=2', {"A": "two\nlines", "B": "2"}),
    ('A="it\'s"', {"A": "it's"}),
    ("A= # only a comment", {"A": ""}),
    ("A=", {"A": ""}),
    ("A", {}),  # a key without `=` has no value: left out
    ("# a comment\n\n   \nA=1", {"A": "1"}),
    ("A=1\r\nB=2\r\n", {"A": "1", "B": "2"}),
    ("\ufeffA=1", {"A": "1"}),  # a byte-order mark from a Windows editor
    ("A=first\nA=second", {"A": "second"}),
    (
        "BASE=/volume\nCACHE=${BASE}/cache\nQUOTED='${BASE}'",
        {"BASE": "/volume", "CACHE": "/volume/cache", "QUOTED": "/volume"},
    ),
    ("A=${WS_TEST_UNSET_VARIABLE:-fallback}", {"A": "fallback"}),
]


@pytest.mark.parametrize("text, expected", CASES, ids=[c[0][:40] for c in CASES])
def test_dotenv_values_are_python_dotenvs(tmp_path, text, expected):
    path = tmp_path / ".env"
    path.write_text(text, encoding="utf-8", newline="")
    dotenv = {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}
    assert dotenv == expected  # the table above is what python-dotenv gives
    assert read_dotenv(path) == expected


@pytest.mark.parametrize(
    "text, line, message",
    [
        ('A=1\nHF_TOKEN="hf_x\nB=2', 2, "the value's opening \" is never closed; close the quote (or remove it)"),
        ("A=1\n\nHF_TOKEN='hf_x", 3, "the value's opening ' is never closed; close the quote (or remove it)"),
        (
            'A="x" y',
            1,
            "text after the closing quote; start a comment with ` #` or put all of the value inside the quotes",
        ),
        (
            "A=1\nHF_TOKEN hf_x",
            2,
            "expected KEY=VALUE (`export KEY=VALUE`, a `# comment`, or a blank line); fix or remove the line",
        ),
        (
            'A="two\nlines"\n=x',
            3,
            "expected KEY=VALUE (`export KEY=VALUE`, a `# comment`, or a blank line); fix or remove the line",
        ),
    ],
)
def test_a_line_python_dotenv_cannot_read_is_one_error_with_its_line(ws, text, line, message):
    ws.write(".env", text)
    r = ws.tool("check")
    assert r.returncode == 2
    assert error_line(r) == f"error: .env:{line}: {message}"
    assert "hf_x" not in r.stdout + r.stderr  # the line is not repeated: it may hold a secret


def test_a_dotenv_that_is_not_utf8_is_one_error(ws):
    (ws.root / ".env").write_bytes(b"A=1\nB=caf\xe9\n")
    r = ws.tool("check")
    assert r.returncode == 2
    assert error_line(r) == "error: .env:2: not UTF-8 text; save the file as UTF-8"


def test_inline_comments_do_not_reach_the_programs(cached):
    cached.write(".env", f'WANDB_API_KEY={KEY} # my key\nexport HF_TOKEN="{TOKEN}"  # a write token\n')
    r = cached.make("train", "AUTO_STOP=0", env={"STANDIN_STEPS": "1", "WANDB_MODE": ""})
    assert r.returncode == 0, r.stderr
    [train] = cached.calls("accelerate")
    assert train["env"]["WANDB_API_KEY"] == KEY and train["env"]["HF_TOKEN"] == TOKEN


# wandb's login in .netrc -------------------------------------------------------------------------------------

WANDB_ERROR = "logs to wandb, but WANDB_API_KEY is not set"


def wandb_errors(ready, env=None) -> list[str]:
    r = ready.tool("check", env={"WANDB_MODE": "", **(env or {})})
    return [l for l in r.stdout.splitlines() + r.stderr.splitlines() if WANDB_ERROR in l]


@pytest.mark.parametrize(
    "netrc, logged_in",
    [
        (f"machine api.wandb.ai\n  login user\n  password {KEY}\n", True),  # what `wandb login` writes
        (f"machine github.com login me password x\nmachine api.wandb.ai login user password {KEY}\n", True),
        ("machine api.wandb.ai login user\n", False),  # no key: wandb does not accept it
        ("# api.wandb.ai: log in later\nmachine github.com login me password x\n", False),  # only a comment
        ("machine github.com login api.wandb.ai password x\n", False),  # the name as a login, not a machine
        ("machine api.wandb.ai.example.com login user password x\n", False),
        ("machine api.wandb.ai login user password\n", False),  # cannot be parsed: wandb reads no key from it
    ],
)
def test_wandb_login_is_read_from_netrc_as_wandb_reads_it(ready, netrc, logged_in):
    home = ready.root.parent / "home"
    (home / ".netrc").write_text(netrc)
    assert (wandb_errors(ready) == []) is logged_in


def test_netrc_follows_the_netrc_variable_and_the_wandb_host(ready, tmp_path):
    other = tmp_path / "elsewhere.netrc"
    other.write_text(f"machine wandb.example.com:8080 login user password {KEY}\n")
    assert len(wandb_errors(ready, {"NETRC": str(other)})) == 1  # logged in to another host
    assert wandb_errors(ready, {"NETRC": str(other), "WANDB_BASE_URL": "http://wandb.example.com:8080"}) == []
