//! Guest NUMA (Cloud Hypervisor's `--memory-zone` and `--numa`): the
//! rules zones and nodes obey together, with `--memory` and `--cpus`, and
//! the host's NUMA nodes they are checked against ([`HostNuma`], read once
//! before the seccomp filter, which answers opens on the API's threads
//! with ENOENT).
//!
//! Acting on them: [`crate::layout::zone_regions`] places the zones in
//! guest RAM, [`crate::memory`] backs and binds each, [`crate::acpi`]
//! describes the nodes in the SRAT and SLIT.

use std::path::Path;
use std::sync::OnceLock;

use crate::cli::{check_memory_size, MemoryConfig, NumaNodeConfig};
use crate::layout;

/// The SLIT's distance of a node to itself, and the default to another.
pub const LOCAL_DISTANCE: u8 = 10;
pub const REMOTE_DISTANCE: u8 = 20;

/// Which option (or `vm.create` field) a refusal is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    Memory,
    Zones,
    Numa,
}

impl Culprit {
    /// The command-line option.
    pub fn option(self) -> &'static str {
        match self {
            Culprit::Memory => "--memory",
            Culprit::Zones => "--memory-zone",
            Culprit::Numa => "--numa",
        }
    }

    /// The `vm.create` field.
    pub fn field(self) -> &'static str {
        match self {
            Culprit::Memory => "memory.size",
            Culprit::Zones => "memory.zones",
            Culprit::Numa => "numa",
        }
    }
}

/// The host's NUMA nodes: (node id, its memory in bytes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostNuma {
    nodes: Vec<(u32, u64)>,
}

impl HostNuma {
    /// Nodes given (tests).
    pub fn new(nodes: Vec<(u32, u64)>) -> Self {
        HostNuma { nodes }
    }

    /// `/sys/devices/system/node/nodeN/meminfo`'s `MemTotal` per node;
    /// none on a kernel without NUMA.
    pub fn read() -> Self {
        let mut nodes = Vec::new();
        let Ok(dir) = std::fs::read_dir("/sys/devices/system/node") else {
            return HostNuma { nodes };
        };
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("node"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let total = std::fs::read_to_string(entry.path().join("meminfo"))
                .ok()
                .and_then(|m| mem_total_kib(&m))
                .unwrap_or(0);
            nodes.push((id, total << 10));
        }
        nodes.sort_unstable();
        HostNuma { nodes }
    }

    /// This host's nodes, read on first use. `main` reads them before the
    /// seccomp filter is installed.
    pub fn get() -> &'static HostNuma {
        static HOST: OnceLock<HostNuma> = OnceLock::new();
        HOST.get_or_init(HostNuma::read)
    }

    /// The memory of node `id`, if the host has it.
    pub fn memory(&self, id: u32) -> Option<u64> {
        self.nodes.iter().find(|n| n.0 == id).map(|n| n.1)
    }

    /// `0-1` or `none`.
    fn list(&self) -> String {
        if self.nodes.is_empty() {
            return "none".into();
        }
        let ids: Vec<usize> = self.nodes.iter().map(|n| n.0 as usize).collect();
        crate::cli::cpu_list(&ids)
    }
}

