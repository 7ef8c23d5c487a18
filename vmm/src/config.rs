//! What a VM is built from ([`VmConfig`]), from either of its two sources:
//! the command line ([`from_cli`]) or the body of `PUT /api/v1/vm.create`
//! ([`from_api`]), a Cloud Hypervisor `VmConfig` (its OpenAPI document,
//! `vmm/src/api/openapi/cloud-hypervisor.yaml`, is the contract). Both give
//! a [`VmPlan`]: the config, the `config` that `vm.info` echoes, and the
//! fields accepted but not acted on.
//!
//! A `vm.create` body is read field by field, each checked by the same
//! rules as its command-line option (device fields go through
//! [`cli::vhost_user_from_pairs`]). Fields outside what we honour fall in
//! three groups:
//! - inert (`null`, `false`, `0`, `""`, `[]`, `{}`, Cloud Hypervisor's
//!   `id`s): accepted, nothing to report;
//! - changing what the guest or the host gets in a way we cannot give
//!   ([`refusal`]: `vsock`, `pmem`, `cpus.kvm_hyperv`, ...): refused, the
//!   error names the field;
//! - anything else (`rng`, `cpus.max_phys_bits`, `memory.hotplug_size`,
//!   `platform`, unknown fields): accepted, listed in `vm.info`'s
//!   `unsupported` as `"<path>: ignored"` lines.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use devices::vhost_user::DeviceKind;
use serde_json::{json, Map, Value};

use crate::cli::{
    self, check_memory_size, check_vcpus, Args, CpuTopology, CpusConfig, MemoryConfig,
    MemoryZoneConfig, NetTap, NumaDistance, NumaNodeConfig, SerialConfig, TapFds, VcpuAffinity,
    VhostUserConfig,
};
use crate::numa::{self, HostNuma};

/// The kernel command line when `payload.cmdline` is absent (and the
/// command line's default).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

/// What the VM is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initramfs: Option<PathBuf>,
    pub cmdline: String,
    pub cpus: CpusConfig,
    /// Guest RAM; `size` is the zones' total when there are zones.
    pub memory: MemoryConfig,
    /// Guest NUMA nodes (none: one node, no SRAT or SLIT).
    pub numa: Vec<NumaNodeConfig>,
    pub serial: SerialConfig,
    /// vhost-user devices, plugged in this order from slot 1.
    pub devices: Vec<VhostUserConfig>,
}

/// A checked config and what `vm.info` reports about it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmPlan {
    pub config: VmConfig,
    /// `vm.info`'s `config`: the `vm.create` body as sent, or the command
    /// line in that shape.
    pub echo: Value,
    /// Fields accepted and ignored, `"rng: ignored"`.
    pub unsupported: Vec<String>,
}

/// A field of a `vm.create` body that is missing, malformed or refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// The field's path: `payload.kernel`, `disks[0].path`.
    pub field: String,
    pub message: String,
}

