use serde_json::json;

use super::*;

/// A file that exists (the test binary), for `payload.kernel`.
fn kernel() -> String {
    std::env::current_exe().unwrap().display().to_string()
}

fn err(body: Value) -> ConfigError {
    from_api(&body).expect_err("refused")
}

#[test]
fn kata_shaped_config_with_vhost_user_devices() {
    let k = kernel();
    let body = json!({
        "payload": {"kernel": k, "cmdline": "console=ttyS0 quiet"},
        "cpus": {"boot_vcpus": 2, "max_vcpus": 2,
                 "topology": {"threads_per_core": 1, "cores_per_die": 2,
                              "dies_per_package": 1, "packages": 1}},
        "memory": {"size": 268435456u64, "shared": true, "hotplug_method": "Acpi"},
        "serial": {"mode": "Off"},
        "console": {"mode": "Off"},
        "rng": {"src": "/dev/urandom", "iommu": false},
        "fs": [{"tag": "kataShared", "socket": "/run/vfs.sock",
                "num_queues": 1, "queue_size": 1024, "pci_segment": 0}],
        "disks": [{"vhost_user": true, "vhost_socket": "/run/blk.sock",
                   "num_queues": 2, "queue_size": 128, "readonly": false}],
        "net": [{"vhost_user": true, "vhost_socket": "/run/net.sock",
                 "mac": "52:54:00:12:34:56", "num_queues": 2, "queue_size": 256,
                 "id": "net0"}],
        "iommu": false,
        "watchdog": false,
    });
    let plan = from_api(&body).unwrap();
    let c = &plan.config;
    assert_eq!(c.kernel, PathBuf::from(&k));
    assert_eq!(c.cmdline, "console=ttyS0 quiet");
    assert_eq!((c.cpus.boot, c.cpus.max, c.memory.size), (2, 2, 256 << 20));
    assert_eq!(c.cpus.topology, Some(CpuTopology::flat(2)));
    assert_eq!(c.serial, SerialConfig::Off);
    // Plug order: disks, shares, NICs, as on the command line.
    let kinds: Vec<_> = c.devices.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, [DeviceKind::Block, DeviceKind::Fs, DeviceKind::Net]);
    let (d, f, n) = (&c.devices[0], &c.devices[1], &c.devices[2]);
    assert_eq!(
        (d.socket.to_str(), d.num_queues, d.queue_size),
        (Some("/run/blk.sock"), 2, 128)
    );
    assert_eq!((f.tag.as_deref(), f.queue_size), (Some("kataShared"), 1024));
    assert_eq!(n.mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
    // The command line's defaults for what the body does not say.
    assert_eq!(d.reconnect, cli::Reconnect::default_for(DeviceKind::Block));
    assert_eq!(plan.echo, body);
    assert_eq!(
        plan.unsupported,
        ["memory.hotplug_method: ignored", "rng: ignored",]
    );
}

#[test]
fn the_minimum_is_a_kernel() {
    let plan = from_api(&json!({"payload": {"kernel": kernel()}})).unwrap();
    let c = &plan.config;
    assert_eq!(
        (c.cpus.clone(), c.memory.size),
        (CpusConfig::new(1), 512 << 20)
    );
    assert_eq!(c.cmdline, DEFAULT_CMDLINE);
    assert_eq!(c.serial, SerialConfig::Off);
    assert!(c.devices.is_empty() && plan.unsupported.is_empty());
}

