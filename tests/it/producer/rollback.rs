//! Property: outbox rows commit and roll back with the changes they describe. Random
//! sequences of creates, updates, soft deletes, restores and destroys run in transactions
//! that commit or roll back; afterwards the outbox holds exactly the events of the committed
//! changes, in order (as a model of the soft-delete rules predicts).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use dionysus::outbox::{Changeset, Outbox};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::spec_a::{config, registry, ExamplePublishableCancelableResource};
use super::{database, example_publishable_cancelable_resources as epcr, outbox_rows};

#[derive(Debug, Clone)]
enum Op {
    Create(i64),
    SetAccount(usize, i64),
    Cancel(usize, u32),
    Restore(usize),
    Destroy(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0_i64..3).prop_map(Op::Create),
        (0_usize..4, 0_i64..3).prop_map(|(i, a)| Op::SetAccount(i, a)),
        (0_usize..4, 1_u32..100).prop_map(|(i, t)| Op::Cancel(i, t)),
        (0_usize..4).prop_map(Op::Restore),
        (0_usize..4).prop_map(Op::Destroy),
    ]
}

/// What the model predicts for one record: `(account_id, canceled_at)`.
type State = BTreeMap<i64, (i64, Option<u32>)>;

fn at(second: u32) -> DateTime<Utc> {
    Utc.timestamp_opt(1_700_000_000 + i64::from(second), 0).single().unwrap()
}

/// Runs `ops` in one transaction and returns the events the model predicts, plus the state
/// after the transaction if it commits.
async fn run(
    conn: &mut AsyncPgConnection,
    state: &State,
    ops: Vec<Op>,
    commit: bool,
) -> Result<(Vec<String>, State), TestCaseError> {
    let mut predicted = state.clone();
    let mut events = Vec::new();
    let outcome = conn
        .transaction::<(), diesel::result::Error, _>(async |tx| {
            let outbox = Outbox::new(registry(), config());
            for op in ops {
                let ids: Vec<i64> = predicted.keys().copied().collect();
                let pick = |i: usize| ids.get(i % ids.len().max(1)).copied();
                match op {
                    Op::Create(account) => {
                        let record: ExamplePublishableCancelableResource = diesel::insert_into(epcr::table)
                            .values(epcr::account_id.eq(Some(account)))
                            .returning(ExamplePublishableCancelableResource::as_returning())
                            .get_result(tx)
                            .await?;
                        outbox
                            .created(tx, &record)
                            .await
                            .map_err(|e| diesel::result::Error::QueryBuilderError(e.into()))?;
                        predicted.insert(record.id, (account, None));
                        events.push("created".to_owned());
                    }
                    Op::Destroy(i) => {
                        let Some(id) = pick(i) else { continue };
                        let record = epcr::table
                            .find(id)
                            .select(ExamplePublishableCancelableResource::as_select())
                            .get_result(tx)
                            .await?;
                        diesel::delete(epcr::table.find(id)).execute(tx).await?;
                        outbox
                            .destroyed(tx, &record)
                            .await
                            .map_err(|e| diesel::result::Error::QueryBuilderError(e.into()))?;
                        predicted.remove(&id);
                        events.push("destroyed".to_owned());
                    }
                    Op::SetAccount(i, _) | Op::Cancel(i, _) | Op::Restore(i) => {
                        let Some(id) = pick(i) else { continue };
                        let (account, canceled) = predicted[&id];
                        let (new_account, new_canceled) = match op {
                            Op::SetAccount(_, a) => (a, canceled),
                            Op::Cancel(_, t) => (account, Some(t)),
                            _ => (account, None),
                        };
                        let before = epcr::table
                            .find(id)
                            .select(ExamplePublishableCancelableResource::as_select())
                            .get_result(tx)
                            .await?;
                        let after = diesel::update(epcr::table.find(id))
                            .set((epcr::account_id.eq(Some(new_account)), epcr::canceled_at.eq(new_canceled.map(at))))
                            .returning(ExamplePublishableCancelableResource::as_returning())
                            .get_result(tx)
                            .await?;
                        outbox
                            .updated(tx, &after, &Changeset::between(&before, &after))
                            .await
                            .map_err(|e| diesel::result::Error::QueryBuilderError(e.into()))?;
                        // P-6, as a model.
                        let event = match (canceled, new_canceled) {
                            (old, new) if old == new && new_account == account => None,
                            (Some(_), None) => Some("created"),
                            (old, Some(_)) if old != new_canceled => Some("destroyed"),
                            (_, Some(_)) => None,
                            (None, None) => Some("updated"),
                        };
                        events.extend(event.map(str::to_owned));
                        predicted.insert(id, (new_account, new_canceled));
                    }
                }
            }
            if commit {
                Ok(())
            } else {
                Err(diesel::result::Error::RollbackTransaction)
            }
        })
        .await;
    match (commit, outcome) {
        (true, Ok(())) => Ok((events, predicted)),
        (false, Err(diesel::result::Error::RollbackTransaction)) => Ok((Vec::new(), state.clone())),
        (_, other) => Err(TestCaseError::fail(format!("transaction ended with {other:?}"))),
    }
}

#[test]
fn outbox_rows_commit_and_roll_back_with_their_changes() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (_db, conn) = runtime.block_on(database());
    let conn = std::sync::Mutex::new(conn);
    let strategy = prop::collection::vec((prop::collection::vec(op(), 1..6), any::<bool>()), 1..5);
    let mut runner = TestRunner::new(Config { cases: 24, failure_persistence: None, ..Config::default() });
    runner
        .run(&strategy, |transactions| {
            let mut conn = conn.lock().map_err(|_| TestCaseError::fail("connection lock poisoned"))?;
            runtime.block_on(async {
                diesel::sql_query("TRUNCATE dionysus_outbox, example_publishable_cancelable_resources")
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut state = State::new();
                let mut expected = Vec::new();
                for (ops, commit) in transactions {
                    let (events, next) = run(&mut conn, &state, ops, commit).await?;
                    expected.extend(events);
                    state = next;
                }
                let actual: Vec<String> = outbox_rows(&mut conn)
                    .await
                    .into_iter()
                    .map(|row| row.event_name.trim_start_matches("example_publishable_cancelable_resource_").to_owned())
                    .collect();
                prop_assert_eq!(actual, expected);
                Ok(())
            })
        })
        .unwrap();
}
