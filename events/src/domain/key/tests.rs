//! Given/when/then tests of the `ApiKey` aggregate: given past events, when a
//! command is decided at a fixed clock, then exactly these events (or this
//! refusal). No I/O, no real clock, no real randomness.

use super::*;
use crate::domain::test_framework::{now, org_id, Given, TestFramework, Then};
use crate::domain::{Environment, PlainKey};
use chrono::TimeZone;

// ---------------------------------------------------------------- fixtures

fn days(n: i64) -> Duration {
    Duration::days(n)
}

fn secs(n: i64) -> Duration {
    Duration::seconds(n)
}

fn key_id() -> KeyId {
    KeyId::from_uuid(uuid::Uuid::from_u128(0x0193_5a1c_2b3d_7e4f_8a9b_0c1d_2e3f_4a5b))
}

/// Random bytes of the first secret of a key.
const FIRST: u8 = 42;
/// Random bytes of a regenerated secret.
const SECOND: u8 = 43;

fn source(fill: u8) -> SecretSource {
    SecretSource {
        random: [fill; 32],
        hash_key: HashKey::from_bytes([7; 32]),
    }
}

/// The clear text and hash `source(fill)` issues, computed independently of
/// `SecretSource::issue`.
fn issued(key_type: KeyType, fill: u8) -> (PlainKey, KeyHash) {
    let plain = PlainKey::encode(key_type, &[fill; 32]);
    let hash = HashKey::from_bytes([7; 32]).hash(&plain);
    (plain, hash)
}

fn last_four_of(plain: &PlainKey) -> String {
    let text = plain.expose();
    text[text.len() - 4..].to_owned()
}

fn name(text: &str) -> Name {
    Name::parse(text).unwrap()
}

fn create_input(key_type: &str) -> CreateKeyRequest {
    CreateKeyRequest {
        key_id: key_id(),
        org_id: org_id(),
        name: "Checkout backend".into(),
        key_type: key_type.into(),
        scopes: None,
        expires_at: None,
        rotation_days: 90,
        secret: source(FIRST),
        allowed_ips: None,
    }
}

/// The input parsed at the edge, at the clock of every `when`.
fn create(input: CreateKeyRequest) -> Result<KeyCommand, DomainError> {
    input.parse(now()).map(|c| KeyCommand::Create(Box::new(c)))
}

/// The edit parsed at the edge.
fn update(input: UpdateKeyRequest) -> KeyCommand {
    KeyCommand::Update(input.parse())
}

fn regenerate(expire_old_in_seconds: i64) -> KeyCommand {
    KeyCommand::Regenerate(Box::new(RegenerateKey {
        expire_old_in_seconds,
        rotation_days: 90,
        secret: source(SECOND),
    }))
}

/// The `key.created` event of a key created 30 days before `now()`, through
/// `decide` (so the history is one the aggregate really produces).
fn created_with(key_type: &str, scopes: Option<&[&str]>, expires_at: Option<DateTime<Utc>>) -> KeyEvent {
    let input = CreateKeyRequest {
        scopes: scopes.map(|s| s.iter().map(|s| s.to_string()).collect()),
        expires_at,
        ..create_input(key_type)
    };
    let created_at = now() - days(30);
    TestFramework::<ApiKey>::at(created_at)
        .given(&[])
        .when_parsed(input.parse(created_at).map(|c| KeyCommand::Create(Box::new(c))))
        .then_expect_one()
}

/// A live secret key with the default scopes and no expiry.
fn secret_created() -> KeyEvent {
    created_with("secret", None, None)
}

/// A live secret key expiring at `at`.
fn expiring_at(at: DateTime<Utc>) -> KeyEvent {
    created_with("secret", None, Some(at))
}

/// A live secret key whose expiry passed one day ago (recorded status still active).
fn expired_by_clock() -> KeyEvent {
    expiring_at(now() - days(1))
}

fn deactivated() -> KeyEvent {
    KeyEvent::Deactivated(Empty {})
}

fn activated() -> KeyEvent {
    KeyEvent::Activated(Empty {})
}

fn deleted() -> KeyEvent {
    KeyEvent::Deleted(Empty {})
}

fn recorded_expiry(at: DateTime<Utc>) -> KeyEvent {
    KeyEvent::Expired(KeyExpired { expired_at: at })
}

fn all_commands() -> Vec<(&'static str, KeyCommand)> {
    vec![
        (
            "update",
            update(UpdateKeyRequest {
                name: Some("Renamed".into()),
                ..UpdateKeyRequest::default()
            }),
        ),
        ("regenerate", regenerate(0)),
        ("deactivate", KeyCommand::Deactivate),
        ("activate", KeyCommand::Activate),
        ("delete", KeyCommand::Delete),
        ("expire", KeyCommand::Expire),
    ]
}

// ------------------------------------------------------ given / when / then

/// The state after `events`, to decide commands against at [`now`].
fn given(events: &[KeyEvent]) -> Given<ApiKey> {
    TestFramework::at(now()).given(events)
}

#[track_caller]
fn then_created(then: Then<KeyEvent>) -> KeyCreated {
    match then.then_expect_one() {
        KeyEvent::Created(e) => e,
        other => panic!("expected key.created, got {other:?}"),
    }
}

// ------------------------------------------------------------------ create

#[test]
fn create_gives_each_type_its_prefix_environment_default_scopes_and_rotation() {
    let cases = [
        (
            "public",
            KeyType::Public,
            "pk_live_",
            Environment::Live,
            vec![Scope::ReadExperiences],
            Some(now() + days(90)),
        ),
        (
            "secret",
            KeyType::Secret,
            "sk_live_",
            Environment::Live,
            vec![Scope::Admin],
            Some(now() + days(90)),
        ),
        (
            "test",
            KeyType::Test,
            "sk_test_",
            Environment::Test,
            vec![Scope::Admin],
            None,
        ),
    ];
    for (type_name, key_type, prefix, environment, scopes, rotation_due_at) in cases {
        let (plain, key_hash) = issued(key_type, FIRST);
        assert!(plain.expose().starts_with(prefix));
        given(&[])
            .when_parsed(create(create_input(type_name)))
            .then_expect_events(vec![KeyEvent::Created(KeyCreated {
                key_id: key_id(),
                org_id: org_id(),
                name: name("Checkout backend"),
                key_type,
                environment,
                scopes,
                key_hash,
                prefix: prefix.to_owned(),
                last_four: last_four_of(&plain),
                created_at: now(),
                expires_at: None,
                rotation_due_at,
                allowed_ips: AllowedIps::default(),
            })]);
    }
}

#[test]
fn create_without_a_rotation_policy_sets_no_rotation_date() {
    for type_name in ["public", "secret", "test"] {
        let input = CreateKeyRequest {
            rotation_days: 0,
            ..create_input(type_name)
        };
        let event = then_created(given(&[]).when_parsed(create(input)));
        assert_eq!(event.rotation_due_at, None, "{type_name}");
    }
}

#[test]
fn create_counts_the_rotation_period_from_now() {
    let input = CreateKeyRequest {
        rotation_days: 30,
        ..create_input("secret")
    };
    let event = then_created(given(&[]).when_parsed(create(input)));
    assert_eq!(
        event.rotation_due_at,
        Some(Utc.with_ymd_and_hms(2026, 12, 26, 10, 0, 0).unwrap())
    );
}