fn error(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// The plan of the command line, or None without `--kernel`; `host` the
/// host's NUMA nodes. The error (`--memory-zone`, `--numa` and `--memory`
/// checked together) is one line naming the option.
pub fn from_cli(args: &Args, host: &HostNuma) -> Result<Option<VmPlan>, String> {
    let memory = MemoryConfig {
        zones: args.memory_zones.clone(),
        ..args.memory.clone()
    };
    let memory = numa::check(&memory, &args.numa, args.cpus.max, host)
        .map_err(|(culprit, e)| format!("{}: {e}", culprit.option()))?;
    let Some(kernel) = args.kernel.clone() else {
        return Ok(None);
    };
    let config = VmConfig {
        kernel,
        initramfs: args.initramfs.clone(),
        cmdline: args.cmdline.clone(),
        cpus: args.cpus.clone(),
        memory,
        numa: args.numa.clone(),
        serial: args.serial.clone(),
        devices: args.vhost_user_devices(),
    };
    Ok(Some(VmPlan {
        echo: to_api(&config),
        config,
        unsupported: Vec::new(),
    }))
}

/// `config` as a Cloud Hypervisor `VmConfig` (for `vm.info`).
pub fn to_api(config: &VmConfig) -> Value {
    let mut payload = json!({
        "kernel": config.kernel,
        "cmdline": config.cmdline,
    });
    if let Some(initramfs) = &config.initramfs {
        payload["initramfs"] = json!(initramfs);
    }
    let serial = match &config.serial {
        SerialConfig::Stdio => json!({"mode": "Tty"}),
        SerialConfig::Off => json!({"mode": "Off"}),
        SerialConfig::File(f) => json!({"mode": "File", "file": f}),
        SerialConfig::Socket(s) => json!({"mode": "Socket", "socket": s}),
    };
    let of = |kind: DeviceKind| config.devices.iter().filter(move |d| d.kind == kind);
    let disks: Vec<Value> = of(DeviceKind::Block)
        .map(|d| match &d.image {
            Some(image) => json!({"path": image.path, "readonly": image.readonly,
                                  "image_type": "Raw",
                                  "num_queues": d.num_queues, "queue_size": d.queue_size}),
            None => json!({"vhost_user": true, "vhost_socket": d.socket,
                           "num_queues": d.num_queues, "queue_size": d.queue_size}),
        })
        .collect();
    let fs: Vec<Value> = of(DeviceKind::Fs)
        .map(|d| {
            json!({"tag": d.tag, "socket": d.socket,
                   "num_queues": d.num_queues, "queue_size": d.queue_size})
        })
        .collect();
    let net: Vec<Value> = of(DeviceKind::Net)
        .map(|d| {
            let mut n = match &d.tap {
                Some(NetTap::Name(tap)) => json!({"tap": tap}),
                Some(NetTap::Fds(fds)) => json!({"fds": vec![-1; fds.0.len()]}),
                None => json!({"vhost_user": true, "vhost_socket": d.socket}),
            };
            n["num_queues"] = json!(d.num_queues);
            n["queue_size"] = json!(d.queue_size);
            if let Some(mac) = d.mac {
                n["mac"] = json!(mac_string(mac));
            }
            n
        })
        .collect();
    let generic: Vec<Value> = config
        .devices
        .iter()
        .filter(|d| plug_rank(d.kind) == plug_rank(DeviceKind::Rng))
        .map(|d| {
            json!({"socket": d.socket, "type": d.kind.device_type(),
                   "num_queues": d.num_queues, "queue_size": d.queue_size})
        })
        .collect();
    let mut vm = json!({
        "payload": payload,
        "cpus": cpus_echo(&config.cpus),
        "memory": memory_echo(&config.memory),
        "serial": serial,
        "console": {"mode": "Off"},
        "disks": disks,
        "fs": fs,
        "net": net,
    });
    if let Some(v) = of(DeviceKind::Vsock).find_map(|d| d.vsock.as_ref()) {
        vm["vsock"] = json!({"cid": v.cid, "socket": v.socket});
    }
    if !generic.is_empty() {
        // Ours: Cloud Hypervisor has no generic vhost-user device.
        vm["vhost_user"] = json!(generic);
    }
    if !config.numa.is_empty() {
        vm["numa"] = config
            .numa
            .iter()
            .map(|n| {
                json!({
                    "guest_numa_id": n.guest_numa_id,
                    "cpus": n.cpus,
                    "memory_zones": n.memory_zones,
                    "distances": n.distances.iter()
                        .map(|d| json!({"destination": d.destination, "distance": d.distance}))
                        .collect::<Vec<_>>(),
                })
            })
            .collect();
    }
    vm
}

/// `--cpus` in Cloud Hypervisor's `CpusConfig` shape (`pmu` is ours).
fn cpus_echo(c: &CpusConfig) -> Value {
    let mut v = json!({"boot_vcpus": c.boot, "max_vcpus": c.max, "kvm_hyperv": false});
    if let Some(t) = &c.topology {
        v["topology"] = json!({
            "threads_per_core": t.threads_per_core,
            "cores_per_die": t.cores_per_die,
            "dies_per_package": t.dies_per_package,
            "packages": t.packages,
        });
    }
    if !c.affinity.is_empty() {
        v["affinity"] = c
            .affinity
            .iter()
            .map(|a| json!({"vcpu": a.vcpu, "host_cpus": a.host_cpus}))
            .collect();
    }
    if !c.pmu {
        v["pmu"] = json!(false);
    }
    v
}

/// `--memory` in Cloud Hypervisor's `MemoryConfig` shape (with zones,
/// `size` 0 and the zones in `zones`).
fn memory_echo(m: &MemoryConfig) -> Value {
    if !m.zones.is_empty() {
        let zones: Vec<Value> = m
            .zones
            .iter()
            .map(|z| {
                let mut v = json!({"id": z.id, "size": z.size, "shared": true});
                if let Some(file) = &z.file {
                    v["file"] = json!(file);
                }
                if let Some(page) = z.hugepage_size {
                    v["hugepages"] = json!(true);
                    v["hugepage_size"] = json!(page);
                }
                if z.prefault {
                    v["prefault"] = json!(true);
                }
                if let Some(node) = z.host_numa_node {
                    v["host_numa_node"] = json!(node);
                }
                v
            })
            .collect();
        let mut v = json!({"size": 0, "shared": true, "zones": zones});
        if m.prefault {
            v["prefault"] = json!(true);
        }
        return v;
    }
    let mut v = json!({"size": m.size, "shared": true});
    if let Some(page) = m.hugepage_size {
        v["hugepages"] = json!(true);
        v["hugepage_size"] = json!(page);
    }
    if m.prefault {
        v["prefault"] = json!(true);
    }
    v
}

fn mac_string(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Why a Cloud Hypervisor field we do not implement is refused when it is
/// set (not inert): it would change what the guest or host gets. `path`
/// is the field's path with indexes removed (`disks.path`).
pub fn refusal(path: &str) -> Option<&'static str> {
    Some(match path {
        "payload.firmware" | "payload.igvm" | "payload.host_data" => {
            "only payload.kernel boots here (no firmware, IGVM or confidential guests)"
        }
        "net.ip" | "net.mask" | "net.host_mac" => {
            "the VMM does not configure the host's side of a tap; set it up before \
             (tap queues sent with vm.add-net come configured: ip and mask are ignored there)"
        }
        "net.fds" => {
            "descriptor numbers in a body mean nothing to this process: send the tap \
             queues with vm.add-net (SCM_RIGHTS), or name the tap (tap)"
        }
        "net.vhost_mode" => "only vhost_mode Client (the backend listens) is supported",
        "pmem" | "devices" | "user_devices" | "vdpa" | "generic_vhost_user" | "tpm" | "sgx_epc"
        | "balloon" | "debug_console" => "no such device here yet",
        "numa.pci_segments" => "there is one PCI segment here",
        "iommu" | "disks.iommu" | "net.iommu" | "fs.iommu" | "vsock.iommu" => {
            "no virtual IOMMU here"
        }
        "landlock_enable" | "landlock_rules" => "no Landlock sandbox for the VMM yet",
        "platform.tdx" | "platform.sev_snp" => "no confidential guests here",
        _ => return None,
    })
}

/// A value that asks for nothing: `null`, `false`, `0`, `""`, `[]`, `{}`.
fn inert(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::Number(n) => n.as_u64() == Some(0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(true) => false,
    }
}

/// Reads one JSON object's fields, remembering which were taken, so the
/// rest can be refused or reported.
struct Fields<'a> {
    path: String,
    map: &'a Map<String, Value>,
    taken: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    fn new(path: impl Into<String>, v: &'a Value) -> Result<Self, ConfigError> {
        let path = path.into();
        match v {
            Value::Object(map) => Ok(Fields {
                path,
                map,
                taken: Vec::new(),
            }),
            _ => Err(error(path, "is not an object")),
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The field, absent when missing or `null`.
    fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.taken.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn str(&mut self, key: &'static str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(error(self.field(key), "is not a string")),
        }
    }

    fn u64(&mut self, key: &'static str) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| error(self.field(key), "is not a non-negative integer")),
        }
    }

    fn bool(&mut self, key: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(error(self.field(key), "is not true or false")),
        }
    }

    fn required<T>(&self, key: &str, v: Option<T>) -> Result<T, ConfigError> {
        v.ok_or_else(|| error(self.field(key), "is required"))
    }

    /// The fields not taken: refused ([`refusal`]) when set, else reported
    /// in `unsupported` when set.
    fn finish(self, unsupported: &mut Vec<String>) -> Result<(), ConfigError> {
        let generic = generic_path(&self.path);
        for (key, value) in self.map {
            if self.taken.contains(&key.as_str()) || inert(value) || key == "id" {
                continue;
            }
            let field = self.field(key);
            let generic = if generic.is_empty() {
                key.clone()
            } else {
                format!("{generic}.{key}")
            };
            if let Some(why) = refusal(&generic) {
                return Err(error(field, why));
            }
            nested_refusal(&field, &generic, value)?;
            unsupported.push(format!("{field}: ignored"));
        }
        Ok(())
    }
}

