"""
The settlement core settles every accepted stanza exactly once, with no I/O:
plain stanzas in, actions and observer events out.  After every step the
core's own books and the Books observer agree and add up:
accepted == delivered + bounced + dropped + in flight.
"""

from dataclasses import replace

import pytest
from zope.interface.verify import verifyObject

from guard.core.books import Books
from guard.core.pipeline import FAIL_CLOSED_RULE, Direction, Judgement, Verdict
from guard.core.settlement import (
    BOUNCE_LOST_RULE,
    HALTED_RULE,
    INTERNAL_FAULT_RULE,
    REFER_CHANGED_REFUSED,
    REFER_WITHOUT_AUTHORITY,
    Deliver,
    ISettlementObserver,
    Parcel,
    RecordUnavailable,
    Refer,
    ReturnBounce,
    Settlement,
    SettlementObserver,
)
from guard.core.topology import Topology
from guard.edges.audit import AuditLog, AuditObserver
from guard.edges.release import Release, reparse_stanza
from guard.edges.xmlstream import serialise

TOPOLOGY = Topology({"red": frozenset({"red.example"}), "blue": frozenset({"blue.example"})})
RED_TO_BLUE = Direction("red", "blue")
PAIR = ("red.example", "blue.example")
MESSAGE = "<message from='romeo@red.example/a' to='juliet@blue.example' id='{id}'><body>{body}</body></message>"


def message(number, body="hello"):
    return reparse_stanza(MESSAGE.format(id=f"m{number}", body=body))


class Recorder(SettlementObserver):
    """Appends ("event", what) for everything it hears to one list; ``failing`` names events it cannot record."""

    def __init__(self, failing=(), broken=()):
        self.heard, self.failing, self.broken = [], set(failing), set(broken)

    def _hear(self, name, what):
        self.heard.append((name, what))
        if name in self.broken:
            raise RuntimeError(f"a bug in an observer of {name}")
        if name in self.failing:
            raise RecordUnavailable(f"cannot record {name}")

    def stanza_accepted(self, ticket):
        self._hear("accepted", ticket.stanza["id"])

    def stanza_passed(self, event):
        self._hear("pass", (event.id, event.rule))

    def stanza_delivered(self, event):
        self._hear("delivered", event.id)

    def stanza_bounced(self, event):
        self._hear("bounce", (event.id, event.rule, event.condition))

    def stanza_dropped(self, event):
        self._hear("drop", (event.id, event.rule, event.text))

    def bounce_lost(self, event):
        self._hear("bounce-lost", (event.id, event.rule, event.condition, event.detail))

    def settled_twice(self, ticket, attempt):
        self._hear("settled twice", (ticket.stanza["id"] if ticket is not None else None, attempt))

    def relaying_halted(self, reason):
        self._hear("halted", reason)


class Core:
    """A settlement with the books and a recorder observing it; ``check`` asserts the invariant."""

    def __init__(self, recorder=None, stop_on_audit_failure=True, more=()):
        self.books = Books()
        self.recorder = recorder or Recorder()
        self.settlement = Settlement(TOPOLOGY, (self.books, self.recorder, *more), stop_on_audit_failure)

    def accept(self, number, body="hello", generation=0):
        ticket = self.settlement.accept(message(number, body), PAIR, 100, RED_TO_BLUE, generation)
        self.check()
        return ticket

    def check(self):
        core = self.settlement.summary()
        assert core["accepted"] == core["delivered"] + core["bounced"] + core["dropped"] + core["in_flight"]
        books = self.books.summary()
        assert {key: books[key] for key in ("accepted", "delivered", "bounced", "dropped", "in_flight")} == {
            key: core[key] for key in ("accepted", "delivered", "bounced", "dropped", "in_flight")}

    def heard(self, *names):
        return [entry for entry in self.recorder.heard if not names or entry[0] in names]