#[test]
fn missing_and_malformed_fields_are_named() {
    let k = kernel();
    let cases = [
        (json!([]), "VmConfig", "not an object"),
        (json!({}), "payload", "is required"),
        (json!({"payload": {}}), "payload.kernel", "is required"),
        (
            json!({"payload": {"kernel": 7}}),
            "payload.kernel",
            "not a string",
        ),
        (
            json!({"payload": {"kernel": "/nonexistent/vmlinux"}}),
            "payload.kernel",
            "/nonexistent/vmlinux: No such file",
        ),
        (
            json!({"payload": {"kernel": "/"}}),
            "payload.kernel",
            "not a regular file",
        ),
        (
            json!({"payload": {"kernel": k, "initramfs": "/nonexistent/initrd"}}),
            "payload.initramfs",
            "No such file",
        ),
        (
            json!({"payload": {"kernel": k}, "cpus": {"max_vcpus": 1}}),
            "cpus.boot_vcpus",
            "is required",
        ),
        (
            json!({"payload": {"kernel": k}, "cpus": {"boot_vcpus": 1}}),
            "cpus.max_vcpus",
            "is required",
        ),
        (
            json!({"payload": {"kernel": k}, "cpus": {"boot_vcpus": 0, "max_vcpus": 0}}),
            "cpus.boot_vcpus",
            "0 is not from 1 to 254",
        ),
        (
            json!({"payload": {"kernel": k}, "cpus": {"boot_vcpus": 4, "max_vcpus": 2}}),
            "cpus.max_vcpus",
            "max 2 is below boot 4",
        ),
        (
            json!({"payload": {"kernel": k}, "cpus": {"boot_vcpus": 2, "max_vcpus": 4,
                "topology": {"threads_per_core": 1, "cores_per_die": 2,
                             "dies_per_package": 1, "packages": 1}}}),
            "cpus.topology",
            "1:2:1:1 makes 2 vCPUs, not max 4",
        ),
        (
            json!({"payload": {"kernel": k}, "cpus": {"boot_vcpus": 2, "max_vcpus": 2,
                "topology": {"threads_per_core": 0, "cores_per_die": 2,
                             "dies_per_package": 1, "packages": 1}}}),
            "cpus.topology",
            "no count may be 0",
        ),
        (
            json!({"payload": {"kernel": k}, "cpus": {"boot_vcpus": 2, "max_vcpus": 2,
                "topology": {"threads_per_core": 1, "cores_per_die": 2, "packages": 1}}}),
            "cpus.topology.dies_per_package",
            "is required",
        ),
        (
            json!({"payload": {"kernel": k}, "cpus": {"boot_vcpus": 2, "max_vcpus": 2,
                "affinity": [{"vcpu": 2, "host_cpus": [0]}]}}),
            "cpus.affinity",
            "vCPU 2 is not below max 2",
        ),
        (
            json!({"payload": {"kernel": k}, "cpus": {"boot_vcpus": 1, "max_vcpus": 1,
                "affinity": [{"vcpu": 0, "host_cpus": [100000]}]}}),
            "cpus.affinity",
            "host CPU 100000 is not one this process may run on",
        ),
        (
            json!({"payload": {"kernel": k}, "cpus": {"boot_vcpus": 1, "max_vcpus": 1,
                "affinity": [{"vcpu": 0, "host_cpus": "0"}]}}),
            "cpus.affinity[0].host_cpus",
            "is not an array",
        ),
        (
            json!({"payload": {"kernel": k}, "cpus": {"boot_vcpus": 1, "max_vcpus": 1,
                "kvm_hyperv": true}}),
            "cpus.kvm_hyperv",
            "no Hyper-V",
        ),
        (
            json!({"payload": {"kernel": k}, "cpus": {"boot_vcpus": 1, "max_vcpus": 1,
                "features": {"amx": true}}}),
            "cpus.features.amx",
            "AMX",
        ),
        (
            json!({"payload": {"kernel": k}, "memory": {}}),
            "memory.size",
            "is required",
        ),
        (
            json!({"payload": {"kernel": k}, "memory": {"size": -1}}),
            "memory.size",
            "non-negative",
        ),
        (
            json!({"payload": {"kernel": k}, "memory": {"size": 1000}}),
            "memory.size",
            "multiple of 1 MiB",
        ),
        (
            json!({"payload": {"kernel": k}, "serial": {}}),
            "serial.mode",
            "is required",
        ),
        (
            json!({"payload": {"kernel": k}, "serial": {"mode": "File"}}),
            "serial.file",
            "is required",
        ),
        (
            json!({"payload": {"kernel": k}, "serial": {"mode": "Pty"}}),
            "serial.mode",
            "Pty",
        ),
        (
            json!({"payload": {"kernel": k}, "serial": {"mode": "Loud"}}),
            "serial.mode",
            "`Loud`",
        ),
        (
            json!({"payload": {"kernel": k}, "console": {"mode": "Tty"}}),
            "console.mode",
            "no virtio-console",
        ),
        (
            json!({"payload": {"kernel": k}, "fs": {}}),
            "fs",
            "not an array",
        ),
        (
            json!({"payload": {"kernel": k}, "fs": [{"socket": "/s"}]}),
            "fs[0].tag",
            "is required",
        ),
        (
            json!({"payload": {"kernel": k}, "fs": [{"tag": "t"}]}),
            "fs[0].socket",
            "is required",
        ),
        (
            json!({"payload": {"kernel": k}, "fs": [{"tag": "t".repeat(37), "socket": "/s"}]}),
            "fs[0].tag",
            "37 bytes",
        ),
        (
            json!({"payload": {"kernel": k}, "disks": [{"vhost_user": true}]}),
            "disks[0].vhost_socket",
            "is required",
        ),
        (
            json!({"payload": {"kernel": k},
                   "disks": [{"vhost_user": true, "vhost_socket": "/s", "queue_size": 100}]}),
            "disks[0].queue_size",
            "not a power of two",
        ),
        (
            json!({"payload": {"kernel": k},
                   "net": [{"vhost_user": true, "vhost_socket": "/s", "num_queues": 3}]}),
            "net[0].num_queues",
            "odd",
        ),
        (
            json!({"payload": {"kernel": k},
                   "net": [{"vhost_user": true, "vhost_socket": "/s", "mac": "nope"}]}),
            "net[0].mac",
            "not a MAC address",
        ),
    ];
    for (body, field, words) in cases {
        let e = err(body.clone());
        assert_eq!(e.field, field, "{body}: {e}");
        assert!(e.to_string().contains(words), "{body}: {e}");
        assert!(e.to_string().starts_with(&format!("{field}: ")), "{e}");
    }
}

