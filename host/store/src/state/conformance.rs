//! What every state store engine must do, checked through [`Store`] alone.
//! Each engine's tests run every check here on a fresh, empty store of its
//! own (see `sqlite::tests`), so a second engine is held to the same behaviour.

use std::path::Path;

use super::*;

fn start(store: &dyn Store, id: &str, at_ms: i64) {
    let none = serde_json::json!({});
    store
        .start_execution(id, "p", Path::new("p.toml"), &none, &none, at_ms)
        .unwrap();
}

fn event(execution: &str, state: &str, ts_ms: i64) -> EventRecord {
    EventRecord {
        seq: 0,
        ts_ms,
        execution: execution.into(),
        pipeline: "p".into(),
        kind: "pipeline".into(),
        name: "p".into(),
        state: state.into(),
        detail: String::new(),
    }
}

fn listed(store: &dyn Store, limit: usize, offset: usize) -> Vec<String> {
    let filter = ExecutionFilter {
        pipeline: None,
        status: None,
        limit,
        offset,
    };
    let executions = store.list_executions(&filter).unwrap();
    executions.into_iter().map(|e| e.id).collect()
}

/// Pages are newest first, and an offset past the end (even `usize::MAX`) is
/// an empty page, never the first one.
pub fn paging_past_the_end_lists_nothing(store: &dyn Store) {
    for i in 0..3 {
        start(store, &format!("e{i}"), i);
    }
    assert_eq!(listed(store, 2, 0), ["e2", "e1"]);
    assert_eq!(listed(store, 2, 2), ["e0"]);
    assert!(listed(store, 2, 3).is_empty());
    assert!(listed(store, 2, i64::MAX as usize + 1).is_empty());
    assert!(listed(store, 2, usize::MAX).is_empty());
    assert_eq!(listed(store, usize::MAX, 1), ["e1", "e0"]);
}

/// An end is recorded with its event: both are there, the event with the
/// next sequence number, and events come back in order.
pub fn an_end_is_stored_with_its_event(store: &dyn Store) {
    start(store, "e", 1);
    let started = store.append_event(event("e", "STARTED", 1)).unwrap();
    let ended = store
        .finish_execution(
            "e",
            ExecutionEnd::new(Status::Failed, Some("boom")),
            2,
            Some(event("e", "FAILED", 2)),
        )
        .unwrap()
        .expect("the stored event");
    assert!(ended.seq > started.seq);
    let execution = store.execution("e").unwrap().unwrap();
    assert_eq!(
        (
            execution.status,
            execution.error.as_deref(),
            execution.ended_ms
        ),
        (Status::Failed, Some("boom"), Some(2))
    );
    let states: Vec<String> = store
        .events_after(0, 10)
        .unwrap()
        .into_iter()
        .map(|e| e.state)
        .collect();
    assert_eq!(states, ["STARTED", "FAILED"]);
    assert_eq!(store.last_event_seq().unwrap(), ended.seq);
}

/// The sweep keeps events no notification has delivered yet, and forgets
/// webhook delivery ids older than the cutoff.
pub fn gc_keeps_undelivered_events_and_prunes_old_webhook_deliveries(store: &dyn Store) {
    let delivered = store.append_event(event("e", "STARTED", 1)).unwrap();
    store.append_event(event("e", "STARTED", 2)).unwrap();
    store.set_notify_cursor(delivered.seq).unwrap();
    assert_eq!(store.claim_delivery("p", "old", 1).unwrap(), None);
    assert_eq!(store.claim_delivery("p", "new", 100).unwrap(), None);
    let counts = store.gc(50).unwrap();
    assert_eq!((counts.events, counts.webhook_deliveries), (1, 1));
    let left: Vec<i64> = store
        .events_after(0, 10)
        .unwrap()
        .iter()
        .map(|e| e.ts_ms)
        .collect();
    assert_eq!(left, [2], "the undelivered event stays");
    assert_eq!(store.claim_delivery("p", "old", 101).unwrap(), None);
    assert_eq!(store.claim_delivery("p", "new", 101).unwrap(), Some(None));
}

/// A delivery id is claimed once; a repeat learns the execution it started,
/// and a released claim can be taken again.
pub fn a_webhook_delivery_is_claimed_once(store: &dyn Store) {
    assert_eq!(store.claim_delivery("p", "d1", 1).unwrap(), None);
    assert_eq!(store.claim_delivery("p", "d1", 2).unwrap(), Some(None));
    store.set_delivery_execution("p", "d1", "e1").unwrap();
    assert_eq!(
        store.claim_delivery("p", "d1", 3).unwrap(),
        Some(Some("e1".to_string()))
    );
    assert_eq!(
        store.claim_delivery("q", "d1", 3).unwrap(),
        None,
        "per pipeline"
    );
    store.claim_delivery("p", "d2", 4).unwrap();
    store.release_delivery("p", "d2").unwrap();
    assert_eq!(store.claim_delivery("p", "d2", 5).unwrap(), None);
}