/// A refused field set inside an object we ignore (`platform.tdx`).
fn nested_refusal(field: &str, generic: &str, value: &Value) -> Result<(), ConfigError> {
    let Value::Object(map) = value else {
        return Ok(());
    };
    for (key, value) in map {
        if inert(value) {
            continue;
        }
        let (field, generic) = (format!("{field}.{key}"), format!("{generic}.{key}"));
        if let Some(why) = refusal(&generic) {
            return Err(error(field, why));
        }
        nested_refusal(&field, &generic, value)?;
    }
    Ok(())
}

/// `disks[0].x` → `disks.x`.
fn generic_path(path: &str) -> String {
    let mut out = String::new();
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            c if !in_index => out.push(c),
            _ => {}
        }
    }
    out
}

/// A path field that must name an existing regular file.
fn existing_file(field: String, path: &str) -> Result<PathBuf, ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(PathBuf::from(path)),
        Ok(_) => Err(error(field, format!("{path} is not a regular file"))),
        Err(e) => Err(error(field, format!("{path}: {e}"))),
    }
}

/// A `vm.create` body: checked, with the fields we ignore listed. Files
/// named by the payload must exist; sockets are connected at `vm.boot`.
pub fn from_api(body: &Value) -> Result<VmPlan, ConfigError> {
    let mut unsupported = Vec::new();
    let mut top = Fields::new("", body).map_err(|_| error("VmConfig", "is not an object"))?;

    let payload = top
        .get("payload")
        .ok_or_else(|| error("payload", "is required"))?;
    let mut p = Fields::new("payload", payload)?;
    let kernel = p.str("kernel")?;
    let kernel = existing_file(p.field("kernel"), p.required("kernel", kernel)?)?;
    let initramfs = p
        .str("initramfs")?
        .map(|f| existing_file(p.field("initramfs"), f))
        .transpose()?;
    let cmdline = p.str("cmdline")?.unwrap_or(DEFAULT_CMDLINE).to_string();
    p.finish(&mut unsupported)?;

    let cpus = match top.get("cpus") {
        None => CpusConfig::new(1),
        Some(v) => cpus(v, &cli::host_cpus(), &mut unsupported)?,
    };

    let memory = match top.get("memory") {
        None => MemoryConfig {
            size: 512 << 20,
            ..MemoryConfig::default()
        },
        Some(v) => memory(v, &mut unsupported)?,
    };
    let numa = match top.get("numa") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| numa_node(&format!("numa[{i}]"), item, &mut unsupported))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(error("numa", "is not an array")),
    };
    let memory = numa::check(&memory, &numa, cpus.max, HostNuma::get())
        .map_err(|(culprit, e)| error(culprit.field(), e))?;

    let serial = match top.get("serial") {
        None => SerialConfig::Off,
        Some(v) => console_mode("serial", v, &mut unsupported, true)?,
    };
    if let Some(v) = top.get("console") {
        console_mode("console", v, &mut unsupported, false)?;
    }

    let mut devices = Vec::new();
    for (key, kind) in [
        ("disks", DeviceKind::Block),
        ("fs", DeviceKind::Fs),
        ("net", DeviceKind::Net),
    ] {
        let Some(list) = top.get(key) else {
            continue;
        };
        let Value::Array(items) = list else {
            return Err(error(key, "is not an array"));
        };
        for (i, item) in items.iter().enumerate() {
            devices.push(device(
                &format!("{key}[{i}]"),
                kind,
                item,
                None,
                &mut unsupported,
            )?);
        }
    }
    if let Some(v) = top.get("vsock") {
        devices.push(vsock(v, &mut unsupported)?);
    }
    top.finish(&mut unsupported)?;

    Ok(VmPlan {
        config: VmConfig {
            kernel,
            initramfs,
            cmdline,
            cpus,
            memory,
            numa,
            serial,
            devices,
        },
        echo: body.clone(),
        unsupported,
    })
}

