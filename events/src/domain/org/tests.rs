//! Given/when/then tests of the `Org` aggregate: given past events, when a
//! command is decided at a fixed clock, then exactly these events (or this
//! refusal). No I/O.

use super::*;
use crate::domain::test_framework::{now, org_id, Given, TestFramework, Then};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

// ---------------------------------------------------------------- fixtures

fn name(text: &str) -> Name {
    Name::parse(text).unwrap()
}

fn address(text: &str) -> ListedAddress {
    ListedAddress::Valid(email(text))
}

fn email(text: &str) -> EmailAddress {
    EmailAddress::parse(text).unwrap()
}

fn create_input(plan: &str, rate_limit: Option<u32>) -> CreateOrgRequest {
    CreateOrgRequest {
        org_id: org_id(),
        name: "Acme".into(),
        plan: plan.into(),
        rate_limit,
        alert_emails: vec!["ops@acme.example".into()],
    }
}

/// The input parsed at the edge.
fn create(input: CreateOrgRequest) -> Result<OrgCommand, DomainError> {
    input.parse().map(OrgCommand::Create)
}

fn change_plan(plan: &str, rate_limit: Option<u32>) -> OrgCommand {
    OrgCommand::ChangePlan(
        ChangePlanRequest {
            plan: plan.into(),
            rate_limit,
        }
        .parse(),
    )
}

fn change_settings(settings: ChangeSettingsRequest) -> OrgCommand {
    OrgCommand::ChangeSettings(settings.parse())
}