/// An approval takes one decision; a second one is refused and changes nothing.
pub fn an_approval_is_decided_once(store: &dyn Store) {
    start(store, "e", 1);
    let opened = store
        .open_approval("e", "gate", "operator", "ship it?", 10_000)
        .unwrap();
    assert_eq!(opened.status, ApprovalStatus::Pending);
    let decision = |approve, by| Decision {
        token: &opened.token,
        approve,
        by,
        comment: "",
        now_ms: 5,
    };
    assert!(
        store
            .decide_approval("e", "gate", &decision(true, "alice"))
            .unwrap()
    );
    assert!(
        !store
            .decide_approval("e", "gate", &decision(false, "bob"))
            .unwrap()
    );
    let decided = store.approval("e", "gate").unwrap().unwrap();
    assert_eq!(
        (decided.status, decided.decided_by.as_deref()),
        (ApprovalStatus::Approved, Some("alice"))
    );
}

/// A cron fire is claimed once, per pipeline, schedule and due time; the sweep
/// forgets old claims.
pub fn a_cron_fire_is_claimed_once(store: &dyn Store) {
    assert!(store.claim_cron_fire("p", "* * * * * *", 1_000).unwrap());
    assert!(!store.claim_cron_fire("p", "* * * * * *", 1_000).unwrap());
    assert!(store.claim_cron_fire("p", "* * * * * *", 2_000).unwrap());
    assert!(store.claim_cron_fire("p", "0 * * * * *", 1_000).unwrap());
    assert!(store.claim_cron_fire("q", "* * * * * *", 1_000).unwrap());
    assert_eq!(store.gc(1_500).unwrap().cron_fires, 3);
    assert!(!store.claim_cron_fire("p", "* * * * * *", 2_000).unwrap());
}

/// A lease is taken by one owner while it lasts; an ended one can be taken
/// by another, a renewed one cannot; finished executions are never leased.
pub fn a_lease_is_held_by_one_owner_until_it_runs_out(store: &dyn Store) {
    store.lease_as(Owner {
        id: "a".into(),
        lease_ms: 100,
    });
    start(store, "e1", 1_000);
    start(store, "e2", 1_001);
    assert!(
        store
            .unleased_executions("b", 1_050, false)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.unleased_executions("a", 1_050, true).unwrap(),
        ["e1", "e2"]
    );
    assert!(
        !store.claim_execution("e1", "b", 1_050, 1_150).unwrap(),
        "a holds it"
    );
    assert_eq!(store.renew_leases("a", 1_300).unwrap(), 2);
    assert!(
        !store.claim_execution("e1", "b", 1_200, 1_400).unwrap(),
        "renewed"
    );
    assert_eq!(
        store.unleased_executions("b", 1_301, false).unwrap(),
        ["e1", "e2"]
    );
    assert!(
        store.claim_execution("e1", "b", 1_301, 1_500).unwrap(),
        "ran out"
    );
    assert!(
        !store.claim_execution("e1", "c", 1_302, 1_500).unwrap(),
        "b holds it now"
    );
    assert_eq!(store.renew_leases("a", 1_600).unwrap(), 1, "a lost e1");
    store
        .finish_execution(
            "e2",
            ExecutionEnd::new(Status::Succeeded, None),
            1_400,
            None,
        )
        .unwrap();
    assert!(
        !store.claim_execution("e2", "b", 9_999, 10_000).unwrap(),
        "finished"
    );
    assert_eq!(
        store.unleased_executions("b", 9_999, false).unwrap(),
        ["e1"]
    );
}

/// A new execution's lease runs from the store's clock, whatever time its
/// start is stamped with: a process whose own clock is off records a lease
/// that the others see neither as run out nor as lasting an hour too long.
pub fn a_new_lease_runs_from_the_stores_clock(store: &dyn Store) {
    const HOUR: i64 = 3_600_000;
    store.lease_as(Owner {
        id: "a".into(),
        lease_ms: 60_000,
    });
    let now = store.clock_ms();
    start(store, "behind", now - HOUR);
    start(store, "ahead", now + HOUR);
    assert!(
        (store
            .unleased_executions("b", store.clock_ms(), false)
            .unwrap())
        .is_empty(),
        "a lease ran out at once"
    );
    let after_the_lease = store.clock_ms() + 120_000;
    let mut ran_out = store
        .unleased_executions("b", after_the_lease, false)
        .unwrap();
    ran_out.sort();
    assert_eq!(ran_out, ["ahead", "behind"], "a lease outlived its length");
}

