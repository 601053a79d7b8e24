"""Labels at the IRC boundary: the bridge policy judges room messages toward IRC, FLOTs are written, IRC text is labelled."""

from pathlib import Path

import pytest

from guard.core.pipeline import Verdict
from guard.core.policy import compile_policy_text, load_policy
from guard.core.policy.elements import parse_stanza_text
from guard.core.policy.labels import SecurityLabel
from guard.edges.irc.labels import (MARKING_ABOVE_CLEARANCE_TEXT, NO_LABEL_TEXT, NOT_RELEASABLE_TEXT, BridgeLabels,
                                    FirstLineMarking, Labelled, MarkingOnly, Refused, RefusedFromIrc, Released)

POLICY = Path(__file__).resolve().parents[3] / "policies" / "irc-bridge.toml"
ESS = {"UNCLASSIFIED": "MQgCAQEGA4g3AQ==", "RESTRICTED": "MQgCAQIGA4g3AQ==", "SECRET": "MQgCAQQGA4g3AQ==",
       "RESTRICTED CRYPTO": "MRwCAQIGA4g3ATESMBCABIg3AQmBCAwGQ1JZUFRP"}
RESTRICTED = SecurityLabel("red-national", "RESTRICTED")
SECRET = SecurityLabel("red-national", "SECRET")
UNCLASSIFIED = SecurityLabel("red-national", "UNCLASSIFIED")


def room_message(body="meet at noon", label=None, namespace="jabber:server", extra=""):
    """A groupchat message from the room to the gateway's listening occupant, as the component receives it."""
    marked = "" if label is None else (
        "<securitylabel xmlns='urn:xmpp:sec-label:0'><displaymarking>what the sender wrote</displaymarking>"
        f"<label><esssecuritylabel xmlns='urn:xmpp:sec-label:ess:0'>{ESS[label]}</esssecuritylabel></label>"
        "</securitylabel>")
    return parse_stanza_text(
        f"<message xmlns='{namespace}' from='ops@conference.red.example/alice' to='irc.red.example/ops@conference."
        f"red.example' type='groupchat' id='m1'><body>{body}</body>{extra}{marked}</message>")


@pytest.fixture(scope="module")
def policy():
    return load_policy(str(POLICY))


@pytest.fixture
def labels(policy):
    return BridgeLabels(policy, "lab.irc.invalid", map_markings={"RESTRICTED": RESTRICTED})


def test_an_unlabelled_room_message_is_released_with_the_rooms_default_marking_as_its_own_first_line(labels):
    """Unlabelled room text is UNCLASSIFIED (the room service's default label) and reaches IRC under its FLOT line."""
    released = labels.release(room_message())
    assert isinstance(released, Released)
    assert (released.text, released.marking, released.label, released.rule_id) == (
        "meet at noon", "UNCLASSIFIED", UNCLASSIFIED, "room-message-release")
    assert labels.for_irc(released) == "Protective Marking: UNCLASSIFIED\nmeet at noon"


def test_a_labelled_message_carries_the_policys_display_marking_never_the_senders(labels):
    """A RESTRICTED label is judged and its marking comes from the label policy, not the sender's displaymarking."""
    released = labels.release(room_message("the rota", label="RESTRICTED",
                                           extra="<html xmlns='http://jabber.org/protocol/xhtml-im'/>"))
    assert (released.text, released.marking, released.label) == ("the rota", "RESTRICTED", RESTRICTED)
    assert "what the sender wrote" not in labels.for_irc(released)
    assert released.judgement.stanza.toXml().count("xhtml-im") == 0


def test_the_flot_as_a_prefix_and_a_custom_template(policy):
    """With position "prefix" the FLOT starts the first IRC line; the template is the operator's."""
    labels = BridgeLabels(policy, "lab.irc.invalid", FirstLineMarking("[{marking}]", "prefix"))
    assert labels.for_irc(labels.release(room_message("two\nlines"))) == "[UNCLASSIFIED] two\nlines"


@pytest.mark.parametrize("label", ["SECRET", "RESTRICTED CRYPTO"])
def test_a_label_not_releasable_to_the_irc_side_is_refused_with_policy_violation(labels, label):
    """SECRET (above the channel's clearance) and CRYPTO (a restrictive category it lacks) bounce: policy-violation."""
    refused = labels.release(room_message("the plan", label=label))
    assert isinstance(refused, Refused)
    assert (refused.condition, refused.rule_id, refused.own_text) == (
        "policy-violation", "label-not-releasable", "The message's security label is not releasable to the IRC channel.")
    assert refused.judgement.verdict is Verdict.BOUNCE


PERMISSIVE = (POLICY.read_text().split("# --- rules")[0] + """
[[rules]]
id = "everything"
rev = 1
why = "a careless rule that judges no label"
verdict = "pass"
keep = ["body"]
""")


def test_the_gateway_refuses_what_is_not_releasable_even_when_a_rule_lets_it_through():
    """A policy whose rule passes without a label check still cannot put a SECRET message on IRC."""
    labels = BridgeLabels(compile_policy_text(PERMISSIVE, "careless.toml"), "lab.irc.invalid")
    refused = labels.release(room_message("the plan", label="SECRET"))
    assert (refused.condition, refused.rule_id, refused.own_text) == (
        "policy-violation", "irc:label-not-releasable", NOT_RELEASABLE_TEXT)
    assert refused.notes and "SECRET is above RESTRICTED" in refused.notes[0]
    assert isinstance(labels.release(room_message("fine", label="RESTRICTED")), Released)


