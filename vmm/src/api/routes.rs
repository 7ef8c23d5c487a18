//! Maps a decoded request to a [`VmControl`] call and the response.

use std::os::fd::OwnedFd;

use serde_json::json;

use devices::vhost_user::DeviceKind;

use super::http::{Request, Response};
use super::{ControlError, VmControl};

/// One endpoint of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    VmmPing,
    VmmShutdown,
    VmCreate,
    VmBoot,
    VmDelete,
    VmInfo,
    VmCounters,
    VmPause,
    VmResume,
    VmShutdown,
    VmReboot,
    VmPowerButton,
    VmAdd(DeviceKind),
}

/// Path, the one method it takes, endpoint.
const ROUTES: &[(&str, &str, Endpoint)] = &[
    ("/api/v1/vmm.ping", "GET", Endpoint::VmmPing),
    ("/api/v1/vmm.shutdown", "PUT", Endpoint::VmmShutdown),
    ("/api/v1/vm.create", "PUT", Endpoint::VmCreate),
    ("/api/v1/vm.boot", "PUT", Endpoint::VmBoot),
    ("/api/v1/vm.delete", "PUT", Endpoint::VmDelete),
    ("/api/v1/vm.info", "GET", Endpoint::VmInfo),
    ("/api/v1/vm.counters", "GET", Endpoint::VmCounters),
    ("/api/v1/vm.pause", "PUT", Endpoint::VmPause),
    ("/api/v1/vm.resume", "PUT", Endpoint::VmResume),
    ("/api/v1/vm.shutdown", "PUT", Endpoint::VmShutdown),
    ("/api/v1/vm.reboot", "PUT", Endpoint::VmReboot),
    ("/api/v1/vm.power-button", "PUT", Endpoint::VmPowerButton),
    (
        "/api/v1/vm.add-disk",
        "PUT",
        Endpoint::VmAdd(DeviceKind::Block),
    ),
    ("/api/v1/vm.add-fs", "PUT", Endpoint::VmAdd(DeviceKind::Fs)),
    (
        "/api/v1/vm.add-net",
        "PUT",
        Endpoint::VmAdd(DeviceKind::Net),
    ),
    (
        "/api/v1/vm.add-vsock",
        "PUT",
        Endpoint::VmAdd(DeviceKind::Vsock),
    ),
];

/// A response, and whether the connection closes after it.
#[derive(Debug)]
pub struct Reply {
    pub response: Response,
    pub close: bool,
}

impl From<Response> for Reply {
    fn from(response: Response) -> Self {
        Reply {
            response,
            close: false,
        }
    }
}

/// Answers one request. `fds` came with it (`SCM_RIGHTS`); only
/// `vm.add-net` takes any (its tap queues). What the VM does not keep is
/// closed when this returns.
pub fn handle(req: &Request, fds: Vec<OwnedFd>, ctl: &dyn VmControl) -> Reply {
    let Some(&(_, allowed, endpoint)) = ROUTES.iter().find(|(path, _, _)| *path == req.path) else {
        return Response::error(404, format!("unknown path {}", req.path)).into();
    };
    if req.method != allowed {
        return Response::error(
            405,
            format!("{} takes {allowed}, not {}", req.path, req.method),
        )
        .with_header("Allow", allowed)
        .into();
    }
    if !fds.is_empty() && !matches!(endpoint, Endpoint::VmAdd(_)) {
        return Response::error(
            400,
            format!(
                "{} takes no file descriptors ({} sent with the request, all closed)",
                req.path,
                fds.len()
            ),
        )
        .into();
    }
    let body = match check_body(&req.body) {
        Ok(body) => body,
        Err(e) => return Response::error(400, e).into(),
    };
    match endpoint {
        Endpoint::VmmPing => Response::json(
            200,
            &json!({
                "build_version": env!("CARGO_PKG_VERSION"),
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "features": [],
            }),
        )
        .into(),
        Endpoint::VmCreate => match body {
            Some(config) => action(ctl.create(&config)).into(),
            None => Response::error(
                400,
                "vm.create needs a body: a VmConfig as JSON (at least {\"payload\": {\"kernel\": PATH}})",
            )
            .into(),
        },
        Endpoint::VmBoot => action(ctl.boot()).into(),
        Endpoint::VmAdd(kind) => match body {
            Some(device) => action(ctl.add_device(kind, &device, fds)).into(),
            None => Response::error(
                400,
                format!("{} needs a body: the device as JSON", req.path),
            )
            .into(),
        },
        Endpoint::VmDelete => action(ctl.delete()).into(),
        Endpoint::VmInfo => match ctl.info() {
            Ok(info) => to_json(&info),
            Err(e) => Response::error(e.status(), crate::error_chain(&e)),
        }
        .into(),
        Endpoint::VmCounters => to_json(&ctl.counters()).into(),
        Endpoint::VmPause => action(ctl.pause()).into(),
        Endpoint::VmResume => action(ctl.resume()).into(),
        Endpoint::VmShutdown => action(ctl.shutdown()).into(),
        Endpoint::VmReboot => action(ctl.reboot()).into(),
        Endpoint::VmPowerButton => action(ctl.power_button()).into(),
        Endpoint::VmmShutdown => {
            let result = ctl.vmm_shutdown();
            let close = result.is_ok();
            Reply {
                response: action(result),
                close,
            }
        }
    }
}

