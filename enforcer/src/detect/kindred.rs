//! Evidence for a value whose own parameter learned too little to be judged: a rare operation
//! (an e-mail change, an account update that few sessions make), an operation outside the
//! inventory, or a parameter seen a handful of times. The request-shape detector
//! (`detect::shape`) judges such a value with what the rest of the API taught:
//!
//! - the *same-named* parameter (same location and name, for example `body.email`) on the
//!   API's other operations, merged with the parameter's own few values: an `email` field that
//!   takes an e-mail address at sign-up and at login takes one in a rare e-mail change too. Its
//!   format and its construct profile are judged with the evidence rules of a parameter of its
//!   own (the same credible bounds). Path parameters are not pooled: their names (`var1`) say
//!   nothing about what they hold.
//! - the API's *location baseline*: every value learned in that location (path, query, body)
//!   of every operation. An attack construct (SQL fragment, script, JNDI lookup, traversal) that
//!   none of at least [`MIN_LOCATION_VALUES`] learned values of the whole API carried is a
//!   deviation in a parameter that has too few values of its own; and a value at least
//!   [`LOCATION_LENGTH_FACTOR`] times longer than every one of them, in a parameter whose own
//!   learned values (at least [`MIN_OWN_LENGTHS`]) were all at most half as long, is oversized.
//!   A parameter whose own values were long (an upload, a document) is never judged by the
//!   others' lengths.
//! - for an operation outside the inventory, its literal path segments are values too (a title
//!   or a name under a learned collection is a literal until the position becomes a
//!   parameter): a construct in one, never seen in the learned path values, is a deviation.
//!
//! Everything is computed from the model's counts on demand, only for parameters whose own
//! evidence is weak (most requests never get here), and only by scanning the bounded list of
//! operations (`ModelCaps::max_operations`).

use crate::config::Sensitivity;
use crate::finding::Severity;
use crate::model::format::ValueFormat;
use crate::model::histogram::LogHistogram;
use crate::model::shape::add_map;
use crate::model::value::{MARKER_NAMES, ValueKind, bit_names, text_facts};
use crate::model::{LearnedModel, Location, ParamObservation, ParamProfile};

use super::shape::{
    Deviation, MIN_MARKER_SAMPLES, describe_location, established_format, min_samples, short_name,
    with_article,
};

/// Learned values of a location, across the API, before its construct and length profile is
/// trusted for parameters with too little evidence of their own.
pub const MIN_LOCATION_VALUES: u64 = 1000;
/// Own learned values a parameter needs before it is judged by the location's lengths.
pub const MIN_OWN_LENGTHS: u64 = 5;
/// How many times longer than every value learned in the location a value must be.
pub const LOCATION_LENGTH_FACTOR: usize = 4;
/// Parameters per request judged by kindred evidence (each costs a scan of the operations).
pub const MAX_KINDRED_PARAMS: usize = 16;

/// Whether a parameter's own profile is too weak for `detect::shape` to judge its values.
pub fn weak(own: Option<&ParamProfile>, sensitivity: Sensitivity) -> bool {
    own.is_none_or(|p| p.present < min_samples(sensitivity))
}

/// What every operation learned about parameters named `name`: the counts a judgement uses
/// (presence, kinds, constructs, formats, lengths), summed, and on how many operations.
pub fn same_named(model: &LearnedModel, name: &str) -> (ParamProfile, usize) {
    let mut pooled = ParamProfile::default();
    let mut operations = 0;
    for profile in model
        .operations
        .iter()
        .filter_map(|op| op.shape.params.get(name))
    {
        operations += 1;
        pooled.present += profile.present;
        add_map(&mut pooled.kinds, &profile.kinds);
        add_map(&mut pooled.chars, &profile.chars);
        add_map(&mut pooled.markers, &profile.markers);
        add_map(&mut pooled.formats, &profile.formats);
        pooled.lengths.merge(&profile.lengths);
    }
    (pooled, operations)
}

/// Every value learned in one location of the API: how many, the constructs any of them
/// carried, and the longest length bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocationBaseline {
    pub values: u64,
    pub markers: u16,
    pub longest_bucket: Option<usize>,
}

pub fn location_baseline(model: &LearnedModel, location: Location) -> LocationBaseline {
    let prefix = location.prefix();
    let mut baseline = LocationBaseline::default();
    for (name, profile) in model
        .operations
        .iter()
        .flat_map(|op| op.shape.params.iter())
    {
        if name.split_once('.').map(|(p, _)| p) != Some(prefix) {
            continue;
        }
        baseline.values += profile.present;
        baseline.markers |= profile.marker_mask(1);
        baseline.longest_bucket = baseline.longest_bucket.max(profile.lengths.max_bucket());
    }
    baseline
}