fn patch(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

fn alert_settings_patch(value: Value) -> OrgCommand {
    change_settings(ChangeSettingsRequest {
        alert_settings: Some(patch(value)),
        ..ChangeSettingsRequest::default()
    })
}

fn rotation(days: i64) -> OrgCommand {
    change_settings(ChangeSettingsRequest {
        rotation_days: Some(days),
        ..ChangeSettingsRequest::default()
    })
}

fn emails(list: &[&str]) -> OrgCommand {
    change_settings(ChangeSettingsRequest {
        alert_emails: Some(list.iter().map(|e| e.to_string()).collect()),
        ..ChangeSettingsRequest::default()
    })
}

/// The `org.created` event of a free-plan org created a day before `now()`.
fn free_org_created() -> OrgEvent {
    TestFramework::<Org>::at(now() - chrono::Duration::days(1))
        .given(&[])
        .when_parsed(create(create_input("free", None)))
        .then_expect_one()
}

fn enterprise_org_created(limit: u32) -> OrgEvent {
    let mut events = Org::decide(
        None,
        create(create_input("enterprise", Some(limit))).unwrap(),
        now() - chrono::Duration::days(1),
    )
    .expect("a valid creation");
    events.remove(0)
}

// ------------------------------------------------------ given / when / then

/// The state after `events`, to decide commands against at [`now`].
fn given(events: &[OrgEvent]) -> Given<Org> {
    TestFramework::at(now()).given(events)
}

#[track_caller]
fn then_settings_changed(then: Then<OrgEvent>) -> OrgSettingsChanged {
    match then.then_expect_one() {
        OrgEvent::SettingsChanged(e) => e,
        other => panic!("expected org.settings_changed, got {other:?}"),
    }
}

// ------------------------------------------------------------------ create

#[test]
fn create_sets_the_plan_limit_and_the_default_policies() {
    for (plan_name, plan, limit) in [
        ("free", Plan::Free, 100),
        ("basic", Plan::Basic, 1_000),
        ("pro", Plan::Pro, 10_000),
    ] {
        given(&[])
            .when_parsed(create(create_input(plan_name, None)))
            .then_expect_events(vec![OrgEvent::Created(OrgCreated {
                org_id: org_id(),
                name: name("Acme"),
                plan,
                rate_limit_per_minute: limit,
                alert_emails: vec![address("ops@acme.example")],
                rotation_days: 90,
                alert_settings: AlertSettings::default(),
                created_at: now(),
            })]);
    }
}

#[test]
fn create_an_enterprise_org_with_its_custom_limit() {
    for limit in [1, 50_000, 10_000_000] {
        given(&[])
            .when_parsed(create(create_input("enterprise", Some(limit))))
            .then_expect_events(vec![OrgEvent::Created(OrgCreated {
                org_id: org_id(),
                name: name("Acme"),
                plan: Plan::Enterprise,
                rate_limit_per_minute: limit,
                alert_emails: vec![address("ops@acme.example")],
                rotation_days: DEFAULT_ROTATION_DAYS,
                alert_settings: AlertSettings::default(),
                created_at: now(),
            })]);
    }
}

#[test]
fn the_default_alert_settings() {
    assert_eq!(
        AlertSettings::default(),
        AlertSettings {
            approaching_limit_percent: 80,
            error_rate_percent: 10,
            error_rate_window_minutes: 15,
            error_rate_min_requests: 50,
            unusual_activity_factor: 5,
            unusual_activity_min_requests: 1_000,
            unused_days: 30,
        }
    );
    assert_eq!(DEFAULT_ROTATION_DAYS, 90);
}

#[test]
fn create_without_alert_emails_is_fine() {
    let input = CreateOrgRequest {
        alert_emails: vec![],
        ..create_input("free", None)
    };
    let OrgEvent::Created(e) = given(&[]).when_parsed(create(input)).then_expect_one() else {
        unreachable!()
    };
    assert!(e.alert_emails.is_empty());
}

#[test]
fn create_enterprise_needs_a_rate_limit_within_bounds() {
    given(&[])
        .when_parsed(create(create_input("enterprise", None)))
        .then_expect_invalid(&["rate_limit_per_minute"]);
    given(&[])
        .when_parsed(create(create_input("enterprise", Some(0))))
        .then_expect_invalid(&["rate_limit_per_minute"]);
    given(&[])
        .when_parsed(create(create_input("enterprise", Some(10_000_001))))
        .then_expect_invalid(&["rate_limit_per_minute"]);
}

#[test]
fn create_refuses_a_custom_limit_outside_enterprise() {
    for plan in ["free", "basic", "pro"] {
        given(&[])
            .when_parsed(create(create_input(plan, Some(500))))
            .then_expect_invalid(&["rate_limit_per_minute"]);
    }
}

#[test]
fn create_refuses_an_unknown_plan() {
    for plan in ["platinum", "Free", ""] {
        let details = given(&[])
            .when_parsed(create(create_input(plan, None)))
            .then_expect_invalid(&["plan"]);
        assert!(details.0["plan"][0].contains(&format!("'{plan}'")));
    }
    // No second complaint about the limit of a plan that does not exist.
    given(&[])
        .when_parsed(create(create_input("platinum", Some(5))))
        .then_expect_invalid(&["plan"]);
}

#[test]
fn create_refuses_bad_names() {
    for bad in [
        "".to_owned(),
        "   ".to_owned(),
        "x".repeat(101),
        "a\nb".to_owned(),
        "a\tb".to_owned(),
        "\u{7}".to_owned(),
    ] {
        let input = CreateOrgRequest {
            name: bad,
            ..create_input("free", None)
        };
        given(&[]).when_parsed(create(input)).then_expect_invalid(&["name"]);
    }
    let input = CreateOrgRequest {
        name: "x".repeat(100),
        ..create_input("free", None)
    };
    assert!(given(&[]).when_parsed(create(input)).result().is_ok());
}

#[test]
fn create_refuses_bad_emails() {
    for bad in [
        "not-an-email",
        "ops@localhost",
        "@acme.example",
        "ops@",
        "ops acme@acme.example",
        "ops@acme..example",
        "ops@.acme.example",
        "ops@acme.example.",
        "ops@acme@acme.example",
        "ops@acme.example\n",
        "",
    ] {
        let input = CreateOrgRequest {
            alert_emails: vec!["ok@acme.example".into(), bad.into()],
            ..create_input("free", None)
        };
        let details = given(&[])
            .when_parsed(create(input))
            .then_expect_invalid(&["alert_emails"]);
        assert_eq!(details.0["alert_emails"].len(), 1, "{bad:?}: {details:?}");
    }
    let long = format!("{}@acme.example", "a".repeat(250));
    let input = CreateOrgRequest {
        alert_emails: vec![long],
        ..create_input("free", None)
    };
    given(&[])
        .when_parsed(create(input))
        .then_expect_invalid(&["alert_emails"]);
}

#[test]
fn create_with_more_than_ten_alert_recipients_is_over_the_quota() {
    let input = CreateOrgRequest {
        alert_emails: (0..11).map(|i| format!("ops{i}@acme.example")).collect(),
        ..create_input("free", None)
    };
    given(&[])
        .when_parsed(create(input))
        .then_expect_over_quota("alert recipients");
    let input = CreateOrgRequest {
        alert_emails: (0..10).map(|i| format!("ops{i}@acme.example")).collect(),
        ..create_input("free", None)
    };
    assert!(given(&[]).when_parsed(create(input)).result().is_ok());
}

#[test]
fn create_reports_every_problem_at_once() {
    let input = CreateOrgRequest {
        org_id: org_id(),
        name: String::new(),
        plan: "free".into(),
        rate_limit: Some(5),
        alert_emails: vec!["nope".into(), "also nope".into()],
    };
    let details =
        given(&[])
            .when_parsed(create(input))
            .then_expect_invalid(&["alert_emails", "name", "rate_limit_per_minute"]);
    assert_eq!(details.0["alert_emails"].len(), 2);
}

#[test]
fn create_over_an_existing_org_is_a_conflict() {
    match given(&[free_org_created()])
        .when_parsed(create(create_input("pro", None)))
        .result()
    {
        Err(DomainError::Conflict(message)) => assert!(!message.is_empty()),
        other => panic!("expected a conflict, got {other:?}"),
    }
}

#[test]
fn evolve_of_created_builds_the_org() {
    assert_eq!(
        given(&[free_org_created()]).into_state(),
        Some(Org {
            id: org_id(),
            name: name("Acme"),
            plan: Plan::Free,
            rate_limit_per_minute: 100,
            alert_emails: vec![address("ops@acme.example")],
            // The operator's addresses count as confirmed.
            confirmed: BTreeMap::from([(email("ops@acme.example"), now() - chrono::Duration::days(1))]),
            confirmation_requests: BTreeMap::new(),
            recent_requests: vec![],
            rotation_days: 90,
            alert_settings: AlertSettings::default(),
            created_at: now() - chrono::Duration::days(1),
            leak_action: LeakAction::default(),
        })
    );
}

// ------------------------------------------------------------- change plan

#[test]
fn change_plan_records_the_new_plan_and_limit() {
    let state = given(&[free_org_created()]);
    for (plan_name, plan, limit) in [("basic", Plan::Basic, 1_000), ("pro", Plan::Pro, 10_000)] {
        state
            .when(change_plan(plan_name, None))
            .then_expect_events(vec![OrgEvent::PlanChanged(OrgPlanChanged {
                plan,
                rate_limit_per_minute: limit,
            })]);
    }
    state
        .when(change_plan("enterprise", Some(25_000)))
        .then_expect_events(vec![OrgEvent::PlanChanged(OrgPlanChanged {
            plan: Plan::Enterprise,
            rate_limit_per_minute: 25_000,
        })]);
    // Back down from enterprise.
    given(&[enterprise_org_created(25_000)])
        .when(change_plan("free", None))
        .then_expect_events(vec![OrgEvent::PlanChanged(OrgPlanChanged {
            plan: Plan::Free,
            rate_limit_per_minute: 100,
        })]);
}

#[test]
fn change_plan_of_an_enterprise_org_to_a_new_limit() {
    given(&[enterprise_org_created(25_000)])
        .when(change_plan("enterprise", Some(30_000)))
        .then_expect_events(vec![OrgEvent::PlanChanged(OrgPlanChanged {
            plan: Plan::Enterprise,
            rate_limit_per_minute: 30_000,
        })]);
}

#[test]
fn change_plan_to_the_same_plan_appends_nothing() {
    given(&[free_org_created()])
        .when(change_plan("free", None))
        .then_expect_nothing();
    given(&[enterprise_org_created(25_000)])
        .when(change_plan("enterprise", Some(25_000)))
        .then_expect_nothing();
}

#[test]
fn change_plan_refuses_bad_plans_and_limits() {
    let state = given(&[free_org_created()]);
    state.when(change_plan("platinum", None)).then_expect_invalid(&["plan"]);
    state
        .when(change_plan("pro", Some(20_000)))
        .then_expect_invalid(&["rate_limit_per_minute"]);
    state
        .when(change_plan("enterprise", None))
        .then_expect_invalid(&["rate_limit_per_minute"]);
    state
        .when(change_plan("enterprise", Some(0)))
        .then_expect_invalid(&["rate_limit_per_minute"]);
    // The same plan with a custom limit is still refused, not ignored.
    state
        .when(change_plan("free", Some(100)))
        .then_expect_invalid(&["rate_limit_per_minute"]);
}

#[test]
fn change_plan_of_an_org_never_created_is_not_found() {
    given(&[]).when(change_plan("pro", None)).then_expect_not_found();
    given(&[]).when(change_plan("platinum", None)).then_expect_not_found();
}

#[test]
fn evolve_applies_a_plan_change() {
    let before = given(&[free_org_created()]).into_state().unwrap();
    let event = OrgEvent::PlanChanged(OrgPlanChanged {
        plan: Plan::Pro,
        rate_limit_per_minute: 10_000,
    });
    assert_eq!(
        given(&[free_org_created(), event.clone()]).into_state(),
        Some(Org {
            plan: Plan::Pro,
            rate_limit_per_minute: 10_000,
            ..before
        })
    );
    assert_eq!(Org::evolve(None, &event), None);
}

// --------------------------------------------------------- change settings

#[test]
fn change_settings_records_new_alert_emails_and_asks_the_new_ones_to_confirm() {
    given(&[free_org_created()])
        .when(emails(&["security@acme.example", "ops@acme.example"]))
        .then_expect_events(vec![
            OrgEvent::SettingsChanged(OrgSettingsChanged {
                alert_emails: Some(vec![address("security@acme.example"), address("ops@acme.example")]),
                ..OrgSettingsChanged::default()
            }),
            // ops@ was given by the operator: already confirmed.
            requested("security@acme.example", now()),
        ]);
    // Emptying the list is a change too.
    given(&[free_org_created()])
        .when(emails(&[]))
        .then_expect_events(vec![OrgEvent::SettingsChanged(OrgSettingsChanged {
            alert_emails: Some(vec![]),
            ..OrgSettingsChanged::default()
        })]);
}

#[test]
fn change_settings_refuses_bad_emails() {
    let details = given(&[free_org_created()])
        .when(emails(&["ok@acme.example", "nope", "ops@acme"]))
        .then_expect_invalid(&["alert_emails"]);
    assert_eq!(details.0["alert_emails"].len(), 2);
    for bad in ["\"Evil\"<x@y.z>", "a,c@d.com", "x@y.z>", "x@y.z\r\nBcc: a@b.c"] {
        given(&[free_org_created()])
            .when(emails(&[bad]))
            .then_expect_invalid(&["alert_emails"]);
    }
}

#[test]
fn more_than_ten_alert_recipients_are_over_the_quota_after_validation() {
    let eleven: Vec<String> = (0..11).map(|i| format!("ops{i}@acme.example")).collect();
    let refs: Vec<&str> = eleven.iter().map(String::as_str).collect();
    given(&[free_org_created()])
        .when(emails(&refs))
        .then_expect_over_quota("alert recipients");
    // Bad addresses are reported first; the same address twice is one recipient.
    let mut with_bad = refs.clone();
    with_bad.push("nope");
    given(&[free_org_created()])
        .when(emails(&with_bad))
        .then_expect_invalid(&["alert_emails"]);
    let mut repeated = refs[..10].to_vec();
    repeated.push(refs[0]);
    assert!(given(&[free_org_created()]).when(emails(&repeated)).result().is_ok());
}

#[test]
fn change_settings_accepts_rotation_days_from_0_to_3650() {
    for days in [0, 1, 30, 365, 3650] {
        given(&[free_org_created()])
            .when(rotation(days))
            .then_expect_events(vec![OrgEvent::SettingsChanged(OrgSettingsChanged {
                rotation_days: Some(days as u32),
                ..OrgSettingsChanged::default()
            })]);
    }
}

#[test]
fn change_settings_refuses_rotation_days_out_of_range() {
    for days in [-1, 3651, i64::MIN, i64::MAX, i64::from(u32::MAX) + 1] {
        given(&[free_org_created()])
            .when(rotation(days))
            .then_expect_invalid(&["rotation_days"]);
    }
}

#[test]
fn change_settings_patches_alert_settings_field_by_field() {
    let changed = then_settings_changed(given(&[free_org_created()]).when(alert_settings_patch(
        json!({"error_rate_percent": 25, "unused_days": 60}),
    )));
    assert_eq!(
        changed,
        OrgSettingsChanged {
            alert_settings: Some(AlertSettings {
                error_rate_percent: 25,
                unused_days: 60,
                ..AlertSettings::default()
            }),
            ..OrgSettingsChanged::default()
        }
    );

    // A later patch merges into what was set before, not into the defaults.
    let history = [free_org_created(), OrgEvent::SettingsChanged(changed)];
    let changed =
        then_settings_changed(given(&history).when(alert_settings_patch(json!({"approaching_limit_percent": 95}))));
    assert_eq!(
        changed.alert_settings,
        Some(AlertSettings {
            approaching_limit_percent: 95,
            error_rate_percent: 25,
            unused_days: 60,
            ..AlertSettings::default()
        })
    );
}

#[test]
fn change_settings_accepts_every_setting_at_its_bounds() {
    let lowest = json!({
        "approaching_limit_percent": 1,
        "error_rate_percent": 1,
        "error_rate_window_minutes": 1,
        "error_rate_min_requests": 1,
        "unusual_activity_factor": 2,
        "unusual_activity_min_requests": 1,
        "unused_days": 1,
    });
    let highest = json!({
        "approaching_limit_percent": 100,
        "error_rate_percent": 100,
        "error_rate_window_minutes": 1440,
        "error_rate_min_requests": 1_000_000,
        "unusual_activity_factor": 1000,
        "unusual_activity_min_requests": 1_000_000_000,
        "unused_days": 365,
    });
    let changed = then_settings_changed(given(&[free_org_created()]).when(alert_settings_patch(lowest)));
    assert_eq!(
        changed.alert_settings,
        Some(AlertSettings {
            approaching_limit_percent: 1,
            error_rate_percent: 1,
            error_rate_window_minutes: 1,
            error_rate_min_requests: 1,
            unusual_activity_factor: 2,
            unusual_activity_min_requests: 1,
            unused_days: 1,
        })
    );
    let changed = then_settings_changed(given(&[free_org_created()]).when(alert_settings_patch(highest)));
    assert_eq!(
        changed.alert_settings,
        Some(AlertSettings {
            approaching_limit_percent: 100,
            error_rate_percent: 100,
            error_rate_window_minutes: 1_440,
            error_rate_min_requests: 1_000_000,
            unusual_activity_factor: 1_000,
            unusual_activity_min_requests: 1_000_000_000,
            unused_days: 365,
        })
    );
}

#[test]
fn change_settings_refuses_an_unknown_setting() {
    let details = given(&[free_org_created()])
        .when(alert_settings_patch(json!({"coffee_level": 3})))
        .then_expect_invalid(&["alert_settings.coffee_level"]);
    assert_eq!(
        details.0["alert_settings.coffee_level"],
        vec!["unknown setting".to_owned()]
    );
}

#[test]
fn change_settings_refuses_settings_out_of_range_or_not_whole_numbers() {
    for (setting, value) in [
        ("approaching_limit_percent", json!(0)),
        ("approaching_limit_percent", json!(101)),
        ("error_rate_percent", json!(0)),
        ("error_rate_percent", json!(101)),
        ("error_rate_window_minutes", json!(1441)),
        ("error_rate_min_requests", json!(0)),
        ("error_rate_min_requests", json!(1_000_001)),
        ("unusual_activity_factor", json!(1)),
        ("unusual_activity_factor", json!(1001)),
        ("unusual_activity_min_requests", json!(1_000_000_001)),
        ("unused_days", json!(0)),
        ("unused_days", json!(366)),
        ("unused_days", json!(-1)),
        ("unused_days", json!(7.5)),
        ("unused_days", json!("30")),
        ("unused_days", json!(null)),
        ("unused_days", json!(u64::MAX)),
    ] {
        let field = format!("alert_settings.{setting}");
        given(&[free_org_created()])
            .when(alert_settings_patch(json!({ setting: value })))
            .then_expect_invalid(&[field.as_str()]);
    }
}

#[test]
fn change_settings_reports_every_problem_at_once() {
    let command = change_settings(ChangeSettingsRequest {
        alert_emails: Some(vec!["nope".into()]),
        rotation_days: Some(-1),
        alert_settings: Some(patch(
            json!({"unused_days": 0, "coffee_level": 3, "error_rate_percent": 20}),
        )),
        ..ChangeSettingsRequest::default()
    });
    given(&[free_org_created()]).when(command).then_expect_invalid(&[
        "alert_emails",
        "alert_settings.coffee_level",
        "alert_settings.unused_days",
        "rotation_days",
    ]);
}

#[test]
fn change_settings_records_only_what_changed_in_one_event() {
    given(&[free_org_created()])
        .when(change_settings(ChangeSettingsRequest {
            alert_emails: Some(vec!["ops@acme.example".into()]),
            rotation_days: Some(30),
            alert_settings: Some(patch(json!({"unused_days": 30, "error_rate_percent": 20}))),
            ..ChangeSettingsRequest::default()
        }))
        .then_expect_events(vec![OrgEvent::SettingsChanged(OrgSettingsChanged {
            alert_emails: None,
            rotation_days: Some(30),
            alert_settings: Some(AlertSettings {
                error_rate_percent: 20,
                ..AlertSettings::default()
            }),
            leak_action: None,
        })]);
}

#[test]
fn change_settings_without_changes_appends_nothing() {
    let state = given(&[free_org_created()]);
    state
        .when(change_settings(ChangeSettingsRequest::default()))
        .then_expect_nothing();
    state.when(emails(&["ops@acme.example"])).then_expect_nothing();
    state.when(rotation(90)).then_expect_nothing();
    state.when(alert_settings_patch(json!({}))).then_expect_nothing();
    state
        .when(alert_settings_patch(
            json!({"unused_days": 30, "approaching_limit_percent": 80}),
        ))
        .then_expect_nothing();
    state
        .when(change_settings(ChangeSettingsRequest {
            alert_emails: Some(vec!["ops@acme.example".into()]),
            rotation_days: Some(90),
            alert_settings: Some(patch(json!({"error_rate_percent": 10}))),
            ..ChangeSettingsRequest::default()
        }))
        .then_expect_nothing();
}

#[test]
fn change_settings_of_an_org_never_created_is_not_found() {
    given(&[]).when(rotation(30)).then_expect_not_found();
    given(&[])
        .when(change_settings(ChangeSettingsRequest::default()))
        .then_expect_not_found();
}

#[test]
fn evolve_applies_a_settings_change_field_by_field() {
    let before = given(&[free_org_created()]).into_state().unwrap();
    let rotation_only = OrgEvent::SettingsChanged(OrgSettingsChanged {
        rotation_days: Some(0),
        ..OrgSettingsChanged::default()
    });
    assert_eq!(
        given(&[free_org_created(), rotation_only.clone()]).into_state(),
        Some(Org {
            rotation_days: 0,
            ..before.clone()
        })
    );

    let settings = AlertSettings {
        unused_days: 7,
        ..AlertSettings::default()
    };
    let everything = OrgEvent::SettingsChanged(OrgSettingsChanged {
        alert_emails: Some(vec![address("a@b.example")]),
        rotation_days: Some(365),
        alert_settings: Some(settings),
        ..OrgSettingsChanged::default()
    });
    assert_eq!(
        given(&[free_org_created(), rotation_only.clone(), everything]).into_state(),
        Some(Org {
            alert_emails: vec![address("a@b.example")],
            // ops@ was removed, and its confirmation with it.
            confirmed: BTreeMap::new(),
            rotation_days: 365,
            alert_settings: settings,
            ..before.clone()
        })
    );

    let nothing = OrgEvent::SettingsChanged(OrgSettingsChanged::default());
    assert_eq!(given(&[free_org_created(), nothing]).into_state(), Some(before));
    assert_eq!(Org::evolve(None, &rotation_only), None);
}

// ----------------------------------------------------------- serialization

#[test]
fn every_event_round_trips_through_json_with_its_type_tag() {
    let events = vec![
        free_org_created(),
        enterprise_org_created(42_000),
        OrgEvent::PlanChanged(OrgPlanChanged {
            plan: Plan::Basic,
            rate_limit_per_minute: 1_000,
        }),
        OrgEvent::SettingsChanged(OrgSettingsChanged {
            alert_emails: Some(vec![address("a@b.example")]),
            rotation_days: Some(0),
            alert_settings: Some(AlertSettings {
                unusual_activity_factor: 3,
                ..AlertSettings::default()
            }),
            leak_action: Some(LeakAction::Notify),
        }),
        OrgEvent::SettingsChanged(OrgSettingsChanged {
            rotation_days: Some(30),
            ..OrgSettingsChanged::default()
        }),
        OrgEvent::SettingsChanged(OrgSettingsChanged::default()),
        requested("a@b.example", now()),
        confirmed("a@b.example", now()),
    ];
    let mut seen: Vec<&str> = events.iter().map(|e| e.event_type()).collect();
    seen.dedup();
    assert_eq!(
        seen,
        [
            "org.created",
            "org.plan_changed",
            "org.settings_changed",
            "org.alert_recipient_confirmation_requested",
            "org.alert_recipient_confirmed"
        ]
    );
    for event in events {
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["type"], event.event_type(), "{value}");
        let back: OrgEvent = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(back, event, "{value}");
    }
}