def test_a_pass_is_delivered_on_the_far_side_and_settles_when_the_carrier_says_so():
    """A pass says deliver (far side, pair, a parcel of what the policy built); the stanza stays in flight until delivered."""
    core = Core()
    ticket = core.accept(1)
    built = message(1, "rebuilt")
    action = core.settlement.judged(ticket, Judgement.passed(built, "pass-rest"))
    assert action == Deliver("blue", PAIR, Parcel(built, ticket.stanza, ticket, 100))
    core.check()
    assert core.settlement.in_flight == 1
    core.settlement.delivered(action.parcel)
    core.check()
    assert core.heard() == [("accepted", "m1"), ("pass", ("m1", "pass-rest")), ("delivered", "m1")]
    assert core.settlement.summary()["in_flight"] == 0 and core.books.delivered == 1


def test_a_second_settlement_is_refused_counted_and_never_in_the_books():
    """A carrier reporting one parcel twice, or bouncing a delivered one, changes no count: the core refuses and tells."""
    core = Core()
    ticket = core.accept(1)
    parcel = core.settlement.judged(ticket, Judgement.passed(ticket.stanza, "pass-rest")).parcel
    core.settlement.delivered(parcel)
    core.settlement.delivered(parcel)
    assert core.settlement.undeliverable(parcel, "remote-server-timeout", "late") is None
    core.check()
    assert (core.books.delivered, core.books.bounced, core.settlement.counts["refused"]) == (1, 0, 2)
    assert core.heard("settled twice") == [("settled twice", ("m1", "delivered")), ("settled twice", ("m1", "bounce"))]


def test_a_stanza_already_settled_never_leaves_when_judged_again():
    """A ticket bounced already and judged again (a stale reload) gets no Deliver: refused, nothing counted."""
    core = Core()
    ticket = core.accept(1)
    core.settlement.judged(ticket, Judgement.bounced(ticket.stanza, "no", "not-allowed"))
    again = core.settlement.judged(replace(ticket, generation=1), Judgement.passed(ticket.stanza, "pass-rest"))
    assert again is None
    core.check()
    assert core.heard("pass") == [] and core.heard("settled twice") == [("settled twice", ("m1", "pass"))]


def test_a_parcel_no_accepted_stanza_stands_for_settles_nothing():
    """A parcel without a ticket of this core (made up, or from another process) is refused, never counted."""
    core = Core()
    stanza = message(7)
    core.settlement.delivered(Parcel(stanza, stanza))
    assert core.settlement.undeliverable(Parcel(stanza, stanza), "remote-server-timeout", "x") is None
    core.check()
    assert core.books.summary()["accepted"] == 0 and core.settlement.counts["refused"] == 2
    assert core.heard() == [("settled twice", (None, "delivered")), ("settled twice", (None, "bounce"))]


def test_a_bounce_goes_back_to_the_sender_side_without_the_payload():
    """A bounce verdict settles the stanza and returns our error reply (addresses swapped, no body) for the sender's side."""
    core = Core()
    ticket = core.accept(1, "secret body")
    action = core.settlement.judged(ticket, Judgement.bounced(ticket.stanza, "no-bounces", "policy-violation",
                                                              "not across this boundary"))
    assert isinstance(action, ReturnBounce) and (action.side, action.pair) == ("red", ("blue.example", "red.example"))
    assert action.parcel.original is None
    assert serialise(action.parcel.stanza) == (
        '<message type="error" from="juliet@blue.example" to="romeo@red.example/a" id="m1">'
        '<error type="modify"><policy-violation xmlns="urn:ietf:params:xml:ns:xmpp-stanzas"/>'
        '<text xmlns="urn:ietf:params:xml:ns:xmpp-stanzas">not across this boundary</text></error></message>')
    core.check()
    assert core.heard("bounce") == [("bounce", ("m1", "no-bounces", "policy-violation"))]


def test_errors_and_results_are_dropped_instead_of_bounced():
    """A bounce of an error stanza is a drop (errors and results never bounce), counted and told as a drop."""
    core = Core()
    ticket = core.settlement.accept(reparse_stanza(
        "<message from='romeo@red.example/a' to='juliet@blue.example' type='error' id='e1'/>"), PAIR, 50, RED_TO_BLUE, 0)
    assert core.settlement.judged(ticket, Judgement.bounced(ticket.stanza, "no", "not-allowed")) is None
    core.check()
    assert core.heard("drop") == [("drop", ("e1", "no", "not bounced (not-allowed): errors and results never are"))]