/// Locations judged by kindred evidence: the request's own fields (clients differ in headers
/// and cookies).
fn judged_location(location: Location) -> bool {
    matches!(location, Location::Path | Location::Query | Location::Body)
}

/// Judges the values of `params` whose own profile in `own` (the operation's learned shape,
/// if any) is too weak, with the evidence of the rest of the API.
pub fn check_params(
    params: &[ParamObservation],
    own: Option<&crate::model::ShapeProfile>,
    model: &LearnedModel,
    sensitivity: Sensitivity,
    out: &mut Vec<Deviation>,
) {
    let mut locations: [Option<LocationBaseline>; 3] = [None; 3];
    // A parameter with a value profile of its own but no established format yet (between the
    // value sample and the clean values a format needs) is still judged by its name.
    for obs in params.iter().filter(|o| judged_location(o.location)) {
        if let Some(mine) = own.and_then(|s| s.params.get(obs.name.as_str()))
            && !weak(Some(mine), sensitivity)
            && established_format(mine, sensitivity).is_none()
        {
            check_named_format(obs, mine, out);
        }
    }
    for obs in params
        .iter()
        .filter(|o| judged_location(o.location))
        .filter(|o| weak(own.and_then(|s| s.params.get(o.name.as_str())), sensitivity))
        .take(MAX_KINDRED_PARAMS)
    {
        let mine = own.and_then(|s| s.params.get(obs.name.as_str()));
        // Path parameter names (`var1`) are positions, not meanings: never pooled. The count
        // kept is of the *other* operations that vouch (the profile includes the own values).
        let pooled = (obs.location != Location::Path).then(|| {
            let (profile, operations) = same_named(model, &obs.name);
            (profile, operations - usize::from(mine.is_some()))
        });
        let needs_location = obs.facts.markers != 0 || obs.facts.length > 16;
        let slot = match obs.location {
            Location::Path => 0,
            Location::Query => 1,
            _ => 2,
        };
        let location = if needs_location {
            *locations[slot].get_or_insert_with(|| location_baseline(model, obs.location))
        } else {
            LocationBaseline::default()
        };
        check_one(obs, mine, pooled.as_ref(), &location, sensitivity, out);
    }
}

/// One value with weak own evidence.
fn check_one(
    obs: &ParamObservation,
    mine: Option<&ParamProfile>,
    pooled: Option<&(ParamProfile, usize)>,
    location: &LocationBaseline,
    sensitivity: Sensitivity,
    out: &mut Vec<Deviation>,
) {
    let own_samples = mine.map_or(0, |p| p.present);
    if own_samples < MIN_MARKER_SAMPLES {
        check_markers(obs, pooled, location, out);
    }
    if let Some((pooled, others)) = pooled
        && *others > 0
    {
        check_pooled_format(obs, mine, pooled, *others, sensitivity, out);
    }
    check_length(obs, mine, pooled, location, sensitivity, out);
    if let Some(mine) = mine {
        check_named_format(obs, mine, out);
    }
}

/// Own values a parameter named for a format needs, all following it, before a value that
/// breaks it is a deviation: the evidence a construct needs ([`MIN_MARKER_SAMPLES`]); the
/// name is the prior that makes so few values credible (a field named `phone` whose values
/// were all phone numbers is a phone-number field).
pub const MIN_NAMED_FORMAT_VALUES: u64 = MIN_MARKER_SAMPLES;

/// The format a parameter's name announces, from names used for it across APIs (as
/// `detect::params` recognises credential and identity fields by name): an e-mail address or a
/// phone number.
pub fn named_format(name: &str) -> Option<ValueFormat> {
    let last = name.rsplit(['.', '[']).next().unwrap_or(name);
    let normalized: String = last
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let ends = |suffixes: &[&str]| suffixes.iter().any(|s| normalized.ends_with(s));
    if ends(&["email", "emailaddress", "mail"]) {
        Some(ValueFormat::Email)
    } else if ends(&["phone", "phonenumber", "mobile", "msisdn", "telephone"]) {
        Some(ValueFormat::Phone)
    } else {
        None
    }
}