#[test]
fn a_settings_change_omits_unchanged_fields() {
    let event = OrgEvent::SettingsChanged(OrgSettingsChanged {
        rotation_days: Some(30),
        ..OrgSettingsChanged::default()
    });
    assert_eq!(
        serde_json::to_value(&event).unwrap(),
        json!({"type": "org.settings_changed", "data": {"rotation_days": 30}})
    );
    let value = serde_json::to_value(free_org_created()).unwrap();
    assert_eq!(value["data"]["plan"], "free");
    assert_eq!(value["data"]["org_id"], org_id().to_string());
    assert_eq!(value["data"]["alert_emails"], json!(["ops@acme.example"]));
}

#[test]
fn stream_ids_name_the_org() {
    assert_eq!(stream_id(org_id()), format!("org-{}", org_id()));
}

// ------------------------------------------------------- alert recipients

fn requested(address: &str, at: DateTime<Utc>) -> OrgEvent {
    OrgEvent::AlertRecipientConfirmationRequested(AlertRecipientConfirmationRequested {
        email: email(address),
        requested_at: at,
    })
}

fn confirmed(address: &str, at: DateTime<Utc>) -> OrgEvent {
    OrgEvent::AlertRecipientConfirmed(AlertRecipientConfirmed {
        email: email(address),
        confirmed_at: at,
    })
}

