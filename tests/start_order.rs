//! Start order follows `depends_on`: a service starts only once every instance of its
//! dependencies is healthy; independent services start in parallel.

mod support;

use support::stack::{Event, Stack, show_events};

/// Checks every 100 ms; the first 5 s of failures (the 1 s start delay) do not count.
const HEALTH: &str =
    "{ http: /healthz, interval: 100ms, timeout: 1s, retries: 3, start_period: 5s }";

fn find<'a>(events: &'a [Event], kind: &str, instance: &str) -> (usize, &'a Event) {
    events
        .iter()
        .enumerate()
        .find(|(_, e)| e.is(kind, instance))
        .unwrap_or_else(|| panic!("no `{kind}` event for {instance}:\n{}", show_events(events)))
}

/// `first` happened before `then`, both in the event order and by the clock.
fn assert_before(events: &[Event], first: (&str, &str), then: (&str, &str)) {
    let (first_index, first_event) = find(events, first.0, first.1);
    let (then_index, then_event) = find(events, then.0, then.1);
    assert!(
        first_index < then_index && first_event.at_ms <= then_event.at_ms,
        "expected {} {} before {} {}:\n{}",
        first.1,
        first.0,
        then.1,
        then.0,
        show_events(events)
    );
}

#[test]
fn a_chain_starts_dependencies_first_each_healthy_before_the_next() {
    let stack = Stack::new(
        "order-chain",
        &format!(
            "
services:
  front:
    command: {{testapp}}
    depends_on: [middle]
    health: {HEALTH}
  middle:
    command: {{testapp}}
    depends_on: [back]
    health: {HEALTH}
  back:
    command: {{testapp}}
    replicas: 2
    env: {{ TESTAPP_START_DELAY: 1s }}
    health: {HEALTH}
"
        ),
    );
    stack.up_ok();
    let events = stack.events();
    for back in ["back.1", "back.2"] {
        assert_before(&events, ("healthy", back), ("started", "middle.1"));
    }
    assert_before(&events, ("healthy", "middle.1"), ("started", "front.1"));
    // back needs a second to listen: middle cannot have started sooner.
    let back_started = find(&events, "started", "back.1").1.at_ms;
    let middle_started = find(&events, "started", "middle.1").1.at_ms;
    assert!(
        middle_started - back_started >= 900,
        "middle started {} ms after back, but back takes 1 s to become healthy:\n{}",
        middle_started - back_started,
        show_events(&events)
    );
}

#[test]
fn independent_services_start_in_parallel() {
    let stack = Stack::new(
        "order-parallel",
        &format!(
            "
services:
  left:
    command: {{testapp}}
    env: {{ TESTAPP_START_DELAY: 1s }}
    health: {HEALTH}
  right:
    command: {{testapp}}
    env: {{ TESTAPP_START_DELAY: 1s }}
    health: {HEALTH}
"
        ),
    );
    stack.up_ok();
    let events = stack.events();
    let left = find(&events, "started", "left.1").1.at_ms;
    let right = find(&events, "started", "right.1").1.at_ms;
    // Each needs a second to become healthy; started one after the other they would be
    // at least that far apart.
    assert!(
        (left - right).abs() < 500,
        "left and right started {} ms apart:\n{}",
        (left - right).abs(),
        show_events(&events)
    );
    // And `up -d` waited for both.
    for instance in ["left.1", "right.1"] {
        find(&events, "healthy", instance);
    }
}