/// A process that lost an execution's lease withdraws none of its attempts:
/// the process holding it now waits on them.
pub fn a_process_that_lost_its_lease_withdraws_no_attempt(store: &dyn Store) {
    store.lease_as(Owner {
        id: "a".into(),
        lease_ms: 100,
    });
    start(store, "lost", 1_000);
    start(store, "kept", 1_000);
    store.queue_attempt("lost/x/1/", "lost", "{}").unwrap();
    store.queue_attempt("kept/x/1/", "kept", "{}").unwrap();
    let after_the_lease = store.clock_ms() + 60_000;
    assert!(
        (store.claim_execution("lost", "b", after_the_lease, after_the_lease + 60_000)).unwrap()
    );
    store.cancel_attempt("lost/x/1/").unwrap();
    store.cancel_attempt("kept/x/1/").unwrap();
    let state = |key| store.queued_attempt(key).unwrap().expect("queued").state;
    assert_eq!(state("lost/x/1/"), AttemptState::Queued, "withdrawn by a");
    assert_eq!(state("kept/x/1/"), AttemptState::Cancelled);
}

/// A process whose lease was taken over records nothing more of the
/// execution: not its ends, not its events, not its logs.
pub fn a_process_that_lost_its_lease_records_nothing_more(store: &dyn Store) {
    store.lease_as(Owner {
        id: "a".into(),
        lease_ms: 100,
    });
    let now = store.clock_ms();
    start(store, "e", 1_000);
    store.start_stage("e", "S", 0, 1_001, None).unwrap();
    assert!(
        store
            .claim_execution("e", "b", now + 1_000, now + 2_000)
            .unwrap()
    );
    let refused = [
        store
            .finish_stage(
                "e",
                "S",
                Status::Succeeded,
                None,
                2_001,
                Some(event("e", "X", 2_001)),
            )
            .map(|_| ()),
        store.append_event(event("e", "X", 2_002)).map(|_| ()),
        store.start_stage("e", "T", 1, 2_003, None).map(|_| ()),
        store
            .finish_execution("e", ExecutionEnd::new(Status::Succeeded, None), 2_004, None)
            .map(|_| ()),
        store.fail_execution("e", "late", 2_005),
        store.set_execution_status("e", Status::Stopping),
    ];
    for result in refused {
        let error = format!("{:#}", result.unwrap_err());
        assert!(error.contains("held by b now"), "{error}");
    }
    let stages = store.stages("e").unwrap();
    assert_eq!(stages.len(), 1);
    assert_eq!(stages[0].status, Status::InProgress);
    assert_eq!(
        store.execution("e").unwrap().unwrap().status,
        Status::InProgress
    );
    assert!(store.events_after(0, 10).unwrap().is_empty());
}

/// Two stores on one database (two processes): while one holds a pipeline's
/// admission, the other waits for it; another pipeline's is free.
pub fn admission_is_held_by_one_process_at_a_time(first: &dyn Store, second: &dyn Store) {
    let held = first.hold_admission("p").unwrap();
    let acquired = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let hold = second.hold_admission("p").unwrap();
            acquired.store(true, std::sync::atomic::Ordering::SeqCst);
            drop(hold);
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            !acquired.load(std::sync::atomic::Ordering::SeqCst),
            "both held the admission of `p` at once"
        );
        drop(held);
        waiter.join().unwrap();
    });
    assert!(acquired.load(std::sync::atomic::Ordering::SeqCst));
}

/// An execution is found by its id or a unique prefix of it, taken literally:
/// no wildcards, no case folding.
pub fn an_id_prefix_matches_literally(store: &dyn Store) {
    for id in ["abc", "abd"] {
        start(store, id, 1);
    }
    assert!(store.execution("a%").unwrap().is_none());
    assert!(store.execution("a_c").unwrap().is_none());
    assert!(store.execution("ABC").unwrap().is_none());
    assert_eq!(store.execution("abc").unwrap().unwrap().id, "abc");
    assert_eq!(store.execution("abd").unwrap().unwrap().id, "abd");
    assert!(store.execution("ab").is_err(), "ambiguous");
}