def test_a_drop_tells_the_rule_text_and_the_escaped_notes():
    """A drop verdict settles with nothing to carry; its event has the rule, its text and the rules' notes escaped."""
    events = []

    class Notes(SettlementObserver):
        def stanza_dropped(self, event):
            events.append(event)

    core = Core(more=(Notes(),))
    ticket = core.accept(1)
    judgement = Judgement(Verdict.DROP, ticket.stanza, "no-drops", 2, None, "dropped here", (), ("a\nforged line",))
    assert core.settlement.judged(ticket, judgement) is None
    core.check()
    (event,) = events
    assert (event.event, event.rule, event.rev, event.direction, event.text, event.notes) == (
        "drop", "no-drops", 2, RED_TO_BLUE, "dropped here", ("a\\nforged line",))


def test_refer_without_an_authority_drops_and_with_one_stays_in_flight():
    """Refer with no release authority drops (fail closed); with one the core says refer and the stanza stays in flight."""
    core = Core()
    first, second = core.accept(1), core.accept(2)
    assert core.settlement.judged(first, Judgement.referred(first.stanza, "ask", 4), referable=False) is None
    judgement = Judgement.referred(second.stanza, "ask", 4)
    assert core.settlement.judged(second, judgement) == Refer(second, judgement)
    core.check()
    assert core.settlement.in_flight == 1
    assert core.heard("drop") == [("drop", ("m1", "ask", REFER_WITHOUT_AUTHORITY))]


def referred(core, number=1):
    ticket = core.accept(number, "secret plans")
    judgement = Judgement.referred(ticket.stanza, "ask", 4)
    core.settlement.judged(ticket, judgement)
    return ticket, judgement


def test_the_answers_of_the_release_authority_settle_the_referred_stanza():
    """Released: deliver what the policy judged; denied: drop; busy: bounce (resource-constraint) with the reason as detail only."""
    core = Core()
    released, denied, busy = (referred(core, number) for number in (1, 2, 3))
    action = core.settlement.answered(*released, Release(True, released[1].stanza, "ok"))
    assert isinstance(action, Deliver) and action.parcel.stanza is released[1].stanza
    assert core.settlement.answered(*denied, Release(False, None, "denied")) is None
    bounce = core.settlement.answered(*busy, Release(False, None, "too busy\n", busy=True))
    assert "the guard is too busy to take this stanza now" in serialise(bounce.parcel.stanza)
    assert "too busy" not in serialise(bounce.parcel.stanza).replace("the guard is too busy", "")
    core.check()
    assert core.heard("drop", "bounce") == [("drop", ("m2", "ask", "refer: denied")),
                                            ("bounce", ("m3", "ask", "resource-constraint"))]


def test_a_stanza_the_authority_changed_leaves_only_as_the_policy_judges_it_again():
    """A changed stanza passes as the policy's new judgement builds it; refused or not judged at all, it is dropped."""
    core = Core()
    tickets = [referred(core, number) for number in (1, 2, 3)]
    changed = [message(number, "[redacted]") for number in (1, 2, 3)]
    passes = core.settlement.answered(*tickets[0], Release(True, changed[0], "changed"),
                                      Judgement.passed(changed[0], "after-review"))
    refused = core.settlement.answered(*tickets[1], Release(True, changed[1], "changed"),
                                       Judgement.dropped(changed[1], "no-forbidden"))
    unjudged = core.settlement.answered(*tickets[2], Release(True, changed[2], "changed"))
    assert passes.parcel.stanza is changed[0] and refused is None and unjudged is None
    core.check()
    assert core.heard("pass", "drop") == [("pass", ("m1", "after-review")),
                                          ("drop", ("m2", "no-forbidden", REFER_CHANGED_REFUSED)),
                                          ("drop", ("m3", FAIL_CLOSED_RULE, REFER_CHANGED_REFUSED))]