/// `vsock`: `{cid, socket, iommu, pci_segment, id}` (Cloud Hypervisor's
/// `VsockConfig`): the VMM runs `vhost-device-vsock` with its hybrid
/// socket at `socket`; checked as `--vsock` is.
fn vsock(v: &Value, unsupported: &mut Vec<String>) -> Result<VhostUserConfig, ConfigError> {
    let mut f = Fields::new("vsock", v)?;
    let cid = f.u64("cid")?;
    let cid = f.required("cid", cid)?.to_string();
    let socket = f.str("socket")?;
    let socket = f.required("socket", socket)?;
    let config = cli::vsock_from_pairs(&[("cid", &cid), ("socket", socket)]).map_err(|e| {
        let key = if e.starts_with("cid=") {
            "cid"
        } else {
            "socket"
        };
        error(f.field(key), e)
    })?;
    f.finish(unsupported)?;
    Ok(config)
}

/// `memory`: `{size, shared, hugepages, hugepage_size, prefault, zones}`;
/// `size` 0 with `zones` (checked with `numa` by [`numa::check`]).
fn memory(v: &Value, unsupported: &mut Vec<String>) -> Result<MemoryConfig, ConfigError> {
    let mut m = Fields::new("memory", v)?;
    let size = m.u64("size")?;
    let size = m.required("size", size)?;
    let has_zones = m.map.get("zones").is_some_and(|z| !inert(z));
    let size = if size == 0 && has_zones {
        0
    } else {
        check_memory_size(size).map_err(|e| error(m.field("size"), e))?
    };
    // Guest RAM is always a shared file (vhost-user needs it).
    if m.bool("shared")? == Some(false) {
        return Err(error(
            m.field("shared"),
            "guest RAM is always shared (the device daemons map it)",
        ));
    }
    let hugepages = m.bool("hugepages")?.unwrap_or(false);
    let page = m.u64("hugepage_size")?;
    let hugepage_size = if size == 0 {
        if hugepages || page.is_some() {
            return Err(error(
                m.field("hugepages"),
                "with zones, hugepages goes on each of memory.zones",
            ));
        }
        None
    } else {
        cli::check_hugepages(size, hugepages, page, false).map_err(|e| {
            let key = if e.starts_with("hugepage_size") || e.contains("sizes are") {
                "hugepage_size"
            } else {
                "hugepages"
            };
            error(m.field(key), e)
        })?
    };
    let prefault = m.bool("prefault")?.unwrap_or(false);
    let zones = match m.get("zones") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| memory_zone(&format!("memory.zones[{i}]"), item, unsupported))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(error(m.field("zones"), "is not an array")),
    };
    m.finish(unsupported)?;
    Ok(MemoryConfig {
        size,
        file: None,
        hugepage_size,
        prefault,
        zones,
    })
}