/// A body is optional; when sent it must be JSON (`{}`). Only
/// `vm.create` reads it.
fn check_body(body: &[u8]) -> Result<Option<serde_json::Value>, String> {
    if body.trim_ascii().is_empty() {
        return Ok(None);
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .map(Some)
        .map_err(|e| format!("request body is not valid JSON: {e}"))
}

fn to_json(value: &impl serde::Serialize) -> Response {
    // Serialized directly, so fields keep their declared order.
    match serde_json::to_vec(value) {
        Ok(body) => Response {
            status: 200,
            headers: Vec::new(),
            body,
        },
        Err(e) => Response::error(500, format!("serializing the response: {e}")),
    }
}

fn action(result: Result<(), ControlError>) -> Response {
    match result {
        Ok(()) => Response::no_content(),
        Err(e) => Response::error(e.status(), crate::error_chain(&e)),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Mutex;

    use super::super::http::Version;
    use super::super::{BackendState, Counters, DeviceInfo, MemoryInfo, VmInfo, VmState};
    use super::*;

    /// A VM that follows the state rules a real one would, and records
    /// the actions it was asked for.
    pub struct FakeVm {
        pub state: Mutex<VmState>,
        pub calls: Mutex<Vec<&'static str>>,
        /// Makes `power_button` fail (500) instead of acting.
        pub broken_button: bool,
        /// The descriptors `vm.add-net` brought, kept as a VM keeps a
        /// NIC's tap queues.
        pub kept: Mutex<Vec<OwnedFd>>,
    }

    impl FakeVm {
        pub fn new(state: VmState) -> Self {
            FakeVm {
                state: Mutex::new(state),
                calls: Mutex::new(Vec::new()),
                broken_button: false,
                kept: Mutex::new(Vec::new()),
            }
        }

        fn transition(
            &self,
            action: &'static str,
            from: &[VmState],
            to: VmState,
        ) -> Result<(), ControlError> {
            self.calls.lock().unwrap().push(action);
            super::super::fuzz_api::transition(&mut self.state.lock().unwrap(), action, from, to)
        }
    }

    impl VmControl for FakeVm {
        fn create(&self, config: &serde_json::Value) -> Result<(), ControlError> {
            self.calls.lock().unwrap().push("create");
            if config.get("payload").is_none() {
                return Err(ControlError::BadRequest("payload: is required".into()));
            }
            Err(ControlError::AlreadyCreated)
        }

        fn boot(&self) -> Result<(), ControlError> {
            self.transition("boot", &[VmState::Created], VmState::Running)
        }

        fn delete(&self) -> Result<(), ControlError> {
            self.calls.lock().unwrap().push("delete");
            Err(ControlError::NotCreated("delete"))
        }

        fn info(&self) -> Result<VmInfo, ControlError> {
            Ok(VmInfo {
                state: *self.state.lock().unwrap(),
                config: json!({"payload": {"kernel": "/k"}}),
                memory_actual_size: 512 << 20,
                unsupported: vec!["rng: ignored".into()],
                cpus: 2,
                memory: MemoryInfo { size: 512 << 20 },
                devices: vec![
                    DeviceInfo {
                        kind: "block".into(),
                        id: "disk0".into(),
                        socket: "/run/blk.sock".into(),
                        pci_bdf: Some("0000:00:02.0".into()),
                        backend_state: BackendState::Connected,
                        backend_error: None,
                    },
                    DeviceInfo {
                        kind: "net".into(),
                        id: "net0".into(),
                        socket: "/run/net.sock".into(),
                        pci_bdf: None,
                        backend_state: BackendState::Failed,
                        backend_error: Some("connection refused".into()),
                    },
                ],
            })
        }

        fn counters(&self) -> Counters {
            let mut c = Counters::new();
            c.entry("vcpu0".into())
                .or_default()
                .insert("exits".into(), 42);
            c.entry("disk0".into())
                .or_default()
                .insert("kicks".into(), 7);
            c
        }

        fn pause(&self) -> Result<(), ControlError> {
            self.transition("pause", &[VmState::Running], VmState::Paused)
        }

        fn resume(&self) -> Result<(), ControlError> {
            self.transition("resume", &[VmState::Paused], VmState::Running)
        }

        fn shutdown(&self) -> Result<(), ControlError> {
            self.transition(
                "shutdown",
                &[VmState::Running, VmState::Paused, VmState::Created],
                VmState::Shutdown,
            )
        }

        fn power_button(&self) -> Result<(), ControlError> {
            if self.broken_button {
                return Err(ControlError::Failed {
                    action: "power button",
                    source: "KVM_IRQ_LINE: EINVAL".into(),
                });
            }
            let state = *self.state.lock().unwrap();
            self.transition("power-button", &[VmState::Running], state)
        }

        fn vmm_shutdown(&self) -> Result<(), ControlError> {
            self.calls.lock().unwrap().push("vmm-shutdown");
            Ok(())
        }

        /// A NIC keeps its descriptors; other devices take none.
        fn add_device(
            &self,
            kind: DeviceKind,
            _body: &serde_json::Value,
            fds: Vec<OwnedFd>,
        ) -> Result<(), ControlError> {
            self.calls.lock().unwrap().push("add");
            if kind != DeviceKind::Net && !fds.is_empty() {
                return Err(ControlError::BadRequest(
                    "fds: this device takes none".into(),
                ));
            }
            self.kept.lock().unwrap().extend(fds);
            Ok(())
        }
    }

    fn req(method: &str, path: &str, body: &[u8]) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            version: Version::Http11,
            headers: Vec::new(),
            body: body.to_vec(),
            keep_alive: true,
        }
    }

    fn call(vm: &FakeVm, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value, Reply) {
        let reply = handle(&req(method, path, body), Vec::new(), vm);
        let json = if reply.response.body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&reply.response.body).unwrap()
        };
        (reply.response.status, json, reply)
    }

    #[test]
    fn gets() {
        let vm = FakeVm::new(VmState::Running);
        let (status, ping, _) = call(&vm, "GET", "/api/v1/vmm.ping", b"");
        assert_eq!(status, 200);
        assert_eq!(ping["pid"], std::process::id());
        assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));

        let (status, info, _) = call(&vm, "GET", "/api/v1/vm.info", b"");
        assert_eq!(status, 200);
        assert_eq!(
            info,
            json!({
                "state": "Running",
                "config": {"payload": {"kernel": "/k"}},
                "memory_actual_size": 536870912,
                "unsupported": ["rng: ignored"],
                "cpus": 2,
                "memory": {"size": 536870912},
                "devices": [
                    {"kind": "block", "id": "disk0", "socket": "/run/blk.sock",
                     "pci_bdf": "0000:00:02.0", "backend_state": "connected"},
                    {"kind": "net", "id": "net0", "socket": "/run/net.sock",
                     "pci_bdf": null, "backend_state": "failed",
                     "backend_error": "connection refused"},
                ],
            })
        );

        let (status, counters, _) = call(&vm, "GET", "/api/v1/vm.counters", b"{}");
        assert_eq!(status, 200);
        assert_eq!(
            counters,
            json!({"disk0": {"kicks": 7}, "vcpu0": {"exits": 42}})
        );
    }

    #[test]
    fn actions_follow_the_state() {
        let vm = FakeVm::new(VmState::Running);
        let status = |m, p, b| call(&vm, m, p, b).0;
        assert_eq!(status("PUT", "/api/v1/vm.pause", b""), 204);
        assert_eq!(*vm.state.lock().unwrap(), VmState::Paused);
        assert_eq!(status("PUT", "/api/v1/vm.power-button", b""), 409);
        assert_eq!(status("PUT", "/api/v1/vm.resume", b"{}"), 204);
        assert_eq!(status("PUT", "/api/v1/vm.power-button", b" {} \n"), 204);
        assert_eq!(status("PUT", "/api/v1/vm.shutdown", b""), 204);
        let (code, err, _) = call(&vm, "PUT", "/api/v1/vm.resume", b"");
        assert_eq!(code, 409);
        assert_eq!(err, json!({"error": "cannot resume: the VM is Shutdown"}));
        assert_eq!(
            *vm.calls.lock().unwrap(),
            [
                "pause",
                "power-button",
                "resume",
                "power-button",
                "shutdown",
                "resume"
            ]
        );
    }

    #[test]
    fn lifecycle_calls_and_their_errors() {
        let vm = FakeVm::new(VmState::Created);
        assert_eq!(call(&vm, "PUT", "/api/v1/vm.boot", b"").0, 204);
        assert_eq!(*vm.state.lock().unwrap(), VmState::Running);
        let (code, err, _) = call(&vm, "PUT", "/api/v1/vm.boot", b"");
        assert_eq!(code, 409);
        assert_eq!(err["error"], "cannot boot: the VM is Running");
        // vm.create: the body is required and reaches the VM.
        let (code, err, _) = call(&vm, "PUT", "/api/v1/vm.create", b"");
        assert_eq!(code, 400);
        assert!(
            err["error"].as_str().unwrap().contains("needs a body"),
            "{err}"
        );
        let (code, err, _) = call(&vm, "PUT", "/api/v1/vm.create", b"{\"cpus\": {}}");
        assert_eq!(
            (code, err["error"].as_str()),
            (400, Some("payload: is required"))
        );
        let (code, err, _) = call(
            &vm,
            "PUT",
            "/api/v1/vm.create",
            b"{\"payload\": {\"kernel\": \"/k\"}}",
        );
        assert_eq!(code, 409);
        assert!(err["error"].as_str().unwrap().contains("already created"));
        let (code, _, _) = call(&vm, "PUT", "/api/v1/vm.create", b"{\"payload\": ");
        assert_eq!(code, 400);
        let (code, err, _) = call(&vm, "PUT", "/api/v1/vm.delete", b"");
        assert_eq!(code, 404);
        assert!(err["error"].as_str().unwrap().contains("vm.create first"));
        assert_eq!(call(&vm, "GET", "/api/v1/vm.create", b"").0, 405);
        assert_eq!(
            *vm.calls.lock().unwrap(),
            ["boot", "boot", "create", "create", "delete"]
        );
    }

    #[test]
    fn double_pause_is_a_conflict() {
        let vm = FakeVm::new(VmState::Running);
        assert_eq!(call(&vm, "PUT", "/api/v1/vm.pause", b"").0, 204);
        let (code, err, _) = call(&vm, "PUT", "/api/v1/vm.pause", b"");
        assert_eq!(code, 409);
        assert_eq!(err["error"], "cannot pause: the VM is Paused");
    }

    #[test]
    fn vmm_shutdown_closes_the_connection() {
        let vm = FakeVm::new(VmState::Running);
        let (code, _, reply) = call(&vm, "PUT", "/api/v1/vmm.shutdown", b"");
        assert_eq!(code, 204);
        assert!(reply.close);
        assert_eq!(*vm.calls.lock().unwrap(), ["vmm-shutdown"]);
        assert!(!call(&vm, "PUT", "/api/v1/vm.pause", b"").2.close);
    }

    #[test]
    fn failures_are_500_with_the_cause() {
        let mut vm = FakeVm::new(VmState::Running);
        vm.broken_button = true;
        let (code, err, _) = call(&vm, "PUT", "/api/v1/vm.power-button", b"");
        assert_eq!(code, 500);
        assert_eq!(err["error"], "power button failed: KVM_IRQ_LINE: EINVAL");
        assert_eq!(ControlError::Unsupported("snapshot").status(), 501);
        // A VM that cannot reboot says so.
        let (code, err, _) = call(&vm, "PUT", "/api/v1/vm.reboot", b"");
        assert_eq!(code, 501);
        assert_eq!(err["error"], "vm.reboot is not supported by this VM");
    }

    #[test]
    fn unknown_paths_and_wrong_methods() {
        let vm = FakeVm::new(VmState::Running);
        for path in [
            "/",
            "/api/v1/vm.nope",
            "/api/v1/vm.info/",
            "/api/v2/vmm.ping",
        ] {
            let (code, err, _) = call(&vm, "GET", path, b"");
            assert_eq!(code, 404, "{path}");
            assert_eq!(err["error"], format!("unknown path {path}"));
        }
        let (code, err, reply) = call(&vm, "PUT", "/api/v1/vm.info", b"");
        assert_eq!(code, 405);
        assert_eq!(err["error"], "/api/v1/vm.info takes GET, not PUT");
        assert_eq!(reply.response.headers, [("Allow", "GET".to_string())]);
        let (code, _, reply) = call(&vm, "GET", "/api/v1/vm.pause", b"");
        assert_eq!(code, 405);
        assert_eq!(reply.response.headers, [("Allow", "PUT".to_string())]);
        assert_eq!(call(&vm, "DELETE", "/api/v1/vm.pause", b"").0, 405);
        assert_eq!(call(&vm, "GET", "/api/v1/vm.reboot", b"").0, 405);
        assert_eq!(call(&vm, "HEAD", "/api/v1/vmm.ping", b"").0, 405);
        assert!(vm.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn bad_json_body_is_400_and_nothing_happens() {
        let vm = FakeVm::new(VmState::Running);
        for body in [&b"{"[..], b"pause", b"{}{}", b"\xff"] {
            let (code, err, _) = call(&vm, "PUT", "/api/v1/vm.pause", body);
            assert_eq!(code, 400);
            assert!(
                err["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("request body is not valid JSON"),
                "{err}"
            );
        }
        assert!(vm.calls.lock().unwrap().is_empty());
        assert_eq!(*vm.state.lock().unwrap(), VmState::Running);
    }
}
