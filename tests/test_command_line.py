"""The command line as a whole: fast parser (no torch), settings refused before anything loads
(exit 2, the flag named, nothing written), Ctrl-C, and registration on ``import circuit_stats``."""

import subprocess
import sys

import pytest

from circuit_stats import arguments
from circuit_stats.cli import main


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


def test_the_parser_imports_no_torch_or_transformers():
    code = ("import sys, circuit_stats.cli as cli; p = cli.build_parser(); p.parse_args(['profile', 'm', '--texts', 't', "
            "'--out', 'o', '--bins', '0,8,inf']); print(sorted(m for m in ('torch', 'transformers', 'pandas') "
            "if m in sys.modules))")
    assert run_python(code) == "[]"


@pytest.mark.parametrize("first", ["", "import transformers.modeling_utils; "])
def test_import_circuit_stats_still_registers_the_attention_implementation(first):
    code = (first + "import circuit_stats; from transformers import AttentionInterface, AttentionMaskInterface; "
            "print('circuit_stats' in AttentionInterface._global_mapping, "
            "'circuit_stats' in AttentionMaskInterface._global_mapping)")
    assert run_python(code) == "True True"


def test_the_parser_lists_match_the_packages():
    from circuit_stats.profiling.profile import STATISTICS
    from circuit_stats.protocols import PROTOCOLS

    assert arguments.PROTOCOL_NAMES == tuple(sorted(PROTOCOLS))
    assert arguments.STATISTICS == STATISTICS


BAD_SETTINGS = [
    (["profile", "m", "--texts", "t", "--out", "o", "--bins", "0,inf,64"], "--bins"),
    (["profile", "m", "--texts", "t", "--out", "o", "--bins", "abc"], "--bins"),
    (["profile", "m", "--texts", "t", "--out", "o", "--bins", "8,4"], "--bins"),
    (["profile", "m", "--texts", "t", "--out", "o", "--statistics", "foo"], "--statistics"),
    (["profile", "m", "--texts", "t", "--out", "o", "--chunk-size", "0"], "--chunk-size"),
    (["profile", "m", "--texts", "t", "--out", "o", "--local-window", "0"], "--local-window"),
    (["profile", "m", "--texts", "t", "--out", "o", "--sink-eps", "1.5"], "--sink-eps"),
    (["profile", "m", "--texts", "t", "--out", "o", "--sink-min-queries", "0"], "--sink-min-queries"),
    (["profile", "m", "--texts", "t", "--out", "o", "--max-tokens", "0"], "--max-tokens"),
    (["scan", "m", "--out", "o", "--batch-size", "0"], "--batch-size"),
    (["scan", "m", "--out", "o", "--option", "n_sequences"], "--option"),
    (["scan", "m", "--out", "o", "--prefetch", "-1"], "--prefetch"),
    (["scan", "m", "--out", "o", "--limit-tokens", "nan"], "--limit-tokens"),
    (["scan", "m", "--out", "o", "--protocol", "foo"], "--protocol"),
    (["report", "d", "--induction-min-heads", "-1"], "--induction-min-heads"),
    (["report", "d", "--first-token-min-fraction", "2"], "--first-token-min-fraction"),
    (["revisions", "m", "--tokens-per-step", "0"], "--tokens-per-step"),
]


@pytest.mark.parametrize("argv,flag", BAD_SETTINGS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_SETTINGS])
def test_bad_settings_exit_2_naming_the_flag(argv, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["profile", "m", "--texts", "t"], ["scan", "m"], ["demo"]])
@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_an_out_that_cannot_be_a_directory_is_refused_before_anything_loads(command, where, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("a file")
    out = blocker if where == "file" else blocker / "sub"
    assert main([*command, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out}" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["taken"] and blocker.read_text() == "a file"


def test_an_out_on_a_read_only_file_system_is_refused(tmp_path, capsys, monkeypatch):
    import tempfile

    def read_only(*a, **k):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)  # what the check meets on a read-only mount
    assert main(["scan", "m", "--out", str(tmp_path / "o")]) == 2
    assert f"--out {tmp_path / 'o'}: cannot write in {tmp_path} (Read-only file system)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, capsys, monkeypatch):
    import circuit_stats.scans.scan as scan_module

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(scan_module, "scan", interrupted)
    assert main(["scan", "EleutherAI/pythia-70m", "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "interrupted" in err and "Traceback" not in err


def test_help_exits_0_and_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(c in out for c in ("scan", "report", "revisions", "demo", "profile"))