/// Registering a pipeline adds a version; old versions stay readable.
pub fn pipeline_versions_count_up_and_stay(store: &dyn Store) {
    assert_eq!(store.put_pipeline("p", "v1", 1).unwrap(), 1);
    assert_eq!(store.put_pipeline("p", "v2", 2).unwrap(), 2);
    let latest = store.pipeline("p", None).unwrap().unwrap();
    assert_eq!((latest.version, latest.source.as_str()), (2, "v2"));
    let first = store.pipeline("p", Some(1)).unwrap().unwrap();
    assert_eq!(first.source, "v1");
    assert!(store.pipeline("p", Some(3)).unwrap().is_none());
    assert!(store.delete_pipeline("p").unwrap());
    assert!(store.pipeline("p", None).unwrap().is_none());
    assert!(!store.delete_pipeline("p").unwrap());
}

/// A claim is fenced: once it runs out and another worker claims the attempt,
/// the first can neither renew nor complete it, and only the second's result
/// is recorded. Queuing the key again leaves the done attempt as it is.
pub fn an_attempt_is_fenced_after_its_claim_runs_out(store: &dyn Store) {
    store.queue_attempt("e/a/1/", "e", "payload").unwrap();
    let first = store.claim_attempt("w1", 0, 100).unwrap().expect("queued");
    assert_eq!(
        (first.key.as_str(), first.payload.as_str()),
        ("e/a/1/", "payload")
    );
    assert!(
        store.claim_attempt("w2", 50, 150).unwrap().is_none(),
        "claimed twice"
    );
    assert!(store.renew_attempt("e/a/1/", first.fence, 200).unwrap());
    let second = store
        .claim_attempt("w2", 201, 300)
        .unwrap()
        .expect("ran out");
    assert!(second.fence > first.fence);
    assert!(!store.renew_attempt("e/a/1/", first.fence, 400).unwrap());
    assert!(
        !store
            .complete_attempt("e/a/1/", first.fence, "late")
            .unwrap()
    );
    assert!(
        store
            .complete_attempt("e/a/1/", second.fence, "ok")
            .unwrap()
    );
    assert!(
        !store
            .complete_attempt("e/a/1/", second.fence, "again")
            .unwrap()
    );
    store.queue_attempt("e/a/1/", "e", "payload").unwrap();
    let queued = store.queued_attempt("e/a/1/").unwrap().unwrap();
    assert_eq!(queued.state, AttemptState::Done);
    assert_eq!(queued.worker.as_deref(), Some("w2"));
    assert_eq!(queued.result.as_deref(), Some("ok"));
    assert!(store.claim_attempt("w3", 10_000, 10_100).unwrap().is_none());
}

/// A cancelled attempt is not claimed, its worker loses its claim, and it
/// can be queued again; a stage retry forgets finished attempts.
pub fn a_cancelled_attempt_is_withdrawn_and_can_be_queued_again(store: &dyn Store) {
    store.queue_attempt("e/a/1/", "e", "p").unwrap();
    let claim = store.claim_attempt("w1", 0, 100).unwrap().unwrap();
    store.cancel_attempt("e/a/1/").unwrap();
    assert!(!store.renew_attempt("e/a/1/", claim.fence, 200).unwrap());
    assert!(!store.complete_attempt("e/a/1/", claim.fence, "r").unwrap());
    assert!(store.claim_attempt("w2", 1_000, 1_100).unwrap().is_none());
    store.queue_attempt("e/a/1/", "e", "p2").unwrap();
    let again = store.claim_attempt("w2", 0, 100).unwrap().unwrap();
    assert_eq!(again.payload, "p2");
    assert!(store.complete_attempt("e/a/1/", again.fence, "r").unwrap());
    store.forget_attempts("e").unwrap();
    assert!(store.queued_attempt("e/a/1/").unwrap().is_none());
}

/// Workers claiming at once through two connections never get the same
/// attempt, and every queued attempt is claimed.
pub fn concurrent_claimers_never_share_an_attempt(first: &dyn Store, second: &dyn Store) {
    const ATTEMPTS: usize = 60;
    for i in 0..ATTEMPTS {
        first
            .queue_attempt(&format!("e/a{i}/1/"), "e", "p")
            .unwrap();
    }
    let claimed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (n, store) in [first, second, first, second].into_iter().enumerate() {
            let claimed = &claimed;
            scope.spawn(move || {
                let worker = format!("w{n}");
                while let Some(claim) = store.claim_attempt(&worker, 0, i64::MAX).unwrap() {
                    claimed.lock().unwrap().push(claim.key);
                }
            });
        }
    });
    let mut claimed = claimed.into_inner().unwrap();
    claimed.sort();
    let before = claimed.len();
    claimed.dedup();
    assert_eq!(before, claimed.len(), "an attempt was claimed twice");
    assert_eq!(claimed.len(), ATTEMPTS);
}

