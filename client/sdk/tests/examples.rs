//! The examples run against the real agent (behind the support's proxy,
//! which counts the calls) (they are compiled in as
//! modules; each builds its own runtime, so they run on this plain thread).

mod support;

#[allow(dead_code)]
#[path = "../examples/allocate.rs"]
mod allocate;

#[test]
fn allocate_example_runs() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = rt.block_on(support::FaultProxy::start());
    // Only this test runs in this binary, so setting the environment is safe.
    std::env::set_var("FAN_AGENT", &agent.target);
    // FAN_UNDERLAY unset: the example's "default/16" is the fake host's
    // default-route interface, resolved by the agent.
    std::env::set_var("FAN_CONTAINER", "web-1");
    allocate::main().unwrap();
    assert_eq!(agent.calls("CreateNetwork"), 1);
    assert_eq!(agent.calls("AllocateAddress"), 1);
    assert_eq!(agent.calls("ReleaseAddress"), 1);
    // a second run finds the network and does not create it again
    allocate::main().unwrap();
    assert_eq!(agent.calls("CreateNetwork"), 1);
    assert_eq!(agent.agent.dataplane().programmed_networks(), ["fan-250"]);
    drop(agent);
}