def test_shutdown_settles_a_referred_stanza_once_and_the_late_answer_is_refused():
    """Stopping bounces what waits for the authority; a release arriving afterwards is refused: nothing leaves, nothing counts."""
    core = Core()
    ticket, judgement = referred(core)
    stopping = core.settlement.undeliverable(Parcel(ticket.stanza, ticket.stanza, ticket, ticket.size),
                                             "remote-server-timeout", "the guard is stopping")
    assert isinstance(stopping, ReturnBounce)
    assert core.settlement.answered(ticket, judgement, Release(True, ticket.stanza, "late")) is None
    core.check()
    assert (core.books.bounced, core.books.delivered, core.settlement.counts["refused"]) == (1, 0, 1)
    assert core.books.summary()["bounce_reasons"] == {"guard:remote-server-timeout": 1}


def test_a_reload_judges_again_under_the_same_number():
    """A renewed ticket (a reload) is the same accepted stanza: its drop settles it, and the carrier's old parcel then settles nothing."""
    core = Core()
    ticket = core.accept(1)
    parcel = core.settlement.judged(ticket, Judgement.passed(ticket.stanza, "pass-rest")).parcel
    renewed = replace(ticket, generation=1)
    assert core.settlement.judged(renewed, Judgement.dropped(ticket.stanza, "stricter")) is None
    core.settlement.delivered(parcel)
    core.check()
    assert (core.books.dropped, core.books.delivered, core.settlement.counts["refused"]) == (1, 0, 1)


def test_a_record_that_cannot_be_written_halts_relaying_and_later_stanzas_bounce():
    """An observer that cannot record a drop halts relaying (told once); later stanzas bounce service-unavailable unjudged."""
    core = Core(Recorder(failing={"drop"}))
    first = core.accept(1)
    core.settlement.judged(first, Judgement.dropped(first.stanza, "no-drops"))
    assert core.settlement.halted_reason == "cannot record drop"
    second = core.accept(2)
    action = core.settlement.refused_while_halted(second)
    assert "<service-unavailable " in serialise(action.parcel.stanza)
    core.check()
    assert core.heard("halted", "bounce") == [("halted", "cannot record drop"),
                                              ("bounce", ("m2", HALTED_RULE, "service-unavailable"))]
    assert core.books.dropped == 1  # the drop counts: it happened, only its record is missing


def test_a_pass_that_cannot_be_recorded_bounces_instead_of_leaving():
    """When a pass cannot be recorded and the guard stops on audit failure, the stanza bounces (service-unavailable)."""
    core = Core(Recorder(failing={"pass"}))
    ticket = core.accept(1)
    action = core.settlement.judged(ticket, Judgement.passed(ticket.stanza, "pass-rest"))
    assert isinstance(action, ReturnBounce) and "<service-unavailable " in serialise(action.parcel.stanza)
    core.check()
    assert core.books.summary()["bounce_reasons"] == {HALTED_RULE: 1} and core.books.delivered == 0


def test_without_stop_on_audit_failure_an_unrecorded_pass_still_leaves():
    """With audit failure set to carry on, an unrecorded pass is delivered and relaying does not halt."""
    core = Core(Recorder(failing={"pass"}), stop_on_audit_failure=False)
    ticket = core.accept(1)
    assert isinstance(core.settlement.judged(ticket, Judgement.passed(ticket.stanza, "pass-rest")), Deliver)
    assert core.settlement.halted_reason is None


def test_a_fault_in_an_observer_is_raised_after_every_observer_heard_and_the_stanza_is_settled_once():
    """An observer's bug during a bounce surfaces as an exception, yet the books counted it and no second settlement follows."""
    broken = Recorder(broken={"bounce"})
    core = Core(broken)
    ticket = core.accept(1)
    with pytest.raises(RuntimeError):
        core.settlement.judged(ticket, Judgement.bounced(ticket.stanza, "no", "not-allowed"))
    assert not core.settlement.is_open(ticket)
    assert core.settlement.fault(ticket) is None
    core.check()
    assert core.books.bounced == 1 and core.settlement.counts["refused"] == 1


def test_a_fault_in_an_observer_of_a_pass_lets_nothing_leave_and_the_fault_bounce_settles_it():
    """A bug while telling a pass raises (no Deliver); the stanza is still in flight and the fault bounce settles it."""
    core = Core(Recorder(broken={"pass"}))
    ticket = core.accept(1)
    with pytest.raises(RuntimeError):
        core.settlement.judged(ticket, Judgement.passed(ticket.stanza, "pass-rest"))
    assert core.settlement.is_open(ticket)
    action = core.settlement.fault(ticket)
    assert "<internal-server-error " in serialise(action.parcel.stanza)
    core.check()
    assert core.books.summary()["bounce_reasons"] == {INTERNAL_FAULT_RULE: 1}