/// One of `memory.zones`: `{id, size, file, shared, hugepages,
/// hugepage_size, prefault, host_numa_node}`, by `--memory-zone`'s rules.
fn memory_zone(
    path: &str,
    v: &Value,
    unsupported: &mut Vec<String>,
) -> Result<MemoryZoneConfig, ConfigError> {
    let mut z = Fields::new(path, v)?;
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for key in ["id", "file"] {
        if let Some(s) = z.str(key)? {
            pairs.push((key, s.to_string()));
        }
    }
    for key in ["size", "hugepage_size", "host_numa_node"] {
        if let Some(n) = z.u64(key)? {
            pairs.push((key, n.to_string()));
        }
    }
    for key in ["shared", "hugepages", "prefault"] {
        if let Some(b) = z.bool(key)? {
            pairs.push((key, b.to_string()));
        }
    }
    let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let zone = cli::memory_zone_from_pairs(&borrowed).map_err(|e| {
        let key = [
            "hugepage_size",
            "hugepages",
            "host_numa_node",
            "shared",
            "file",
            "size",
        ]
        .into_iter()
        .find(|k| e.contains(&format!("{k}=")))
        .unwrap_or("id");
        error(z.field(key), e)
    })?;
    z.finish(unsupported)?;
    Ok(zone)
}

/// One of `numa`: `{guest_numa_id, cpus, distances: [{destination,
/// distance}], memory_zones}`.
fn numa_node(
    path: &str,
    v: &Value,
    unsupported: &mut Vec<String>,
) -> Result<NumaNodeConfig, ConfigError> {
    let mut n = Fields::new(path, v)?;
    let id = n.u64("guest_numa_id")?;
    let id = n.required("guest_numa_id", id)?;
    let guest_numa_id =
        u32::try_from(id).map_err(|_| error(n.field("guest_numa_id"), "is too large"))?;
    let numbers = |n: &mut Fields, key: &'static str| -> Result<Vec<u64>, ConfigError> {
        match n.get(key) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| {
                    i.as_u64()
                        .ok_or_else(|| error(n.field(key), "is not a list of numbers"))
                })
                .collect(),
            Some(_) => Err(error(n.field(key), "is not an array")),
        }
    };
    let cpus = numbers(&mut n, "cpus")?
        .into_iter()
        .map(|c| {
            u8::try_from(c).map_err(|_| error(n.field("cpus"), format!("vCPU {c} is above 254")))
        })
        .collect::<Result<_, _>>()?;
    let memory_zones = match n.get("memory_zones") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| error(n.field("memory_zones"), "is not a list of zone ids"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(error(n.field("memory_zones"), "is not an array")),
    };
    let distances = match n.get("distances") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let mut d = Fields::new(format!("{}[{i}]", n.field("distances")), item)?;
                let dest = d.u64("destination")?;
                let dest = d.required("destination", dest)?;
                let dist = d.u64("distance")?;
                let dist = d.required("distance", dist)?;
                let distance = u8::try_from(dist)
                    .map_err(|_| error(d.field("distance"), format!("{dist} is above 255")))?;
                let destination = u32::try_from(dest)
                    .map_err(|_| error(d.field("destination"), "is too large"))?;
                d.finish(unsupported)?;
                Ok(NumaDistance {
                    destination,
                    distance,
                })
            })
            .collect::<Result<_, ConfigError>>()?,
        Some(_) => return Err(error(n.field("distances"), "is not an array")),
    };
    n.finish(unsupported)?;
    Ok(NumaNodeConfig {
        guest_numa_id,
        cpus,
        distances,
        memory_zones,
    })
}

