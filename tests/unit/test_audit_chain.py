"""The audit trail's hash chain: what each line carries, how a restart and a rotation continue it."""

import hashlib
import json
import os

import pytest

from guard.app.audit_commands import verify_trail
from guard.edges.audit import (GENESIS, MAX_RECORD_BYTES, MIN_ROTATE_BYTES, AuditLog, AuditUnavailable,
                               read_chain_head, rotated_files)


def lines_of(path):
    """The exact bytes of each line of the file at ``path``, without newlines."""
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def sha256(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


def test_each_record_names_the_sha256_of_the_exact_bytes_of_the_line_before_it(tmp_path):
    """A fresh trail starts at genesis with seq 1 and "chain": "start"; each later line's prev is the hash of the line before."""
    path = tmp_path / "audit.jsonl"
    trail = AuditLog(str(path), clock=lambda: 7.0)
    for rule in ("a", "b", "c"):
        trail.record("drop", rule=rule)
    trail.close()
    lines = lines_of(path)
    records = [json.loads(line) for line in lines]
    assert records[0] == {"time": 7.0, "event": "drop", "rule": "a", "seq": 1, "prev": GENESIS, "chain": "start"}
    assert [(r["seq"], r["prev"]) for r in records[1:]] == [(2, sha256(lines[0])), (3, sha256(lines[1]))]
    assert "chain" not in records[1] and "chain" not in records[2]
    assert read_chain_head(str(path)).hash == sha256(lines[2])


def test_a_restart_continues_the_chain_of_the_existing_file(tmp_path):
    """The next process's first record is marked as a chain start and names the last line's hash and the next seq."""
    path = tmp_path / "audit.jsonl"
    first = AuditLog(str(path))
    first.record("start", rule="guard:start")
    first.record("drop", rule="r")
    first.close()
    second = AuditLog(str(path))
    second.record("start", rule="guard:start")
    second.close()
    lines = lines_of(path)
    restarted = json.loads(lines[2])
    assert (restarted["seq"], restarted["prev"], restarted["chain"]) == (3, sha256(lines[1]), "start")


def test_the_chain_head_is_read_from_the_tail_of_a_large_file_only(tmp_path, monkeypatch):
    """A restart on a trail far larger than a record reads only its last MAX_RECORD_BYTES + 2 bytes."""
    path = tmp_path / "audit.jsonl"
    filler = json.dumps({"event": "old", "seq": 1, "prev": GENESIS, "pad": "x" * 1000}).encode()
    with open(path, "wb") as trail:
        for _ in range(4 * MAX_RECORD_BYTES // len(filler)):
            trail.write(filler + b"\n")
        trail.write(b'{"event": "last", "prev": "' + GENESIS.encode() + b'", "seq": 41}\n')
    read = []
    real_open = open

    class CountingFile:
        def __init__(self, inner):
            self.inner = inner

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.inner.close()

        def read(self, size=-1):
            data = self.inner.read(size)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.inner, name)

    import builtins
    monkeypatch.setattr(builtins, "open", lambda *args, **kwargs: CountingFile(real_open(*args, **kwargs)))
    head = read_chain_head(str(path))
    monkeypatch.undo()
    assert head.seq == 41
    assert sum(read) <= MAX_RECORD_BYTES + 2 < os.path.getsize(path)


def test_a_trail_whose_last_line_is_incomplete_is_not_continued(tmp_path):
    """A last line without its newline (a torn write, or a cut) refuses the start and says where to cut."""
    path = tmp_path / "audit.jsonl"
    trail = AuditLog(str(path))
    trail.record("drop", rule="r")
    trail.close()
    whole = path.stat().st_size
    with open(path, "ab") as torn:
        torn.write(b'{"event": "dro')
    with pytest.raises(AuditUnavailable, match=f"incomplete.*truncate -s {whole} "):
        AuditLog(str(path))


def test_a_trail_whose_last_line_is_not_a_chain_record_is_not_continued(tmp_path):
    """A last line that is not JSON cannot give a head: the trail is refused rather than silently forked."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"not json\n")
    with pytest.raises(AuditUnavailable, match="not a record of the chain"):
        AuditLog(str(path))


def test_a_failed_write_is_cut_back_so_the_next_record_chains_on_the_last_whole_one(tmp_path):
    """When a record cannot be written whole (file size limit), nothing half-written stays and the next record links."""
    import subprocess
    import sys

    path = tmp_path / "audit.jsonl"
    script = f"""
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
from guard.edges.audit import AuditLog, AuditUnavailable
trail = AuditLog({str(path)!r})
trail.record("drop", rule="small")
size = trail._size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 100, resource.RLIM_INFINITY))
try:
    trail.record("drop", rule="big", text="y" * 500)
    sys.exit("the oversized write passed")