/// A parameter named for a format, whose own values (too few for an established format) all
/// followed it: a value that breaks it (a phone number in words) is a deviation.
fn check_named_format(obs: &ParamObservation, mine: &ParamProfile, out: &mut Vec<Deviation>) {
    let facts = &obs.facts;
    let Some(format) = named_format(&obs.name) else {
        return;
    };
    let values = mine.text_values();
    if obs.secret
        || facts.formats.is_empty()
        || facts.formats.contains(format)
        || values < MIN_NAMED_FORMAT_VALUES
        || mine.format_count(format) < values
    {
        return;
    }
    out.push(Deviation {
        param: obs.name.clone(),
        kind: "format",
        detail: format!(
            "{} {} is not {} (a {}-character {}), where all {values} learned values were, as its name says",
            describe_location(obs),
            short_name(obs),
            with_article(format.as_str()),
            facts.length,
            facts.formats.most_specific().map_or("value", ValueFormat::as_str),
        ),
        severity: Severity::Medium,
    });
}

/// A construct that neither the same-named parameter elsewhere nor any value of the location
/// ever carried.
fn check_markers(
    obs: &ParamObservation,
    pooled: Option<&(ParamProfile, usize)>,
    location: &LocationBaseline,
    out: &mut Vec<Deviation>,
) {
    let markers = obs.facts.markers;
    if markers == 0 {
        return;
    }
    let (what, name) = (describe_location(obs), short_name(obs));
    let never = |seen: u16| markers & !seen;
    let detail = match pooled {
        Some((p, operations))
            if p.present >= MIN_MARKER_SAMPLES && never(p.marker_mask(1)) != 0 =>
        {
            let names = bit_names(u32::from(never(p.marker_mask(1))), &MARKER_NAMES).join(", ");
            format!(
                "{what} {name} carries a {names}, never seen in {} learned values of {name}, here and on {operations} other operation{}",
                p.present,
                if *operations == 1 { "" } else { "s" }
            )
        }
        _ if location.values >= MIN_LOCATION_VALUES && never(location.markers) != 0 => {
            let names = bit_names(u32::from(never(location.markers)), &MARKER_NAMES).join(", ");
            format!(
                "{what} {name} carries a {names}, never seen in any of {} learned {} values of this API",
                location.values,
                obs.location.prefix()
            )
        }
        _ => return,
    };
    out.push(Deviation {
        param: obs.name.clone(),
        kind: "injection",
        detail,
        severity: Severity::High,
    });
}

/// The format the same-named parameter established across operations, broken.
fn check_pooled_format(
    obs: &ParamObservation,
    mine: Option<&ParamProfile>,
    pooled: &ParamProfile,
    operations: usize,
    sensitivity: Sensitivity,
    out: &mut Vec<Deviation>,
) {
    let facts = &obs.facts;
    if obs.secret || facts.formats.is_empty() {
        return;
    }
    let Some(established) = established_format(pooled, sensitivity) else {
        return;
    };
    // The operation's own values, however few, must all have followed it: a same-named field
    // that means something else here (an `id` that is a UUID on this operation and a number on
    // the busy ones) is not judged by the others' format.
    let own_broke = mine.is_some_and(|p| p.format_count(established.format) < p.text_values());
    if facts.formats.contains(established.format) || own_broke {
        return;
    }
    out.push(Deviation {
        param: obs.name.clone(),
        kind: "format",
        detail: format!(
            "{} {} is not {} (a {}-character {}), where {} of {} learned values of {}, here and on {operations} other operation{}, were",
            describe_location(obs),
            short_name(obs),
            with_article(established.format.as_str()),
            facts.length,
            facts
                .formats
                .most_specific()
                .map_or("value", ValueFormat::as_str),
            established.followed,
            established.values,
            short_name(obs),
            if operations == 1 { "" } else { "s" },
        ),
        severity: Severity::Medium,
    });
}

/// Longest length of a length histogram's top bucket.
fn longest(lengths: &LogHistogram) -> Option<usize> {
    lengths.max_bucket().map(LogHistogram::length_bucket_upper)
}