#[test]
fn create_sorts_and_dedups_explicit_scopes() {
    let input = CreateKeyRequest {
        scopes: Some(
            [
                "admin",
                "write:consumers",
                "read:experiences",
                "write:consumers",
                "read:analytics",
            ]
            .map(String::from)
            .to_vec(),
        ),
        ..create_input("secret")
    };
    let event = then_created(given(&[]).when_parsed(create(input)));
    assert_eq!(
        event.scopes,
        vec![
            Scope::ReadExperiences,
            Scope::WriteConsumers,
            Scope::ReadAnalytics,
            Scope::Admin
        ]
    );

    let input = CreateKeyRequest {
        scopes: Some(
            ["read:consumers", "read:experiences", "read:consumers"]
                .map(String::from)
                .to_vec(),
        ),
        ..create_input("public")
    };
    let event = then_created(given(&[]).when_parsed(create(input)));
    assert_eq!(event.scopes, vec![Scope::ReadExperiences, Scope::ReadConsumers]);
}

#[test]
fn create_accepts_explicit_scopes_on_test_keys() {
    let input = CreateKeyRequest {
        scopes: Some(vec!["write:experiences".into()]),
        ..create_input("test")
    };
    let event = then_created(given(&[]).when_parsed(create(input)));
    assert_eq!(event.scopes, vec![Scope::WriteExperiences]);
}

#[test]
fn create_keeps_a_future_expiry() {
    let at = now() + secs(1);
    let input = CreateKeyRequest {
        expires_at: Some(at),
        ..create_input("secret")
    };
    let event = then_created(given(&[]).when_parsed(create(input)));
    assert_eq!(event.expires_at, Some(at));
}

#[test]
fn create_records_the_last_four_and_hash_of_the_issued_key() {
    for key_type in KeyType::ALL {
        let (plain, key_hash) = source(FIRST).issue(key_type);
        let event = then_created(given(&[]).when_parsed(create(create_input(key_type.as_str()))));
        assert_eq!(event.last_four.chars().count(), 4);
        assert_eq!(event.last_four, last_four_of(&plain));
        assert!(plain.expose().ends_with(&event.last_four));
        assert_eq!(event.key_hash, key_hash);
        assert_eq!(event.prefix, plain.prefix());
    }
}

#[test]
fn the_created_event_never_contains_the_clear_text_key() {
    for key_type in KeyType::ALL {
        let (plain, _) = source(FIRST).issue(key_type);
        let event = given(&[])
            .when_parsed(create(create_input(key_type.as_str())))
            .then_expect_one();
        let json = serde_json::to_string(&event).unwrap();
        assert!(!json.contains(plain.expose()), "{json}");
        // Not even the random body (the part between prefix and checksum).
        assert!(!json.contains(&plain.expose()[8..51]), "{json}");
        assert!(!format!("{event:?}").contains(plain.expose()));
    }
}

#[test]
fn create_refuses_an_unknown_type() {
    let details = given(&[])
        .when_parsed(create(create_input("private")))
        .then_expect_invalid(&["type"]);
    assert!(details.0["type"][0].contains("private"));
    given(&[])
        .when_parsed(create(create_input("Secret")))
        .then_expect_invalid(&["type"]);
    given(&[])
        .when_parsed(create(create_input("")))
        .then_expect_invalid(&["type"]);
}

#[test]
fn create_refuses_an_unknown_scope() {
    for type_name in ["public", "secret", "test"] {
        let input = CreateKeyRequest {
            scopes: Some(vec!["read:experiences".into(), "write:everything".into()]),
            ..create_input(type_name)
        };
        let details = given(&[]).when_parsed(create(input)).then_expect_invalid(&["scopes"]);
        assert!(details.0["scopes"][0].contains("write:everything"));
    }
}

#[test]
fn create_refuses_write_and_admin_scopes_on_public_keys() {
    for scope in ["write:consumers", "admin", "write:experiences", "read:analytics"] {
        let input = CreateKeyRequest {
            scopes: Some(vec!["read:experiences".into(), scope.into()]),
            ..create_input("public")
        };
        let details = given(&[]).when_parsed(create(input)).then_expect_invalid(&["scopes"]);
        assert_eq!(details.0["scopes"].len(), 1);
        assert!(details.0["scopes"][0].contains(scope), "{details:?}");
    }
}

#[test]
fn create_refuses_an_empty_scope_list() {
    for type_name in ["public", "secret", "test"] {
        let input = CreateKeyRequest {
            scopes: Some(vec![]),
            ..create_input(type_name)
        };
        given(&[]).when_parsed(create(input)).then_expect_invalid(&["scopes"]);
    }
}

#[test]
fn create_refuses_an_expiry_that_is_not_in_the_future() {
    for at in [now() - days(1), now() - secs(1), now()] {
        let input = CreateKeyRequest {
            expires_at: Some(at),
            ..create_input("secret")
        };
        given(&[])
            .when_parsed(create(input))
            .then_expect_invalid(&["expires_at"]);
    }
}

/// Instants after 9999-12-31T23:59:59Z print with five-digit years.
fn beyond_rfc_3339() -> [DateTime<Utc>; 2] {
    let latest = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap();
    [latest + Duration::milliseconds(500), latest + days(1)]
}

#[test]
fn create_refuses_an_expiry_rfc_3339_cannot_write() {
    for at in beyond_rfc_3339() {
        let input = CreateKeyRequest {
            expires_at: Some(at),
            ..create_input("secret")
        };
        given(&[])
            .when_parsed(create(input))
            .then_expect_invalid(&["expires_at"]);
    }
    let latest = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap();
    let input = CreateKeyRequest {
        expires_at: Some(latest),
        ..create_input("secret")
    };
    assert!(
        given(&[]).when_parsed(create(input)).result().is_ok(),
        "the last second of 9999 is fine"
    );
}

#[test]
fn update_refuses_an_expiry_rfc_3339_cannot_write() {
    for at in beyond_rfc_3339() {
        given(&[secret_created()])
            .when(update(UpdateKeyRequest {
                expires_at: Some(Some(at)),
                ..UpdateKeyRequest::default()
            }))
            .then_expect_invalid(&["expires_at"]);
    }
}

#[test]
fn create_refuses_bad_names() {
    for bad in [
        "".to_owned(),
        "   ".to_owned(),
        " \u{a0} ".to_owned(),
        "x".repeat(101),
        "two\nlines".to_owned(),
        "tab\there".to_owned(),
        "bell\u{7}".to_owned(),
        "\n".to_owned(),
    ] {
        let input = CreateKeyRequest {
            name: bad.clone(),
            ..create_input("secret")
        };
        given(&[]).when_parsed(create(input)).then_expect_invalid(&["name"]);
    }
}

#[test]
fn create_accepts_names_of_up_to_100_characters() {
    for good in [
        "x".repeat(100),
        "é".repeat(100),
        "a".to_owned(),
        "  padded  ".to_owned(),
    ] {
        let input = CreateKeyRequest {
            name: good.clone(),
            ..create_input("secret")
        };
        let event = then_created(given(&[]).when_parsed(create(input)));
        assert_eq!(event.name.as_str(), good);
    }
}

#[test]
fn create_reports_every_problem_at_once() {
    let input = CreateKeyRequest {
        name: "line\nbreak".into(),
        key_type: "private".into(),
        scopes: Some(vec!["write:everything".into()]),
        expires_at: Some(now() - days(1)),
        ..create_input("secret")
    };
    given(&[])
        .when_parsed(create(input))
        .then_expect_invalid(&["expires_at", "name", "scopes", "type"]);

    // Several problems with one field are all listed too.
    let input = CreateKeyRequest {
        name: String::new(),
        scopes: Some(vec![
            "write:everything".into(),
            "admin".into(),
            "write:consumers".into(),
        ]),
        ..create_input("public")
    };
    let details = given(&[])
        .when_parsed(create(input))
        .then_expect_invalid(&["name", "scopes"]);
    assert_eq!(details.0["scopes"].len(), 3, "{details:?}");
}