/// `cpus`: `{boot_vcpus, max_vcpus, topology, affinity, kvm_hyperv,
/// features, pmu}` (`pmu: false` is ours: no PMU for the guest), checked
/// by the command line's rules, the affinity against `host`.
fn cpus(
    v: &Value,
    host: &[usize],
    unsupported: &mut Vec<String>,
) -> Result<CpusConfig, ConfigError> {
    let mut c = Fields::new("cpus", v)?;
    let count = |c: &mut Fields, key: &'static str| -> Result<Option<u8>, ConfigError> {
        c.u64(key)?
            .map(|n| check_vcpus(n).map_err(|e| error(c.field(key), e)))
            .transpose()
    };
    let boot = count(&mut c, "boot_vcpus")?;
    let boot = c.required("boot_vcpus", boot)?;
    let max = count(&mut c, "max_vcpus")?;
    let max = c.required("max_vcpus", max)?;
    let topology = match c.get("topology") {
        None => None,
        Some(t) => {
            let mut t = Fields::new(c.field("topology"), t)?;
            let mut level = |key: &'static str| -> Result<u8, ConfigError> {
                let n = t.u64(key)?;
                let n = t.required(key, n)?;
                u8::try_from(n).map_err(|_| error(t.field(key), format!("{n} is above 255")))
            };
            let topology = CpuTopology {
                threads_per_core: level("threads_per_core")?,
                cores_per_die: level("cores_per_die")?,
                dies_per_package: level("dies_per_package")?,
                packages: level("packages")?,
            };
            t.finish(unsupported)?;
            Some(topology)
        }
    };
    let affinity = match c.get("affinity") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let mut a = Fields::new(format!("{}[{i}]", c.field("affinity")), item)?;
                let vcpu = a.u64("vcpu")?;
                let vcpu = a.required("vcpu", vcpu)?;
                let vcpu = u8::try_from(vcpu)
                    .map_err(|_| error(a.field("vcpu"), format!("{vcpu} is above 254")))?;
                let host_cpus = match a.get("host_cpus") {
                    Some(Value::Array(cpus)) => cpus
                        .iter()
                        .map(|n| {
                            n.as_u64()
                                .and_then(|n| usize::try_from(n).ok())
                                .ok_or_else(|| {
                                    error(a.field("host_cpus"), "is not a list of CPU numbers")
                                })
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    Some(_) => return Err(error(a.field("host_cpus"), "is not an array")),
                    None => return Err(error(a.field("host_cpus"), "is required")),
                };
                a.finish(unsupported)?;
                Ok(VcpuAffinity { vcpu, host_cpus })
            })
            .collect::<Result<_, ConfigError>>()?,
        Some(_) => return Err(error(c.field("affinity"), "is not an array")),
    };
    if c.bool("kvm_hyperv")? == Some(true) {
        return Err(error(
            c.field("kvm_hyperv"),
            "no Hyper-V enlightenments here",
        ));
    }
    if let Some(f) = c.get("features") {
        let mut f = Fields::new(c.field("features"), f)?;
        if f.bool("amx")? == Some(true) {
            return Err(error(
                f.field("amx"),
                "AMX state is not offered to guests here",
            ));
        }
        f.finish(unsupported)?;
    }
    let pmu = c.bool("pmu")?.unwrap_or(true);
    let config = CpusConfig {
        boot,
        max,
        topology,
        affinity,
        pmu,
    };
    config
        .check(host)
        .map_err(|(key, e)| error(c.field(key), e))?;
    c.finish(unsupported)?;
    Ok(config)
}

/// `serial` or `console` (`{mode, file, socket}`); only `serial` has a
/// device here, so `console` may only be `Off` or `Null`.
fn console_mode(
    name: &'static str,
    v: &Value,
    unsupported: &mut Vec<String>,
    is_serial: bool,
) -> Result<SerialConfig, ConfigError> {
    let mut c = Fields::new(name, v)?;
    let mode = c.str("mode")?;
    let mode = c.required("mode", mode)?;
    let file = c.str("file")?;
    let socket = c.str("socket")?;
    let config = match mode {
        "Off" | "Null" => SerialConfig::Off,
        _ if !is_serial => {
            return Err(error(
                c.field("mode"),
                format!("{mode}: there is no virtio-console here; use serial (Off or Null only)"),
            ))
        }
        "Tty" => SerialConfig::Stdio,
        "File" => SerialConfig::File(c.required("file", file)?.into()),
        "Socket" => SerialConfig::Socket(c.required("socket", socket)?.into()),
        "Pty" => {
            return Err(error(
                c.field("mode"),
                "Pty is not supported (Tty, File, Socket, Off, Null)",
            ))
        }
        other => {
            return Err(error(
                c.field("mode"),
                format!("`{other}` is not Off, Pty, Tty, File, Socket or Null"),
            ))
        }
    };
    c.finish(unsupported)?;
    Ok(config)
}

/// Plug order: disks, shares, NICs, the vsock, generic devices (as
/// `vm.create` and the command line).
fn plug_rank(kind: DeviceKind) -> u8 {
    match kind {
        DeviceKind::Block => 0,
        DeviceKind::Fs => 1,
        DeviceKind::Net => 2,
        DeviceKind::Vsock => 3,
        DeviceKind::Rng | DeviceKind::Console | DeviceKind::Other(_) => 4,
    }
}