/// A worker's log lines and progress are stored while it holds its claim;
/// once another worker took the attempt over, the first one's late lines
/// are refused, naming the lost claim, its late progress is dropped, and the
/// second's are stored.
pub fn a_lost_claims_late_log_lines_and_progress_are_refused(store: &dyn Store) {
    start(store, "e", 1);
    store.start_stage("e", "s", 0, 1, None).unwrap();
    store
        .start_action("e", "s", "a", 1, "noop@0.1.0", &[], 1, None)
        .unwrap();
    store.queue_attempt("e/a/1/", "e", "payload").unwrap();
    let first = store.claim_attempt("w1", 0, 100).unwrap().expect("queued");
    let line = |text: &str| LogLine {
        timestamp_ms: 1,
        stream: "stdout",
        text: text.to_string(),
    };
    let append = |fence: i64, text: &str| {
        let claim = AttemptClaim {
            key: "e/a/1/",
            fence,
        };
        store.append_logs("e", "a", 1, Some(claim), &[line(text)])
    };
    append(first.fence, "first worker").unwrap();
    let progress = |fence: i64, percent: u8| {
        let claim = AttemptClaim {
            key: "e/a/1/",
            fence,
        };
        store
            .set_progress("e", "a", Some(claim), percent, "step")
            .unwrap();
        store.actions("e").unwrap()[0].percent
    };
    assert_eq!(
        progress(first.fence, 80),
        Some(80),
        "the claim was still held"
    );
    let second = store
        .claim_attempt("w2", 201, 300)
        .unwrap()
        .expect("ran out");
    let refused = append(first.fence, "late").unwrap_err().to_string();
    assert!(
        refused.contains("e/a/1/") && refused.contains("lost"),
        "{refused}"
    );
    append(second.fence, "second worker").unwrap();
    assert_eq!(progress(second.fence, 10), Some(10));
    assert_eq!(progress(first.fence, 99), Some(10), "a lost claim's report");
    let stored: Vec<String> = (store.logs("e", Some("a")).unwrap())
        .into_iter()
        .map(|l| l.line)
        .collect();
    assert_eq!(stored, ["first worker", "second worker"]);
    assert!(
        store
            .complete_attempt("e/a/1/", second.fence, "ok")
            .unwrap()
    );
    assert!(append(second.fence, "after its end").is_err());
}