#[test]
fn create_over_an_existing_key_is_a_conflict() {
    given(&[secret_created()])
        .when_parsed(create(create_input("secret")))
        .then_expect_conflict();
    given(&[secret_created(), deactivated()])
        .when_parsed(create(create_input("public")))
        .then_expect_conflict();
    // The id of a deleted key is not reused either.
    given(&[secret_created(), deleted()])
        .when_parsed(create(create_input("secret")))
        .then_expect_conflict();
}

#[test]
fn evolve_of_created_builds_an_active_key() {
    let event = secret_created();
    let KeyEvent::Created(created) = &event else {
        unreachable!()
    };
    assert_eq!(
        given(std::slice::from_ref(&event)).into_state(),
        Some(ApiKey {
            id: key_id(),
            org_id: org_id(),
            name: name("Checkout backend"),
            key_type: KeyType::Secret,
            scopes: vec![Scope::Admin],
            status: KeyStatus::Active,
            key_hash: created.key_hash,
            last_four: created.last_four.clone(),
            created_at: now() - days(30),
            expires_at: None,
            rotation_due_at: Some(now() + days(60)),
            previous: None,
            deleted: false,
            allowed_ips: AllowedIps::default(),
            leaked_at: None,
        })
    );
}

// ------------------------------------------------------------------ update