#[test]
fn what_we_cannot_honour_is_refused_by_its_field() {
    let k = kernel();
    let cases = [
        // An image that cannot be one: the VMM would start nothing.
        (
            json!({"disks": [{"path": "/", "readonly": true}]}),
            "disks[0].path",
        ),
        (
            json!({"disks": [{"path": "/nonexistent/root.img"}]}),
            "disks[0].path",
        ),
        (
            json!({"disks": [{"vhost_socket": "/s"}]}),
            "disks[0].vhost_user",
        ),
        (
            json!({"disks": [{"vhost_user": true, "vhost_socket": "/s", "readonly": true}]}),
            "disks[0].readonly",
        ),
        (json!({"net": [{"fds": [3]}]}), "net[0].fds"),
        (
            json!({"net": [{"tap": "tap0", "ip": "10.0.0.1"}]}),
            "net[0].ip",
        ),
        (
            json!({"net": [{"tap": "tap0", "vhost_user": true, "vhost_socket": "/s"}]}),
            "net[0].vhost_user",
        ),
        (
            json!({"net": [{"tap": "tap0", "vhost_socket": "/s"}]}),
            "net[0].vhost_socket",
        ),
        (
            json!({"net": [{"vhost_user": true, "vhost_socket": "/s", "vhost_mode": "Server"}]}),
            "net[0].vhost_mode",
        ),
        (
            json!({"vsock": {"cid": 2, "socket": "/run/clh.sock"}}),
            "vsock.cid",
        ),
        (
            json!({"vsock": {"cid": 3, "socket": "/no/such/dir/clh.sock"}}),
            "vsock.socket",
        ),
        (
            json!({"vsock": {"cid": 3, "socket": "/tmp/clh.sock", "iommu": true}}),
            "vsock.iommu",
        ),
        (json!({"vsock": {"socket": "/tmp/clh.sock"}}), "vsock.cid"),
        (json!({"vsock": [3]}), "vsock"),
        (json!({"pmem": [{"file": "/img"}]}), "pmem"),
        (json!({"iommu": true}), "iommu"),
        (
            json!({"memory": {"size": 67108864, "hugepages": true, "hugepage_size": 4194304}}),
            "memory.hugepage_size",
        ),
        (
            json!({"memory": {"size": 67108864, "shared": false}}),
            "memory.shared",
        ),
        (json!({"platform": {"tdx": true}}), "platform.tdx"),
        (json!({"payload": {"firmware": "/fw"}}), "payload.firmware"),
    ];
    for (extra, field) in cases {
        let mut body = json!({"payload": {"kernel": k}});
        for (key, value) in extra.as_object().unwrap() {
            if key == "payload" {
                body["payload"]["firmware"] = value["firmware"].clone();
            } else {
                body[key] = value.clone();
            }
        }
        let e = err(body.clone());
        assert_eq!(e.field, field, "{body}: {e}");
    }
    // Inert values of the same fields ask for nothing.
    let plan = from_api(&json!({
        "payload": {"kernel": k, "firmware": null},
        "vsock": null, "pmem": [], "iommu": false,
        "memory": {"size": 67108864, "hugepages": false},
        "platform": {"num_pci_segments": 1, "tdx": false},
    }))
    .unwrap();
    assert_eq!(plan.unsupported, ["platform: ignored"]);
}

