//! What every one of our daemons does, written once and run against each
//! (`vu_driver::under_test`): its lifecycle (one frontend after another,
//! leaks, abrupt frontends, signals, `--fd`, socket activation, systemd's
//! notify, watchdog and journal), its command line, its contrib files,
//! its seccomp filter, malformed rings on each of its queue kinds, and
//! hostile vhost-user messages.
//! Each test is instantiated per daemon (or per ring) in a module named
//! after it, so a failure names it:
//! `lifecycle::net::a_hundred_connections_leak_no_descriptors_threads_or_memory`,
//! `malformed::net_rx::descriptor_loop`.
//!
//! What only one daemon does is in that daemon's binary (`blk`, `fs`,
//! `net`).

/// For each `fn NAME(d: &DaemonUnderTest)` listed, one `#[test] fn NAME`
/// per daemon, in the modules `blk`, `fs` and `net` of the calling module.
/// `NAME ignore(fs = "why")` ignores the daemons named, with the reason
/// (a known defect, still listed by `cargo test -- --ignored`).
macro_rules! for_each_daemon {
    ($($test:ident $(ignore($($d:ident = $why:literal),+))?),+ $(,)?) => {
        for_each_daemon!(@daemon blk BLK: $($test [$($($d = $why),+)?]),+);
        for_each_daemon!(@daemon fs FS: $($test [$($($d = $why),+)?]),+);
        for_each_daemon!(@daemon net NET: $($test [$($($d = $why),+)?]),+);
    };
    (@daemon $module:ident $daemon:ident: $($test:ident [$($ignored:tt)*]),+) => {
        mod $module {
            $(daemon_test!($module $daemon $test [$($ignored)*]);)+
        }
    };
}

/// One test of [`for_each_daemon`]: ignored if its daemon is in the list.
macro_rules! daemon_test {
    (blk $daemon:ident $test:ident [blk = $why:literal $($rest:tt)*]) => {
        daemon_test!(@ignored blk $daemon $test $why);
    };
    (fs $daemon:ident $test:ident [fs = $why:literal $($rest:tt)*]) => {
        daemon_test!(@ignored fs $daemon $test $why);
    };
    (net $daemon:ident $test:ident [net = $why:literal $($rest:tt)*]) => {
        daemon_test!(@ignored net $daemon $test $why);
    };
    ($module:ident $daemon:ident $test:ident [$other:ident = $why:literal $(, $($rest:tt)*)?]) => {
        daemon_test!($module $daemon $test [$($($rest)*)?]);
    };
    ($module:ident $daemon:ident $test:ident []) => {
        #[test]
        fn $test() {
            super::$test(&vu_driver::under_test::$module::$daemon)
        }
    };
    (@ignored $module:ident $daemon:ident $test:ident $why:literal) => {
        #[test]
        #[ignore = $why]
        fn $test() {
            super::$test(&vu_driver::under_test::$module::$daemon)
        }
    };
}

mod cli;
mod contrib;
mod hostile;
mod lifecycle;
mod malformed;
mod seccomp;