fn confirm(address: &str, requested_at: DateTime<Utc>) -> OrgCommand {
    OrgCommand::ConfirmRecipient {
        email: email(address),
        requested_at,
    }
}

fn listed(addresses: &[&str]) -> OrgEvent {
    OrgEvent::SettingsChanged(OrgSettingsChanged {
        alert_emails: Some(addresses.iter().map(|a| address(a)).collect()),
        ..OrgSettingsChanged::default()
    })
}

const NEW: &str = "new@acme.example";

/// The org with `NEW` added over the API a day ago (its link sent then).
fn with_new_address() -> Vec<OrgEvent> {
    let asked = now() - chrono::Duration::days(1);
    vec![
        free_org_created(),
        listed(&["ops@acme.example", NEW]),
        requested(NEW, asked),
    ]
}

#[test]
fn a_listed_address_with_a_working_link_is_not_mailed_again() {
    let history = with_new_address();
    given(&history)
        .when(emails(&["ops@acme.example", NEW]))
        .then_expect_nothing();
    // Removed and added back while its link works: the same link still does.
    let mut removed = history.clone();
    removed.push(listed(&["ops@acme.example"]));
    given(&removed)
        .when(emails(&["ops@acme.example", NEW]))
        .then_expect_events(vec![listed(&["ops@acme.example", NEW])]);
    // After 7 days the link has expired: saving the list sends a new one.
    let a_week_later = now() + chrono::Duration::days(6) + chrono::Duration::seconds(1);
    TestFramework::<Org>::at(a_week_later)
        .given(&history)
        .when(emails(&["ops@acme.example", NEW]))
        .then_expect_events(vec![requested(NEW, a_week_later)]);
}