#[test]
fn the_command_line_gives_the_same_config_and_echoes_it() {
    use clap::Parser;
    let k = kernel();
    let args = Args::try_parse_from([
        "vmm",
        "--kernel",
        &k,
        "--cpus",
        "boot=2",
        "--memory",
        "size=64M",
        "--serial",
        "off",
        "--disk",
        "socket=/b",
        "--fs",
        "tag=t,socket=/f",
        "--net",
        "socket=/n,mac=52:54:00:00:00:01",
    ])
    .unwrap();
    let cli = from_cli(&args, HostNuma::get()).unwrap().unwrap();
    // The echo, sent back as a vm.create body, is the same config.
    let api = from_api(&cli.echo).unwrap();
    assert_eq!(api.config, cli.config);
    assert_eq!(
        cli.echo["cpus"],
        json!({"boot_vcpus": 2, "max_vcpus": 2, "kvm_hyperv": false})
    );
    assert_eq!(cli.echo["net"][0]["mac"], "52:54:00:00:00:01");
    assert!(from_cli(
        &Args::try_parse_from(["vmm", "--api-socket", "/a"]).unwrap(),
        HostNuma::get()
    )
    .unwrap()
    .is_none());
}

/// `--cpus` with every field, echoed in Cloud Hypervisor's shape, and the
/// echo sent back as `cpus` of a `vm.create` body is the same config.
#[test]
fn cpus_round_trip_through_the_echo() {
    use clap::Parser;
    let k = kernel();
    let host = cli::host_cpus();
    let (a, b) = (host[0], host[host.len() - 1]);
    let cpus = format!("boot=2,max=4,topology=1:2:1:2,affinity=[0@[{b}],1@[{a},{b}]],pmu=off");
    let args = Args::try_parse_from(["vmm", "--kernel", &k, "--cpus", &cpus]).unwrap();
    let cli = from_cli(&args, HostNuma::get()).unwrap().unwrap();
    let mut both = vec![a, b];
    both.dedup();
    assert_eq!(
        cli.echo["cpus"],
        json!({"boot_vcpus": 2, "max_vcpus": 4, "kvm_hyperv": false,
               "topology": {"threads_per_core": 1, "cores_per_die": 2,
                            "dies_per_package": 1, "packages": 2},
               "affinity": [{"vcpu": 0, "host_cpus": [b]},
                            {"vcpu": 1, "host_cpus": both}],
               "pmu": false})
    );
    let api = from_api(&cli.echo).unwrap();
    assert_eq!(api.config.cpus, cli.config.cpus);
    assert!(api.unsupported.is_empty(), "{:?}", api.unsupported);
    // Fields we do not act on are reported, not dropped silently.
    let body = json!({"payload": {"kernel": k},
                      "cpus": {"boot_vcpus": 1, "max_vcpus": 1, "max_phys_bits": 46,
                               "features": {"amx": false}}});
    assert_eq!(
        from_api(&body).unwrap().unsupported,
        ["cpus.max_phys_bits: ignored"]
    );
}

#[test]
fn generic_paths_drop_indexes() {
    assert_eq!(generic_path("disks[12].path"), "disks.path");
    assert_eq!(generic_path("memory"), "memory");
    assert!(inert(&json!(0)) && inert(&json!("")) && !inert(&json!(1)));
}

#[test]
fn kata_rootfs_image_is_served_by_a_daemon_the_vmm_runs() {
    let k = kernel();
    let body = json!({
        "payload": {"kernel": k},
        "disks": [{"path": k, "readonly": true, "image_type": "Raw"}],
    });
    let plan = from_api(&body).unwrap();
    let d = &plan.config.devices[0];
    assert_eq!(
        d.image,
        Some(cli::DiskImage {
            path: PathBuf::from(&k),
            readonly: true
        })
    );
    assert!(plan.unsupported.is_empty(), "{:?}", plan.unsupported);
    for (disk, field, words) in [
        (
            json!({"path": k, "image_type": "Qcow2"}),
            "disks[0].image_type",
            "Qcow2 images are not supported",
        ),
        (
            json!({"path": k, "vhost_user": true, "vhost_socket": "/s"}),
            "disks[0].path",
            "not both",
        ),
    ] {
        let e = err(json!({"payload": {"kernel": k}, "disks": [disk]}));
        assert_eq!(e.field, field, "{e}");
        assert!(e.to_string().contains(words), "{e}");
    }
}