/// The `vm.create` array of `kind`'s devices.
fn list_key(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Block => "disks",
        DeviceKind::Fs => "fs",
        DeviceKind::Net => "net",
        DeviceKind::Vsock => "vsock",
        DeviceKind::Rng | DeviceKind::Console | DeviceKind::Other(_) => "vhost_user",
    }
}

/// `plan` with one more device of `kind` (`vm.add-disk`, `vm.add-fs`,
/// `vm.add-net` before `vm.boot`; Cloud Hypervisor's cold plug): `body` is
/// checked as an entry of the `vm.create` array would be (errors name the
/// field as `disks[N].x`), plugged after the devices of its kind, and
/// echoed in `vm.info`'s config. `fds` came with the request: a NIC's
/// tap queues, one per queue pair (Cloud Hypervisor's `vm.add-net`; the
/// VMM runs vhost-net-daemon on them); other devices take none. Those
/// not kept are closed on return.
pub fn add_device(
    plan: &VmPlan,
    kind: DeviceKind,
    body: &Value,
    fds: Vec<OwnedFd>,
) -> Result<VmPlan, ConfigError> {
    if kind == DeviceKind::Vsock {
        return add_vsock(plan, body, fds);
    }
    let key = list_key(kind);
    let mut plan = plan.clone();
    let n = plan
        .config
        .devices
        .iter()
        .filter(|d| d.kind == kind)
        .count();
    let path = format!("{key}[{n}]");
    let tap_fds = match kind {
        _ if fds.is_empty() => None,
        DeviceKind::Net => Some(tap_queues(&path, fds)?),
        _ => {
            return Err(error(
                format!("{path}.fds"),
                format!(
                    "{} file descriptor(s) came with the request; this device takes none",
                    fds.len()
                ),
            ))
        }
    };
    let device = device(&path, kind, body, tap_fds, &mut plan.unsupported)?;
    let at = plan
        .config
        .devices
        .iter()
        .rposition(|d| plug_rank(d.kind) <= plug_rank(kind))
        .map_or(0, |i| i + 1);
    plan.config.devices.insert(at, device);
    match plan.echo.get_mut(key) {
        Some(Value::Array(list)) => list.push(body.clone()),
        _ => plan.echo[key] = Value::Array(vec![body.clone()]),
    }
    Ok(plan)
}

/// `plan` with the vsock `body` (`vm.add-vsock` before `vm.boot`): a VM
/// has at most one, as in Cloud Hypervisor.
fn add_vsock(plan: &VmPlan, body: &Value, fds: Vec<OwnedFd>) -> Result<VmPlan, ConfigError> {
    if !fds.is_empty() {
        return Err(error(
            "vsock.fds",
            format!(
                "{} file descriptor(s) came with the request; a vsock takes none",
                fds.len()
            ),
        ));
    }
    if plan
        .config
        .devices
        .iter()
        .any(|d| d.kind == DeviceKind::Vsock)
    {
        return Err(error("vsock", "the VM has a vsock already (one per VM)"));
    }
    let mut plan = plan.clone();
    let device = vsock(body, &mut plan.unsupported)?;
    plan.config.devices.push(device);
    plan.echo["vsock"] = body.clone();
    Ok(plan)
}

/// Descriptors sent with `vm.add-net`, checked to be tap queues.
fn tap_queues(path: &str, fds: Vec<OwnedFd>) -> Result<TapFds, ConfigError> {
    for (i, fd) in fds.iter().enumerate() {
        cli::check_tap_queue(fd).map_err(|why| {
            error(
                format!("{path}.fds"),
                format!("descriptor {i} sent with the request {why}"),
            )
        })?;
    }
    Ok(TapFds(std::sync::Arc::new(fds)))
}