#[test]
fn an_address_set_before_confirmations_existed_is_asked_when_the_list_is_saved() {
    let legacy = [free_org_created(), listed(&["ops@acme.example", NEW])];
    given(&legacy)
        .when(emails(&["ops@acme.example", NEW]))
        .then_expect_events(vec![requested(NEW, now())]);
    given(&legacy).when(rotation(90)).then_expect_nothing();
}

#[test]
fn the_newest_link_confirms_once_within_seven_days() {
    let history = with_new_address();
    let asked = now() - chrono::Duration::days(1);
    let state = given(&history);
    assert_eq!(state.state().unwrap().confirmed_alert_emails().count(), 1);
    state
        .when(confirm(NEW, asked))
        .then_expect_events(vec![confirmed(NEW, now())]);

    let mut done = history.clone();
    done.push(confirmed(NEW, now()));
    let state = given(&done);
    let org = state.state().unwrap();
    assert_eq!(
        org.confirmed_alert_emails().collect::<Vec<_>>(),
        [&email("ops@acme.example"), &email(NEW)]
    );
    assert!(org.confirmation_requests.is_empty(), "the link is used up");
    // Followed again: nothing to do (the page says it already is).
    state.when(confirm(NEW, asked)).then_expect_nothing();
    // Saving the list again asks nothing of a confirmed address.
    state.when(emails(&["ops@acme.example", NEW])).then_expect_nothing();

    // An older link, or one past its 7 days, does not work.
    given(&history)
        .when(confirm(NEW, asked - chrono::Duration::seconds(1)))
        .then_expect_conflict_saying("replaced");
    TestFramework::<Org>::at(asked + chrono::Duration::days(7))
        .given(&history)
        .when(confirm(NEW, asked))
        .then_expect_conflict_saying("expired");
}

