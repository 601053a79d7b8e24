"""
Scenario files: one conversation through the guard per file, written like a
play (Prosody's scansion in spirit), read by ``read_scenario`` and played
by ``play`` against an ``InMemoryLab``.

A file is a few settings, then steps, one a line; ``#`` starts a comment;
a line that begins with white space continues the line above (XML is joined
without the line break, an inline policy keeps its lines).

Settings (before the first step)::

    policy red->blue: policies/high-to-low.toml   # a path from the repository root
    policy blue->red:                              # or an inline policy, indented below
        [policy] ...
    authentication red: dialback                   # default: certificate
    audit level: all                               # default: refusals
    release authority: yes                         # a fake authority at the release endpoint
    limit outbound_queue: 2                        # any [limits] key

Steps::

    red sends: <message from='alice@red.example/pc' to='bob@blue.example'/>
    red sends on red.example->blue.example: <message .../>   # on that pair's stream, whatever the stanza says
    blue receives: <message from='alice@red.example/pc' to='bob@blue.example'/>
    red receives error: policy-violation           # the next stanza red gets is an error with this condition
    red receives stream error: system-shutdown
    red is refused: no-mechanism                   # a negotiation red started was refused
    red presents: red_from_blue_ca                 # the lab PKI key pair red's TLS presents from now on
    blue is down / blue is up                      # connections to blue's server fail / succeed
    blue is silent                                 # blue's server accepts connections and never answers
    blue stops reading / blue reads again          # blue leaves what the guard writes unread (back-pressure)
    red forges dialback keys                       # red presents keys it did not make
    red is asked to verify: valid                  # red (authoritative) got a db:verify and answered so
    red checks dialback: valid                     # red checked a key the guard presented (through the guard)
    authority answers: release                     # or deny (the default)
    authority receives: <message .../>             # what the guard asked the authority about
    audit has: drop rule=label-not-releasable kind=message
    books: accepted=2 delivered=1 bounced=1 dropped=0
    wait: 31                                       # seconds of memory time
    guard stops

What each server receives, the questions the authority gets and the audit
records are each checked in order, and at the end of the file nothing may be
left unchecked: an unexpected stanza, stream error or record fails the scenario.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from twisted.words.xish import domish

from guard.lab.inmemory import STANZA_ERRORS, InMemoryLab, LabSettings, lab_pki
from tests.trees import tree

ACTORS = ("red", "blue")
STEPS = [
    ("sends", re.compile(r"^(red|blue) sends:\s*(.*)$")),
    ("sends on", re.compile(r"^(red|blue) sends on (\S+->\S+:\s*.*)$")),
    ("receives error", re.compile(r"^(red|blue) receives error:\s*(.*)$")),
    ("receives stream error", re.compile(r"^(red|blue) receives stream error:\s*(.*)$")),
    ("receives", re.compile(r"^(red|blue) receives:\s*(.*)$")),
    ("is refused", re.compile(r"^(red|blue) is refused:\s*(.*)$")),
    ("presents", re.compile(r"^(red|blue) presents:\s*(.*)$")),
    ("is down", re.compile(r"^(red|blue) is down()$")),
    ("is up", re.compile(r"^(red|blue) is up()$")),
    ("is silent", re.compile(r"^(red|blue) is silent()$")),
    ("stops reading", re.compile(r"^(red|blue) stops reading()$")),
    ("reads again", re.compile(r"^(red|blue) reads again()$")),
    ("forges keys", re.compile(r"^(red|blue) forges dialback keys()$")),
    ("asked to verify", re.compile(r"^(red|blue) is asked to verify:\s*(valid|invalid)$")),
    ("dialback checked", re.compile(r"^(red|blue) checks dialback:\s*(valid|invalid|none)$")),
    ("answers", re.compile(r"^(authority) answers:\s*(release|deny)$")),
    ("asked", re.compile(r"^(authority) receives:\s*(.*)$")),
    ("audit has", re.compile(r"^()audit has:\s*(.*)$")),
    ("books", re.compile(r"^()books:\s*(.*)$")),
    ("wait", re.compile(r"^()wait:\s*(.*)$")),
    ("guard stops", re.compile(r"^()guard stops()$")),
]
SETTINGS = [
    ("policy", re.compile(r"^policy (red->blue|blue->red):\s*(.*)$")),
    ("authentication", re.compile(r"^authentication (red|blue):\s*(certificate|dialback)$")),
    ("audit level", re.compile(r"^audit level:()\s*(refusals|all)$")),
    ("release authority", re.compile(r"^release authority:()\s*(yes|no)$")),
    ("limit", re.compile(r"^limit ([a-z_]+):\s*([0-9.]+)$")),
]


class ScenarioError(Exception):
    """A scenario file that cannot be read; str() names the file and the line."""


class ScenarioFailed(AssertionError):
    """The guard did not do what a step expected; str() names the file and the line."""


@dataclass
class Step:
    line: int
    verb: str
    actor: str
    value: str
    continuation: list[str] = field(default_factory=list)

    @property
    def xml(self) -> str:
        text = self.value.partition(":")[2] if self.verb == "sends on" else self.value
        return (text + "".join(part.strip() for part in self.continuation)).strip()

    @property
    def pair(self) -> tuple[str, str]:
        """For ``sends on``: the (sender domain, receiver domain) of the stream named before the colon."""
        sender, _, receiver = self.value.partition(":")[0].partition("->")
        return sender.strip(), receiver.strip()


@dataclass
class Scenario:
    path: Path
    settings: LabSettings
    inline_policies: dict[str, str]
    steps: list[Step]


def parse_stanza(xml: str):
    """One stanza, parsed as a server stream would (default namespace jabber:server); ValueError if it is not one."""
    found = []
    parser = domish.elementStream()
    parser.DocumentStartEvent = lambda root: None
    parser.ElementEvent = found.append
    parser.DocumentEndEvent = lambda: None
    try:
        parser.parse(b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams'>"
                     + xml.encode("utf-8") + b"</stream:stream>")
    except Exception as problem:  # noqa: BLE001 - any parse fault is a scenario error
        raise ValueError(f"not well-formed XML: {problem}") from problem
    if len(found) != 1 or found[0].name not in ("message", "presence", "iq") or found[0].uri != "jabber:server":
        raise ValueError("expected exactly one <message/>, <presence/> or <iq/>")
    return found[0]


def _domain(jid: str | None) -> str | None:
    if not jid:
        return None
    return jid.split("@", 1)[-1].split("/", 1)[0] if "@" in jid else jid.split("/", 1)[0]


def _lines(path: Path):
    """(line number, text) for each line, continuation lines folded into the line they continue."""
    current = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0] in " \t":
            if current is None:
                raise ScenarioError(f"{path}:{number}: an indented line continues nothing")
            current[2].append(raw)
            continue
        if current is not None:
            yield current
        current = (number, raw.strip(), [])
    if current is not None:
        yield current


def read_scenario(path: Path) -> Scenario:
    """The scenario in ``path``; ScenarioError naming the file and line for anything it cannot read."""
    settings = LabSettings()
    inline: dict[str, str] = {}
    steps: list[Step] = []
    for number, text, continuation in _lines(path):
        where = f"{path}:{number}"
        step = _match(STEPS, text)
        if step is not None:
            verb, actor, value = step
            steps.append(Step(number, verb, actor, value, continuation))
            _check_step(where, steps[-1])
            continue
        setting = _match(SETTINGS, text)
        if setting is None:
            raise ScenarioError(f"{where}: not a step or a setting: {text!r}")
        if steps:
            raise ScenarioError(f"{where}: settings come before the first step")
        name, subject, value = setting
        if name == "policy":
            if value and continuation:
                raise ScenarioError(f"{where}: a policy is a path or an indented block, not both")
            if value:
                settings.policies[subject] = value
            elif continuation:
                inline[subject] = textwrap.dedent("\n".join(continuation)) + "\n"
            else:
                raise ScenarioError(f"{where}: policy {subject} names no file and has no indented block")
        elif name == "authentication":
            settings.authentication[subject] = value
        elif name == "audit level":
            settings.audit_level = value
        elif name == "release authority":
            settings.release_authority = value == "yes"
        elif name == "limit":
            settings.limits[subject] = float(value) if "." in value else int(value)
    if not steps:
        raise ScenarioError(f"{path}: no steps")
    return Scenario(path, settings, inline, steps)


def _match(table, text):
    for name, pattern in table:
        found = pattern.match(text)
        if found:
            return name, found.group(1), found.group(2)
    return None


def _check_step(where, step):
    """Refuse at reading time what could only fail later: XML that is not one stanza, unknown key pairs, bad numbers."""
    try:
        if step.verb == "sends on":
            parse_stanza(step.xml)
            if not all(step.pair):
                raise ValueError("name the stream as sender-domain->receiver-domain")
        elif step.verb in ("sends", "receives", "asked"):
            stanza = parse_stanza(step.xml)
            if step.verb == "sends" and not (_domain(stanza.getAttribute("from")) and _domain(stanza.getAttribute("to"))):
                raise ValueError("a stanza sent needs 'from' and 'to' (they choose the stream)")
        elif step.verb == "presents" and not hasattr(lab_pki(), step.value):
            raise ValueError(f"the lab PKI has no key pair {step.value!r}")
        elif step.verb == "wait":
            float(step.value)
        elif step.verb in ("audit has", "books"):
            _fields(step.value if step.verb == "books" else step.value.partition(" ")[2])
            if step.verb == "audit has" and not step.value.split():
                raise ValueError("audit has: needs an event (drop, bounce, pass, ...)")
        elif step.verb in ("receives error", "receives stream error", "is refused") and not step.value.strip():
            raise ValueError("needs a condition")
    except ValueError as problem:
        raise ScenarioError(f"{where}: {step.verb}: {problem}") from problem


def _fields(text: str) -> dict[str, str]:
    fields = {}
    for word in text.split():
        key, equals, value = word.partition("=")
        if not equals or not key:
            raise ValueError(f"expected key=value, found {word!r}")
        fields[key] = value
    return fields


# -- playing ---------------------------------------------------------------------


def _describe(event) -> str:
    kind, value = event
    if kind == "stanza":
        return value.toXml()
    return f"{kind}: {value}"


class Player:
    """Plays one scenario's steps against a lab and checks every expectation in order."""

    def __init__(self, scenario: Scenario, lab: InMemoryLab):
        self.scenario = scenario
        self.lab = lab
        self.audit_checked = 0
        self.questions_checked = 0

    def fail(self, step, message):
        raise ScenarioFailed(f"{self.scenario.path}:{step.line}: {step.verb}: {message}")

    def play(self):
        for step in self.scenario.steps:
            getattr(self, "_" + step.verb.replace(" ", "_"))(step)
        self.nothing_left()

    # -- actions -----------------------------------------------------------------

    def _sends(self, step):
        stanza = parse_stanza(step.xml)
        server = self.lab.servers[step.actor]
        server.send(_domain(stanza.getAttribute("from")), _domain(stanza.getAttribute("to")), step.xml.encode("utf-8"))
        self.lab.settle()

    def _sends_on(self, step):
        self.lab.servers[step.actor].send(*step.pair, step.xml.encode("utf-8"))
        self.lab.settle()

    def _presents(self, step):
        self.lab.servers[step.actor].present(getattr(lab_pki(), step.value))

    def _is_down(self, step):
        self.lab.servers[step.actor].up = False

    def _is_up(self, step):
        self.lab.servers[step.actor].up = True
        self.lab.servers[step.actor].silent = False

    def _stops_reading(self, step):
        self.lab.servers[step.actor].read(False)
        self.lab.settle()

    def _reads_again(self, step):
        self.lab.servers[step.actor].read(True)
        self.lab.settle()

    def _forges_keys(self, step):
        self.lab.servers[step.actor].forging = True

    def _asked_to_verify(self, step):
        event = self._next_event(step)
        if event != ("asked to verify", step.value):
            self.fail(step, f"{step.actor} should be asked to verify a key and answer {step.value}, "
                            f"but received {_describe(event)}")

    def _dialback_checked(self, step):
        event = self._next_event(step)
        if event != ("dialback checked", step.value):
            self.fail(step, f"{step.actor} should check the guard's dialback key and hear {step.value}, "
                            f"but received {_describe(event)}")

    def _is_silent(self, step):
        self.lab.servers[step.actor].up = True
        self.lab.servers[step.actor].silent = True

    def _answers(self, step):
        self.lab.authority_answer = step.value

    def _wait(self, step):
        self.lab.wait(float(step.value))

    def _guard_stops(self, step):
        self.lab.stop()

    # -- expectations --------------------------------------------------------------

    def _next_event(self, step):
        received = self.lab.servers[step.actor].received
        if not received:
            self.fail(step, f"{step.actor} has received nothing more")
        return received.pop(0)

    def _receives(self, step):
        event = self._next_event(step)
        expected = parse_stanza(step.xml)
        if event[0] != "stanza" or tree(event[1]) != tree(expected):
            self.fail(step, f"{step.actor} should receive\n  {expected.toXml()}\nbut received\n  {_describe(event)}")

    def _receives_error(self, step):
        event = self._next_event(step)
        condition = step.value.strip()
        if event[0] == "stanza" and event[1].getAttribute("type") == "error":
            error = next((child for child in event[1].elements() if child.name == "error"), None)
            found = [child.name for child in error.elements() if child.uri == STANZA_ERRORS and child.name != "text"] \
                if error is not None else []
            if found == [condition]:
                return
        self.fail(step, f"{step.actor} should receive an error {condition}, but received\n  {_describe(event)}")

    def _receives_stream_error(self, step):
        event = self._next_event(step)
        if event != ("stream error", step.value.strip()):
            self.fail(step, f"{step.actor} should receive stream error {step.value}, but received {_describe(event)}")

    def _is_refused(self, step):
        event = self._next_event(step)
        if event != ("refused", step.value.strip()):
            self.fail(step, f"{step.actor} should be refused ({step.value}), but received {_describe(event)}")

    def _asked(self, step):
        if self.questions_checked >= len(self.lab.questions):
            self.fail(step, "the release authority was asked nothing more")
        question = self.lab.questions[self.questions_checked]
        self.questions_checked += 1
        expected = parse_stanza(step.xml)
        if tree(parse_stanza(question["stanza"])) != tree(expected):
            self.fail(step, f"the authority should be asked about\n  {expected.toXml()}\nbut was asked about\n"
                            f"  {question['stanza']}")

    def _audit_has(self, step):
        event, _, rest = step.value.partition(" ")
        records = self._audit_records()
        if self.audit_checked >= len(records):
            self.fail(step, f"no more audit records (expected {step.value})")
        record = records[self.audit_checked]
        self.audit_checked += 1
        wrong = {key: record.get(key) for key, value in _fields(rest).items() if str(record.get(key)) != value}
        if record.get("event") != event or wrong:
            self.fail(step, f"expected {step.value}, found record {record}")

    def _books(self, step):
        books = self.lab.books
        wrong = {key: books.get(key) for key, value in _fields(step.value).items() if str(books.get(key)) != value}
        if wrong:
            self.fail(step, f"expected {step.value}, the books say {books}")

    def _audit_records(self):
        """The audit records after the guard's own start record (which every run writes first)."""
        records = self.lab.audit_records()
        if not records or records[0].get("event") != "start":
            raise ScenarioFailed(f"{self.scenario.path}: the audit trail does not begin with the start record")
        return records[1:]

    def nothing_left(self):
        """At the end: everything received, asked and audited was expected by a step."""
        left = [f"{name} received {_describe(event)}" for name, server in self.lab.servers.items()
                for event in server.received]
        left += [f"the authority was asked about {q['stanza']}" for q in self.lab.questions[self.questions_checked:]]
        left += [f"audit record {record}" for record in self._audit_records()[self.audit_checked:]]
        if left:
            raise ScenarioFailed(f"{self.scenario.path}: not expected by any step:\n  " + "\n  ".join(left))


def play(path: Path, root: Path, folder: Path):
    """Read the scenario at ``path``, run it against a fresh in-memory guard, stop the guard."""
    scenario = read_scenario(path)
    for direction, text in scenario.inline_policies.items():
        policy = folder / f"policy-{direction.replace('->', '-to-')}.toml"
        policy.write_text(text, encoding="utf-8")
        scenario.settings.policies[direction] = str(policy)
    lab = InMemoryLab(scenario.settings, root, folder)
    lab.start()
    try:
        Player(scenario, lab).play()
    finally:
        if lab.running:
            lab.stop()
