//! `--cpus` over the real VMM, with the test guest waiting for the power
//! button (so every vCPU thread is alive): each vCPU thread (`vcpu<N>`) is
//! pinned to the host CPUs `affinity=` names, as its `Cpus_allowed_list`
//! in `/proc/PID/task/TID/status` shows, while the VMM's other threads
//! keep the process's set; `vm.info` echoes boot, max, topology, affinity
//! and `pmu` in Cloud Hypervisor's `CpusConfig` shape. The same through
//! `vm.create` + `vm.boot` on an empty VMM, with a host CPU it lacks
//! refused first as a 400 naming `cpus.affinity`.

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use vu_driver::fixture::{Daemon, TempDir};
use vu_driver::http;
use vu_driver::process;
use vu_driver::vmm::{
    guest_logs, press_power_button, shutdown_vmm, spawn_test_guest, test_guest, vm_info,
    wait_for_serial, WAITING,
};

/// KVM here emulates every instruction: the guest needs a few seconds to
/// reach its wait; the margin is for loaded machines.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
const WAIT: Duration = Duration::from_secs(30);

/// `0-2,5` as a list of CPUs.
fn parse_cpu_list(s: &str) -> Vec<usize> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .flat_map(|p| match p.split_once('-') {
            Some((a, b)) => (a.parse().unwrap()..=b.parse().unwrap()).collect::<Vec<usize>>(),
            None => vec![p.parse().unwrap()],
        })
        .collect()
}

/// The `Cpus_allowed_list` line of a `/proc/.../status` file.
fn allowed_list(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in status")
        .trim()
        .to_string()
}

/// Each thread of `pid` as (name, Cpus_allowed_list).
fn thread_cpus(pid: u32) -> Vec<(String, String)> {
    process::threads(pid)
        .unwrap()
        .iter()
        .map(|t| (t.name().to_string(), allowed_list(&t.status)))
        .collect()
}

/// The Cpus_allowed_list of `pid`'s thread `name`, if it runs.
fn cpus_of(threads: &[(String, String)], name: &str) -> Option<String> {
    threads
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, cpus)| cpus.clone())
}

fn logs(vmm: &Daemon, console: &Path) -> String {
    guest_logs(console, vmm, &[])
}

#[test]
fn each_vcpu_thread_runs_on_its_host_cpus_and_vm_info_echoes_the_cpus() {
    let own = allowed_list(&std::fs::read_to_string("/proc/self/status").unwrap());
    let host = parse_cpu_list(&own);
    // vCPU 0 on the last CPU we may use, vCPU 1 on the first: on a host
    // with two or more, each differs from the process's whole set.
    let (first, last) = (host[0], host[host.len() - 1]);
    let cpus = format!("boot=2,max=4,topology=1:2:1:2,affinity=[0@[{last}],1@[{first}]],pmu=off");
    let dir = TempDir::new("vmm-cpus").unwrap();
    let api = dir.join("api.sock");
    let console = dir.join("console.txt");
    let extra = ["--cpus".to_string(), cpus];
    let mut vmm = spawn_test_guest(&api, &console, "wait-power-button", &extra, BOOT_TIMEOUT);
    wait_for_serial(&mut vmm, &console, WAITING, BOOT_TIMEOUT, |v| {
        logs(v, &console)
    });
    let threads = thread_cpus(vmm.pid());
    let of = |name: &str| {
        cpus_of(&threads, name).unwrap_or_else(|| panic!("no {name} thread in {threads:?}"))
    };
    assert_eq!(of("vcpu0"), last.to_string(), "{threads:?}");
    assert_eq!(of("vcpu1"), first.to_string(), "{threads:?}");
    assert!(
        !threads.iter().any(|(n, _)| n == "vcpu2"),
        "only boot vCPUs run"
    );
    // The VMM's main thread is not pinned.
    assert_eq!(of("vmm"), own, "{threads:?}");

    let info = vm_info(&api);
    assert_eq!(info["cpus"], 2, "{info}");
    assert_eq!(
        info["config"]["cpus"],
        json!({"boot_vcpus": 2, "max_vcpus": 4, "kvm_hyperv": false,
               "topology": {"threads_per_core": 1, "cores_per_die": 2,
                            "dies_per_package": 1, "packages": 2},
               "affinity": [{"vcpu": 0, "host_cpus": [last]},
                            {"vcpu": 1, "host_cpus": [first]}],
               "pmu": false}),
        "{info}"
    );
    press_power_button(&api, &vmm, WAIT, || logs(&vmm, &console));
    shutdown_vmm(&api, &mut vmm, WAIT, |v| logs(v, &console));
}

#[test]
fn vm_create_pins_the_vcpus_it_names() {
    let own = allowed_list(&std::fs::read_to_string("/proc/self/status").unwrap());
    let host = parse_cpu_list(&own);
    let last = host[host.len() - 1];
    let dir = TempDir::new("vmm-cpus-api").unwrap();
    let api = dir.join("api.sock");
    let console = dir.join("console.txt");
    let mut vmm = vu_driver::vmm::spawn_empty_vmm(&api, WAIT);
    let guest = test_guest().unwrap_or_else(|e| panic!("{e}"));
    let body = |host_cpus: Vec<usize>| {
        json!({
            "payload": {"kernel": guest, "cmdline": "console=ttyS0 wait-power-button"},
            "cpus": {"boot_vcpus": 2, "max_vcpus": 2,
                     "affinity": [{"vcpu": 1, "host_cpus": host_cpus}]},
            "memory": {"size": 64u64 << 20},
            "serial": {"mode": "File", "file": console},
        })
        .to_string()
    };
    let create = |b: String| http::call(&api, "PUT", "/api/v1/vm.create", Some(&b));
    let (status, answer) = create(body(vec![last, 100_000]));
    assert_eq!(status, 400, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cpus.affinity") && error.contains("host CPU 100000"),
        "{answer}"
    );
    let (status, answer) = create(body(vec![last]));
    assert_eq!(status, 204, "{answer}");
    let (status, answer) = http::call(&api, "PUT", "/api/v1/vm.boot", None);
    assert_eq!(status, 204, "{answer}\n{}", logs(&vmm, &console));
    wait_for_serial(&mut vmm, &console, WAITING, BOOT_TIMEOUT, |v| {
        logs(v, &console)
    });
    let threads = thread_cpus(vmm.pid());
    let of = |name: &str| cpus_of(&threads, name);
    assert_eq!(of("vcpu1"), Some(last.to_string()), "{threads:?}");
    assert_eq!(of("vcpu0"), Some(own), "vCPU 0 is not named: {threads:?}");
    press_power_button(&api, &vmm, WAIT, || logs(&vmm, &console));
    shutdown_vmm(&api, &mut vmm, WAIT, |v| logs(v, &console));
}