#[test]
fn devices_added_before_boot_join_the_plan_in_plug_order() {
    let k = kernel();
    let plan = from_api(&json!({
        "payload": {"kernel": k},
        "disks": [{"vhost_user": true, "vhost_socket": "/run/a.sock"}],
        "net": [{"vhost_user": true, "vhost_socket": "/run/n.sock"}],
    }))
    .unwrap();
    let disk = json!({"vhost_user": true, "vhost_socket": "/run/b.sock", "num_queues": 2});
    let plan = add_device(&plan, DeviceKind::Block, &disk, Vec::new()).unwrap();
    let fs = json!({"tag": "kataShared", "socket": "/run/fs.sock"});
    let plan = add_device(&plan, DeviceKind::Fs, &fs, Vec::new()).unwrap();
    let order: Vec<_> = plan
        .config
        .devices
        .iter()
        .map(|d| d.socket.display().to_string())
        .collect();
    assert_eq!(
        order,
        ["/run/a.sock", "/run/b.sock", "/run/fs.sock", "/run/n.sock"]
    );
    assert_eq!(plan.echo["disks"][1], disk);
    assert_eq!(plan.echo["fs"], json!([fs]));
    // Checked as a vm.create entry would be, the field named by its place.
    let e = add_device(
        &plan,
        DeviceKind::Block,
        &json!({"vhost_user": true}),
        Vec::new(),
    )
    .unwrap_err();
    assert_eq!(e.field, "disks[2].vhost_socket", "{e}");
    let e = add_device(&plan, DeviceKind::Net, &json!({"tap": "a/b"}), Vec::new()).unwrap_err();
    assert_eq!(e.field, "net[1].tap", "{e}");
}

/// Kata's `vsock: {cid, socket}` in `vm.create`, or `vm.add-vsock`
/// before boot: one vsock, whose daemon the VMM runs; echoed in vm.info.
#[test]
fn a_vsock_from_vm_create_or_vm_add_vsock() {
    let k = kernel();
    let sock = std::env::temp_dir().join("vmm-config-clh.sock");
    let vsock =
        json!({"cid": 3, "socket": sock, "iommu": false, "pci_segment": 0, "id": "_vsock0"});
    let plan = from_api(&json!({"payload": {"kernel": k}, "vsock": vsock})).unwrap();
    let d = &plan.config.devices[0];
    assert_eq!((d.kind, d.device_queues()), (DeviceKind::Vsock, 3));
    let v = d.vsock.as_ref().unwrap();
    assert_eq!((v.cid, v.socket.as_path()), (3, sock.as_path()));
    assert!(plan.unsupported.is_empty(), "{:?}", plan.unsupported);
    assert_eq!(
        to_api(&plan.config)["vsock"],
        json!({"cid": 3, "socket": sock})
    );
    // A second one is refused; without one, vm.add-vsock adds it.
    let e = add_device(&plan, DeviceKind::Vsock, &vsock, Vec::new()).unwrap_err();
    assert_eq!(e.field, "vsock", "{e}");
    let plan = from_api(&json!({"payload": {"kernel": k}})).unwrap();
    let e = add_device(
        &plan,
        DeviceKind::Vsock,
        &json!({"cid": 1, "socket": sock}),
        Vec::new(),
    )
    .unwrap_err();
    assert_eq!(e.field, "vsock.cid", "{e}");
    let e = add_device(&plan, DeviceKind::Vsock, &vsock, open_n("/dev/null", 1)).unwrap_err();
    assert_eq!(e.field, "vsock.fds", "{e}");
    let plan = add_device(&plan, DeviceKind::Vsock, &vsock, Vec::new()).unwrap();
    assert_eq!(plan.config.devices[0].kind, DeviceKind::Vsock);
    assert_eq!(plan.echo["vsock"], vsock);
}

/// Opens `n` descriptors of `path`.
fn open_n(path: &str, n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| std::fs::File::open(path).unwrap().into())
        .collect()
}

