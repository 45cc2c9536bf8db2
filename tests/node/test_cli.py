"""`p2pnode`'s argument parsing: bad `--cpus` lists are usage errors (exit 2) naming the problem."""

from __future__ import annotations

import pytest

from node.cli import main as p2pnode


@pytest.mark.parametrize(("cpus", "message"), [
    ("x", "bad CPU list item 'x'"),
    ("1-0", "descending range '1-0'"),
    ("99999", "CPU 99999 in '99999' is above 4095"),
    ("4095", "this machine has"),
])
def test_serve_rejects_bad_cpu_lists(cpus: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        p2pnode(["serve", "--layers", "0-4", "--price", "0.001", "--cpus", cpus])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: p2pnode serve" in err and f"argument --cpus: {message}" in err