/// A value far longer than the same-named parameter's (with enough values), or than every
/// value of the location while its own few values were short.
fn check_length(
    obs: &ParamObservation,
    mine: Option<&ParamProfile>,
    pooled: Option<&(ParamProfile, usize)>,
    location: &LocationBaseline,
    sensitivity: Sensitivity,
    out: &mut Vec<Deviation>,
) {
    let facts = &obs.facts;
    if matches!(facts.kind, ValueKind::Object | ValueKind::Array) {
        return;
    }
    let (what, name) = (describe_location(obs), short_name(obs));
    let length = facts.length;
    let pooled_limit = pooled
        .filter(|(p, others)| *others > 0 && p.present >= min_samples(sensitivity))
        .and_then(|(p, operations)| Some((longest(&p.lengths)?, p.present, *operations)));
    let detail = if let Some((max, values, operations)) = pooled_limit
        && length > max.saturating_mul(2).max(16)
    {
        format!(
            "{what} {name} is {length} characters long; {values} learned values of {name}, here and on {operations} other operation(s), are at most {max}"
        )
    } else {
        let Some(own_max) = mine
            .filter(|p| p.present >= MIN_OWN_LENGTHS)
            .and_then(|p| longest(&p.lengths))
        else {
            return;
        };
        let Some(location_max) = location
            .longest_bucket
            .filter(|_| location.values >= MIN_LOCATION_VALUES)
            .map(LogHistogram::length_bucket_upper)
        else {
            return;
        };
        if length <= own_max.saturating_mul(2).max(16)
            || length <= location_max.saturating_mul(LOCATION_LENGTH_FACTOR)
        {
            return;
        }
        format!(
            "{what} {name} is {length} characters long; its {} learned values are at most {own_max}, and none of {} learned {} values of this API is longer than {location_max}",
            mine.map_or(0, |p| p.present),
            location.values,
            obs.location.prefix()
        )
    };
    out.push(Deviation {
        param: obs.name.clone(),
        kind: "oversized",
        detail,
        severity: Severity::Medium,
    });
}