#[test]
fn vm_add_net_with_tap_queues_as_kata_sends_it() {
    let k = kernel();
    let plan = from_api(&json!({"payload": {"kernel": k}})).unwrap();
    // Kata's clh.go: chclient.NewNetConfig()'s defaults, the MAC, and
    // the tap queues as SCM_RIGHTS (here /dev/net/tun not yet attached:
    // the daemon checks the flags when it starts).
    let body = json!({"mac": "02:00:00:00:00:22", "ip": "192.168.249.1",
                      "mask": "255.255.255.0", "num_queues": 2, "queue_size": 256,
                      "vhost_user": false, "vhost_mode": "Client", "iommu": false,
                      "offload_tso": true});
    let plan = add_device(&plan, DeviceKind::Net, &body, open_n("/dev/net/tun", 1)).unwrap();
    let nic = &plan.config.devices[0];
    assert!(
        matches!(&nic.tap, Some(NetTap::Fds(f)) if f.0.len() == 1),
        "{nic:?}"
    );
    assert_eq!(nic.mac, Some([2, 0, 0, 0, 0, 0x22]));
    assert_eq!((nic.num_queues, nic.socket.as_os_str()), (2, "".as_ref()));
    assert_eq!(
        plan.unsupported,
        [
            "net[0].ip: ignored (the tap queues came configured)",
            "net[0].mask: ignored (the tap queues came configured)",
            "net[0].offload_tso: ignored",
        ]
    );
    assert_eq!(plan.echo["net"], json!([body]));
    // Two queue pairs: num_queues follows the descriptors.
    let two = add_device(
        &plan,
        DeviceKind::Net,
        &json!({}),
        open_n("/dev/net/tun", 2),
    )
    .unwrap();
    assert_eq!(two.config.devices[1].num_queues, 4);
    let e = add_device(
        &plan,
        DeviceKind::Net,
        &json!({"num_queues": 2}),
        open_n("/dev/net/tun", 2),
    )
    .unwrap_err();
    assert_eq!(e.field, "net[1].num_queues", "{e}");
    // Not a tap, or sent to a device that takes none.
    let e = add_device(&plan, DeviceKind::Net, &json!({}), open_n("/dev/null", 1)).unwrap_err();
    assert_eq!(e.field, "net[1].fds", "{e}");
    assert!(e.message.contains("not a tap queue"), "{e}");
    let disk = json!({"vhost_user": true, "vhost_socket": "/run/b.sock"});
    let e = add_device(&plan, DeviceKind::Block, &disk, open_n("/dev/net/tun", 1)).unwrap_err();
    assert_eq!(e.field, "disks[0].fds", "{e}");
    // A tap by name: the daemon attaches to it.
    let named = add_device(&plan, DeviceKind::Net, &json!({"tap": "tap7"}), Vec::new()).unwrap();
    assert_eq!(
        named.config.devices[1].tap,
        Some(NetTap::Name("tap7".into()))
    );
    // A vhost-user NIC may say vhost_mode Client, not Server.
    let vu = json!({"vhost_user": true, "vhost_socket": "/s", "vhost_mode": "Client"});
    add_device(&plan, DeviceKind::Net, &vu, Vec::new()).unwrap();
}

#[test]
fn hugepages_and_prefault_as_cloud_hypervisor_names_them() {
    let k = kernel();
    let body = json!({
        "payload": {"kernel": k},
        "memory": {"size": 67108864u64, "shared": true, "hugepages": true,
                   "hugepage_size": 2097152, "prefault": true},
    });
    let plan = from_api(&body).unwrap();
    let m = &plan.config.memory;
    assert_eq!((m.hugepage_size, m.prefault), (Some(2 << 20), true));
    assert!(plan.unsupported.is_empty(), "{:?}", plan.unsupported);
    let e = err(json!({"payload": {"kernel": k},
                       "memory": {"size": 65u64 << 20, "hugepages": true}}));
    assert_eq!(e.field, "memory.hugepages", "{e}");
    assert!(e.to_string().contains("not a multiple"), "{e}");
}

