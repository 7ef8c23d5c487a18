//! The VMM's API without a socket: the input is the byte stream of one
//! connection, fed to the server's decoder in chunks (byte 0: the chunk
//! size, 0 for all at once), each request routed to a VM double whose
//! `vm.create` runs the real `vm.create` body parser
//! (`vmm::config::from_api`); the loop stops where the server's would
//! close the connection.

#![no_main]

use std::sync::Mutex;

use libfuzzer_sys::fuzz_target;
use vmm::api::fuzz_api::{handle, transition, Decoded, Decoder};
use vmm::api::{ControlError, Counters, Limits, MemoryInfo, VmControl, VmInfo, VmState};

/// A VM that follows the state rules a real one does.
struct FakeVm {
    state: Mutex<Option<(VmState, vmm::config::VmPlan)>>,
}

impl FakeVm {
    fn step(
        &self,
        action: &'static str,
        from: &[VmState],
        to: VmState,
    ) -> Result<(), ControlError> {
        let mut s = self.state.lock().unwrap();
        let Some((state, _)) = s.as_mut() else {
            return Err(ControlError::NotCreated(action));
        };
        transition(state, action, from, to)
    }
}

impl VmControl for FakeVm {
    fn create(&self, config: &serde_json::Value) -> Result<(), ControlError> {
        let plan =
            vmm::config::from_api(config).map_err(|e| ControlError::BadRequest(e.to_string()))?;
        let mut s = self.state.lock().unwrap();
        if s.is_some() {
            return Err(ControlError::AlreadyCreated);
        }
        *s = Some((VmState::Created, plan));
        Ok(())
    }

    fn boot(&self) -> Result<(), ControlError> {
        self.step("boot", &[VmState::Created], VmState::Running)
    }

    fn delete(&self) -> Result<(), ControlError> {
        match self.state.lock().unwrap().take() {
            Some(_) => Ok(()),
            None => Err(ControlError::NotCreated("delete")),
        }
    }

    fn info(&self) -> Result<VmInfo, ControlError> {
        let s = self.state.lock().unwrap();
        let Some((state, plan)) = s.as_ref() else {
            return Err(ControlError::NotCreated("info"));
        };
        Ok(VmInfo {
            state: *state,
            config: plan.echo.clone(),
            memory_actual_size: plan.config.memory.size,
            unsupported: plan.unsupported.clone(),
            cpus: plan.config.cpus.boot,
            memory: MemoryInfo {
                size: plan.config.memory.size,
            },
            devices: Vec::new(),
        })
    }

    fn counters(&self) -> Counters {
        Counters::new()
    }

    fn pause(&self) -> Result<(), ControlError> {
        self.step("pause", &[VmState::Running], VmState::Paused)
    }

    fn resume(&self) -> Result<(), ControlError> {
        self.step("resume", &[VmState::Paused], VmState::Running)
    }

    fn shutdown(&self) -> Result<(), ControlError> {
        self.step(
            "shutdown",
            &[VmState::Running, VmState::Paused],
            VmState::Shutdown,
        )
    }

    fn power_button(&self) -> Result<(), ControlError> {
        self.step("power-button", &[VmState::Running], VmState::Running)
    }

    fn vmm_shutdown(&self) -> Result<(), ControlError> {
        Ok(())
    }
}

/// Small limits, so the fuzzer reaches them.
const LIMITS: Limits = Limits {
    max_head: 1024,
    max_body: 4096,
    request_timeout: std::time::Duration::from_secs(5),
    idle_timeout: std::time::Duration::from_secs(30),
    write_timeout: std::time::Duration::from_secs(5),
    max_connections: 4,
};

fn check_response(bytes: &[u8], status: u16) {
    assert!((100..600).contains(&status), "status {status}");
    assert!(bytes.starts_with(b"HTTP/1.1 "), "status line");
    assert!(
        bytes.windows(4).any(|w| w == b"\r\n\r\n"),
        "head not terminated"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = if chunk == 0 {
        stream.len().max(1)
    } else {
        usize::from(chunk)
    };
    let vm = FakeVm {
        state: Mutex::new(None),
    };
    let mut decoder = Decoder::new(LIMITS);
    'conn: for piece in stream.chunks(chunk) {
        decoder.feed(piece);
        loop {
            match decoder.decode() {
                Ok(Decoded::Request(req)) => {
                    assert!(req.body.len() <= LIMITS.max_body);
                    let reply = handle(&req, Vec::new(), &vm);
                    let keep_alive = req.keep_alive && !reply.close;
                    let head_only = req.method == "HEAD";
                    let bytes = reply.response.to_bytes(keep_alive, head_only);
                    check_response(&bytes, reply.response.status);
                    if !keep_alive {
                        break 'conn;
                    }
                }
                Ok(Decoded::NeedMore { .. }) => break,
                Err(e) => {
                    let status = e.status();
                    assert!((400..600).contains(&status), "error status {status}");
                    break 'conn;
                }
            }
        }
    }
    let _ = decoder.in_request();
});