#[test]
fn update_of_the_name_records_only_the_name() {
    given(&[secret_created()])
        .when(update(UpdateKeyRequest {
            name: Some("Billing worker".into()),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_events(vec![KeyEvent::Updated(KeyUpdated {
            name: Some(name("Billing worker")),
            ..KeyUpdated::default()
        })]);
}

#[test]
fn update_of_the_scopes_records_only_the_sorted_scopes() {
    given(&[secret_created()])
        .when(update(UpdateKeyRequest {
            scopes: Some(vec![
                "write:consumers".into(),
                "read:experiences".into(),
                "write:consumers".into(),
            ]),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_events(vec![KeyEvent::Updated(KeyUpdated {
            scopes: Some(vec![Scope::ReadExperiences, Scope::WriteConsumers]),
            ..KeyUpdated::default()
        })]);
}

#[test]
fn update_of_a_public_key_to_read_consumers_is_allowed() {
    given(&[created_with("public", None, None)])
        .when(update(UpdateKeyRequest {
            scopes: Some(vec!["read:consumers".into()]),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_events(vec![KeyEvent::Updated(KeyUpdated {
            scopes: Some(vec![Scope::ReadConsumers]),
            ..KeyUpdated::default()
        })]);
}

#[test]
fn update_sets_changes_and_clears_the_expiry() {
    let later = now() + days(7);
    given(&[secret_created()])
        .when(update(UpdateKeyRequest {
            expires_at: Some(Some(later)),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_events(vec![KeyEvent::Updated(KeyUpdated {
            expires_at: Some(Some(later)),
            ..KeyUpdated::default()
        })]);
    given(&[expiring_at(now() + days(1))])
        .when(update(UpdateKeyRequest {
            expires_at: Some(Some(later)),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_events(vec![KeyEvent::Updated(KeyUpdated {
            expires_at: Some(Some(later)),
            ..KeyUpdated::default()
        })]);
    given(&[expiring_at(now() + days(1))])
        .when(update(UpdateKeyRequest {
            expires_at: Some(None),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_events(vec![KeyEvent::Updated(KeyUpdated {
            expires_at: Some(None),
            ..KeyUpdated::default()
        })]);
}

#[test]
fn update_of_several_fields_is_one_event_with_only_the_changed_ones() {
    given(&[expiring_at(now() + days(1))])
        .when(update(UpdateKeyRequest {
            name: Some("Billing worker".into()),
            scopes: Some(vec!["read:analytics".into()]),
            expires_at: Some(None),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_events(vec![KeyEvent::Updated(KeyUpdated {
            name: Some(name("Billing worker")),
            scopes: Some(vec![Scope::ReadAnalytics]),
            expires_at: Some(None),
            ..KeyUpdated::default()
        })]);
    // The name is unchanged, so only the scopes are recorded.
    given(&[secret_created()])
        .when(update(UpdateKeyRequest {
            name: Some("Checkout backend".into()),
            scopes: Some(vec!["read:analytics".into()]),
            expires_at: Some(None),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_events(vec![KeyEvent::Updated(KeyUpdated {
            scopes: Some(vec![Scope::ReadAnalytics]),
            ..KeyUpdated::default()
        })]);
}

#[test]
fn update_without_changes_appends_nothing() {
    let expiry = now() + days(1);
    let state = given(&[created_with(
        "secret",
        Some(&["read:experiences", "write:consumers"]),
        Some(expiry),
    )]);
    state.when(update(UpdateKeyRequest::default())).then_expect_nothing();
    state
        .when(update(UpdateKeyRequest {
            name: Some("Checkout backend".into()),
            scopes: Some(vec![
                "write:consumers".into(),
                "read:experiences".into(),
                "write:consumers".into(),
            ]),
            expires_at: Some(Some(expiry)),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_nothing();
    // Clearing an expiry that is not set changes nothing either.
    given(&[secret_created()])
        .when(update(UpdateKeyRequest {
            expires_at: Some(None),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_nothing();
}

#[test]
fn update_of_a_public_key_to_a_write_or_admin_scope_is_refused() {
    for scope in ["write:consumers", "write:experiences", "admin"] {
        given(&[created_with("public", None, None)])
            .when(update(UpdateKeyRequest {
                scopes: Some(vec![scope.into()]),
                ..UpdateKeyRequest::default()
            }))
            .then_expect_invalid(&["scopes"]);
    }
}

#[test]
fn update_refuses_unknown_or_no_scopes() {
    for scopes in [vec!["write:everything".to_owned()], vec![]] {
        given(&[secret_created()])
            .when(update(UpdateKeyRequest {
                scopes: Some(scopes),
                ..UpdateKeyRequest::default()
            }))
            .then_expect_invalid(&["scopes"]);
    }
}

#[test]
fn update_refuses_bad_names() {
    for bad in [
        "".to_owned(),
        "  ".to_owned(),
        "x".repeat(101),
        "a\nb".to_owned(),
        "a\tb".to_owned(),
        "\u{7}".to_owned(),
    ] {
        given(&[secret_created()])
            .when(update(UpdateKeyRequest {
                name: Some(bad),
                ..UpdateKeyRequest::default()
            }))
            .then_expect_invalid(&["name"]);
    }
}

#[test]
fn update_refuses_an_expiry_that_is_not_in_the_future() {
    for at in [now() - days(1), now()] {
        given(&[secret_created()])
            .when(update(UpdateKeyRequest {
                expires_at: Some(Some(at)),
                ..UpdateKeyRequest::default()
            }))
            .then_expect_invalid(&["expires_at"]);
    }
}

#[test]
fn update_reports_every_problem_at_once() {
    given(&[created_with("public", None, None)])
        .when(update(UpdateKeyRequest {
            name: Some(String::new()),
            scopes: Some(vec!["admin".into()]),
            expires_at: Some(Some(now() - days(1))),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_invalid(&["expires_at", "name", "scopes"]);
}

#[test]
fn update_of_an_expired_key_is_a_conflict() {
    let edit = || {
        update(UpdateKeyRequest {
            name: Some("Renamed".into()),
            ..UpdateKeyRequest::default()
        })
    };
    given(&[expired_by_clock()]).when(edit()).then_expect_conflict();
    given(&[expiring_at(now())]).when(edit()).then_expect_conflict();
    given(&[expired_by_clock(), deactivated()])
        .when(edit())
        .then_expect_conflict();
    given(&[expired_by_clock(), recorded_expiry(now() - days(1))])
        .when(edit())
        .then_expect_conflict();
    // Not even to lift the expiry.
    given(&[expired_by_clock()])
        .when(update(UpdateKeyRequest {
            expires_at: Some(None),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_conflict();
}

#[test]
fn update_of_an_inactive_key_is_allowed() {
    let event = given(&[secret_created(), deactivated()])
        .when(update(UpdateKeyRequest {
            name: Some("Renamed".into()),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_one();
    assert_eq!(
        event,
        KeyEvent::Updated(KeyUpdated {
            name: Some(name("Renamed")),
            ..KeyUpdated::default()
        })
    );
}

#[test]
fn update_of_a_deleted_or_unknown_key_is_not_found() {
    let edit = || {
        update(UpdateKeyRequest {
            name: Some("Renamed".into()),
            ..UpdateKeyRequest::default()
        })
    };
    given(&[secret_created(), deleted()])
        .when(edit())
        .then_expect_not_found();
    given(&[]).when(edit()).then_expect_not_found();
}

#[test]
fn evolve_applies_an_update_field_by_field() {
    let start = given(&[expiring_at(now() + days(1))]).into_state().unwrap();

    let renamed = ApiKey::evolve(
        Some(start.clone()),
        &KeyEvent::Updated(KeyUpdated {
            name: Some(name("Renamed")),
            ..KeyUpdated::default()
        }),
    )
    .unwrap();
    assert_eq!(
        renamed,
        ApiKey {
            name: name("Renamed"),
            ..start.clone()
        }
    );

    let rescoped = ApiKey::evolve(
        Some(start.clone()),
        &KeyEvent::Updated(KeyUpdated {
            scopes: Some(vec![Scope::ReadConsumers]),
            ..KeyUpdated::default()
        }),
    )
    .unwrap();
    assert_eq!(
        rescoped,
        ApiKey {
            scopes: vec![Scope::ReadConsumers],
            ..start.clone()
        }
    );

    let cleared = ApiKey::evolve(
        Some(start.clone()),
        &KeyEvent::Updated(KeyUpdated {
            expires_at: Some(None),
            ..KeyUpdated::default()
        }),
    )
    .unwrap();
    assert_eq!(
        cleared,
        ApiKey {
            expires_at: None,
            ..start.clone()
        }
    );

    let moved = ApiKey::evolve(
        Some(start.clone()),
        &KeyEvent::Updated(KeyUpdated {
            expires_at: Some(Some(now() + days(9))),
            ..KeyUpdated::default()
        }),
    )
    .unwrap();
    assert_eq!(
        moved,
        ApiKey {
            expires_at: Some(now() + days(9)),
            ..start
        }
    );
}

// -------------------------------------------------------------- regenerate

#[test]
fn regenerate_issues_a_new_secret_that_stops_the_old_one_at_once() {
    let (plain, key_hash) = issued(KeyType::Secret, SECOND);
    let state = given(&[secret_created()]);
    let old_hash = state.state().unwrap().key_hash;
    assert_ne!(key_hash, old_hash);
    state
        .when(regenerate(0))
        .then_expect_events(vec![KeyEvent::Regenerated(KeyRegenerated {
            key_hash,
            last_four: last_four_of(&plain),
            regenerated_at: now(),
            previous_valid_until: None,
            rotation_due_at: Some(now() + days(90)),
        })]);
}

#[test]
fn regenerate_with_a_grace_period_keeps_the_old_secret_until_then() {
    for grace in [1, 3600, MAX_GRACE_SECONDS] {
        let event = given(&[secret_created()]).when(regenerate(grace)).then_expect_one();
        let KeyEvent::Regenerated(e) = event else {
            panic!("{event:?}")
        };
        assert_eq!(e.previous_valid_until, Some(now() + secs(grace)));
    }
    let event = given(&[secret_created()]).when(regenerate(604_800)).then_expect_one();
    let KeyEvent::Regenerated(e) = event else {
        panic!("{event:?}")
    };
    assert_eq!(e.previous_valid_until, Some(now() + days(7)));
}

#[test]
fn regenerate_refuses_a_grace_period_out_of_range() {
    for grace in [-1, 604_801, i64::MIN, i64::MAX] {
        given(&[secret_created()])
            .when(regenerate(grace))
            .then_expect_invalid(&["expire_old_in_seconds"]);
    }
}

#[test]
fn regenerate_restarts_the_rotation_period_from_now() {
    let state = given(&[secret_created()]);
    assert_eq!(state.state().unwrap().rotation_due_at, Some(now() + days(60)));
    let after = given(&[secret_created(), state.when(regenerate(0)).then_expect_one()])
        .into_state()
        .unwrap();
    assert_eq!(after.rotation_due_at, Some(now() + days(90)));

    let no_policy = KeyCommand::Regenerate(Box::new(RegenerateKey {
        expire_old_in_seconds: 0,
        rotation_days: 0,
        secret: source(SECOND),
    }));
    let KeyEvent::Regenerated(e) = state.when(no_policy).then_expect_one() else {
        unreachable!()
    };
    assert_eq!(e.rotation_due_at, None);

    // Test keys are never due for rotation.
    let KeyEvent::Regenerated(e) = given(&[created_with("test", None, None)])
        .when(regenerate(0))
        .then_expect_one()
    else {
        unreachable!()
    };
    assert_eq!(e.rotation_due_at, None);
}

#[test]
fn regenerate_keeps_the_type_prefix_and_never_records_the_clear_text() {
    for key_type in KeyType::ALL {
        let (plain, key_hash) = issued(key_type, SECOND);
        let event = given(&[created_with(key_type.as_str(), None, None)])
            .when(regenerate(60))
            .then_expect_one();
        let KeyEvent::Regenerated(e) = &event else {
            panic!("{event:?}")
        };
        assert_eq!(e.key_hash, key_hash);
        assert_eq!(e.last_four, last_four_of(&plain));
        let json = serde_json::to_string(&event).unwrap();
        assert!(!json.contains(plain.expose()), "{json}");
        assert!(!json.contains(&plain.expose()[8..51]), "{json}");
    }
}

#[test]
fn evolve_of_regenerated_keeps_the_previous_hash_only_with_a_grace_period() {
    let created = secret_created();
    let before = given(std::slice::from_ref(&created)).into_state().unwrap();
    let (plain, new_hash) = issued(KeyType::Secret, SECOND);

    let with_grace = given(std::slice::from_ref(&created))
        .when(regenerate(3600))
        .then_expect_one();
    let after = given(&[created.clone(), with_grace.clone()]).into_state().unwrap();
    assert_eq!(
        after,
        ApiKey {
            key_hash: new_hash,
            last_four: last_four_of(&plain),
            rotation_due_at: Some(now() + days(90)),
            previous: Some(PreviousSecret {
                key_hash: before.key_hash,
                valid_until: now() + secs(3600),
            }),
            ..before.clone()
        }
    );

    let without_grace = given(std::slice::from_ref(&created))
        .when(regenerate(0))
        .then_expect_one();
    let after = given(&[created.clone(), without_grace.clone()]).into_state().unwrap();
    assert_eq!(after.previous, None);
    assert_eq!(after.key_hash, new_hash);

    // A later regeneration without grace drops the older secret.
    let after = given(&[created, with_grace, without_grace]).into_state().unwrap();
    assert_eq!(after.previous, None);
}

#[test]
fn regenerate_of_an_inactive_key_is_allowed() {
    let event = given(&[secret_created(), deactivated()])
        .when(regenerate(0))
        .then_expect_one();
    assert_eq!(event.event_type(), "key.regenerated");
}

#[test]
fn regenerate_of_an_expired_key_is_a_conflict() {
    given(&[expired_by_clock()]).when(regenerate(0)).then_expect_conflict();
    given(&[expiring_at(now())]).when(regenerate(0)).then_expect_conflict();
    given(&[expired_by_clock(), recorded_expiry(now() - days(1))])
        .when(regenerate(60))
        .then_expect_conflict();
}

#[test]
fn regenerate_of_a_deleted_or_unknown_key_is_not_found() {
    given(&[secret_created(), deleted()])
        .when(regenerate(0))
        .then_expect_not_found();
    given(&[]).when(regenerate(0)).then_expect_not_found();
}

// ------------------------------------------------- deactivate and activate

#[test]
fn deactivate_an_active_key() {
    let state = given(&[secret_created()]);
    state
        .when(KeyCommand::Deactivate)
        .then_expect_events(vec![deactivated()]);
    let after = given(&[secret_created(), deactivated()]).into_state().unwrap();
    assert_eq!(
        after,
        ApiKey {
            status: KeyStatus::Inactive,
            ..state.into_state().unwrap()
        }
    );
}

#[test]
fn deactivate_is_idempotent() {
    given(&[secret_created(), deactivated()])
        .when(KeyCommand::Deactivate)
        .then_expect_nothing();
    // Deactivated again after a round trip: one new event, as expected.
    given(&[secret_created(), deactivated(), activated()])
        .when(KeyCommand::Deactivate)
        .then_expect_events(vec![deactivated()]);
}

#[test]
fn deactivate_an_expired_key_is_a_conflict() {
    given(&[expired_by_clock()])
        .when(KeyCommand::Deactivate)
        .then_expect_conflict();
    given(&[expiring_at(now())])
        .when(KeyCommand::Deactivate)
        .then_expect_conflict();
    given(&[expired_by_clock(), deactivated()])
        .when(KeyCommand::Deactivate)
        .then_expect_conflict();
    given(&[expired_by_clock(), recorded_expiry(now() - days(1))])
        .when(KeyCommand::Deactivate)
        .then_expect_conflict();
}

#[test]
fn deactivate_a_deleted_or_unknown_key_is_not_found() {
    given(&[secret_created(), deleted()])
        .when(KeyCommand::Deactivate)
        .then_expect_not_found();
    given(&[]).when(KeyCommand::Deactivate).then_expect_not_found();
}

#[test]
fn activate_an_inactive_key() {
    let state = given(&[secret_created(), deactivated()]);
    state.when(KeyCommand::Activate).then_expect_events(vec![activated()]);
    let after = given(&[secret_created(), deactivated(), activated()])
        .into_state()
        .unwrap();
    assert_eq!(after.status, KeyStatus::Active);
    assert_eq!(after, given(&[secret_created()]).into_state().unwrap());
}

#[test]
fn activate_is_idempotent() {
    given(&[secret_created()])
        .when(KeyCommand::Activate)
        .then_expect_nothing();
    given(&[secret_created(), deactivated(), activated()])
        .when(KeyCommand::Activate)
        .then_expect_nothing();
}

#[test]
fn activate_an_expired_key_is_a_conflict() {
    // By the clock, whatever status was recorded.
    given(&[expired_by_clock()])
        .when(KeyCommand::Activate)
        .then_expect_conflict();
    given(&[expiring_at(now())])
        .when(KeyCommand::Activate)
        .then_expect_conflict();
    given(&[expired_by_clock(), deactivated()])
        .when(KeyCommand::Activate)
        .then_expect_conflict();
    given(&[expiring_at(now()), deactivated()])
        .when(KeyCommand::Activate)
        .then_expect_conflict();
    // And once the expiry job has recorded it.
    given(&[expired_by_clock(), recorded_expiry(now() - days(1))])
        .when(KeyCommand::Activate)
        .then_expect_conflict();
    given(&[expired_by_clock(), deactivated(), recorded_expiry(now() - days(1))])
        .when(KeyCommand::Activate)
        .then_expect_conflict();
}

#[test]
fn activate_a_key_that_expires_later_is_allowed() {
    given(&[expiring_at(now() + secs(1)), deactivated()])
        .when(KeyCommand::Activate)
        .then_expect_events(vec![activated()]);
}

#[test]
fn activate_a_deleted_or_unknown_key_is_not_found() {
    given(&[secret_created(), deactivated(), deleted()])
        .when(KeyCommand::Activate)
        .then_expect_not_found();
    given(&[]).when(KeyCommand::Activate).then_expect_not_found();
}

// ------------------------------------------------------------------ delete

#[test]
fn delete_a_key() {
    given(&[secret_created()])
        .when(KeyCommand::Delete)
        .then_expect_events(vec![deleted()]);
    let after = given(&[secret_created(), deleted()]).into_state().unwrap();
    assert!(after.deleted);
}

#[test]
fn delete_works_in_every_state() {
    for history in [
        vec![secret_created(), deactivated()],
        vec![expired_by_clock()],
        vec![expired_by_clock(), recorded_expiry(now() - days(1))],
        vec![created_with("public", None, None)],
        vec![created_with("test", None, None)],
    ] {
        given(&history)
            .when(KeyCommand::Delete)
            .then_expect_events(vec![deleted()]);
    }
}

#[test]
fn after_delete_every_command_is_not_found() {
    let state = given(&[secret_created(), deleted()]);
    for (label, command) in all_commands() {
        assert_eq!(state.when(command).result(), Err(DomainError::NotFound), "{label}");
    }
    // Also for keys deleted in other states.
    let state = given(&[expired_by_clock(), deactivated(), deleted()]);
    for (label, command) in all_commands() {
        assert_eq!(state.when(command).result(), Err(DomainError::NotFound), "{label}");
    }
}

#[test]
fn every_command_on_a_key_never_created_is_not_found() {
    for (label, command) in all_commands() {
        assert_eq!(given(&[]).when(command).result(), Err(DomainError::NotFound), "{label}");
    }
}

// ------------------------------------------------------------------ expire

#[test]
fn expire_records_a_passed_expiry() {
    let at = now() - days(1);
    given(&[expiring_at(at)])
        .when(KeyCommand::Expire)
        .then_expect_events(vec![recorded_expiry(at)]);
    given(&[expiring_at(now())])
        .when(KeyCommand::Expire)
        .then_expect_events(vec![recorded_expiry(now())]);
    given(&[expiring_at(at), deactivated()])
        .when(KeyCommand::Expire)
        .then_expect_events(vec![recorded_expiry(at)]);
    let after = given(&[expiring_at(at), recorded_expiry(at)]).into_state().unwrap();
    assert_eq!(after.status, KeyStatus::Expired);
    assert_eq!(after.expires_at, Some(at));
}

#[test]
fn expire_of_an_expired_key_appends_nothing() {
    let at = now() - days(1);
    given(&[expiring_at(at), recorded_expiry(at)])
        .when(KeyCommand::Expire)
        .then_expect_nothing();
}

#[test]
fn expire_before_the_expiry_is_a_conflict() {
    given(&[expiring_at(now() + secs(1))])
        .when(KeyCommand::Expire)
        .then_expect_conflict();
    given(&[secret_created()])
        .when(KeyCommand::Expire)
        .then_expect_conflict();
}

#[test]
fn expire_a_deleted_or_unknown_key_is_not_found() {
    given(&[expired_by_clock(), deleted()])
        .when(KeyCommand::Expire)
        .then_expect_not_found();
    given(&[]).when(KeyCommand::Expire).then_expect_not_found();
}

// --------------------------------------------------------------- status_at

#[test]
fn a_key_past_its_expiry_is_expired_by_the_clock() {
    let key = given(&[expiring_at(now())]).into_state().unwrap();
    assert_eq!(key.status, KeyStatus::Active);
    assert_eq!(key.status_at(now() - secs(1)), KeyStatus::Active);
    assert_eq!(key.status_at(now()), KeyStatus::Expired);
    assert_eq!(key.status_at(now() + days(1)), KeyStatus::Expired);

    let inactive = given(&[expiring_at(now()), deactivated()]).into_state().unwrap();
    assert_eq!(inactive.status_at(now() - secs(1)), KeyStatus::Inactive);
    assert_eq!(inactive.status_at(now()), KeyStatus::Expired);

    let forever = given(&[secret_created()]).into_state().unwrap();
    assert_eq!(forever.status_at(now() + days(10_000)), KeyStatus::Active);
    let forever_inactive = given(&[secret_created(), deactivated()]).into_state().unwrap();
    assert_eq!(forever_inactive.status_at(now()), KeyStatus::Inactive);
}

#[test]
fn key_status_names_round_trip() {
    for status in [KeyStatus::Active, KeyStatus::Inactive, KeyStatus::Expired] {
        assert_eq!(KeyStatus::parse(status.as_str()), Some(status));
        assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
    }
    assert_eq!(KeyStatus::parse("deleted"), None);
}

// ----------------------------------------------------------- serialization

fn one_of_each_event() -> Vec<KeyEvent> {
    let created = secret_created();
    let regenerated = given(std::slice::from_ref(&created))
        .when(regenerate(3600))
        .then_expect_one();
    let regenerated_at_once = given(std::slice::from_ref(&created))
        .when(regenerate(0))
        .then_expect_one();
    vec![
        created,
        created_with("test", Some(&["read:analytics"]), Some(now() + days(1))),
        KeyEvent::Updated(KeyUpdated {
            name: Some(name("Renamed")),
            scopes: Some(vec![Scope::ReadExperiences, Scope::Admin]),
            expires_at: Some(Some(now() + days(3))),
            ..KeyUpdated::default()
        }),
        KeyEvent::Updated(KeyUpdated {
            expires_at: Some(None),
            ..KeyUpdated::default()
        }),
        KeyEvent::Updated(KeyUpdated {
            name: Some(name("Only the name")),
            ..KeyUpdated::default()
        }),
        KeyEvent::Updated(KeyUpdated::default()),
        regenerated,
        regenerated_at_once,
        deactivated(),
        activated(),
        recorded_expiry(now()),
        deleted(),
    ]
}

#[test]
fn every_event_round_trips_through_json_with_its_type_tag() {
    let events = one_of_each_event();
    let mut seen: Vec<&str> = events.iter().map(|e| e.event_type()).collect();
    seen.dedup();
    assert_eq!(
        seen,
        [
            "key.created",
            "key.updated",
            "key.regenerated",
            "key.deactivated",
            "key.activated",
            "key.expired",
            "key.deleted"
        ]
    );
    for event in events {
        let value = serde_json::to_value(&event).unwrap();
        assert_eq!(value["type"], event.event_type(), "{value}");
        assert!(value.get("data").is_some(), "{value}");
        let back: KeyEvent = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(back, event, "{value}");
        let text = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<KeyEvent>(&text).unwrap(), event, "{text}");
    }
}

#[test]
fn an_update_records_a_cleared_expiry_as_null_and_omits_unchanged_fields() {
    let cleared = KeyEvent::Updated(KeyUpdated {
        expires_at: Some(None),
        ..KeyUpdated::default()
    });
    assert_eq!(
        serde_json::to_value(&cleared).unwrap(),
        serde_json::json!({"type": "key.updated", "data": {"expires_at": null}})
    );
    let renamed = KeyEvent::Updated(KeyUpdated {
        name: Some(name("Renamed")),
        ..KeyUpdated::default()
    });
    assert_eq!(
        serde_json::to_value(&renamed).unwrap(),
        serde_json::json!({"type": "key.updated", "data": {"name": "Renamed"}})
    );
    let parsed: KeyEvent =
        serde_json::from_value(serde_json::json!({"type": "key.updated", "data": {"expires_at": null}})).unwrap();
    assert_eq!(parsed, cleared);
    let parsed: KeyEvent = serde_json::from_value(serde_json::json!({"type": "key.updated", "data": {}})).unwrap();
    assert_eq!(parsed, KeyEvent::Updated(KeyUpdated::default()));
}

#[test]
fn stored_event_fields_use_the_public_names() {
    let value = serde_json::to_value(secret_created()).unwrap();
    let data = &value["data"];
    assert_eq!(data["key_type"], "secret");
    assert_eq!(data["environment"], "live");
    assert_eq!(data["scopes"], serde_json::json!(["admin"]));
    assert_eq!(data["prefix"], "sk_live_");
    assert_eq!(data["key_id"], key_id().to_string());
    assert_eq!(data["org_id"], org_id().to_string());
    assert_eq!(data["created_at"], "2026-10-27T10:00:00Z");
    assert_eq!(data["expires_at"], serde_json::Value::Null);
    assert_eq!(data["key_hash"].as_str().map(str::len), Some(64));
    assert_eq!(
        serde_json::to_value(deactivated()).unwrap(),
        serde_json::json!({"type": "key.deactivated", "data": {}})
    );
}

#[test]
fn stream_ids_name_the_key() {
    assert_eq!(stream_id(key_id()), format!("key-{}", key_id()));
    assert!(stream_id(key_id()).starts_with("key-key_"));
}

// ------------------------------------------------------ rotation reminders

/// A live secret key created `age` days before `now()` under a 90-day policy.
fn created_days_ago(age: i64, key_type: &str) -> KeyEvent {
    let at = now() - days(age);
    let command = KeyCommand::Create(Box::new(create_input(key_type).parse(at).unwrap()));
    let mut events = ApiKey::decide(None, command, at).unwrap();
    events.remove(0)
}

#[test]
fn rotation_reminders_start_14_days_before_the_due_date_then_weekly_after_it() {
    let due = now();
    let at = |offset: Duration| RotationReminder::at(due, due + offset);
    assert_eq!(at(-days(15)), None);
    assert_eq!(at(-days(14)), Some(RotationReminder::Upcoming));
    assert_eq!(at(-secs(1)), Some(RotationReminder::Upcoming));
    assert_eq!(at(secs(0)), Some(RotationReminder::Due));
    assert_eq!(at(days(6)), Some(RotationReminder::Due));
    assert_eq!(at(days(7)), Some(RotationReminder::Overdue(1)));
    assert_eq!(at(days(20)), Some(RotationReminder::Overdue(2)));
    let periods: Vec<String> = [-days(1), days(0), days(7), days(14)]
        .into_iter()
        .map(|o| at(o).unwrap().period())
        .collect();
    assert_eq!(periods, ["upcoming", "due", "overdue-1", "overdue-2"]);
}

#[test]
fn a_key_created_76_days_ago_is_reminded_that_rotation_is_upcoming() {
    let state = given(&[created_days_ago(76, "secret")]);
    let due = now() + days(14);
    state
        .when(KeyCommand::RemindRotation)
        .then_expect_events(vec![KeyEvent::RotationDue(KeyRotationDue {
            rotation_due_at: due,
            reminder: RotationReminder::Upcoming,
        })]);
}

#[test]
fn a_reminder_changes_nothing_in_the_key() {
    let state = given(&[created_days_ago(95, "secret")]);
    let reminded = state.when(KeyCommand::RemindRotation).then_expect_one();
    assert_eq!(
        given(&[created_days_ago(95, "secret"), reminded]).into_state(),
        state.into_state()
    );
}

#[test]
fn regenerating_moves_the_rotation_date_so_no_reminder_is_owed() {
    let created = created_days_ago(100, "secret");
    let regenerated = TestFramework::<ApiKey>::at(now() - days(1))
        .given(std::slice::from_ref(&created))
        .when(regenerate(0))
        .then_expect_one();
    let state = given(&[created, regenerated]);
    assert_eq!(state.state().unwrap().rotation_due_at, Some(now() + days(89)));
    state.when(KeyCommand::RemindRotation).then_expect_conflict();
}

#[test]
fn test_keys_inactive_and_expired_keys_get_no_rotation_reminder() {
    given(&[created_days_ago(80, "test")])
        .when(KeyCommand::RemindRotation)
        .then_expect_conflict();
    given(&[created_days_ago(80, "secret"), deactivated()])
        .when(KeyCommand::RemindRotation)
        .then_expect_conflict();
    let expired = given(&[created_days_ago(80, "secret"), recorded_expiry(now() - days(1))]);
    expired.when(KeyCommand::RemindRotation).then_expect_conflict();
    given(&[created_days_ago(80, "secret"), deleted()])
        .when(KeyCommand::RemindRotation)
        .then_expect_not_found();
}

// ------------------------------------------------------------ IP allowlists

fn ips(entries: &[&str]) -> Option<Vec<String>> {
    Some(entries.iter().map(|e| e.to_string()).collect())
}

fn allowlist(entries: &[&str]) -> AllowedIps {
    AllowedIps::parse(&ips(entries).unwrap()).unwrap()
}

#[test]
fn create_records_the_allowlist_in_canonical_form() {
    let input = CreateKeyRequest {
        allowed_ips: ips(&["203.0.113.0/24", "::ffff:198.51.100.7", "2001:db8::/32"]),
        ..create_input("secret")
    };
    let created = then_created(given(&[]).when_parsed(create(input)));
    assert_eq!(
        created.allowed_ips.to_strings(),
        ["203.0.113.0/24", "198.51.100.7", "2001:db8::/32"]
    );
    assert_eq!(
        given(&[KeyEvent::Created(created)]).into_state().unwrap().allowed_ips,
        allowlist(&["203.0.113.0/24", "198.51.100.7", "2001:db8::/32"])
    );
    // An empty list is no allowlist, and is not written at all.
    let input = CreateKeyRequest {
        allowed_ips: ips(&[]),
        ..create_input("secret")
    };
    let created = given(&[]).when_parsed(create(input)).then_expect_one();
    assert!(serde_json::to_value(&created).unwrap()["data"]
        .get("allowed_ips")
        .is_none());
}

#[test]
fn create_refuses_a_bad_allowlist_with_every_problem() {
    let input = CreateKeyRequest {
        allowed_ips: ips(&[
            "10.0.0.0/33",
            "203.0.113.7/24",
            "198.51.100.7",
            "198.51.100.7/32",
            "localhost",
        ]),
        ..create_input("secret")
    };
    let details = given(&[])
        .when_parsed(create(input))
        .then_expect_invalid(&["allowed_ips"]);
    assert_eq!(details.0["allowed_ips"].len(), 4, "{details:?}");
    let many: Vec<String> = (0..101).map(|n| format!("10.{n}.0.0/16")).collect();
    let input = CreateKeyRequest {
        allowed_ips: Some(many),
        ..create_input("secret")
    };
    given(&[])
        .when_parsed(create(input))
        .then_expect_invalid(&["allowed_ips"]);
}

#[test]
fn update_sets_changes_and_clears_the_allowlist() {
    let set = given(&[secret_created()])
        .when(update(UpdateKeyRequest {
            allowed_ips: ips(&["203.0.113.0/24"]),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_one();
    assert_eq!(
        set,
        KeyEvent::Updated(KeyUpdated {
            allowed_ips: Some(allowlist(&["203.0.113.0/24"])),
            ..KeyUpdated::default()
        })
    );
    let limited = given(&[secret_created(), set.clone()]);
    // The same list again changes nothing.
    limited
        .when(update(UpdateKeyRequest {
            allowed_ips: ips(&["203.0.113.0/24"]),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_nothing();
    // An empty list clears it, recorded as [].
    let cleared = limited
        .when(update(UpdateKeyRequest {
            allowed_ips: ips(&[]),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_one();
    assert_eq!(
        serde_json::to_value(&cleared).unwrap(),
        serde_json::json!({"type": "key.updated", "data": {"allowed_ips": []}})
    );
    assert!(given(&[secret_created(), set, cleared])
        .into_state()
        .unwrap()
        .allowed_ips
        .is_empty());
    given(&[secret_created()])
        .when(update(UpdateKeyRequest {
            allowed_ips: ips(&["10.0.0.1/8"]),
            ..UpdateKeyRequest::default()
        }))
        .then_expect_invalid(&["allowed_ips"]);
}

#[test]
fn events_written_before_allowlists_existed_mean_no_allowlist() {
    let mut old = serde_json::to_value(secret_created()).unwrap();
    old["data"].as_object_mut().unwrap().remove("allowed_ips");
    let event: KeyEvent = serde_json::from_value(old).unwrap();
    assert!(given(&[event]).into_state().unwrap().allowed_ips.is_empty());
}

// -------------------------------------------------------------------- leaks

/// A report of the secret `source(fill)` issued (`FIRST`: the key's
/// current secret, or once regenerated its previous one).
fn leak_of(fill: u8, action: LeakAction) -> KeyCommand {
    KeyCommand::ReportLeak(Box::new(ReportLeak {
        url: "https://github.com/octocat/hello/blob/abc/config.env".into(),
        source: "content".into(),
        token_type: "keyledger_secret_key".into(),
        reporter_key_id: "bcb53661c06b4728".into(),
        key_hash: issued(KeyType::Secret, fill).1,
        action,
    }))
}

fn leaked(secret: LeakedSecret, action: LeakAction) -> KeyEvent {
    KeyEvent::Leaked(KeyLeaked {
        url: "https://github.com/octocat/hello/blob/abc/config.env".into(),
        source: "content".into(),
        token_type: "keyledger_secret_key".into(),
        reported_at: now(),
        reporter_key_id: "bcb53661c06b4728".into(),
        secret,
        action,
    })
}

#[test]
fn a_leak_is_recorded_and_deactivates_an_active_key() {
    given(&[secret_created()])
        .when(leak_of(FIRST, LeakAction::Deactivate))
        .then_expect_events(vec![
            leaked(LeakedSecret::Current, LeakAction::Deactivate),
            deactivated(),
        ]);
    let after = given(&[
        secret_created(),
        leaked(LeakedSecret::Current, LeakAction::Deactivate),
        deactivated(),
    ]);
    assert_eq!(after.state().unwrap().leaked_at, Some(now()));
    assert_eq!(after.state().unwrap().status, KeyStatus::Inactive);
}

#[test]
fn a_leak_under_notify_only_records_it() {
    given(&[secret_created()])
        .when(leak_of(FIRST, LeakAction::Notify))
        .then_expect_events(vec![leaked(LeakedSecret::Current, LeakAction::Notify)]);
    // An inactive or expired key is recorded too, and not deactivated again.
    given(&[secret_created(), deactivated()])
        .when(leak_of(FIRST, LeakAction::Deactivate))
        .then_expect_events(vec![leaked(LeakedSecret::Current, LeakAction::Deactivate)]);
    given(&[expired_by_clock()])
        .when(leak_of(FIRST, LeakAction::Deactivate))
        .then_expect_events(vec![leaked(LeakedSecret::Current, LeakAction::Deactivate)]);
}

#[test]
fn a_secret_is_recorded_leaked_once_until_it_is_regenerated() {
    let reported = given(&[secret_created(), leaked(LeakedSecret::Current, LeakAction::Notify)]);
    reported.when(leak_of(FIRST, LeakAction::Notify)).then_expect_nothing();
    reported
        .when(leak_of(FIRST, LeakAction::Deactivate))
        .then_expect_nothing();
    let regenerated = reported.when(regenerate(0)).then_expect_one();
    let fresh = given(&[
        secret_created(),
        leaked(LeakedSecret::Current, LeakAction::Notify),
        regenerated,
    ]);
    assert_eq!(fresh.state().unwrap().leaked_at, None, "the new secret has not leaked");
    fresh
        .when(leak_of(SECOND, LeakAction::Notify))
        .then_expect_events(vec![leaked(LeakedSecret::Current, LeakAction::Notify)]);
}

#[test]
fn a_leaked_previous_secret_stops_at_once_whatever_the_action() {
    let created = secret_created();
    let regenerated = given(std::slice::from_ref(&created))
        .when(regenerate(3600))
        .then_expect_one();
    let state = given(&[created.clone(), regenerated.clone()]);
    assert!(state.state().unwrap().previous.is_some());
    state
        .when(leak_of(FIRST, LeakAction::Notify))
        .then_expect_events(vec![leaked(LeakedSecret::Previous, LeakAction::Notify)]);
    let after = given(&[
        created.clone(),
        regenerated,
        leaked(LeakedSecret::Previous, LeakAction::Notify),
    ]);
    let after = after.into_state().unwrap();
    assert_eq!(after.previous, None, "the leaked old secret's grace ended");
    assert_eq!(after.leaked_at, None, "the current secret did not leak");
    assert_eq!(after.status, KeyStatus::Active);
    // A secret the key never had is none of its secrets.
    given(&[created])
        .when(leak_of(SECOND, LeakAction::Notify))
        .then_expect_conflict();
}

#[test]
fn a_leak_of_a_deleted_key_is_not_found_and_scanner_text_is_bounded() {
    given(&[secret_created(), deleted()])
        .when(leak_of(FIRST, LeakAction::Deactivate))
        .then_expect_not_found();
    let command = KeyCommand::ReportLeak(Box::new(ReportLeak {
        url: format!("https://example.com/{}\r\nBcc: x", "a".repeat(5_000)),
        source: "content\u{7}".into(),
        token_type: "t".repeat(500),
        reporter_key_id: "k".into(),
        key_hash: issued(KeyType::Secret, FIRST).1,
        action: LeakAction::Notify,
    }));
    let KeyEvent::Leaked(event) = given(&[secret_created()]).when(command).then_expect_one() else {
        panic!("expected key.leaked");
    };
    assert_eq!(event.url.chars().count(), MAX_LEAK_URL_CHARS);
    assert!(!event.url.contains('\r') && !event.url.contains('\n'));
    assert_eq!(event.source, "content");
    assert_eq!(event.token_type.chars().count(), MAX_LEAK_NAME_CHARS);
}

#[test]
fn the_leaked_event_names_the_place_and_never_a_secret_or_hash() {
    let value = serde_json::to_value(leaked(LeakedSecret::Current, LeakAction::Deactivate)).unwrap();
    assert_eq!(value["type"], "key.leaked");
    let data = value["data"].as_object().unwrap();
    let mut fields: Vec<&str> = data.keys().map(String::as_str).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "action",
            "reported_at",
            "reporter_key_id",
            "secret",
            "source",
            "token_type",
            "url"
        ]
    );
    assert_eq!(value["data"]["action"], "deactivate");
    assert_eq!(value["data"]["secret"], "current");
    let back: KeyEvent = serde_json::from_value(value).unwrap();
    assert_eq!(back, leaked(LeakedSecret::Current, LeakAction::Deactivate));
}

#[test]
fn a_leaked_current_secret_gets_no_grace_when_the_key_is_regenerated() {
    for action in [LeakAction::Notify, LeakAction::Deactivate] {
        let mut history = vec![secret_created(), leaked(LeakedSecret::Current, action)];
        if action == LeakAction::Deactivate {
            history.push(deactivated());
        }
        let KeyEvent::Regenerated(regenerated) = given(&history).when(regenerate(3600)).then_expect_one() else {
            panic!("expected key.regenerated");
        };
        assert_eq!(
            regenerated.previous_valid_until, None,
            "the leaked secret must not work for a grace period ({action:?})"
        );
        history.push(KeyEvent::Regenerated(regenerated));
        history.push(activated());
        let after = given(&history).into_state().unwrap();
        assert_eq!(after.previous, None, "no grace for the leaked secret ({action:?})");
    }
}

#[test]
fn a_grace_recorded_for_a_leaked_secret_before_the_fix_is_ignored() {
    // A `key.regenerated` with a grace period after `key.leaked` of the
    // current secret (as stored before leaked secrets lost their grace).
    let revived = KeyEvent::Regenerated(KeyRegenerated {
        key_hash: issued(KeyType::Secret, SECOND).1,
        last_four: last_four_of(&issued(KeyType::Secret, SECOND).0),
        regenerated_at: now(),
        previous_valid_until: Some(now() + secs(3600)),
        rotation_due_at: None,
    });
    let after = given(&[
        secret_created(),
        leaked(LeakedSecret::Current, LeakAction::Notify),
        revived,
    ])
    .into_state()
    .unwrap();
    assert_eq!(after.previous, None);
}

#[test]
fn a_leaked_previous_secret_ends_its_grace_and_never_deactivates_the_key() {
    let created = secret_created();
    let regenerated = given(std::slice::from_ref(&created))
        .when(regenerate(3600))
        .then_expect_one();
    let state = given(&[created, regenerated]);
    state
        .when(leak_of(FIRST, LeakAction::Deactivate))
        .then_expect_events(vec![leaked(LeakedSecret::Previous, LeakAction::Deactivate)]);
}

#[test]
fn a_retired_secret_is_no_secret_of_the_key_and_changes_nothing() {
    let created = secret_created();
    // Regenerated without a grace period: the first secret is retired.
    for grace in [0, 3600] {
        let regenerated = given(std::slice::from_ref(&created))
            .when(regenerate(grace))
            .then_expect_one();
        let state = given(&[created.clone(), regenerated.clone()]);
        if grace == 0 {
            state
                .when(leak_of(FIRST, LeakAction::Deactivate))
                .then_expect_conflict();
        } else {
            // Its grace period is over.
            TestFramework::<ApiKey>::at(now() + secs(3600))
                .given(&[created.clone(), regenerated])
                .when(leak_of(FIRST, LeakAction::Deactivate))
                .then_expect_conflict();
        }
        // The current secret is told apart by its hash, whatever the reporter thought.
        state
            .when(leak_of(SECOND, LeakAction::Deactivate))
            .then_expect_events(vec![
                leaked(LeakedSecret::Current, LeakAction::Deactivate),
                deactivated(),
            ]);
    }
}