/// Any process may ask for a stop; only the holder is handed it, and only
/// while the execution runs.
pub fn a_stop_request_reaches_the_holder_only(store: &dyn Store) {
    store.lease_as(Owner {
        id: "a".into(),
        lease_ms: 60_000,
    });
    start(store, "e", 1_000);
    assert!(store.request_stop("e", r#"{"mode":"abandon"}"#).unwrap());
    assert_eq!(
        store.stop_requests("a").unwrap(),
        [("e".to_string(), r#"{"mode":"abandon"}"#.to_string())]
    );
    assert!(store.stop_requests("b").unwrap().is_empty());
    store
        .finish_execution("e", ExecutionEnd::new(Status::Stopped, None), 2_000, None)
        .unwrap();
    assert!(store.stop_requests("a").unwrap().is_empty());
    assert!(!store.request_stop("e", "{}").unwrap());
    assert!(!store.request_stop("missing", "{}").unwrap());
}

/// A finished execution is reopened once: a second retry racing the first
/// (through another server) is told it runs already, and the reopener holds it.
pub fn a_finished_execution_is_reopened_once(store: &dyn Store) {
    start(store, "e", 1_000);
    store
        .finish_execution(
            "e",
            ExecutionEnd::new(Status::Failed, Some("boom")),
            2_000,
            None,
        )
        .unwrap();
    store.lease_as(Owner {
        id: "b".into(),
        lease_ms: 60_000,
    });
    assert!(store.reopen_execution("e").unwrap());
    assert!(!store.reopen_execution("e").unwrap());
    assert_eq!(store.lease_holder("e").unwrap().as_deref(), Some("b"));
    let execution = store.execution("e").unwrap().unwrap();
    assert_eq!(execution.status, Status::InProgress);
}

/// A new polled revision is taken by one poller: the swap succeeds only from
/// the revision stored now, and a refused start can give it back.
pub fn a_polled_revision_is_claimed_once(store: &dyn Store) {
    let swap = |from, to| store.swap_poll_revision("p", "src", from, to, 1).unwrap();
    assert!(swap(None, Some("r1")));
    assert!(!swap(None, Some("r1")), "a second first claim");
    assert!(swap(Some("r1"), Some("r2")));
    assert!(
        !swap(Some("r1"), Some("r2")),
        "a claim from a stale revision"
    );
    assert_eq!(
        store.poll_revision("p", "src").unwrap().as_deref(),
        Some("r2")
    );
    assert!(swap(Some("r2"), Some("r1")), "giving r2 back");
    assert!(swap(Some("r1"), None), "giving the first revision back");
    assert_eq!(store.poll_revision("p", "src").unwrap(), None);
}

fn enter(store: &dyn Store, execution: &str) -> GateTry {
    store.try_enter_gate("p", "s", execution, true).unwrap()
}

/// One at a time, in the order executions joined the line; leaving is ending
/// the stage or the execution, and a place of an execution that ended some
/// other way (its process died) blocks nobody.
pub fn a_gate_admits_one_execution_at_a_time_in_line_order(store: &dyn Store) {
    for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
        start(store, id, i as i64);
        store.join_gate("p", "s", id, false).unwrap();
    }
    assert_eq!(enter(store, "b"), GateTry::Wait, "b is behind a");
    assert_eq!(enter(store, "a"), GateTry::Entered);
    assert_eq!(
        enter(store, "a"),
        GateTry::Entered,
        "entering again keeps the place"
    );
    assert_eq!(enter(store, "b"), GateTry::Wait, "a is inside");
    assert_eq!(store.gate_waiting("p").unwrap(), 3);
    store
        .finish_stage("a", "s", Status::Succeeded, None, 10, None)
        .unwrap();
    assert_eq!(enter(store, "c"), GateTry::Wait, "b is ahead of c");
    assert_eq!(enter(store, "b"), GateTry::Entered);
    store.set_execution_status("b", Status::Failed).unwrap();
    assert_eq!(
        enter(store, "c"),
        GateTry::Entered,
        "b ended without leaving"
    );
    store.leave_gate_line("p", "s", "c").unwrap();
    assert_eq!(
        enter(store, "c"),
        GateTry::Entered,
        "c is inside, not in line"
    );
    store
        .finish_execution("c", ExecutionEnd::new(Status::Failed, None), 20, None)
        .unwrap();
    assert_eq!(store.gate_waiting("p").unwrap(), 1);
    store.leave_gate_line("p", "s", "d").unwrap();
    assert_eq!(store.gate_waiting("p").unwrap(), 0, "d gave up its place");
}

/// A newer execution joining a superseding line replaces the older ones still
/// waiting (not the one inside); a parallel gate only keeps the line a
/// disabled transition made.
pub fn a_superseding_gate_replaces_older_waiting_executions(store: &dyn Store) {
    for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
        start(store, id, i as i64);
    }
    store.join_gate("p", "s", "a", true).unwrap();
    assert_eq!(enter(store, "a"), GateTry::Entered);
    store.join_gate("p", "s", "b", true).unwrap();
    store.join_gate("p", "s", "c", true).unwrap();
    store.join_gate("p", "s", "b", true).unwrap();
    assert_eq!(enter(store, "b"), GateTry::Superseded);
    assert_eq!(enter(store, "a"), GateTry::Entered, "a was inside");
    assert_eq!(store.gate_waiting("p").unwrap(), 1, "only c waits");
    store
        .finish_stage("a", "s", Status::Succeeded, None, 10, None)
        .unwrap();
    assert_eq!(enter(store, "c"), GateTry::Entered);

    start(store, "d", 5);
    store.join_gate("p", "t", "d", false).unwrap();
    assert_eq!(store.gate_waiting("p").unwrap(), 1);
    let parallel = store.try_enter_gate("p", "t", "d", false).unwrap();
    assert_eq!(parallel, GateTry::Entered);
    assert_eq!(store.gate_waiting("p").unwrap(), 0);

    // An empty stage: the first in line is about to enter, not superseded.
    for (i, id) in ["e", "f", "g"].into_iter().enumerate() {
        start(store, id, 10 + i as i64);
        store.join_gate("p", "u", id, true).unwrap();
    }
    let enter_u = |id| store.try_enter_gate("p", "u", id, true).unwrap();
    assert_eq!(enter_u("f"), GateTry::Superseded, "g replaced f");
    assert_eq!(
        enter_u("e"),
        GateTry::Entered,
        "e was first into an empty stage"
    );
    assert_eq!(enter_u("g"), GateTry::Wait);
}

/// Processes racing to enter one gate through two connections: never two
/// inside at once, and they enter in the order they joined.
pub fn racing_processes_enter_a_gate_one_at_a_time_in_order(first: &dyn Store, second: &dyn Store) {
    const EXECUTIONS: usize = 8;
    let ids: Vec<String> = (0..EXECUTIONS).map(|i| format!("x{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        start(first, id, i as i64);
        first.join_gate("p", "s", id, false).unwrap();
    }
    let inside = std::sync::atomic::AtomicUsize::new(0);
    let order = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (n, id) in ids.iter().enumerate() {
            let store = if n % 2 == 0 { first } else { second };
            let (inside, order) = (&inside, &order);
            scope.spawn(move || {
                while enter(store, id) != GateTry::Entered {
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                let before = inside.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                assert_eq!(before, 0, "{id} entered while another was inside");
                order.lock().unwrap().push(id.clone());
                std::thread::sleep(std::time::Duration::from_millis(5));
                inside.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                store
                    .finish_stage(id, "s", Status::Succeeded, None, 100, None)
                    .unwrap();
            });
        }
    });
    assert_eq!(order.into_inner().unwrap(), ids);
}

/// An execution's events of one kind, oldest first, and no other's.
pub fn an_executions_rule_evaluations_are_listed_in_order(store: &dyn Store) {
    start(store, "a", 0);
    start(store, "b", 0);
    let rule = |execution: &str, name: &str| EventRecord {
        kind: "rule".into(),
        name: name.into(),
        ..event(execution, "PASSED", 1)
    };
    store.append_event(rule("a", "S.before-entry.one")).unwrap();
    store.append_event(event("a", "STARTED", 2)).unwrap();
    store
        .append_event(rule("b", "S.before-entry.other"))
        .unwrap();
    store.append_event(rule("a", "S.on-success.two")).unwrap();
    let names: Vec<String> = (store.rule_events("a").unwrap())
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, ["S.before-entry.one", "S.on-success.two"]);
}

/// A stream resumes after the last number it saw: a number given again
/// after gc removed every event would hide the new event from it.
pub fn event_numbers_never_go_back_when_gc_empties_the_events(store: &dyn Store) {
    store.append_event(event("e", "STARTED", 1)).unwrap();
    let newest = store.append_event(event("e", "SUCCEEDED", 2)).unwrap();
    store.set_notify_cursor(newest.seq).unwrap();
    assert_eq!(store.gc(50).unwrap().events, 2);
    assert!(store.events_after(0, 10).unwrap().is_empty());
    let next = store.append_event(event("f", "STARTED", 100)).unwrap();
    assert!(next.seq > newest.seq, "{} after {}", next.seq, newest.seq);
    let resumed = store.events_after(newest.seq, 10).unwrap();
    assert_eq!(resumed.len(), 1, "{resumed:?}");
    assert_eq!(resumed[0].execution, "f");
}

/// An execution that ends asking for a rollback keeps the ask until one
/// process starts that rollback; a second start, or one after the ask was
/// dropped, records nothing.
pub fn an_asked_rollback_waits_until_one_process_starts_it(store: &dyn Store) {
    let asking = |id: &str, at_ms: i64| {
        start(store, id, at_ms);
        store.set_execution_version(id, 1).unwrap();
        let end = ExecutionEnd {
            status: Status::Failed,
            error: Some("a condition asked for a rollback"),
            rollback: Some("Deploy"),
        };
        store.finish_execution(id, end, at_ms + 1, None).unwrap();
    };
    let none = serde_json::json!({});
    let start_rollback = |asked_by: &str, id: &str| {
        let file = Path::new("p.toml");
        (store.start_asked_rollback(asked_by, id, "p", file, &none, &none, 10)).unwrap()
    };
    asking("failed", 1);
    asking("refused", 3);
    // Run by `sluice run` (no pipeline version): no server starts it.
    start(store, "local", 5);
    let end = ExecutionEnd {
        status: Status::Failed,
        error: None,
        rollback: Some("Deploy"),
    };
    store.finish_execution("local", end, 6, None).unwrap();
    let pending = store.pending_rollbacks().unwrap();
    let expected = |id: &str| (id.to_string(), "Deploy".to_string());
    assert_eq!(pending, [expected("failed"), expected("refused")]);

    assert!(start_rollback("failed", "r1"));
    assert!(!start_rollback("failed", "r2"), "started twice");
    assert!(store.execution("r2").unwrap().is_none());
    let started = store.execution("r1").unwrap().unwrap();
    assert_eq!(started.status, Status::InProgress);
    assert_eq!(store.pending_rollbacks().unwrap(), [expected("refused")]);

    store.drop_rollback("refused").unwrap();
    assert!(store.pending_rollbacks().unwrap().is_empty());
    assert!(!start_rollback("refused", "r3"));
    assert!(store.execution("r3").unwrap().is_none());
}

/// Processes racing to start one asked rollback start it once.
pub fn racing_processes_start_an_asked_rollback_once(first: &dyn Store, second: &dyn Store) {
    const ASKS: usize = 20;
    for i in 0..ASKS {
        let id = format!("failed{i}");
        start(first, &id, i as i64);
        let end = ExecutionEnd {
            status: Status::Failed,
            error: None,
            rollback: Some("Deploy"),
        };
        first.finish_execution(&id, end, i as i64, None).unwrap();
    }
    let started = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (n, store) in [first, second, first, second].into_iter().enumerate() {
            let started = &started;
            scope.spawn(move || {
                let none = serde_json::json!({});
                for i in 0..ASKS {
                    let (asked_by, id) = (format!("failed{i}"), format!("r{i}-{n}"));
                    let file = Path::new("p.toml");
                    let won =
                        store.start_asked_rollback(&asked_by, &id, "p", file, &none, &none, 1);
                    if won.unwrap() {
                        started.lock().unwrap().push(asked_by);
                    }
                }
            });
        }
    });
    let mut started = started.into_inner().unwrap();
    started.sort();
    let before = started.len();
    started.dedup();
    assert_eq!(before, started.len(), "a rollback was started twice");
    assert_eq!(started.len(), ASKS);
}