def test_our_own_bounce_that_cannot_be_delivered_is_lost_counted_and_told_but_settles_nothing():
    """Our bounce given up by its carrier is a bounce-lost event with the escaped detail; the books are untouched."""
    core = Core()
    ticket = core.accept(1)
    bounce = core.settlement.judged(ticket, Judgement.bounced(ticket.stanza, "no", "not-allowed"))
    assert core.settlement.undeliverable(bounce.parcel, "remote-server-not-found", "far\nside") is None
    core.check()
    assert core.heard("bounce-lost") == [
        ("bounce-lost", ("m1", BOUNCE_LOST_RULE, "remote-server-not-found", "far\\nside"))]
    assert core.settlement.counts["bounce-lost"] == 1 and core.books.bounced == 1


def test_the_invariant_holds_at_every_step_of_a_mixed_run():
    """Passes, bounces, drops, refers, reloads, carrier reports, repeats and shutdown: after each step the books add up."""
    core = Core()
    waiting = []
    for number in range(60):
        ticket = core.accept(number)
        verdict = number % 5
        if verdict == 0:
            action = core.settlement.judged(ticket, Judgement.passed(ticket.stanza, "pass"))
            waiting.append(action.parcel)
        elif verdict == 1:
            core.settlement.judged(ticket, Judgement.bounced(ticket.stanza, "b", "not-allowed"))
        elif verdict == 2:
            core.settlement.judged(ticket, Judgement.dropped(ticket.stanza, "d"))
        elif verdict == 3:
            judgement = Judgement.referred(ticket.stanza, "ask")
            core.settlement.judged(ticket, judgement)
            if number % 2:
                waiting.append(core.settlement.answered(ticket, judgement, Release(True, ticket.stanza, "ok")).parcel)
        else:
            core.settlement.judged(replace(ticket, generation=1), Judgement.passed(ticket.stanza, "again"))
        core.check()
        if number % 7 == 0 and waiting:
            core.settlement.delivered(waiting[0])
            core.settlement.delivered(waiting.pop(0))  # a repeat: refused
            core.check()
    for parcel in waiting:
        core.settlement.undeliverable(parcel, "remote-server-timeout", "the guard is stopping")
        core.check()
    assert core.settlement.in_flight == 6 + 12  # six referred never answered, twelve passes judged again never carried
    assert core.settlement.counts["refused"] > 0 and core.settlement.counts["accepted"] == 60


def test_the_books_and_the_audit_trail_are_settlement_observers_and_a_new_one_is_one_object():
    """Books, AuditObserver and the do-nothing base provide the interface; observe() adds a third observer (metrics)."""
    verifyObject(ISettlementObserver, Books())
    verifyObject(ISettlementObserver, AuditObserver(AuditLog(None)))
    metrics = Recorder()
    verifyObject(ISettlementObserver, metrics)
    core = Core()
    core.settlement.observe(metrics)
    ticket = core.accept(1)
    core.settlement.judged(ticket, Judgement.dropped(ticket.stanza, "d"))
    assert metrics.heard == [("accepted", "m1"), ("drop", ("m1", "d", None))]


def test_an_observer_that_overrides_one_method_hears_only_that_and_others_still_hear_all():
    """A metrics-like observer overriding only stanza_dropped is told drops; observers added later hear from then on."""
    class Drops(SettlementObserver):
        def __init__(self):
            self.rules = []

        def stanza_dropped(self, event):
            self.rules.append(event.rule)

    drops = Drops()
    core = Core(more=(drops,))
    first = core.accept(1)
    core.settlement.judged(first, Judgement.dropped(first.stanza, "d1"))
    late = Recorder()
    core.settlement.observe(late)
    second = core.accept(2)
    core.settlement.judged(second, Judgement.dropped(second.stanza, "d2"))
    assert drops.rules == ["d1", "d2"]
    assert late.heard == [("accepted", "m2"), ("drop", ("m2", "d2", None))]
    core.check()
