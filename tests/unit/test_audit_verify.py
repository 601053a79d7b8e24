"""`guard audit verify` walks real trail files and names the first broken or missing record, each way of tampering."""

import json
import os
import subprocess
import sys

import pytest

from guard.app.cli import main
from guard.edges.audit import MIN_ROTATE_BYTES, AuditLog, rotated_files


def verify(capsys, *paths):
    """(exit status, what it printed) of `guard audit verify PATHS`."""
    status = main(["audit", "verify", *map(str, paths)])
    printed = capsys.readouterr()
    return status, printed.out + printed.err


def written_trail(tmp_path, count=6):
    """A trail of ``count`` drop records (rules r1..), written by AuditLog to one file."""
    path = tmp_path / "audit.jsonl"
    trail = AuditLog(str(path))
    for number in range(1, count + 1):
        trail.record("drop", rule=f"r{number}", id=f"m{number}")
    trail.close()
    return path


def rotated_trail(tmp_path, rotations=3):
    """A trail rotated by size ``rotations`` times: its files, oldest first (what `audit.jsonl.* audit.jsonl` names)."""
    path = tmp_path / "audit.jsonl"
    trail = AuditLog(str(path), rotate_bytes=MIN_ROTATE_BYTES, keep=10)
    for number in range(100 * MIN_ROTATE_BYTES // 500):
        trail.record("drop", rule="r", text=f"{number:06d}" + "z" * 400)
        if len(rotated_files(str(path))) == rotations:
            break
    trail.record("drop", rule="last")
    trail.close()
    return [*map(type(path), rotated_files(str(path))), path]


def rewrite_lines(path, change):
    """Replace the lines of ``path`` (bytes, without newlines) by ``change(lines)``."""
    lines = path.read_bytes().split(b"\n")[:-1]
    path.write_bytes(b"".join(line + b"\n" for line in change(lines)))


def test_a_whole_trail_verifies(tmp_path, capsys):
    """Untouched, the chain holds: status 0 and the last record's seq and hash."""
    path = written_trail(tmp_path)
    status, printed = verify(capsys, path)
    assert status == 0, printed
    assert printed.startswith("OK: 6 records in 1 file(s), seq 1 to 6, chained from its beginning (genesis)")


def test_a_whole_rotated_trail_verifies_through_every_file(tmp_path, capsys):
    """The rotated files and the current one, oldest first, form one chain."""
    files = rotated_trail(tmp_path)
    status, printed = verify(capsys, *files)
    assert status == 0, printed
    assert "in 4 file(s)" in printed


@pytest.mark.parametrize("tamper, problem", [
    (lambda lines: [line.replace(b'"r3"', b'"r9"') for line in lines],
     "3: the record was changed: its hash is not the one the next record ({path}:4) names"),
    (lambda lines: lines[:1] + [b"garbage"] + lines[2:], "2: not a JSON record: the line was changed (or cut)"),
    (lambda lines: lines[:2] + lines[3:], "3: record seq 3 is missing before this line: deleted"),
    (lambda lines: lines[:2] + [lines[3], lines[2]] + lines[4:],
     "3: lines out of order: seq 4 comes where seq 3 belongs; seq 3 is later, at {path}:4"),
], ids=["changed-line", "line-made-garbage", "deleted-line", "swapped-lines"])
def test_a_tampered_line_is_named(tmp_path, capsys, tamper, problem):
    """A line edited (still JSON, or not), deleted, or swapped with the next: verify names the line and what is wrong."""
    path = written_trail(tmp_path)
    rewrite_lines(path, tamper)
    status, printed = verify(capsys, path)
    assert (status, printed.strip()) == (1, f"BROKEN: {path}:" + problem.format(path=path))


def test_a_truncated_last_line_is_named(tmp_path, capsys):
    """The file cut in the middle of its last record: verify reports the last line as truncated."""
    path = written_trail(tmp_path)
    os.truncate(path, path.stat().st_size - 10)
    status, printed = verify(capsys, path)
    assert (status, printed.strip()) == (
        1, f"BROKEN: {path}:6: the last line is truncated (no newline): the record was cut short")


def test_a_missing_file_in_the_sequence_is_named(tmp_path, capsys):
    """The second of four files left out: the third file's first record says which records and file are missing."""
    files = rotated_trail(tmp_path)
    status, printed = verify(capsys, files[0], *files[2:])
    assert status == 1
    assert printed.startswith(f"BROKEN: {files[2]}:1: records seq ")
    assert (f"are missing before this file (it continues from {files[1].name}): a file missing in the sequence"
            in printed)


def test_files_given_out_of_order_are_named(tmp_path, capsys):
    """The second and third files swapped on the command line: reported as files out of order."""
    files = rotated_trail(tmp_path)
    status, printed = verify(capsys, files[0], files[2], files[1], files[3])
    assert status == 1
    assert printed.startswith(f"BROKEN: {files[2]}:1: files given out of order: seq ")
    assert f"is later, at {files[1]}:1" in printed


def test_records_deleted_from_the_end_of_a_rotated_file_are_named(tmp_path, capsys):
    """The last two records of an older file removed: the next file's first record shows the gap."""
    files = rotated_trail(tmp_path)
    rewrite_lines(files[1], lambda lines: lines[:-2])
    status, printed = verify(capsys, *files)
    assert status == 1
    assert printed.startswith(f"BROKEN: {files[2]}:1: records seq ")
    assert f"records deleted from the end of {files[1]}" in printed


def test_a_new_chain_started_in_the_middle_is_a_break(tmp_path, capsys):
    """Two separate trails given as one: the second's genesis record is not linked to what comes before."""
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first, second = written_trail(tmp_path / "one", 2), written_trail(tmp_path / "two", 2)
    status, printed = verify(capsys, first, second)
    assert status == 1
    assert printed.startswith(f"BROKEN: {second}:1: a new chain begins here (genesis)")


def test_a_trail_whose_older_files_were_rotated_away_still_verifies(tmp_path, capsys):
    """Starting at a kept file (older ones removed by keep) is whole, and says it continues an earlier record."""
    files = rotated_trail(tmp_path)
    status, printed = verify(capsys, *files[2:])
    assert status == 0, printed
    assert "continuing a record not given" in printed


def test_usage_errors_exit_2(tmp_path):
    """No file, or a file that does not exist, is a usage error (2), told on stderr, from the real command line."""
    command = [sys.executable, "-m", "guard", "audit", "verify"]
    environment = {**os.environ, "PYTHONPATH": os.getcwd()}
    no_file = subprocess.run(command, capture_output=True, text=True, timeout=60, env=environment)
    missing = subprocess.run([*command, str(tmp_path / "nothing.jsonl")], capture_output=True, text=True,
                             timeout=60, env=environment)
    assert (no_file.returncode, missing.returncode) == (2, 2)
    assert "the following arguments are required: FILE" in no_file.stderr
    assert missing.stderr.strip() == f"guard audit verify: cannot read {tmp_path / 'nothing.jsonl'}: not a file"


def test_a_trail_the_guard_restarted_on_verifies_and_a_restart_record_is_marked(tmp_path, capsys):
    """Three processes in turn on one file make one chain; each first record says "chain": "start"."""
    path = tmp_path / "audit.jsonl"
    for run in range(3):
        trail = AuditLog(str(path))
        trail.record("start", rule="guard:start")
        trail.record("drop", rule=f"r{run}")
        trail.close()
    status, printed = verify(capsys, path)
    assert status == 0, printed
    starts = [json.loads(line).get("chain") for line in path.read_text().splitlines()]
    assert starts == ["start", None] * 3


@pytest.mark.parametrize("record", [b'{"event": "drop"}', b'{"event": "drop", "seq": 1, "prev": "abc"}', b"[]"])
def test_a_line_without_chain_fields_is_named(tmp_path, capsys, record):
    """A JSON line without a valid seq and prev (written without the chain, or edited) is reported at its line."""
    path = written_trail(tmp_path, 2)
    rewrite_lines(path, lambda lines: lines + [record])
    status, printed = verify(capsys, path)
    assert status == 1
    assert printed.strip() == (f"BROKEN: {path}:3: not a record of the chain (no seq or prev): changed, or "
                               f"written without the chain")


def test_copytruncate_loses_the_records_written_between_copy_and_truncate_and_verify_says_so(tmp_path, capsys):
    """A record written after logrotate's copy but before its truncate is in neither file: verify names the gap."""
    path = tmp_path / "audit.jsonl"
    trail = AuditLog(str(path))
    trail.record("drop", rule="copied")
    (tmp_path / "audit.jsonl.1").write_bytes(path.read_bytes())
    trail.record("drop", rule="lost in the race")
    os.truncate(path, 0)
    trail.record("drop", rule="after")
    trail.close()
    status, printed = verify(capsys, tmp_path / "audit.jsonl.1", path)
    assert (status, printed.strip()) == (
        1, f"BROKEN: {path}:1: record seq 2 is missing before this file: a file missing in the sequence, or "
           f"records deleted from the end of {tmp_path / 'audit.jsonl.1'}")