#[test]
fn a_removed_address_loses_its_confirmation_and_its_link() {
    let mut history = with_new_address();
    let asked = now() - chrono::Duration::days(1);
    history.push(confirmed(NEW, now() - chrono::Duration::hours(1)));
    history.push(listed(&["ops@acme.example"]));
    let state = given(&history);
    assert!(!state.state().unwrap().confirmed.contains_key(&email(NEW)));
    state
        .when(confirm(NEW, asked))
        .then_expect_conflict_saying("no longer an alert recipient");
    // Added back, it must confirm again: a new link (the old one was used).
    state
        .when(emails(&["ops@acme.example", NEW]))
        .then_expect_events(vec![listed(&["ops@acme.example", NEW]), requested(NEW, now())]);
    // The operator's address too.
    let state = given(&[free_org_created(), listed(&[])]);
    state.when(emails(&["ops@acme.example"])).then_expect_events(vec![
        listed(&["ops@acme.example"]),
        requested("ops@acme.example", now()),
    ]);
}

#[test]
fn at_most_twenty_confirmation_emails_a_day() {
    let mut history = vec![free_org_created()];
    let mut state = given(&history);
    for batch in 0..2 {
        let addresses: Vec<String> = (0..10).map(|i| format!("a{batch}-{i}@acme.example")).collect();
        let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let events = state.when(emails(&refs)).result().unwrap();
        assert_eq!(events.len(), 11, "the list and ten requests");
        history.extend(events);
        state = given(&history);
    }
    state
        .when(emails(&["one-more@acme.example"]))
        .then_expect_over_quota("confirmation");
    // A day later the organization may ask again.
    let tomorrow = now() + chrono::Duration::days(1);
    assert_eq!(
        Org::decide(state.state(), emails(&["one-more@acme.example"]), tomorrow)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn the_link_matches_its_request_to_the_microsecond() {
    // A request time with nanoseconds (the log keeps microseconds, and so
    // does the token).
    let asked = now() - chrono::Duration::days(1) + chrono::Duration::nanoseconds(123_456_789);
    let history = [
        free_org_created(),
        listed(&["ops@acme.example", NEW]),
        requested(NEW, asked),
    ];
    let in_the_token = chrono::DateTime::from_timestamp_micros(asked.timestamp_micros()).unwrap();
    given(&history)
        .when(confirm(NEW, in_the_token))
        .then_expect_events(vec![confirmed(NEW, now())]);
    given(&history)
        .when(confirm(NEW, in_the_token - chrono::Duration::microseconds(1)))
        .then_expect_conflict_saying("replaced");
}

#[test]
fn a_confirmed_link_does_not_give_back_its_place_in_the_daily_cap() {
    // 20 requests today; one is confirmed (say, the admin's own address)
    // and removed; a list of nine of the others and a stranger is still
    // over the cap: a used link keeps its place.
    let addresses: Vec<String> = (0..20).map(|i| format!("a{i}@acme.example")).collect();
    let mut history = vec![free_org_created()];
    for chunk in addresses.chunks(10) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        history.extend(given(&history).when(emails(&refs)).result().unwrap());
    }
    history.push(confirmed("a0@acme.example", now()));
    let refs: Vec<&str> = addresses[11..20].iter().map(String::as_str).collect();
    history.push(listed(&refs));
    let mut with_stranger = refs.clone();
    with_stranger.push("stranger@elsewhere.example");
    given(&history)
        .when(emails(&with_stranger))
        .then_expect_over_quota("confirmation");
}

#[test]
fn the_system_asks_addresses_set_before_confirmations_existed_within_the_daily_cap() {
    // Listed before confirmations existed: never asked.
    let old: Vec<String> = (0..5).map(|i| format!("old{i}@acme.example")).collect();
    let old_refs: Vec<&str> = old.iter().map(String::as_str).collect();
    let mut history = vec![free_org_created(), listed(&old_refs)];
    let ask = |emails: &[&str]| OrgCommand::RequestConfirmations {
        emails: emails.iter().map(|e| email(e)).collect(),
    };
    // Not listed, or asked twice in the command: asked once, if at all.
    let mut command = old_refs.clone();
    command.extend(["old0@acme.example", "gone@acme.example"]);
    given(&history)
        .when(ask(&command))
        .then_expect_events(old_refs.iter().map(|e| requested(e, now())).collect());
    // 17 other requests today leave room for 3; the others wait.
    let busy: Vec<String> = (0..17).map(|i| format!("busy{i}@acme.example")).collect();
    let mut list = old_refs.clone();
    list.extend(busy.iter().map(String::as_str));
    history.push(listed(&list));
    history.extend(busy.iter().map(|e| requested(e, now() - chrono::Duration::hours(1))));
    let asked = given(&history).when(ask(&old_refs)).result().unwrap();
    assert_eq!(
        asked,
        old_refs[..3].iter().map(|e| requested(e, now())).collect::<Vec<_>>()
    );
    // Confirmed ones and ones holding a working link are not asked.
    history.extend(asked);
    history.push(confirmed("old3@acme.example", now()));
    let tomorrow = now() + chrono::Duration::days(1) + chrono::Duration::seconds(1);
    TestFramework::<Org>::at(tomorrow)
        .given(&history)
        .when(ask(&old_refs))
        .then_expect_events(vec![requested("old4@acme.example", tomorrow)]);
}

#[test]
fn an_address_an_older_version_took_is_listed_but_never_confirmed() {
    // An org created (and changed) before strict addresses, as stored then.
    let created = json!({
        "type": "org.created",
        "data": {
            "org_id": org_id(), "name": "Acme", "plan": "free", "rate_limit_per_minute": 100,
            "alert_emails": ["\"Evil\"<x@y.z>", "Ops@Acme.Example", "Ops@acme.example"],
            "rotation_days": 90, "alert_settings": AlertSettings::default(),
            "created_at": now() - chrono::Duration::days(30)
        }
    });
    let created: OrgEvent = serde_json::from_value(created).unwrap();
    let evil = ListedAddress::Unusable("\"Evil\"<x@y.z>".into());
    let OrgEvent::Created(ref data) = created else {
        panic!("{created:?}")
    };
    assert_eq!(data.alert_emails, [evil.clone(), address("Ops@acme.example")]);
    let state = given(std::slice::from_ref(&created));
    let org = state.state().unwrap();
    assert_eq!(
        org.confirmed_alert_emails().collect::<Vec<_>>(),
        [&email("Ops@acme.example")]
    );
    // It cannot be saved again; a list without it is a change.
    state
        .when(emails(&["\"Evil\"<x@y.z>", "Ops@acme.example"]))
        .then_expect_invalid(&["alert_emails"]);
    state
        .when(emails(&["Ops@acme.example"]))
        .then_expect_events(vec![listed(&["Ops@acme.example"])]);
    // The system never asks it (it is not an address it could ask).
    state
        .when(OrgCommand::RequestConfirmations {
            emails: vec![email("Ops@acme.example")],
        })
        .then_expect_nothing();
}

// -------------------------------------------------------------- leak action

#[test]
fn the_leak_action_defaults_to_deactivate_and_changes_to_notify_and_back() {
    let org = given(&[free_org_created()]);
    assert_eq!(org.state().unwrap().leak_action, LeakAction::Deactivate);
    let notify = |action: &str| {
        change_settings(ChangeSettingsRequest {
            leak_action: Some(action.into()),
            ..ChangeSettingsRequest::default()
        })
    };
    let changed = OrgEvent::SettingsChanged(OrgSettingsChanged {
        leak_action: Some(LeakAction::Notify),
        ..OrgSettingsChanged::default()
    });
    org.when(notify("notify")).then_expect_events(vec![changed.clone()]);
    org.when(notify("deactivate")).then_expect_nothing();
    let notifying = given(&[free_org_created(), changed]);
    assert_eq!(notifying.state().unwrap().leak_action, LeakAction::Notify);
    notifying
        .when(notify("deactivate"))
        .then_expect_events(vec![OrgEvent::SettingsChanged(OrgSettingsChanged {
            leak_action: Some(LeakAction::Deactivate),
            ..OrgSettingsChanged::default()
        })]);
    for bad in ["revoke", "Notify", ""] {
        org.when(notify(bad)).then_expect_invalid(&["leak_action"]);
    }
    // Settings events written before the leak action existed leave it alone.
    let old: OrgEvent =
        serde_json::from_value(json!({"type": "org.settings_changed", "data": {"rotation_days": 30}})).unwrap();
    assert_eq!(
        given(&[free_org_created(), old]).into_state().unwrap().leak_action,
        LeakAction::Deactivate
    );
}