def test_a_message_with_no_label_value_is_refused_when_the_policy_declares_labels():
    """Unlabelled text from a room service with no default label has no value: refused, never released unmarked."""
    text = PERMISSIVE.replace('[labels.peers."conference.red.example"]\n', "[labels.peers.\"other.example\"]\n")
    labels = BridgeLabels(compile_policy_text(text, "careless.toml"), "lab.irc.invalid")
    refused = labels.release(room_message())
    assert (refused.condition, refused.rule_id, refused.own_text) == ("policy-violation", "irc:no-label", NO_LABEL_TEXT)


def test_a_policy_without_labels_releases_text_without_a_flot():
    """A bridge policy that declares no label policy releases plain text with no marking at all."""
    policy = compile_policy_text('[policy]\nname = "plain"\n[[rules]]\nid = "all"\nrev = 1\nwhy = "w"\n'
                                 'verdict = "pass"\nkeep = ["body"]\n', "plain.toml")
    labels = BridgeLabels(policy, "lab.irc.invalid")
    released = labels.release(room_message())
    assert (released.marking, released.label, labels.for_irc(released)) == (None, None, "meet at noon")


def test_a_stanza_from_the_component_stream_is_judged_the_same_and_left_untouched(labels):
    """A message in jabber:component:accept is judged as its server-namespace copy; the received stanza is unchanged."""
    received = room_message("the rota", label="RESTRICTED", namespace="jabber:component:accept")
    before = received.toXml()
    released = labels.release(received)
    assert (released.text, released.marking) == ("the rota", "RESTRICTED")
    assert received.toXml() == before
    assert released.judgement.stanza["to"] == "lab.irc.invalid"


def test_a_subject_is_released_as_the_topic(labels):
    """A room subject passes as a subject (the IRC topic), with its marking."""
    stanza = parse_stanza_text("<message from='ops@conference.red.example/alice' to='irc.red.example' "
                               "type='groupchat'><subject>rota week 49</subject></message>")
    released = labels.release(stanza)
    assert (released.text, released.subject, released.marking) == (None, "rota week 49", "UNCLASSIFIED")


def test_a_policy_that_raises_drops_the_message(labels):
    """Any fault while judging refuses the message (fail closed), as a drop naming guard:policy-failure."""

    class Broken:
        labels = None

        def judge(self, stanza, direction):
            raise RuntimeError("boom")

    refused = BridgeLabels(Broken(), "lab.irc.invalid").release(room_message())
    assert isinstance(refused, Refused)
    assert (refused.condition, refused.rule_id) == (None, "guard:policy-failure")


def test_a_private_message_is_bounced_by_the_policy(labels):
    """A chat message is not the room's conversation: the sample policy bounces it with service-unavailable."""
    stanza = parse_stanza_text("<message from='ops@conference.red.example/alice' to='irc.red.example' type='chat'>"
                               "<body>psst</body></message>")
    refused = labels.release(stanza)
    assert (refused.condition, refused.rule_id) == ("service-unavailable", "only-groupchat")


def test_irc_text_gets_the_irc_sides_default_label(labels):
    """A plain IRC message carries the IRC side's default label (UNCLASSIFIED in the sample)."""
    assert labels.from_irc("hello") == Labelled("hello", UNCLASSIFIED)
    written = labels.securitylabel(labels.default_label).toXml()
    assert ">UNCLASSIFIED</displaymarking>" in written and ESS["UNCLASSIFIED"] in written


def test_a_flot_typed_on_irc_stays_text_unless_mapped(labels, policy):
    """An unmapped typed FLOT (SECRET) is text under the default label; without any map every FLOT is text."""
    assert labels.from_irc("Protective Marking: SECRET the plan") == Labelled(
        "Protective Marking: SECRET the plan", UNCLASSIFIED)
    unmapped = BridgeLabels(policy, "lab.irc.invalid")
    assert unmapped.from_irc("Protective Marking: RESTRICTED the rota") == Labelled(
        "Protective Marking: RESTRICTED the rota", UNCLASSIFIED)


def test_a_mapped_flot_becomes_the_label_and_leaves_the_text(labels):
    """A mapped marking (any case, any spacing) labels the message; the FLOT itself is not part of the text."""
    assert labels.from_irc("protective  marking:RESTRICTED the rota") == Labelled("the rota", RESTRICTED, mapped=True)
    assert labels.from_irc("Protective Marking: RESTRICTED\nline two") == Labelled("line two", RESTRICTED, mapped=True)
    assert labels.from_irc("Protective Marking: RESTRICTEDLY") == Labelled("Protective Marking: RESTRICTEDLY",
                                                                          UNCLASSIFIED)
    assert labels.from_irc("Protective Marking: RESTRICTED") == MarkingOnly(RESTRICTED)


def test_a_mapping_above_the_clearance_is_refused_never_downgraded(policy):
    """Even if a map names a label above the IRC side's clearance (the config refuses it), the message is refused."""
    labels = BridgeLabels(policy, "lab.irc.invalid", map_markings={"SECRET": SECRET})
    refused = labels.from_irc("Protective Marking: SECRET the plan")
    assert isinstance(refused, RefusedFromIrc)
    assert (refused.rule_id, refused.own_text) == ("irc:marking-above-clearance", MARKING_ABOVE_CLEARANCE_TEXT)
    assert "SECRET is above RESTRICTED" in refused.detail


def test_a_flot_template_needs_its_marking_field():
    """A template without {marking}, or with another field, or a position other than line/prefix, is refused."""
    for template, position in (("Marking", "line"), ("{marking} {x}", "line"), ("{marking}", "footer")):
        with pytest.raises(ValueError):
            FirstLineMarking(template, position)
    assert FirstLineMarking().render("SECRET\x07") == "Protective Marking: SECRET"
