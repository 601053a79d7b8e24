"""
Reading a policy file (TOML) into a ``CompiledPolicy``, or refusing it with
every problem found.  The only I/O of the policy package is reading that one
file; everything else is a pure function of its text, so a reload is: load
the new file, and if that succeeded, assign the result.
"""

from __future__ import annotations

import tomllib

from guard.core.policy import checker
from guard.core.policy.compiled import CompiledPolicy, Rule
from guard.core.policy.conditions import (
    ALL_TYPES, BodyMatches, ConditionError, DomainIs, ElementPath, Inspect, Inspection, JidIs,
    JidPattern, KINDS, KindIs, LabelClassificationIs, LabelIn, LabelPolicyIs, LabelPresence,
    LabelRank, LabelReleasable, LabelValid, Negated, PayloadAbsent, PayloadOnly, PayloadPresent,
    SizeAbove, SizeBelow, TextMatches, TypeIs, _as_list, compile_regex,
)
from guard.core.policy.elements import ElementPattern, ElementPatternError
from guard.core.policy.folding import PRESENCE_STATES, FoldingProfile, MessageFolding, PresenceFolding
from guard.core.policy.labels import (
    CATEGORY_TYPES, LABEL_FORMATS, Category, Classification, Clearance, LabelAuthority, LabelPolicy,
    SecurityLabel, Translation,
)
from guard.core.policy.problems import PolicyError, Problem, SourceLines
from guard.core.policy.shapes import (
    ATTRIBUTE_NAME, EVERYTHING, ID_MAX_BYTES, LOCALPART_MAX_BYTES, RESOURCE_MAX_BYTES, EnvelopeBounds, Shape,
    built_in_shapes, parse_element_name,
)
from guard.core.vocabulary import KIND_TYPES, STANZA_ERROR_CONDITIONS

MAX_POLICY_BYTES = 4 * 1024 * 1024
MAX_RULES = 100_000

VERDICTS = ("pass", "drop", "bounce", "fold", "translate", "refer", "continue")
DEFAULT_VERDICTS = ("pass", "drop", "bounce")

TOP_KEYS = {"policy", "sets", "shapes", "label_policies", "labels", "translations", "folding", "rules"}
POLICY_KEYS = {"name", "description", "default", "default_condition", "default_text", "from_side", "to_side",
               "id_max_bytes", "localpart_max_bytes", "resource_max_bytes"}
SET_KINDS = {"domains", "jids", "namespaces", "labels"}
LABEL_POLICY_KEYS = {"name", "ess_oid", "stanag_id", "emit", "classifications", "categories"}
CLASSIFICATION_KEYS = {"name", "ess", "stanag", "marking", "fgcolor", "bgcolor"}
CATEGORY_KEYS = {"name", "type", "ess_type", "ess_value", "stanag_tag", "stanag_value", "marking"}
LABELS_KEYS = {"gateway_clearance", "default_label", "peers"}
PEER_KEYS = {"clearance", "default_label"}
LABEL_SPEC_KEYS = {"policy", "classification", "categories"}
TRANSLATION_KEYS = {"from", "to", "classifications", "categories", "keep_original"}
FOLDING_KEYS = {"message", "presence"}
MESSAGE_FOLDING_KEYS = {"keep", "drop_types", "drop_if_only"}
PRESENCE_FOLDING_KEYS = {"states", "keep"}
RULE_META_KEYS = {"id", "rev", "why", "verdict", "condition", "text", "fold", "translate", "strip", "log", "keep"}
SHAPE_KEYS = {"element", "attributes", "text", "children"}
CONDITION_KEYS = {
    "kind", "type", "from_domain", "to_domain", "from_jid", "to_jid", "payload_present",
    "payload_absent", "payload_only", "inspect", "body_matches", "text_matches", "larger_than", "smaller_than",
    "label", "label_valid", "label_releasable", "label_policy", "label_classification",
    "label_at_most", "label_at_least", "label_in",
}
INSPECT_KEYS = {"path", "equals", "matches"}


class _Reader:
    """Collects problems while reading one policy file."""

    def __init__(self, path, text):
        self.path = path
        self.lines = SourceLines(text)
        self.problems = []

    def problem(self, where, message, line=None):
        self.problems.append(Problem(self.path, where, message, line))

    def unknown_keys(self, table, allowed, where, line=None):
        for key in table:
            if key not in allowed:
                self.problem(where, f"unknown key {key!r} (allowed: {', '.join(sorted(allowed))})", line)

    def table(self, value, where, line=None):
        if not isinstance(value, dict):
            self.problem(where, f"expected a table, found {type(value).__name__}", line)
            return {}
        return value