/// `Node 0 MemTotal:  24683792 kB` → 24683792.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let (_, rest) = l.split_once("MemTotal:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Checks `memory`'s zones and the `nodes` together, the vCPUs against
/// `max_vcpus` and the host nodes against `host`; returns `memory` with
/// `size` the guest's RAM (the zones' total). The error names the option
/// it is about and says why, on one line.
pub fn check(
    memory: &MemoryConfig,
    nodes: &[NumaNodeConfig],
    max_vcpus: u8,
    host: &HostNuma,
) -> Result<MemoryConfig, (Culprit, String)> {
    let zones = &memory.zones;
    if let Some(path) = &memory.file {
        check_file(path).map_err(|e| (Culprit::Memory, e))?;
    }
    for z in zones {
        if let Some(path) = &z.file {
            check_file(path).map_err(|e| (Culprit::Zones, format!("id={}: {e}", z.id)))?;
        }
    }
    let mut memory = memory.clone();
    if zones.is_empty() {
        if memory.size == 0 {
            return Err((
                Culprit::Memory,
                "size=0 takes guest RAM from --memory-zone, and none is given".into(),
            ));
        }
        if !nodes.is_empty() {
            return Err((
                Culprit::Numa,
                "a guest NUMA node's memory is --memory-zones (memory_zones=[..]); none is given"
                    .into(),
            ));
        }
        return Ok(memory);
    }
    let total: u64 = zones.iter().map(|z| z.size).sum();
    if memory.size != 0 && memory.size != total {
        return Err((
            Culprit::Memory,
            format!(
                "size={}M but the --memory-zones add up to {}M; with zones give size=0 \
                 (as Cloud Hypervisor requires) or their total",
                memory.size >> 20,
                total >> 20
            ),
        ));
    }
    if memory.file.is_some() || memory.hugepage_size.is_some() {
        return Err((
            Culprit::Memory,
            "file= and hugepages= go on each --memory-zone".into(),
        ));
    }
    check_memory_size(total).map_err(|e| (Culprit::Zones, format!("the zones' total: {e}")))?;
    for (i, z) in zones.iter().enumerate() {
        if zones[..i].iter().any(|y| y.id == z.id) {
            return Err((Culprit::Zones, format!("id={} is given twice", z.id)));
        }
        if let Some(node) = z.host_numa_node {
            match host.memory(node) {
                None => {
                    return Err((
                        Culprit::Zones,
                        format!(
                            "id={}: host_numa_node={node}: the host has no NUMA node {node} \
                             (its nodes: {})",
                            z.id,
                            host.list()
                        ),
                    ))
                }
                Some(have) if z.size > have => {
                    return Err((
                        Culprit::Zones,
                        format!(
                            "id={}: size={}M is more than host NUMA node {node} has ({}M)",
                            z.id,
                            z.size >> 20,
                            have >> 20
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    let sizes: Vec<u64> = zones.iter().map(|z| z.size).collect();
    let placed = layout::zone_regions(&sizes);
    for r in &placed {
        let z = &zones[r.zone];
        if let Some(page) = z.hugepage_size.filter(|p| r.offset % p != 0) {
            return Err((
                Culprit::Zones,
                format!(
                    "id={}: it reaches the 3 GiB device hole {}M into the zone, not on a \
                     {}M huge page boundary; order or size the zones so it does",
                    z.id,
                    r.offset >> 20,
                    page >> 20
                ),
            ));
        }
    }
    let regions = placed.len();
    if regions > layout::MAX_RAM_REGIONS {
        return Err((
            Culprit::Zones,
            format!(
                "{} zones make {regions} memory regions (a zone across the 3 GiB..4 GiB hole \
                 makes two); vhost-user's SET_MEM_TABLE carries at most {}",
                zones.len(),
                layout::MAX_RAM_REGIONS
            ),
        ));
    }
    check_nodes(&memory, nodes, max_vcpus).map_err(|e| (Culprit::Numa, e))?;
    memory.size = total;
    Ok(memory)
}

/// A `file=` guest RAM can live in: a file (created if missing, so its
/// directory must exist), not a directory. Checked with the options, so a
/// mistake is named before any VM is built.
fn check_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(format!(
            "file={}: is a directory; give a file (created if missing)",
            path.display()
        )),
        Ok(_) => Ok(()),
        Err(_) => match path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => Err(format!(
                "file={}: directory {} does not exist",
                path.display(),
                dir.display()
            )),
            _ => Ok(()),
        },
    }
}

/// The `--numa` rules: ids 0..N-1 each once, each vCPU below `max_vcpus`
/// in at most one node, each zone known and in exactly one node, the
/// distances to known nodes, 10 to itself and 10..=255 to others.
fn check_nodes(
    memory: &MemoryConfig,
    nodes: &[NumaNodeConfig],
    max_vcpus: u8,
) -> Result<(), String> {
    if nodes.is_empty() {
        return Ok(());
    }
    let count = nodes.len() as u32;
    for (i, n) in nodes.iter().enumerate() {
        let id = n.guest_numa_id;
        if nodes[..i].iter().any(|m| m.guest_numa_id == id) {
            return Err(format!("guest_numa_id={id} is given twice"));
        }
        if id >= count {
            return Err(format!(
                "guest_numa_id={id}: with {count} node(s) the ids are 0 to {}",
                count - 1
            ));
        }
        for (j, &cpu) in n.cpus.iter().enumerate() {
            if cpu >= max_vcpus {
                return Err(format!(
                    "guest_numa_id={id}: vCPU {cpu} is not below --cpus max {max_vcpus}"
                ));
            }
            if n.cpus[..j].contains(&cpu) {
                return Err(format!("guest_numa_id={id}: vCPU {cpu} is listed twice"));
            }
            if let Some(other) = nodes[..i].iter().find(|m| m.cpus.contains(&cpu)) {
                return Err(format!(
                    "vCPU {cpu} is in guest_numa_id={} and guest_numa_id={id}; a vCPU \
                     belongs to one node",
                    other.guest_numa_id
                ));
            }
        }
        for zone in &n.memory_zones {
            if !memory.zones.iter().any(|z| &z.id == zone) {
                let known: Vec<&str> = memory.zones.iter().map(|z| z.id.as_str()).collect();
                return Err(format!(
                    "guest_numa_id={id}: memory zone `{zone}` is not a --memory-zone id \
                     (known: {})",
                    known.join(", ")
                ));
            }
            if let Some(other) = nodes[..i].iter().find(|m| m.memory_zones.contains(zone)) {
                return Err(format!(
                    "memory zone `{zone}` is in guest_numa_id={} and guest_numa_id={id}",
                    other.guest_numa_id
                ));
            }
            if n.memory_zones.iter().filter(|z| *z == zone).count() > 1 {
                return Err(format!(
                    "guest_numa_id={id}: memory zone `{zone}` is listed twice"
                ));
            }
        }
        for (j, d) in n.distances.iter().enumerate() {
            let dest = d.destination;
            if dest >= count {
                return Err(format!(
                    "guest_numa_id={id}: distances: node {dest} does not exist (0 to {})",
                    count - 1
                ));
            }
            if n.distances[..j].iter().any(|e| e.destination == dest) {
                return Err(format!(
                    "guest_numa_id={id}: distances: node {dest} is given twice"
                ));
            }
            if dest == id && d.distance != LOCAL_DISTANCE {
                return Err(format!(
                    "guest_numa_id={id}: distances: {dest}@{} to itself; a node's distance \
                     to itself is {LOCAL_DISTANCE}",
                    d.distance
                ));
            }
            if d.distance < LOCAL_DISTANCE {
                return Err(format!(
                    "guest_numa_id={id}: distances: {dest}@{} is below {LOCAL_DISTANCE} \
                     (ACPI reserves 0..9)",
                    d.distance
                ));
            }
        }
    }
    if let Some(z) = memory
        .zones
        .iter()
        .find(|z| !nodes.iter().any(|n| n.memory_zones.contains(&z.id)))
    {
        return Err(format!(
            "memory zone `{}` is in no node; with --numa every zone belongs to one \
             (memory_zones=[..])",
            z.id
        ));
    }
    Ok(())
}

/// The SLIT's matrix: `distance[i][j]` from node i to node j, nodes by
/// `guest_numa_id` (checked: 0..N-1).
pub fn distances(nodes: &[NumaNodeConfig]) -> Vec<Vec<u8>> {
    let n = nodes.len();
    let mut m = vec![vec![REMOTE_DISTANCE; n]; n];
    for (i, row) in m.iter_mut().enumerate() {
        row[i] = LOCAL_DISTANCE;
    }
    for node in nodes {
        for d in &node.distances {
            m[node.guest_numa_id as usize][d.destination as usize] = d.distance;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{parse_memory, parse_memory_zone, parse_numa};

    const MIB: u64 = 1 << 20;

    fn host() -> HostNuma {
        HostNuma::new(vec![(0, 1024 * MIB)])
    }

    /// `--memory memory` with `zones` and `nodes`, checked on [`host`]
    /// with 4 vCPUs.
    fn run(memory: &str, zones: &[&str], nodes: &[&str]) -> Result<MemoryConfig, String> {
        let mut m = parse_memory(memory)?;
        m.zones = zones
            .iter()
            .map(|z| parse_memory_zone(z))
            .collect::<Result<_, _>>()?;
        let nodes: Vec<_> = nodes
            .iter()
            .map(|n| parse_numa(n))
            .collect::<Result<_, _>>()?;
        check(&m, &nodes, 4, &host()).map_err(|(c, e)| format!("{}: {e}", c.option()))
    }

    #[test]
    fn two_zones_two_nodes() {
        let m = run(
            "size=0",
            &[
                "id=mem0,size=32M,host_numa_node=0,shared=on",
                "id=mem1,size=64M,hugepages=on,prefault=on",
            ],
            &[
                "guest_numa_id=0,cpus=[0-1],memory_zones=[mem0],distances=[1@15]",
                "guest_numa_id=1,cpus=[2,3],memory_zones=mem1",
            ],
        )
        .unwrap();
        assert_eq!(m.size, 96 * MIB);
        let z = m.zones();
        assert_eq!(z.len(), 2);
        assert_eq!((z[0].host_numa_node, z[0].hugepage_size), (Some(0), None));
        assert_eq!((z[1].hugepage_size, z[1].prefault), (Some(2 * MIB), true));
        // size= equal to the zones' total is accepted too.
        assert_eq!(
            run("size=96M", &["id=a,size=32M", "id=b,size=64M"], &[])
                .unwrap()
                .size,
            96 * MIB
        );
        // Without zones, one zone of --memory's backing.
        let m = run("size=64M,prefault=on", &[], &[]).unwrap();
        let z = m.zones();
        assert_eq!((z.len(), z[0].size, z[0].prefault), (1, 64 * MIB, true));
    }

    #[test]
    fn the_slit_matrix_defaults_to_10_and_20() {
        let nodes: Vec<_> = [
            "guest_numa_id=0,distances=[1@15,2@30]",
            "guest_numa_id=1",
            "guest_numa_id=2,distances=[0@25]",
        ]
        .iter()
        .map(|n| parse_numa(n).unwrap())
        .collect();
        assert_eq!(
            distances(&nodes),
            [vec![10, 15, 30], vec![20, 10, 20], vec![25, 20, 10]]
        );
    }

    #[test]
    fn errors_name_the_option() {
        let two = ["id=mem0,size=32M", "id=mem1,size=32M"];
        for (memory, zones, nodes, says) in [
            (
                "size=512M",
                &two[..],
                &[][..],
                "--memory: size=512M but the --memory-zones add up to 64M",
            ),
            (
                "size=0",
                &[][..],
                &[][..],
                "--memory: size=0 takes guest RAM from --memory-zone",
            ),
            (
                "size=32M,file=/",
                &[][..],
                &[][..],
                "--memory: file=/: is a directory; give a file (created if missing)",
            ),
            (
                "size=0",
                &["id=mem0,size=32M,file=/nonexistent-dir/ram"][..],
                &[][..],
                "--memory-zone: id=mem0: file=/nonexistent-dir/ram: directory \
                 /nonexistent-dir does not exist",
            ),
            (
                "size=0",
                &["id=mem0,size=2048M,host_numa_node=0"][..],
                &[][..],
                "--memory-zone: id=mem0: size=2048M is more than host NUMA node 0 has (1024M)",
            ),
            (
                "size=0",
                &["id=mem0,size=32M,host_numa_node=1"][..],
                &[][..],
                "--memory-zone: id=mem0: host_numa_node=1: the host has no NUMA node 1 \
                 (its nodes: 0)",
            ),
            (
                "size=0",
                &["id=a,size=32M", "id=a,size=32M"][..],
                &[][..],
                "--memory-zone: id=a is given twice",
            ),
            (
                "size=0",
                &two[..],
                &[
                    "guest_numa_id=0,cpus=[0-2],memory_zones=[mem0]",
                    "guest_numa_id=1,cpus=[2,3],memory_zones=[mem1]",
                ][..],
                "--numa: vCPU 2 is in guest_numa_id=0 and guest_numa_id=1",
            ),
            (
                "size=0",
                &two[..],
                &["guest_numa_id=0,memory_zones=[mem0,mem9]"][..],
                "--numa: guest_numa_id=0: memory zone `mem9` is not a --memory-zone id \
                 (known: mem0, mem1)",
            ),
            (
                "size=0",
                &two[..],
                &["guest_numa_id=0,memory_zones=[mem0]"][..],
                "--numa: memory zone `mem1` is in no node",
            ),
            (
                "size=0",
                &two[..],
                &[
                    "guest_numa_id=0,memory_zones=[mem0,mem1]",
                    "guest_numa_id=1,memory_zones=[mem1]",
                ][..],
                "--numa: memory zone `mem1` is in guest_numa_id=0 and guest_numa_id=1",
            ),
            (
                "size=0",
                &two[..],
                &["guest_numa_id=1,memory_zones=[mem0,mem1]"][..],
                "--numa: guest_numa_id=1: with 1 node(s) the ids are 0 to 0",
            ),
            (
                "size=0",
                &two[..],
                &["guest_numa_id=0,cpus=[4],memory_zones=[mem0,mem1]"][..],
                "--numa: guest_numa_id=0: vCPU 4 is not below --cpus max 4",
            ),
            (
                "size=0",
                &two[..],
                &["guest_numa_id=0,memory_zones=[mem0,mem1],distances=[3@20]"][..],
                "distances: node 3 does not exist",
            ),
            (
                "size=0",
                &two[..],
                &["guest_numa_id=0,memory_zones=[mem0,mem1],distances=[0@20]"][..],
                "a node's distance to itself is 10",
            ),
            (
                "size=64M",
                &[][..],
                &["guest_numa_id=0,cpus=[0]"][..],
                "--numa: a guest NUMA node's memory is --memory-zones",
            ),
            (
                "size=0",
                &[
                    "id=z,size=3073M",
                    "id=y,size=1023M",
                    "id=x,size=2M",
                    "id=w,size=2M",
                    "id=v,size=2M",
                    "id=u,size=2M",
                    "id=t,size=2M",
                    "id=s,size=2M",
                ][..],
                &[][..],
                "8 zones make 9 memory regions",
            ),
        ] {
            let e = run(memory, zones, nodes).unwrap_err();
            assert!(e.contains(says), "{memory} {zones:?} {nodes:?}: {e}");
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn zone_and_node_syntax_errors() {
        for (bad, says) in [
            ("size=32M", "missing id=ID"),
            ("id=a", "id=a: missing size=SIZE"),
            ("id=a,size=1000K", "not a non-zero multiple of 1 MiB"),
            ("id=a,size=32M,shared=off", "always shared"),
            (
                "id=a,size=33M,hugepages=on",
                "id=a: size=33 MiB is not a multiple",
            ),
            (
                "id=a,size=32M,host_numa_node=x",
                "host_numa_node=x is not a node number",
            ),
            ("id=a,size=32M,mergeable=on", "unknown key `mergeable`"),
            ("id=a,id=b,size=32M", "`id` is given twice"),
        ] {
            let e = parse_memory_zone(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        for (bad, says) in [
            ("cpus=[0]", "missing guest_numa_id=N"),
            ("guest_numa_id=x", "guest_numa_id=x is not a node number"),
            ("guest_numa_id=0,cpus=[3-1]", "`3-1` is not a range"),
            ("guest_numa_id=0,cpus=[300]", "vCPU 300 is above 254"),
            (
                "guest_numa_id=0,distances=[1:20]",
                "`1:20` is not NODE@DISTANCE",
            ),
            (
                "guest_numa_id=0,distances=[1@300]",
                "`1@300` is not NODE@DISTANCE",
            ),
            ("guest_numa_id=0,pci_segments=[0]", "one PCI segment"),
            ("guest_numa_id=0,sockets=1", "unknown key `sockets`"),
        ] {
            let e = parse_numa(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let n =
            parse_numa("guest_numa_id=1,cpus=[0-1,4],memory_zones=[a,b],distances=[0@20]").unwrap();
        assert_eq!(n.cpus, [0, 1, 4]);
        assert_eq!(n.memory_zones, ["a", "b"]);
        assert_eq!(n.distances[0].distance, 20);
    }

    #[test]
    fn meminfo_total() {
        let m = "Node 0 MemTotal:       24683792 kB\nNode 0 MemFree:  1 kB\n";
        assert_eq!(mem_total_kib(m), Some(24683792));
        assert_eq!(mem_total_kib(""), None);
        // This host: node 0 at least, when the kernel has NUMA.
        let host = HostNuma::read();
        if std::path::Path::new("/sys/devices/system/node/node0").exists() {
            assert!(host.memory(0).is_some_and(|m| m > 0), "{host:?}");
        }
    }
}