/// The literal path segments of an operation outside the inventory (a name under a learned
/// collection that is not yet a parameter): a construct none of the learned path values carried
/// is a deviation.
pub fn check_literal_segments(template: &str, model: &LearnedModel, out: &mut Vec<Deviation>) {
    let path = template.split_once(' ').map_or(template, |(_, p)| p);
    let mut location: Option<LocationBaseline> = None;
    for segment in path
        .split('/')
        .filter(|s| !s.is_empty() && !s.starts_with('{'))
    {
        let facts = text_facts(segment);
        if facts.markers == 0 {
            continue;
        }
        let baseline = *location.get_or_insert_with(|| location_baseline(model, Location::Path));
        let new = facts.markers & !baseline.markers;
        if baseline.values < MIN_LOCATION_VALUES || new == 0 {
            continue;
        }
        let names = bit_names(u32::from(new), &MARKER_NAMES).join(", ");
        out.push(Deviation {
            param: "path".to_owned(),
            kind: "injection",
            detail: format!(
                "path carries a {names} in a segment, never seen in any of {} learned path values of this API",
                baseline.values
            ),
            severity: Severity::High,
        });
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ShapeProfile;
    use crate::model::value::{json_facts, text_facts};

    fn obs(name: &str, location: Location, value: &str) -> ParamObservation {
        ParamObservation::new(
            name.into(),
            location,
            text_facts(value),
            value.into(),
            false,
        )
    }

    /// A model whose operation `template` learned `values` of parameter `name`.
    fn learn(m: &mut LearnedModel, template: &str, name: &str, values: &[String]) {
        let caps = m.caps().shape();
        let location = match name.split_once('.').map(|(p, _)| p) {
            Some("path") => Location::Path,
            Some("query") => Location::Query,
            _ => Location::Body,
        };
        let i = m.op_index_or_insert(template, 1).unwrap();
        let op = m.operation_mut(i).unwrap();
        for (session, v) in values.iter().enumerate() {
            op.requests += 1;
            op.shape
                .learn(&obs(name, location, v), &caps, session as u64);
        }
    }

    fn kinds(
        m: &LearnedModel,
        template: &str,
        name: &str,
        location: Location,
        value: &str,
    ) -> Vec<&'static str> {
        let own: Option<&ShapeProfile> = m
            .op_index(template)
            .and_then(|i| m.operation(i))
            .map(|o| &o.shape);
        let mut out = Vec::new();
        check_params(
            &[obs(name, location, value)],
            own,
            m,
            Sensitivity::Medium,
            &mut out,
        );
        out.iter().map(|d| d.kind).collect()
    }

    fn emails(n: usize, domain: &str) -> Vec<String> {
        (0..n).map(|i| format!("reader{i}@{domain}")).collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("Reader {i} K.")).collect()
    }

    /// An API whose busy operations taught 1,200 body and path values without constructs.
    fn busy_api() -> LearnedModel {
        let mut m = LearnedModel::default();
        learn(
            &mut m,
            "POST /register",
            "body.email",
            &emails(600, "mail.example.org"),
        );
        learn(
            &mut m,
            "POST /login",
            "body.email",
            &emails(600, "mail.example.org"),
        );
        learn(&mut m, "POST /register", "body.name", &names(600));
        let titles: Vec<String> = (0..1200).map(|i| format!("title-{i}")).collect();
        learn(&mut m, "GET /books/{var1}", "path.var1", &titles);
        m
    }

    #[test]
    fn a_rare_operation_borrows_the_format_of_its_same_named_field() {
        let mut m = busy_api();
        // The e-mail change is rare: three learned values, too few to judge on their own.
        learn(
            &mut m,
            "PUT /users/{var1}/email",
            "body.email",
            &emails(3, "mail.example.com"),
        );
        let t = "PUT /users/{var1}/email";
        assert!(kinds(&m, t, "body.email", Location::Body, "ada@mail.example.net").is_empty());
        assert_eq!(
            kinds(&m, t, "body.email", Location::Body, "ada.mail.example.net"),
            ["format"]
        );
        // The same in an operation never learned at all (a new release's endpoint).
        assert_eq!(
            kinds(
                &m,
                "PUT /v2/account",
                "body.email",
                Location::Body,
                "no-at-sign"
            ),
            ["format"]
        );
    }

    #[test]
    fn a_same_named_field_that_means_something_else_here_is_not_judged_by_the_others() {
        let mut m = busy_api();
        // Here `email` takes a name (its own few values show it): the others' format does not
        // apply.
        learn(&mut m, "POST /invite", "body.email", &names(4));
        assert!(kinds(&m, "POST /invite", "body.email", Location::Body, "Ada R.").is_empty());
        // A field on one operation only has no kindred format.
        learn(
            &mut m,
            "PUT /account",
            "body.phone",
            &vec!["+31612345678".to_owned(); 4],
        );
        assert!(kinds(&m, "PUT /account", "body.phone", Location::Body, "call me").is_empty());
    }

    #[test]
    fn a_field_named_for_a_format_whose_own_values_all_followed_it() {
        let mut m = busy_api();
        let phones: Vec<String> = (0..24)
            .map(|i| format!("+3161{:07}", 1_000_000 + i * 13))
            .collect();
        learn(&mut m, "PUT /account", "body.contactPhone", &phones[..9]);
        let t = "PUT /account";
        let words = "call me maybe, any time after six";
        // 9 values are too few, even with the name.
        assert!(kinds(&m, t, "body.contactPhone", Location::Body, words).is_empty());
        learn(&mut m, t, "body.contactPhone", &phones[9..10]);
        assert_eq!(
            kinds(&m, t, "body.contactPhone", Location::Body, words),
            ["format"]
        );
        // Past the value sample (30), until its own format is established (about 40 clean
        // values at Medium), the name still judges.
        learn(&mut m, t, "body.contactPhone", &phones[10..]);
        learn(&mut m, t, "body.contactPhone", &phones[..10]);
        let present = |m: &LearnedModel| {
            let op = m.op_index(t).and_then(|i| m.operation(i)).unwrap();
            op.shape.params["body.contactPhone"].present
        };
        assert_eq!(present(&m), 34);
        assert_eq!(
            kinds(&m, t, "body.contactPhone", Location::Body, words),
            ["format"]
        );
        assert!(
            kinds(
                &m,
                t,
                "body.contactPhone",
                Location::Body,
                "+31 6 1234 5678"
            )
            .is_empty()
        );
        // A phone-named field that honest clients fill with anything is not judged by its name.
        let mut mixed = phones.clone();
        mixed.push("after six".to_owned());
        learn(&mut m, t, "body.mobile", &mixed);
        assert!(kinds(&m, t, "body.mobile", Location::Body, words).is_empty());
        // Names that announce no format.
        assert_eq!(named_format("body.user.email"), Some(ValueFormat::Email));
        assert_eq!(named_format("query.phoneNumber"), Some(ValueFormat::Phone));
        assert_eq!(named_format("body.name"), None);
        assert_eq!(named_format("body.telephoneCountry"), None);
    }

    #[test]
    fn constructs_never_seen_in_the_api_are_injection_in_a_rare_parameter() {
        let mut m = busy_api();
        learn(
            &mut m,
            "PUT /users/{var1}/email",
            "body.email",
            &emails(3, "mail.example.com"),
        );
        let t = "PUT /users/{var1}/email";
        assert!(
            kinds(
                &m,
                t,
                "body.email",
                Location::Body,
                "x@y.example'; DROP TABLE users; --"
            )
            .contains(&"injection")
        );
        // A parameter no operation learned, in a body field of the API.
        assert_eq!(
            kinds(
                &m,
                "POST /v2/notes",
                "body.note",
                Location::Body,
                "<script>alert(1)</script>"
            ),
            ["injection"]
        );
        // A query parameter: the API learned no query values, so there is no evidence.
        assert!(kinds(&m, "GET /search", "query.q", Location::Query, "' OR '1'='1").is_empty());
    }

    #[test]
    fn a_construct_the_api_learned_somewhere_is_not_evidence() {
        let mut m = busy_api();
        let prose: Vec<String> = (0..1200).map(|i| format!("fine; thanks {i}")).collect();
        learn(&mut m, "POST /feedback", "body.text", &prose);
        // "; " (shell syntax) is ordinary in this API's bodies.
        assert!(kinds(&m, "POST /v2/notes", "body.note", Location::Body, "ok; bye").is_empty());
        // A script never was.
        assert_eq!(
            kinds(
                &m,
                "POST /v2/notes",
                "body.note",
                Location::Body,
                "<script>x</script>"
            ),
            ["injection"]
        );
    }

    #[test]
    fn a_value_far_longer_than_anything_the_api_learned_is_oversized() {
        let mut m = busy_api();
        // The account update is rare: eight short names of its own.
        learn(&mut m, "PUT /account", "body.nickname", &names(8));
        let t = "PUT /account";
        assert!(kinds(&m, t, "body.nickname", Location::Body, "Ada Roth-Lovelace").is_empty());
        assert_eq!(
            kinds(&m, t, "body.nickname", Location::Body, &"N".repeat(5000)),
            ["oversized"]
        );
        // Without enough own values nothing says this field is short.
        learn(&mut m, "POST /import", "body.nickname2", &names(2));
        assert!(
            kinds(
                &m,
                "POST /import",
                "body.nickname2",
                Location::Body,
                &"N".repeat(5000)
            )
            .is_empty()
        );
        // A field whose own values were long is not judged by the others' lengths.
        let blobs: Vec<String> = (0..6)
            .map(|i| format!("{i}{}", "Qk".repeat(1500)))
            .collect();
        learn(&mut m, "POST /avatar", "body.image", &blobs);
        assert!(
            kinds(
                &m,
                "POST /avatar",
                "body.image",
                Location::Body,
                &"Qk".repeat(2500)
            )
            .is_empty()
        );
        // The same-named field elsewhere, with enough values, sets the limit.
        assert_eq!(
            kinds(
                &m,
                "PUT /profile",
                "body.name",
                Location::Body,
                &"N".repeat(5000)
            ),
            ["oversized"]
        );
    }

    #[test]
    fn constructs_in_the_literal_path_of_an_operation_outside_the_inventory() {
        let m = busy_api();
        let check = |template: &str| {
            let mut out = Vec::new();
            check_literal_segments(template, &m, &mut out);
            out.iter().map(|d| d.kind).collect::<Vec<_>>()
        };
        assert_eq!(
            check("GET /books/%3Cscript%3Ealert(1)%3C%2Fscript%3E"),
            ["injection"]
        );
        assert_eq!(
            check("GET /users/%27%20OR%20%271%27%3D%271%27%20--"),
            ["injection"]
        );
        assert!(check("GET /books/silent-harbour").is_empty());
        // Too few learned path values: no evidence.
        let mut small = LearnedModel::default();
        learn(&mut small, "GET /books/{var1}", "path.var1", &names(20));
        let mut out = Vec::new();
        check_literal_segments(
            "GET /books/%24%7Bjndi%3Aldap%3A%2F%2Fx%7D",
            &small,
            &mut out,
        );
        assert!(out.is_empty());
    }

    #[test]
    fn strong_own_evidence_is_left_to_the_shape_detector() {
        let m = busy_api();
        // `body.email` on /login has 600 values of its own: kindred evidence is not asked.
        assert!(
            kinds(
                &m,
                "POST /login",
                "body.email",
                Location::Body,
                "no-at-sign"
            )
            .is_empty()
        );
        assert!(json_facts(&serde_json::json!(1)).formats.is_empty());
    }
}
