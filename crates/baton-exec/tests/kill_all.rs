//! `kill_all` reaches every live group this process spawned (own test binary: it kills
//! everything the binary started).

mod common;

use baton_exec::{ExitStatus, Signal, SpawnOptions, kill_all, signal_all, spawn, spawn_streaming};

#[tokio::test]
async fn kill_all_and_signal_all_reach_every_live_group() {
    let (a, mut a_events) = spawn_streaming(&common::sh("sleep 1000 & echo $!; wait")).unwrap();
    let (grandchild, _) = common::read_pid_line(&mut a_events).await;
    let b = spawn(&common::sh("sleep 1000"), SpawnOptions::retained()).unwrap();
    assert_eq!(kill_all(), 2);
    assert_eq!(a.wait().await, ExitStatus::Signaled(libc::SIGKILL));
    assert_eq!(b.wait().await, ExitStatus::Signaled(libc::SIGKILL));
    common::wait_pid_dead(grandchild);
    drop(a);
    drop(b);
    drop(a_events);

    let c = spawn(&common::sh("sleep 1000"), SpawnOptions::retained()).unwrap();
    assert_eq!(
        signal_all(Signal::Terminate),
        1,
        "dropped handles are unregistered"
    );
    assert_eq!(c.wait().await, ExitStatus::Signaled(libc::SIGTERM));
}