/// `--memory-zone` and `--numa`, echoed in Cloud Hypervisor's shape
/// (`memory.size` 0, `memory.zones`, `numa`); the echo sent back as a
/// `vm.create` body is the same config.
#[test]
fn zones_and_numa_round_trip_through_the_echo() {
    use clap::Parser;
    let k = kernel();
    let args = Args::try_parse_from([
        "vmm",
        "--kernel",
        &k,
        "--cpus",
        "boot=2",
        "--memory",
        "size=0",
        "--memory-zone",
        "id=mem0,size=32M,host_numa_node=0",
        "--memory-zone",
        "id=mem1,size=64M,shared=on",
        "--numa",
        "guest_numa_id=0,cpus=[0],memory_zones=[mem0],distances=[1@15]",
        "--numa",
        "guest_numa_id=1,cpus=[1],memory_zones=[mem1]",
    ])
    .unwrap();
    let host = HostNuma::new(vec![(0, 1 << 30)]);
    let cli = from_cli(&args, &host).unwrap().unwrap();
    assert_eq!(cli.config.memory.size, 96 << 20);
    assert_eq!(cli.echo["memory"]["size"], 0);
    assert_eq!(
        cli.echo["memory"]["zones"],
        json!([{"id": "mem0", "size": 32 << 20, "shared": true, "host_numa_node": 0},
               {"id": "mem1", "size": 64 << 20, "shared": true}])
    );
    assert_eq!(
        cli.echo["numa"][0],
        json!({"guest_numa_id": 0, "cpus": [0], "memory_zones": ["mem0"],
               "distances": [{"destination": 1, "distance": 15}]})
    );
    // Needs this host's node 0 (present on every Linux host with NUMA).
    if HostNuma::get().memory(0).is_some_and(|m| m >= 32 << 20) {
        let api = from_api(&cli.echo).unwrap();
        assert_eq!(api.config, cli.config);
    }
    // Errors name the option on the command line...
    let bad =
        Args::try_parse_from(["vmm", "--kernel", &k, "--memory-zone", "id=mem0,size=32M"]).unwrap();
    let e = from_cli(&bad, &host).unwrap_err();
    assert!(
        e.starts_with("--memory: size=512M but the --memory-zones add up to 32M"),
        "{e}"
    );
}

#[test]
fn zone_and_numa_fields_are_named() {
    let k = kernel();
    let zones = json!([{"id": "a", "size": 33554432u64}, {"id": "b", "size": 33554432u64}]);
    for (body, field, says) in [
        (
            json!({"payload": {"kernel": k}, "memory": {"size": 0, "zones": zones},
                   "numa": [{"guest_numa_id": 0, "memory_zones": ["a", "c"]}]}),
            "numa",
            "memory zone `c` is not a --memory-zone id",
        ),
        (
            json!({"payload": {"kernel": k}, "cpus": {"boot_vcpus": 2, "max_vcpus": 2},
                   "memory": {"size": 0, "zones": zones},
                   "numa": [{"guest_numa_id": 0, "cpus": [0, 1], "memory_zones": ["a"]},
                            {"guest_numa_id": 1, "cpus": [1], "memory_zones": ["b"]}]}),
            "numa",
            "vCPU 1 is in guest_numa_id=0 and guest_numa_id=1",
        ),
        (
            json!({"payload": {"kernel": k}, "memory": {"size": 1073741824u64, "zones": zones}}),
            "memory.size",
            "size=1024M but the --memory-zones add up to 64M",
        ),
        (
            json!({"payload": {"kernel": k},
                   "memory": {"size": 0, "zones": [{"id": "a", "size": 33554432u64,
                                                     "host_numa_node": 4096}]}}),
            "memory.zones",
            "host_numa_node=4096: the host has no NUMA node 4096",
        ),
        (
            json!({"payload": {"kernel": k},
                   "memory": {"size": 0, "zones": [{"id": "a", "size": 33554432u64,
                                                     "file": "/"}]}}),
            "memory.zones",
            "id=a: file=/: is a directory",
        ),
        (
            json!({"payload": {"kernel": k},
                   "memory": {"size": 0, "zones": [{"id": "a", "size": 1000}]}}),
            "memory.zones[0].size",
            "not a non-zero multiple of 1 MiB",
        ),
        (
            json!({"payload": {"kernel": k}, "memory": {"size": 0, "zones": zones},
                   "numa": [{"guest_numa_id": 0, "memory_zones": ["a", "b"],
                             "pci_segments": [1]}]}),
            "numa[0].pci_segments",
            "one PCI segment",
        ),
    ] {
        let e = err(body);
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(says), "{e}");
    }
}