except AuditUnavailable:
    pass
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
import os
assert os.path.getsize({str(path)!r}) == size, "a half-written record stayed in the file"
trail.record("drop", rule="after")
trail.close()
"""
    finished = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert finished.returncode == 0, finished.stderr
    lines = lines_of(path)
    records = [json.loads(line) for line in lines]
    assert [r["rule"] for r in records] == ["small", "after"]
    assert (records[1]["seq"], records[1]["prev"]) == (2, sha256(lines[0]))


def test_a_record_larger_than_the_limit_is_written_cut_and_still_chained(tmp_path):
    """A hostile id bigger than MAX_RECORD_BYTES is cut to a bounded record that says its full size."""
    path = tmp_path / "audit.jsonl"
    trail = AuditLog(str(path))
    trail.record("drop", rule="r", id="\x01" * (MAX_RECORD_BYTES // 2), sender="romeo@red.example")
    trail.record("drop", rule="next")
    trail.close()
    lines = lines_of(path)
    cut = json.loads(lines[0])
    assert len(lines[0]) <= MAX_RECORD_BYTES
    assert cut["cut"] > MAX_RECORD_BYTES and cut["sender"] == "romeo@red.example" and cut["rule"] == "r"
    assert cut["id"] == "\x01" * 1024 + "..."
    assert json.loads(lines[1])["prev"] == sha256(lines[0])


# -- rotation by size -----------------------------------------------------------------------

def fill(trail, path, rotations):
    """Write records of about 500 bytes until the trail at ``path`` has rotated ``rotations`` more times (bounded)."""
    wanted = trail._next_rotation - 1 + rotations
    for number in range(100 * MIN_ROTATE_BYTES // 500):
        trail.record("drop", rule="r", text=f"{number:06d}" + "z" * 400)
        if trail._next_rotation - 1 == wanted:
            return
    raise AssertionError("the trail never rotated")


def test_rotation_keeps_every_file_under_the_limit_and_carries_the_chain(tmp_path):
    """Each rotated file is <= rotate_bytes, names sort oldest first, and each new file starts with chain-continues."""
    path = tmp_path / "audit.jsonl"
    trail = AuditLog(str(path), rotate_bytes=MIN_ROTATE_BYTES, keep=10)
    fill(trail, path, 2)
    trail.record("drop", rule="last")
    trail.close()
    rotated = rotated_files(str(path))
    assert [os.path.basename(name) for name in rotated] == ["audit.jsonl.00000001", "audit.jsonl.00000002"]
    files = [*map(type(path), rotated), path]
    assert all(file.stat().st_size <= MIN_ROTATE_BYTES for file in files)
    for older, newer in zip(files, files[1:]):
        last = lines_of(older)[-1]
        opening = json.loads(lines_of(newer)[0])
        assert opening["event"] == "chain-continues" and opening["reason"] == "rotated"
        assert (opening["prev"], opening["seq"]) == (sha256(last), json.loads(last)["seq"] + 1)
        assert opening["previous_file"] == older.name
        assert opening["rule"] == "guard:chain-continues"


def test_rotation_keeps_only_the_newest_files_asked_for(tmp_path):
    """With keep = 2 the oldest rotated files are removed and numbering goes on from the newest."""
    path = tmp_path / "audit.jsonl"
    trail = AuditLog(str(path), rotate_bytes=MIN_ROTATE_BYTES, keep=2)
    fill(trail, path, 4)
    trail.close()
    assert [os.path.basename(name) for name in rotated_files(str(path))] == ["audit.jsonl.00000003",
                                                                              "audit.jsonl.00000004"]
    again = AuditLog(str(path), rotate_bytes=MIN_ROTATE_BYTES, keep=2)
    fill(again, path, 1)
    again.close()
    assert os.path.basename(rotated_files(str(path))[-1]) == "audit.jsonl.00000005"


def test_a_rotation_limit_below_the_minimum_or_keeping_nothing_is_refused():
    """rotate_bytes under twice the largest record, or keep under 1, is a programming error, not a silent default."""
    with pytest.raises(ValueError):
        AuditLog(None, rotate_bytes=MIN_ROTATE_BYTES - 1)
    with pytest.raises(ValueError):
        AuditLog(None, keep=0)


def test_a_restart_after_the_file_was_rotated_away_continues_from_the_newest_rotated_file(tmp_path):
    """No current file but rotated ones: the chain continues from the newest rotated file, not from genesis."""
    path = tmp_path / "audit.jsonl"
    trail = AuditLog(str(path))
    trail.record("drop", rule="r")
    trail.close()
    last = lines_of(path)[-1]
    os.rename(path, tmp_path / "audit.jsonl.00000001")
    again = AuditLog(str(path))
    again.record("start", rule="guard:start")
    again.close()
    assert json.loads(lines_of(path)[0])["prev"] == sha256(last)


# -- rotation by someone else ----------------------------------------------------------------

def test_a_file_moved_away_under_the_guard_is_reopened_with_the_chain_marked(tmp_path):
    """logrotate's create mode: the next record goes to a new file at the path, after a chain-continues record."""
    path = tmp_path / "audit.jsonl"
    trail = AuditLog(str(path))
    trail.record("drop", rule="before")
    os.rename(path, tmp_path / "audit.jsonl.1")
    trail.record("drop", rule="after")
    trail.close()
    old_last = lines_of(tmp_path / "audit.jsonl.1")[-1]
    lines = lines_of(path)
    records = [json.loads(line) for line in lines]
    assert [(r["event"], r.get("reason")) for r in records] == [("chain-continues", "moved"), ("drop", None)]
    assert records[0]["prev"] == sha256(old_last)
    assert records[1]["prev"] == sha256(lines[0])
    assert verify_trail([str(tmp_path / "audit.jsonl.1"), str(path)]).whole


def test_a_file_cut_under_the_guard_is_marked_where_the_chain_goes_on(tmp_path):
    """logrotate's copytruncate: the cut is seen and the first line after it says so, chained to the copy's end."""
    path = tmp_path / "audit.jsonl"
    trail = AuditLog(str(path))
    trail.record("drop", rule="before")
    (tmp_path / "copy").write_bytes(path.read_bytes())
    os.truncate(path, 0)
    trail.record("drop", rule="after")
    trail.close()
    records = [json.loads(line) for line in lines_of(path)]
    assert [(r["event"], r.get("reason")) for r in records] == [("chain-continues", "truncated"), ("drop", None)]
    assert records[0]["prev"] == sha256(lines_of(tmp_path / "copy")[-1])