/// One server at a time delivers notifications; another takes over once the
/// holder stops renewing.
pub fn notifications_are_delivered_by_one_holder_at_a_time(store: &dyn Store) {
    assert!(store.hold_notifier("a", 0, 100).unwrap());
    assert!(!store.hold_notifier("b", 50, 150).unwrap(), "a holds it");
    assert!(store.hold_notifier("a", 90, 200).unwrap(), "a renews");
    assert!(
        !store.hold_notifier("b", 150, 250).unwrap(),
        "renewed to 200"
    );
    assert!(store.hold_notifier("b", 201, 300).unwrap(), "a ran out");
    assert!(
        !store.hold_notifier("a", 210, 310).unwrap(),
        "b holds it now"
    );
}

/// Transitions recorded at once by many tasks ([`ExecutionStore::record`])
/// are each committed once, with their events in the order of their sequence
/// numbers; one refused (its execution was taken over) leaves the others be.
pub fn concurrent_transitions_are_each_committed_and_a_refusal_stays_alone(
    store: std::sync::Arc<dyn Store>,
) {
    const EXECUTIONS: usize = 40;
    store.lease_as(Owner {
        id: "a".into(),
        lease_ms: 100,
    });
    for i in 0..EXECUTIONS {
        start(&*store, &format!("e{i}"), 1_000);
    }
    let now = store.clock_ms();
    assert!(
        store
            .claim_execution("e7", "b", now + 1_000, now + 8_000)
            .unwrap()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let answers = runtime.block_on(async {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(EXECUTIONS));
        let tasks: Vec<_> = (0..EXECUTIONS)
            .map(|i| {
                let (store, barrier) = (store.clone(), barrier.clone());
                let id = format!("e{i}");
                let transition = Transition {
                    execution: id.clone(),
                    change: Change::StageStarted {
                        stage: "S".into(),
                        position: 0,
                    },
                    now_ms: 2_001,
                    event: Some(event(&id, "STARTED", 2_001)),
                };
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.record(transition).await
                })
            })
            .collect();
        futures::future::join_all(tasks).await
    });
    let mut announced = Vec::new();
    for (i, answer) in answers.into_iter().enumerate() {
        let answer = answer.expect("the task ran");
        if i == 7 {
            let error = format!("{:#}", answer.unwrap_err());
            assert!(error.contains("held by b now"), "{error}");
            assert!(store.stages("e7").unwrap().is_empty());
            continue;
        }
        let stored = answer.unwrap().expect("the event as stored");
        assert_eq!(stored.execution, format!("e{i}"));
        assert_eq!(store.stages(&stored.execution).unwrap().len(), 1);
        announced.push(stored.seq);
    }
    let stored: Vec<i64> = store
        .events_after(0, 100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    announced.sort();
    assert_eq!(stored, announced, "each event stored once, under its seq");
}