/// One of `disks`, `fs`, `net`: a device a vhost-user backend serves, or
/// a disk image or tap whose daemon the VMM runs (`tap_fds`: the tap
/// queues that came with `vm.add-net`).
fn device(
    path: &str,
    kind: DeviceKind,
    v: &Value,
    tap_fds: Option<TapFds>,
    unsupported: &mut Vec<String>,
) -> Result<VhostUserConfig, ConfigError> {
    let mut d = Fields::new(path, v)?;
    let socket_key = if kind == DeviceKind::Fs {
        "socket"
    } else {
        "vhost_socket"
    };
    let image = match kind {
        DeviceKind::Block => d.str("path")?.filter(|p| !p.is_empty()),
        _ => None,
    };
    let tap = match kind {
        DeviceKind::Net => d.str("tap")?.filter(|t| !t.is_empty()),
        _ => None,
    };
    let mut pairs: Vec<(&str, String)> = Vec::new();
    if kind == DeviceKind::Net && (tap.is_some() || tap_fds.is_some()) {
        // A tap: the VMM runs vhost-net-daemon on it.
        if d.bool("vhost_user")?.unwrap_or(false) {
            return Err(error(
                d.field("vhost_user"),
                "a NIC is either a tap the VMM serves (tap, or its queues sent with \
                 vm.add-net) or a vhost-user backend (vhost_user, vhost_socket), not both",
            ));
        }
        if let Some(socket) = d.str(socket_key)? {
            // Refused by the parser, which names both.
            pairs.push(("socket", socket.to_string()));
        }
        if let Some(tap) = tap {
            pairs.push(("tap", tap.to_string()));
        } else {
            // Cloud Hypervisor's clients may send placeholders: the
            // descriptors that came with the request are the ones used.
            d.get("fds");
            // Queues of a tap already set up: Cloud Hypervisor ignores
            // these too (Kata's client sends its defaults).
            for key in ["ip", "mask"] {
                if d.get(key).is_some_and(|v| !inert(v)) {
                    unsupported.push(format!(
                        "{}: ignored (the tap queues came configured)",
                        d.field(key)
                    ));
                }
            }
        }
    } else if let Some(image) = image {
        // An image: the VMM runs vhost-blk-daemon on it (raw only).
        if d.bool("vhost_user")?.unwrap_or(false) {
            return Err(error(
                d.field("path"),
                "a disk is either an image (path) or a vhost-user backend \
                 (vhost_user, vhost_socket), not both",
            ));
        }
        if let Some(t) = d.str("image_type")? {
            if !t.eq_ignore_ascii_case("raw") {
                return Err(error(
                    d.field("image_type"),
                    format!("{t} images are not supported; vhost-blk-daemon serves raw images"),
                ));
            }
        }
        match std::fs::metadata(image) {
            Ok(m) if m.is_dir() => {
                return Err(error(d.field("path"), format!("{image} is a directory")))
            }
            Ok(_) => {}
            Err(e) => return Err(error(d.field("path"), format!("{image}: {e}"))),
        }
        pairs.push(("path", image.to_string()));
        if d.bool("readonly")?.unwrap_or(false) {
            pairs.push(("readonly", "on".into()));
        }
    } else if kind != DeviceKind::Fs {
        let vhost_user = d.bool("vhost_user")?.unwrap_or(false);
        if !vhost_user {
            // Refuse by the field that asks for a device we would run.
            let culprit = ["path", "tap", "fds"]
                .into_iter()
                .find(|k| d.map.get(*k).is_some_and(|v| !inert(v)))
                .unwrap_or("vhost_user");
            let generic = format!("{}.{culprit}", generic_path(path));
            let why = refusal(&generic)
                .unwrap_or("only vhost-user devices are supported: vhost_user: true, vhost_socket");
            return Err(error(d.field(culprit), why));
        }
    }
    if image.is_none() && pairs.is_empty() && tap_fds.is_none() {
        let socket = d.str(socket_key)?;
        let socket = d.required(socket_key, socket)?;
        pairs.push(("socket", socket.to_string()));
        if kind == DeviceKind::Block && d.bool("readonly")?.unwrap_or(false) {
            return Err(error(
                d.field("readonly"),
                "a vhost-user disk is read-only when its backend is (vhost-blk-daemon \
                 --read-only); give path to have the VMM run it read-only",
            ));
        }
    }
    for key in ["num_queues", "queue_size"] {
        if let Some(n) = d.u64(key)? {
            pairs.push((key, n.to_string()));
        }
    }
    match kind {
        DeviceKind::Fs => {
            let tag = d.str("tag")?;
            pairs.push(("tag", d.required("tag", tag)?.to_string()));
        }
        DeviceKind::Net => {
            if let Some(mac) = d.str("mac")? {
                pairs.push(("mac", mac.to_string()));
            }
            // Cloud Hypervisor's default, which its clients send.
            match d.str("vhost_mode")? {
                None | Some("Client") => {}
                Some(_) => {
                    return Err(error(
                        d.field("vhost_mode"),
                        refusal("net.vhost_mode").unwrap_or_default(),
                    ))
                }
            }
        }
        _ => {}
    }
    let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let config = cli::vhost_user_with_tap_fds(kind, &borrowed, tap_fds).map_err(|e| {
        // Name the JSON field the message is about.
        let key = ["num_queues", "queue_size", "tag", "mac", "tap"]
            .into_iter()
            .find(|k| e.starts_with(&format!("{k}=")) || e.starts_with(&format!("{k} ")))
            .unwrap_or(socket_key);
        error(d.field(key), e)
    })?;
    d.finish(unsupported)?;
    Ok(config)
}

#[cfg(test)]
mod tests;
