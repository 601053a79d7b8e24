"""The scenario reader and player themselves: clear errors with file and line, and nothing unexpected slips by."""

from pathlib import Path

import pytest
from twisted.internet.protocol import Protocol

from guard.lab.inmemory import MemoryWire, TlsMismatch

from .script import ScenarioError, ScenarioFailed, play, read_scenario

ROOT = Path(__file__).parent.parent.parent
MESSAGE = "<message from='alice@red.example/pc' to='bob@blue.example' id='m1'><body>hi</body></message>"


def scenario(tmp_path, text) -> Path:
    path = tmp_path / "under-test.scenario"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("text, line, words", [
    ("red shouts: hello\n", 1, "not a step or a setting"),
    (f"red sends: {MESSAGE}\naudit level: all\n", 2, "settings come before the first step"),
    ("# a comment\n\nred sends: <message to='bob@blue.example'/>\n", 3, "needs 'from' and 'to'"),
    ("blue receives: <message><body></message>\n", 1, "not well-formed"),
    ("blue receives: <stream:features xmlns:stream='http://etherx.jabber.org/streams'/>\n", 1, "exactly one"),
    ("red presents: no_such_pair\n", 1, "no key pair"),
    ("audit has: drop rule\n", 1, "key=value"),
    ("  <body/>\n", 1, "continues nothing"),
    ("policy red->blue:\nred sends: " + MESSAGE + "\n", 1, "names no file"),
])
def test_reading_errors_name_the_file_and_the_line(tmp_path, text, line, words):
    """A scenario the reader cannot use is refused with its path, the line number and what is wrong."""
    path = scenario(tmp_path, text)
    with pytest.raises(ScenarioError) as raised:
        read_scenario(path)
    assert str(raised.value).startswith(f"{path}:{line}:")
    assert words in str(raised.value)


def test_continuation_lines_join_xml_without_line_breaks(tmp_path):
    """An indented line continues the XML above it, without the line break or the indentation."""
    path = scenario(tmp_path, "red sends: <message from='a@red.example' to='b@blue.example'>\n    <body>x</body>\n  </message>\n")
    (step,) = read_scenario(path).steps
    assert step.xml == "<message from='a@red.example' to='b@blue.example'><body>x</body></message>"


def test_a_stanza_no_step_expects_fails_the_scenario(tmp_path):
    """A stanza a server received that no step expected fails the scenario at its end, naming it."""
    path = scenario(tmp_path, f"red sends: {MESSAGE}\n")
    with pytest.raises(ScenarioFailed) as raised:
        play(path, ROOT, tmp_path)
    assert "not expected by any step" in str(raised.value)
    assert "blue received <message" in str(raised.value)


def test_a_different_stanza_fails_at_its_line(tmp_path):
    """A received stanza that differs from the expected one fails at the expecting step's line, showing both."""
    other = MESSAGE.replace("<body>hi</body>", "<body>ho</body>")
    path = scenario(tmp_path, f"red sends: {MESSAGE}\n\nblue receives: {other}\n")
    with pytest.raises(ScenarioFailed) as raised:
        play(path, ROOT, tmp_path)
    assert str(raised.value).startswith(f"{path}:3: receives:")
    assert "<body>ho</body>" in str(raised.value) and "<body>hi</body>" in str(raised.value)


def test_an_audit_record_no_step_expects_fails_the_scenario(tmp_path):
    """With every decision audited, a pass no step names is left over and fails the scenario."""
    path = scenario(tmp_path, f"audit level: all\nred sends: {MESSAGE}\nblue receives: {MESSAGE}\n")
    with pytest.raises(ScenarioFailed) as raised:
        play(path, ROOT, tmp_path)
    assert "audit record" in str(raised.value) and "'event': 'pass'" in str(raised.value)


def test_every_pass_is_audited_at_level_all(tmp_path):
    """With every decision audited, the pass is a record the scenario can name."""
    path = scenario(tmp_path, f"audit level: all\nred sends: {MESSAGE}\nblue receives: {MESSAGE}\n"
                              "audit has: pass rule=allow-all direction=red->blue id=m1\n")
    play(path, ROOT, tmp_path)


class Recording(Protocol):
    def __init__(self):
        self.data = b""

    def dataReceived(self, data):
        self.data += data


def test_bytes_written_under_tls_are_not_read_in_the_clear():
    """The TLS stub keeps both ends honest: bytes written after startTLS reach only an end that started TLS too."""
    near, far = Recording(), Recording()
    wire = MemoryWire(near, None, [], far, None, [])
    wire.start()
    near.transport.write(b"<clear/>")
    near.transport.startTLS(None)
    near.transport.write(b"<secret/>")
    with pytest.raises(TlsMismatch):
        wire.move()
    assert far.data == b"<clear/>"


def test_a_paused_end_reads_nothing_until_it_resumes():
    """A transport paused by its protocol gets no bytes until it resumes; then they arrive in order."""
    near, far = Recording(), Recording()
    wire = MemoryWire(near, None, [], far, None, [])
    wire.start()
    far.transport.pauseProducing()
    near.transport.write(b"one")
    near.transport.write(b"two")
    assert wire.move() is False and far.data == b""
    far.transport.resumeProducing()
    assert wire.move() is True and far.data == b"onetwo"