def load_policy(path) -> CompiledPolicy:
    """Read and compile the policy at ``path``; raise ``PolicyError`` naming every problem."""
    path = str(path)
    try:
        with open(path, "rb") as source:
            raw = source.read(MAX_POLICY_BYTES + 1)
    except OSError as problem:
        raise PolicyError([Problem(path, "file", f"cannot read: {problem.strerror or problem}")]) from None
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError([Problem(path, "file", f"larger than {MAX_POLICY_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as problem:
        raise PolicyError([Problem(path, "file", f"not UTF-8: {problem}")]) from None
    return compile_policy_text(text, path)


def compile_policy_text(text: str, path: str = "<policy>") -> CompiledPolicy:
    """Compile policy TOML ``text`` (``path`` is used in messages only)."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as problem:
        raise PolicyError([Problem(path, "toml", str(problem))]) from None
    reader = _Reader(path, text)
    policy = _compile(reader, document)
    if reader.problems:
        raise PolicyError(reader.problems)
    findings = checker.analyse(policy, reader.lines)
    if findings:
        raise PolicyError([Problem(path, f"rule {rule_id}", message, line) for rule_id, message, line in findings])
    return policy


def _compile(reader, document):
    reader.unknown_keys(document, TOP_KEYS, "top level")
    meta = reader.table(document.get("policy", {}), "[policy]", reader.lines.section("policy"))
    reader.unknown_keys(meta, POLICY_KEYS, "[policy]", reader.lines.section("policy"))
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        reader.problem("[policy]", "name is required (a non-empty string)", reader.lines.section("policy"))
        name = "(unnamed)"
    default = _default(reader, meta)
    sides = None
    if "from_side" in meta or "to_side" in meta:
        if not isinstance(meta.get("from_side"), str) or not isinstance(meta.get("to_side"), str):
            reader.problem("[policy]", "from_side and to_side go together, as strings", reader.lines.section("policy"))
        else:
            sides = (meta["from_side"], meta["to_side"])
    sets = _sets(reader, document.get("sets", {}))
    label_policies = _label_policies(reader, document.get("label_policies", []))
    translations = _translations(reader, document.get("translations", {}), label_policies)
    authority = _labels(reader, document.get("labels", {}), label_policies, translations)
    shapes = _shapes(reader, document.get("shapes", {}))
    folding = _folding(reader, document.get("folding", {}), shapes, document.get("rules", []))
    context = _RuleContext(sets, label_policies, translations, folding, authority, shapes)
    rules = _rules(reader, document.get("rules", []), context)
    description = meta.get("description", "")
    return CompiledPolicy(name, reader.path, rules, default, authority, folding, translations,
                          sides, description if isinstance(description, str) else "",
                          EnvelopeBounds(_byte_bound(reader, meta, "id_max_bytes", ID_MAX_BYTES),
                                         _byte_bound(reader, meta, "localpart_max_bytes", LOCALPART_MAX_BYTES),
                                         _byte_bound(reader, meta, "resource_max_bytes", RESOURCE_MAX_BYTES)))


def _byte_bound(reader, meta, key, bounds):
    """``[policy] key``: how many UTF-8 bytes of a text the envelope carries unjudged may cross (``bounds``: default, most)."""
    default, limit = bounds
    value = meta.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        reader.problem("[policy]", f"{key} must be an integer from 1 to {limit}, not {value!r}",
                       reader.lines.section("policy", key))
        return default
    return value


def _default(reader, meta):
    line = reader.lines.section("policy", "default")
    verdict = meta.get("default", "drop")
    if verdict not in DEFAULT_VERDICTS:
        reader.problem("[policy]", f"default must be one of {', '.join(DEFAULT_VERDICTS)}, not {verdict!r}", line)
        verdict = "drop"
    condition = meta.get("default_condition")
    if verdict == "bounce":
        condition = condition or "not-acceptable"
        if condition not in STANZA_ERROR_CONDITIONS:
            reader.problem("[policy]", f"default_condition {condition!r} is not an RFC 6120 stanza error condition", line)
    elif condition is not None:
        reader.problem("[policy]", "default_condition only goes with default = \"bounce\"", line)
    text = meta.get("default_text")
    if text is not None and not isinstance(text, str):
        reader.problem("[policy]", "default_text must be a string", line)
        text = None
    return verdict, condition, text


def _sets(reader, value):
    line = reader.lines.section("sets")
    sets = {kind: {} for kind in SET_KINDS}
    value = reader.table(value, "[sets]", line)
    reader.unknown_keys(value, SET_KINDS, "[sets]", line)
    for kind in SET_KINDS:
        table = reader.table(value.get(kind, {}), f"[sets.{kind}]", line)
        for set_name, members in table.items():
            if not isinstance(members, list) or not members:
                reader.problem(f"[sets.{kind}]", f"set {set_name!r} must be a non-empty list",
                               reader.lines.section(f"sets.{kind}", set_name))
                continue
            sets[kind][set_name] = members
    return sets


def _label_policies(reader, value):
    policies = {}
    if not isinstance(value, list):
        reader.problem("[[label_policies]]", "label_policies must be an array of tables")
        return policies
    for position, table in enumerate(value):
        where = f"label policy #{position + 1}"
        line = reader.lines.section("label_policies")
        table = reader.table(table, where, line)
        name = table.get("name")
        if isinstance(name, str) and name:
            where = f"label policy {name}"
        else:
            reader.problem(where, "name is required", line)
            continue
        reader.unknown_keys(table, LABEL_POLICY_KEYS, where, line)
        if name in policies:
            reader.problem(where, "declared twice", line)
        ess_oid, stanag_id = table.get("ess_oid"), table.get("stanag_id")
        if ess_oid is None and stanag_id is None:
            reader.problem(where, "needs ess_oid or stanag_id (or both)", line)
        if ess_oid is not None and not _is_oid(ess_oid):
            reader.problem(where, f"ess_oid {ess_oid!r} is not a dotted object identifier", line)
            ess_oid = None
        emit = table.get("emit", "ess" if ess_oid else "stanag4774")
        if emit not in LABEL_FORMATS or (emit == "ess" and not ess_oid) or (emit == "stanag4774" and not stanag_id):
            reader.problem(where, f"emit must be one of {LABEL_FORMATS} and its identifier must be set", line)
            emit = "ess" if ess_oid else "stanag4774"
        classifications = {}
        entries = table.get("classifications", [])
        if not isinstance(entries, list) or not entries:
            reader.problem(where, "classifications must list at least one, lowest first", line)
            entries = []
        for rank, entry in enumerate(entries):
            entry = reader.table(entry, where, line)
            reader.unknown_keys(entry, CLASSIFICATION_KEYS, where, line)
            cname = entry.get("name")
            if not isinstance(cname, str) or not cname or cname in classifications:
                reader.problem(where, f"classification #{rank + 1} needs a unique name", line)
                continue
            ess = entry.get("ess")
            if ess_oid and (not isinstance(ess, int) or isinstance(ess, bool) or not 0 <= ess <= 256):
                reader.problem(where, f"classification {cname} needs ess = 0..256 (ess_oid is set)", line)
                ess = None
            classifications[cname] = Classification(
                cname, rank, ess, str(entry.get("stanag", cname)), str(entry.get("marking", cname)),
                entry.get("fgcolor"), entry.get("bgcolor"))
        categories = {}
        for entry in table.get("categories", []) if isinstance(table.get("categories", []), list) else []:
            entry = reader.table(entry, where, line)
            reader.unknown_keys(entry, CATEGORY_KEYS, where, line)
            cname = entry.get("name")
            if not isinstance(cname, str) or not cname or cname in categories:
                reader.problem(where, "every category needs a unique name", line)
                continue
            ctype = entry.get("type", "restrictive")
            if ctype not in CATEGORY_TYPES:
                reader.problem(where, f"category {cname}: type must be one of {CATEGORY_TYPES}", line)
            ess = None
            if "ess_type" in entry or "ess_value" in entry:
                try:
                    bytes.fromhex(str(entry.get("ess_value", "")))
                    ok = _is_oid(entry.get("ess_type")) and entry.get("ess_value")
                except ValueError:
                    ok = False
                if not ok:
                    reader.problem(where, f"category {cname}: ess_type (OID) and ess_value (hex DER) go together", line)
                else:
                    ess = (entry["ess_type"], str(entry["ess_value"]).lower())
            stanag = None
            if "stanag_tag" in entry or "stanag_value" in entry:
                if not isinstance(entry.get("stanag_tag"), str) or not isinstance(entry.get("stanag_value"), str):
                    reader.problem(where, f"category {cname}: stanag_tag and stanag_value go together", line)
                else:
                    stanag = (entry["stanag_tag"], entry["stanag_value"])
            if emit == "ess" and ess is None or emit == "stanag4774" and stanag is None:
                reader.problem(where, f"category {cname} has no {emit} encoding, which this policy emits", line)
            categories[cname] = Category(cname, ctype, ess, stanag, entry.get("marking"))
        _unambiguous(reader, where, line, classifications, categories)
        for other in policies.values():
            if ess_oid and other.ess_oid == ess_oid or stanag_id and other.stanag_id == stanag_id:
                reader.problem(where, f"has the same identifier as label policy {other.name}", line)
        policies[name] = LabelPolicy(name, ess_oid, stanag_id, emit, classifications, categories)
    return policies


def _unambiguous(reader, where, line, classifications, categories):
    """Every wire value must stand for one classification or category, or a label could be read two ways."""
    for what, values in (
        ("ESS classification", [(c.ess, c.name) for c in classifications.values() if c.ess is not None]),
        ("STANAG 4774 classification", [(c.stanag, c.name) for c in classifications.values()]),
        ("ESS category", [(c.ess, c.name) for c in categories.values() if c.ess is not None]),
        ("STANAG 4774 category", [(c.stanag, c.name) for c in categories.values() if c.stanag is not None]),
    ):
        seen = {}
        for value, name in values:
            if value in seen:
                reader.problem(where, f"{what} {value!r} stands for both {seen[value]} and {name}", line)
            seen.setdefault(value, name)


def _is_oid(value):
    if not isinstance(value, str):
        return False
    parts = value.split(".")
    return len(parts) >= 2 and all(p.isdigit() for p in parts)


def _label_spec(reader, value, policies, where, line, clearance=False):
    table = reader.table(value, where, line)
    reader.unknown_keys(table, LABEL_SPEC_KEYS, where, line)
    policy = policies.get(table.get("policy"))
    if policy is None:
        reader.problem(where, f"unknown label policy {table.get('policy')!r}", line)
        return None
    classification = table.get("classification")
    if classification not in policy.classifications:
        reader.problem(where, f"{policy.name} has no classification {classification!r}", line)
        return None
    categories = table.get("categories", [])
    if not isinstance(categories, list) or any(c not in policy.categories for c in categories):
        reader.problem(where, f"categories must be a list of categories of {policy.name}", line)
        return None
    if clearance:
        return Clearance(policy.name, classification, frozenset(categories))
    return SecurityLabel(policy.name, classification, frozenset(categories))


def _clearances(reader, value, policies, where, line):
    entries = value if isinstance(value, list) else [value]
    found = [_label_spec(reader, entry, policies, where, line, clearance=True) for entry in entries]
    if not found or None in found:
        return None
    return tuple(found)


def _translations(reader, value, policies):
    translations = {}
    for name, table in reader.table(value, "[translations]").items():
        where = f"translation {name}"
        line = reader.lines.section(f"translations.{name}")
        table = reader.table(table, where, line)
        reader.unknown_keys(table, TRANSLATION_KEYS, where, line)
        source, target = policies.get(table.get("from")), policies.get(table.get("to"))
        if source is None or target is None:
            reader.problem(where, "from and to must name declared label policies", line)
            continue
        classifications = reader.table(table.get("classifications", {}), where, line)
        for key, mapped in classifications.items():
            if key not in source.classifications or mapped not in target.classifications:
                reader.problem(where, f"classification {key!r} -> {mapped!r}: not defined in {source.name} -> {target.name}", line)
        categories = {}
        for key, mapped in reader.table(table.get("categories", {}), where, line).items():
            mapped = mapped if isinstance(mapped, list) else [mapped]
            if key not in source.categories or any(m not in target.categories for m in mapped):
                reader.problem(where, f"category {key!r} -> {mapped!r}: not defined in {source.name} -> {target.name}", line)
            categories[key] = tuple(mapped)
        keep = table.get("keep_original", False)
        if not isinstance(keep, bool):
            reader.problem(where, "keep_original must be true or false", line)
        translations[name] = Translation(name, source.name, target.name, dict(classifications),
                                         categories, keep is True)
    return translations


def _labels(reader, value, policies, translations):
    line = reader.lines.section("labels")
    table = reader.table(value, "[labels]", line)
    reader.unknown_keys(table, LABELS_KEYS, "[labels]", line)
    if not table and not policies:
        return None
    gateway = None
    if "gateway_clearance" in table:
        gateway = _clearances(reader, table["gateway_clearance"], policies, "[labels] gateway_clearance",
                              reader.lines.section("labels", "gateway_clearance"))
    default_label = None
    if "default_label" in table:
        default_label = _label_spec(reader, table["default_label"], policies, "[labels] default_label",
                                    reader.lines.section("labels", "default_label"))
    peers = {}
    for domain, peer in reader.table(table.get("peers", {}), "[labels.peers]").items():
        where = f"[labels.peers.\"{domain}\"]"
        peer_line = reader.lines.section(f'labels.peers."{domain}"') or line
        peer = reader.table(peer, where, peer_line)
        reader.unknown_keys(peer, PEER_KEYS, where, peer_line)
        entry = {"clearance": None, "default_label": None}
        if "clearance" in peer:
            entry["clearance"] = _clearances(reader, peer["clearance"], policies, where, peer_line)
        if "default_label" in peer:
            entry["default_label"] = _label_spec(reader, peer["default_label"], policies, where, peer_line)
        peers[domain.lower()] = entry
    return LabelAuthority(policies, gateway, peers, default_label, translations)


def _patterns(reader, values, where, line):
    patterns = []
    for value in values if isinstance(values, list) else [values]:
        try:
            patterns.append(ElementPattern.parse(value))
        except ElementPatternError as problem:
            reader.problem(where, str(problem), line)
    return tuple(patterns)


def _shapes(reader, value):
    """The built-in shapes and the file's ``[shapes.<name>]``, their children resolved by name."""
    shapes = built_in_shapes()
    declared = {}
    for name, table in reader.table(value, "[shapes]", reader.lines.section("shapes")).items():
        where = f"shape {name}"
        line = reader.lines.section(f"shapes.{name}")
        table = reader.table(table, where, line)
        reader.unknown_keys(table, SHAPE_KEYS, where, line)
        if name in shapes:
            reader.problem(where, f"{name!r} is a built-in shape and cannot be redeclared", line)
            continue
        element = parse_element_name(table.get("element"))
        if element is None:
            reader.problem(where, "element is required: {namespace}name, or name in the stanza namespace", line)
            continue
        attributes = table.get("attributes", [])
        if not isinstance(attributes, list) or any(
                not isinstance(a, str) or not (a == "xml:lang" or ATTRIBUTE_NAME.fullmatch(a)) for a in attributes):
            reader.problem(where, "attributes lists attribute names (plain names, or xml:lang)", line)
            attributes = []
        text = table.get("text", False)
        if not isinstance(text, bool):
            reader.problem(where, "text is true or false", line)
            text = False
        children = table.get("children", [])
        if not isinstance(children, list) or any(not isinstance(c, str) for c in children):
            reader.problem(where, "children lists shape names", line)
            children = []
        shapes[name] = Shape(name, element[0], element[1], tuple(attributes), text)
        declared[name] = (children, where, line)
    for name, (children, where, line) in declared.items():
        for child in children:
            if child not in shapes:
                reader.problem(where, f"unknown shape {child!r} in children", line)
                continue
            shapes[name].children.append(shapes[child])
    return shapes


def _shape_list(reader, shapes, values, where, line, key):
    """The shapes named in ``values`` (a list of shape names)."""
    if not isinstance(values, list) or any(not isinstance(v, str) for v in values):
        reader.problem(where, f"{key} lists shape names (built in: {', '.join(sorted(built_in_shapes()))}, "
                              f"or [shapes.<name>] of this file)", line)
        return ()
    found = []
    for value in values:
        if value not in shapes:
            reader.problem(where, f"{key}: unknown shape {value!r}", line)
            continue
        found.append(shapes[value])
    return tuple(found)


def _folding(reader, value, shapes, rules):
    profiles = {}
    for name, table in reader.table(value, "[folding]").items():
        where = f"folding profile {name}"
        line = reader.lines.section(f"folding.{name}")
        table = reader.table(table, where, line)
        reader.unknown_keys(table, FOLDING_KEYS, where, line)
        message = presence = None
        if "message" in table:
            part = reader.table(table["message"], where, line)
            if "strip" in part:
                users = [r.get("id") for r in rules if isinstance(r, dict) and r.get("fold") == name] \
                    if isinstance(rules, list) else []
                reader.problem(where, "message.strip is a deny-list and is no longer read: a folded message is "
                                      "built from what it keeps; list that as message.keep = [shape names] "
                                      "(see policies/README.md)"
                                      + (f"; used by rule {', '.join(map(str, users))}" if users else ""),
                               reader.lines.section(f"folding.{name}", "message.strip"))
            reader.unknown_keys({k: v for k, v in part.items() if k != "strip"}, MESSAGE_FOLDING_KEYS,
                                f"{where} message", line)
            drop_types = part.get("drop_types", [])
            if not isinstance(drop_types, list) or any(
                    not isinstance(t, str) or t not in KIND_TYPES["message"] for t in drop_types):
                reader.problem(where, "message.drop_types lists message types", line)
                drop_types = []
            message = MessageFolding(_shape_list(reader, shapes, part.get("keep", []), where, line, "message.keep"),
                                     frozenset(drop_types),
                                     _patterns(reader, part.get("drop_if_only", []), where, line))
        if "presence" in table:
            part = reader.table(table["presence"], where, line)
            reader.unknown_keys(part, PRESENCE_FOLDING_KEYS, f"{where} presence", line)
            states = part.get("states", ["available", "unavailable"])
            if not isinstance(states, list) or any(s not in PRESENCE_STATES for s in states):
                reader.problem(where, f"presence.states lists states among {PRESENCE_STATES}", line)
                states = ["available", "unavailable"]
            keep = _shape_list(reader, shapes, part.get("keep", []), where, line, "presence.keep")
            if any(shape.uri is None and shape.element == "show" for shape in keep):
                reader.problem(where, "presence.keep: <show/> is written by folding from the folded state; "
                                      "it is not kept", line)
            presence = PresenceFolding(frozenset(states), keep)
        if message is None and presence is None:
            reader.problem(where, "a folding profile needs a message or a presence part", line)
        profiles[name] = FoldingProfile(name, message, presence)
    return profiles


class _RuleContext:
    def __init__(self, sets, label_policies, translations, folding, authority, shapes):
        self.shapes = shapes
        self.sets = sets
        self.label_policies = label_policies
        self.translations = translations
        self.folding = folding
        self.authority = authority

    def expand(self, kind, key, values):
        """Replace ``$name`` by the members of the named set of ``kind``."""
        expanded = []
        for value in _as_list(key, values):
            if value.startswith("$"):
                members = self.sets[kind].get(value[1:])
                if members is None:
                    raise ConditionError(key, f"unknown {kind} set {value!r}")
                expanded.extend(members)
            else:
                expanded.append(value)
        for value in expanded:
            if not isinstance(value, str) or not value:
                raise ConditionError(key, f"{key}: set members must be non-empty strings")
        return expanded


def _condition(key, value, context):
    if key == "kind":
        kinds = _as_list(key, value)
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise ConditionError(key, f"unknown kind {unknown[0]!r} (message, presence, iq)")
        return KindIs(frozenset(kinds))
    if key == "type":
        types = _as_list(key, value)
        unknown = [t for t in types if t not in ALL_TYPES]
        if unknown:
            raise ConditionError(key, f"unknown type {unknown[0]!r}")
        return TypeIs(frozenset(types))
    if key in ("from_domain", "to_domain"):
        domains = [d.lower() for d in context.expand("domains", key, value)]
        for domain in domains:
            if "*" in domain and not (domain == "*" or domain.startswith("*.") and "*" not in domain[2:]):
                raise ConditionError(key, f"{domain!r}: a wildcard is only '*' or '*.domain'")
        return DomainIs(key, key.split("_")[0], tuple(domains))
    if key in ("from_jid", "to_jid"):
        return JidIs(key, key.split("_")[0], tuple(JidPattern.parse(key, p) for p in context.expand("jids", key, value)))
    if key in ("payload_present", "payload_absent", "payload_only"):
        namespaces = frozenset(context.expand("namespaces", key, value))
        return {"payload_present": PayloadPresent, "payload_absent": PayloadAbsent,
                "payload_only": PayloadOnly}[key](namespaces)
    if key == "inspect":
        entries = value if isinstance(value, list) else [value]
        inspections = []
        for entry in entries:
            if not isinstance(entry, dict) or "path" not in entry:
                raise ConditionError(key, "inspect takes tables {path, equals or matches}")
            extra = set(entry) - INSPECT_KEYS
            if extra:
                raise ConditionError(key, f"unknown inspect key {sorted(extra)[0]!r}")
            if "equals" in entry and "matches" in entry:
                raise ConditionError(key, "inspect: equals or matches, not both")
            equals = entry.get("equals")
            if equals is not None and not isinstance(equals, str):
                raise ConditionError(key, "inspect equals takes a string")
            pattern = compile_regex(key, entry["matches"]) if "matches" in entry else None
            inspections.append(Inspection(ElementPath.parse(key, entry["path"]), equals, pattern))
        if not inspections:
            raise ConditionError(key, "inspect is empty")
        return Inspect(tuple(inspections))
    if key == "body_matches":
        return BodyMatches(tuple(compile_regex(key, p) for p in _as_list(key, value)))
    if key == "text_matches":
        return TextMatches(tuple(compile_regex(key, p) for p in _as_list(key, value)))
    if key in ("larger_than", "smaller_than"):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ConditionError(key, f"{key} takes a byte count")
        return SizeAbove(value) if key == "larger_than" else SizeBelow(value)
    if key.startswith("label"):
        return _label_condition(key, value, context)
    raise ConditionError(key, f"unknown condition {key!r}")


def _label_condition(key, value, context):
    if context.authority is None:
        raise ConditionError(key, f"{key} needs label policies and [labels] in this file")
    policies = context.label_policies
    if key == "label":
        if value not in ("present", "absent"):
            raise ConditionError(key, 'label takes "present" or "absent"')
        return LabelPresence(value == "present")
    if key in ("label_valid", "label_releasable"):
        if not isinstance(value, bool):
            raise ConditionError(key, f"{key} takes true or false")
        if key == "label_releasable" and context.authority.gateway_clearances is None:
            raise ConditionError(key, "label_releasable needs [labels] gateway_clearance")
        return LabelValid(value) if key == "label_valid" else LabelReleasable(value)
    if key == "label_policy":
        names = _as_list(key, value)
        for name in names:
            if name not in policies:
                raise ConditionError(key, f"unknown label policy {name!r}")
        return LabelPolicyIs(frozenset(names))
    if key == "label_classification":
        names = _as_list(key, value)
        for name in names:
            if not any(name in p.classifications for p in policies.values()):
                raise ConditionError(key, f"no label policy defines classification {name!r}")
        return LabelClassificationIs(frozenset(names))
    if key in ("label_at_most", "label_at_least"):
        if not isinstance(value, str) or not any(value in p.classifications for p in policies.values()):
            raise ConditionError(key, f"no label policy defines classification {value!r}")
        return LabelRank(key, value, key == "label_at_most", policies)
    if key == "label_in":
        entries = []
        for reference in _as_list(key, value):
            if not reference.startswith("$") or reference[1:] not in context.sets["labels"]:
                raise ConditionError(key, f"label_in takes names of [sets.labels] sets ($name), not {reference!r}")
            for member in context.sets["labels"][reference[1:]]:
                if not isinstance(member, dict):
                    raise ConditionError(key, f"label set {reference} members are tables {{policy, classification}}")
                policy = policies.get(member.get("policy"))
                if policy is None or member.get("classification") not in policy.classifications:
                    raise ConditionError(key, f"label set {reference}: unknown policy or classification in {member}")
                categories = member.get("categories")
                if categories is not None:
                    if not isinstance(categories, list) or any(c not in policy.categories for c in categories):
                        raise ConditionError(key, f"label set {reference}: unknown categories in {member}")
                    categories = frozenset(categories)
                entries.append((policy.name, member["classification"], categories))
        return LabelIn(tuple(entries))
    raise ConditionError(key, f"unknown condition {key!r}")


# Verdicts that refuse: a label condition that cannot be decided (no label can
# be established) holds in these rules and not in the others.
RESTRICTIVE_VERDICTS = frozenset({"drop", "bounce", "refer"})
LETTING_THROUGH = frozenset({"pass", "fold", "translate", "refer"})


def _rules(reader, value, context):
    if not isinstance(value, list):
        reader.problem("[[rules]]", "rules must be an array of tables")
        return []
    if len(value) > MAX_RULES:
        reader.problem("[[rules]]", f"more than {MAX_RULES} rules")
        return []
    rules, seen = [], {}
    for order, table in enumerate(value):
        line = reader.lines.rule(order)
        if not isinstance(table, dict):
            reader.problem(f"rule #{order + 1}", "not a table", line)
            continue
        rule_id = table.get("id")
        if not isinstance(rule_id, str) or not rule_id.strip() or rule_id.startswith(("guard:", "xep0258:")) or rule_id == "default":
            reader.problem(f"rule #{order + 1}", "id is required: a non-empty string, not 'default' or guard:/xep0258:", line)
            rule_id = f"#{order + 1}"
        where = f"rule {rule_id}"
        if rule_id in seen:
            reader.problem(where, f"id already used by rule #{seen[rule_id] + 1}", line)
        seen[rule_id] = order
        for key in table:
            if key not in RULE_META_KEYS and key not in CONDITION_KEYS and key != "not":
                reader.problem(where, f"unknown key {key!r}", reader.lines.rule(order, key))
        rev = table.get("rev")
        if not isinstance(rev, int) or isinstance(rev, bool) or rev < 1:
            reader.problem(where, "rev is required: a positive integer", reader.lines.rule(order, "rev"))
            rev = 1
        why = table.get("why")
        if not isinstance(why, str) or not why.strip():
            reader.problem(where, "why is required: say what the rule is for", line)
            why = ""
        conditions = []
        for key in table:
            if key in CONDITION_KEYS:
                try:
                    conditions.append(_condition(key, table[key], context))
                except ConditionError as problem:
                    reader.problem(where, str(problem), reader.lines.rule(order, key))
        if "not" in table:
            negated = table["not"]
            if not isinstance(negated, dict) or not negated:
                reader.problem(where, "not takes a table of conditions", reader.lines.rule(order, "not"))
            else:
                for key, condition_value in negated.items():
                    if key not in CONDITION_KEYS:
                        reader.problem(where, f"unknown condition not.{key}", reader.lines.rule(order, "not"))
                        continue
                    try:
                        conditions.append(Negated(_condition(key, condition_value, context)))
                    except ConditionError as problem:
                        reader.problem(where, f"not: {problem}", reader.lines.rule(order, "not"))
        restrictive = table.get("verdict") in RESTRICTIVE_VERDICTS
        for condition in conditions:
            condition.when_unknown = restrictive
        _check_text_matches(reader, table.get("verdict"), conditions, where, reader.lines.rule(order, "verdict"))
        rule = _rule_action(reader, table, context, where, order, line, rule_id, rev, why, conditions)
        if rule is not None:
            rules.append(rule)
    return rules


def _check_text_matches(reader, verdict, conditions, where, line):
    """
    ``text_matches`` sees every text of a stanza, more than any rule keeps:
    seeing more may only ever refuse more.  So a rule that lets a stanza
    through uses it negated (no text matches), and a rule that refuses uses
    it as it is (some text matches).
    """
    for condition in conditions:
        negated = isinstance(condition, Negated)
        if not isinstance(condition.inner if negated else condition, TextMatches):
            continue
        if verdict in LETTING_THROUGH and not negated:
            reader.problem(where, "text_matches in a rule that lets a stanza through must be negated: "
                                  "not = { text_matches = ... } (some text matching says nothing of the rest)", line)
        elif verdict in ("drop", "bounce") and negated:
            reader.problem(where, "not.text_matches in a rule that refuses would refuse less the more it sees: "
                                  "refuse with text_matches, let through with not = { text_matches = ... }", line)


def _rule_action(reader, table, context, where, order, line, rule_id, rev, why, conditions):
    verdict = table.get("verdict")
    if verdict not in VERDICTS:
        reader.problem(where, f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}",
                       reader.lines.rule(order, "verdict"))
        return None
    condition = table.get("condition")
    if verdict == "bounce":
        condition = condition or "not-acceptable"
        if condition not in STANZA_ERROR_CONDITIONS:
            reader.problem(where, f"condition {condition!r} is not an RFC 6120 stanza error condition",
                           reader.lines.rule(order, "condition"))
    elif condition is not None:
        reader.problem(where, "condition only goes with verdict = \"bounce\"", reader.lines.rule(order, "condition"))
    text = table.get("text")
    if text is not None and not isinstance(text, str):
        reader.problem(where, "text must be a string", reader.lines.rule(order, "text"))
        text = None
    fold = translate = None
    if "fold" in table:
        fold = context.folding.get(table["fold"])
        if fold is None:
            reader.problem(where, f"unknown folding profile {table['fold']!r}", reader.lines.rule(order, "fold"))
    elif verdict == "fold":
        reader.problem(where, "verdict fold needs fold = \"profile\"", line)
    if "translate" in table:
        translate = context.translations.get(table["translate"])
        if translate is None:
            reader.problem(where, f"unknown translation {table['translate']!r}", reader.lines.rule(order, "translate"))
    elif verdict == "translate":
        reader.problem(where, "verdict translate needs translate = \"map\"", line)
    if (fold is not None or translate is not None) and verdict not in ("pass", "fold", "translate"):
        reader.problem(where, "fold and translate only go with a passing verdict (pass, fold, translate)", line)
    strip = _patterns(reader, table.get("strip", []), where, reader.lines.rule(order, "strip"))
    log = table.get("log")
    if log is not None and not isinstance(log, str):
        reader.problem(where, "log must be a string", reader.lines.rule(order, "log"))
        log = None
    keep = ()
    if "keep" in table:
        keep_line = reader.lines.rule(order, "keep")
        if verdict not in ("pass", "translate", "refer"):
            reader.problem(where, "keep only goes with verdict pass, translate or refer (it says what leaves)",
                           keep_line)
        elif fold is not None:
            reader.problem(where, "keep does not go with fold: the folding profile says what leaves", keep_line)
        elif table["keep"] == EVERYTHING:
            if translate is not None:
                reader.problem(where, f"keep = {EVERYTHING!r} does not go with translate", keep_line)
            elif context.label_policies:
                # It passes stanzas whole, labels and errors as they came: only for a policy that judges nothing.
                reader.problem(where, f"keep = {EVERYTHING!r} does not go with label policies: a label would "
                                      "leave as the sender wrote it; name the shapes that leave", keep_line)
            keep = EVERYTHING
        else:
            keep = _shape_list(reader, context.shapes, table["keep"], where, keep_line, "keep")
    if verdict == "continue" and not strip and not log:
        reader.problem(where, "verdict continue without strip or log does nothing", line)
    return Rule(rule_id, rev, why, order, tuple(conditions), verdict, condition, text, fold, translate,
                strip, log, line, keep)
